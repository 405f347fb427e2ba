"""SDXL-sized LoRA distillation training on a CUDA GPU (``distill-diffusion bench sdxl-gpu``): images/s and peak memory.

The engine's LCM-LoRA step (Luo et al., arXiv:2310.04378 Alg. 1; arXiv:2311.05556) on SDXL's UNet architecture
(Podell et al., arXiv:2307.01952; :data:`~distill_diffusion.bench.gpu.SDXL_UNET_CONFIG`, 2.57B parameters) built with
random weights, on cached latents, pooled and hidden text embeddings and the micro-conditioning of uncropped
1024² images (speed and memory depend on shapes and dtypes, not on weight values). Defaults are the settings of
diffusers' ``train_lcm_distill_lora_sdxl.py`` and its README recipe: 1024², LoRA rank 64 = alpha on the LCM-LoRA
targets, gradient checkpointing, w in [3, 15] (diffusers' guidance scale 4-16), N = 50 solver steps, Huber loss; bf16
(the recipe's fp16 needs the fp16-fix VAE; with cached latents the VAE is not in the step either way) and plain AdamW
(the recipe's 8-bit Adam saves about 1.5 GiB of the LoRA's 2.9 GiB of optimizer state). ``bench lora-memory``
estimates the same step's peak without a GPU. A shared benchmark: it runs whichever method trains SDXL, LCM by
default. Torch is imported when it runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from distill_diffusion.bench.options import add_gpu_options

HELP = "SDXL LCM-LoRA training images/s and peak memory, SDXL UNet (random weights), CUDA GPU"
NO_GPU = ("the SDXL LCM-LoRA benchmark needs a CUDA GPU; run it on a GPU machine "
          "(without one, `distill-diffusion bench lora-memory` estimates its peak memory)")
#: diffusers' ``train_lcm_distill_lora_sdxl.py`` settings that are method options here (w = guidance_scale - 1).
LCM_SDXL_OPTIONS: dict[str, Any] = {"num_ddim_timesteps": 50, "guidance_scale_min": 4.0, "guidance_scale_max": 16.0,
                                    "loss_type": "huber", "huber_c": 0.001, "timestep_scaling": 10.0}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options (checkpointing on by default, as the reference recipe)."""
    add_gpu_options(p, "benchmarks/results/lcm_gpu_sdxl.json")
    p.set_defaults(batch_size=1, resolution=1024, gradient_checkpointing=True, steps=10)
    p.add_argument("--no_gradient_checkpointing", dest="gradient_checkpointing", action="store_false")
    p.add_argument("--lora_rank", type=int, default=64)


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    run_sdxl_lora_benchmark(batch_size=args.batch_size, resolution=args.resolution, steps=args.steps,
                            mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
                            lora_rank=args.lora_rank, output=args.output)  # fmt: skip
    return 0


def run_sdxl_lora_benchmark(batch_size: int = 1, resolution: int = 1024, steps: int = 10, mixed_precision: str = "bf16",
                            gradient_checkpointing: bool = True, lora_rank: int = 64,
                            output: str | Path = "benchmarks/results/lcm_gpu_sdxl.json", unet_config: dict[str, Any] | None = None,
                            device: str | None = None, method: str = "lcm") -> dict[str, Any]:
    """Time ``steps`` engine steps after 3 warm-ups; print a table, write JSON + markdown. ``device="cpu"`` with a tiny
    ``unet_config`` runs it without a GPU (the tests); ``method`` other than lcm trains the whole UNet (no LoRA)."""
    from distill_diffusion.bench.gpu import SDXL_UNET_CONFIG, time_method_step, write_results
    from distill_diffusion.errors import require

    require(lora_rank >= 1, f"lora_rank={lora_rank} must be >= 1")
    options = {"lora_rank": lora_rank, "lora_alpha": lora_rank, **LCM_SDXL_OPTIONS} if method == "lcm" else {}
    result, engine = time_method_step(
        method, options, "LCM-LoRA training step" if method == "lcm" else f"{method} training step", NO_GPU,
        batch_size=batch_size, resolution=resolution, steps=steps, mixed_precision=mixed_precision,
        gradient_checkpointing=gradient_checkpointing, unet_config=unet_config, device=device, architecture="SDXL",
        base_config=SDXL_UNET_CONFIG)
    unet = engine.method.models["unet"]
    trainable = [(n, p) for n, p in unet.named_parameters() if p.requires_grad]
    result["settings"].update({
        "method": method, "lora_rank": lora_rank if method == "lcm" else None, "method_options": options,
        "unet_parameters": sum(p.numel() for n, p in unet.named_parameters() if "lora_" not in n),
        "trainable_parameters": sum(p.numel() for _, p in trainable),
        "reference": "diffusers train_lcm_distill_lora_sdxl.py: --resolution 1024 --lora_rank 64 --gradient_checkpointing",
    })
    s = result["settings"]
    note = (f"{result['benchmark']}; {s['unet_parameters'] / 1e6:.0f}M frozen UNet parameters, "
            f"{s['trainable_parameters'] / 1e6:.1f}M trainable; cached latents and embeddings.")
    write_results(result, Path(output), {"LoRA rank": str(s["lora_rank"])}, note)
    return result
