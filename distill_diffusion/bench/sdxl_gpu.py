"""SDXL-sized distillation training on a CUDA GPU (``distill-diffusion bench sdxl-gpu``): images/s and peak memory.

One engine step of a shipped SDXL config (``--config``: its method and method options, its resolution, batch,
precision and checkpointing unless given) on SDXL's UNet architecture (Podell et al., arXiv:2307.01952;
:data:`~distill_diffusion.bench.gpu.SDXL_UNET_CONFIG`, 2.57B parameters) built with random weights, on cached latents,
pooled and hidden text embeddings and the micro-conditioning of uncropped images (speed and memory depend on shapes
and dtypes, not on weight values). The default, ``lcm_lora_sdxl``, is the LCM-LoRA step (Luo et al.,
arXiv:2310.04378 Alg. 1; arXiv:2311.05556) with the settings of diffusers' ``train_lcm_distill_lora_sdxl.py`` and its
README recipe: LoRA rank 64 = alpha on the LCM-LoRA targets, gradient checkpointing, w in [3, 15] (diffusers'
guidance scale 4-16), N = 50 solver steps, Huber loss, timed at 1024² and batch 1; bf16 (the recipe's fp16 needs the
fp16-fix VAE; with cached latents the VAE is not in the step either way) and plain AdamW (the recipe's 8-bit Adam
saves about 1.5 GiB of the LoRA's 2.9 GiB of optimizer state). ``bench lora-memory`` estimates that step's peak
without a GPU. The others: ``ladd_sdxl`` (generator + discriminator cycle), ``progressive_sdxl`` (a step of the first
halving round, the guidance stage skipped) and the KOALA students ``bksdm_koala_700m_sdxl`` / ``bksdm_koala_1b_sdxl``
(teacher forward + student forward and backward with feature KD). ADD (``add_sdxl``) decodes its samples for its
DINOv2 discriminator and needs a real VAE, which this benchmark does not build. Torch is imported when it runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from distill_diffusion.bench.options import add_gpu_options

HELP = "SDXL training images/s and peak memory of a shipped SDXL config (LCM-LoRA by default), SDXL UNet (random weights), CUDA GPU"
NO_GPU = ("the SDXL training benchmark needs a CUDA GPU; run it on a GPU machine "
          "(without one, `distill-diffusion bench lora-memory` estimates the LCM-LoRA step's peak memory)")
#: The SDXL configs it times, and where each one's results go.
CONFIGS = {"lcm_lora_sdxl": "lcm", "ladd_sdxl": "ladd", "progressive_sdxl": "progressive",
           "bksdm_koala_700m_sdxl": "koala_700m", "bksdm_koala_1b_sdxl": "koala_1b"}
#: diffusers' ``train_lcm_distill_lora_sdxl.py`` settings that are method options here (w = guidance_scale - 1): what
#: ``lcm_lora_sdxl`` sets (a test checks it).
LCM_SDXL_OPTIONS: dict[str, Any] = {"num_ddim_timesteps": 50, "guidance_scale_min": 4.0, "guidance_scale_max": 16.0,
                                    "loss_type": "huber", "huber_c": 0.001, "timestep_scaling": 10.0}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options (batch, resolution, precision and checkpointing default to the config's; LCM-LoRA's
    batch is 1, the 24 GB-card question)."""
    add_gpu_options(p, "")
    p.set_defaults(batch_size=None, resolution=None, mixed_precision=None, gradient_checkpointing=None, output=None, steps=10)
    p.add_argument("--config", choices=tuple(CONFIGS), default="lcm_lora_sdxl", help="the shipped SDXL config whose step is timed")
    p.add_argument("--no_gradient_checkpointing", dest="gradient_checkpointing", action="store_false")
    p.add_argument("--lora_rank", type=int, default=None, help="the LoRA rank (and alpha) of a LoRA config (default: the config's)")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    run_sdxl_gpu_benchmark(args.config, batch_size=args.batch_size, resolution=args.resolution, steps=args.steps,
                           mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
                           lora_rank=args.lora_rank, output=args.output)  # fmt: skip
    return 0


def run_sdxl_gpu_benchmark(config: str = "lcm_lora_sdxl", batch_size: int | None = None, resolution: int | None = None,
                           steps: int = 10, mixed_precision: str | None = None, gradient_checkpointing: bool | None = None,
                           lora_rank: int | None = None, output: str | Path | None = None, unet_config: dict[str, Any] | None = None,
                           device: str | None = None, method_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Time ``steps`` engine steps of ``config`` after 3 warm-ups; print a table, write JSON + markdown
    (``benchmarks/results/<name>_gpu_sdxl.json`` by default). ``device="cpu"`` with a tiny ``unet_config`` (and
    ``method_options`` over the config's, e.g. a variant that fits it) runs it without a GPU (the tests)."""
    from distill_diffusion.bench.gpu import SDXL_UNET_CONFIG, time_method_step, write_results
    from distill_diffusion.config import load_config
    from distill_diffusion.errors import require
    from distill_diffusion.trainers.methods.progressive.bench_gpu import FIRST_ROUND, past_guidance_stage

    require(config in CONFIGS, f"--config {config!r} is not timed here; use one of {', '.join(CONFIGS)}")
    require(lora_rank is None or lora_rank >= 1, f"lora_rank={lora_rank} must be >= 1")
    preset = load_config(config)
    method, options, train = preset["method_name"], dict(preset["method"]), preset["train"]
    lora = bool(options.get("lora"))
    require(lora_rank is None or lora, f"--lora_rank: {config} trains no LoRA")
    if lora_rank is not None:
        options.update(lora_rank=lora_rank, lora_alpha=lora_rank)
    if method == "progressive":
        options.update(FIRST_ROUND)
    options.update(method_options or {})
    batch_size = batch_size or (1 if method == "lcm" else int(train["train_batch_size"]))
    result, engine = time_method_step(
        method, options, f"{config} training step", NO_GPU, batch_size=batch_size,
        resolution=resolution or int(preset["data"]["resolution"]), steps=steps,
        mixed_precision=mixed_precision or train.get("mixed_precision", "bf16"),
        gradient_checkpointing=bool(train.get("gradient_checkpointing")) if gradient_checkpointing is None else gradient_checkpointing,
        unet_config=unet_config, device=device, architecture="SDXL", base_config=SDXL_UNET_CONFIG,
        prepare=past_guidance_stage if method == "progressive" else None)
    trainable = {name: sum(p.numel() for p in module.parameters() if p.requires_grad) for name, module in engine.method.models.items()}
    unet = engine.method.components.unet
    result["settings"].update({
        "config": config, "method": method, "lora_rank": options.get("lora_rank") if lora else None, "method_options": options,
        "unet_parameters": sum(p.numel() for n, p in unet.named_parameters() if "lora_" not in n),
        "trainable_parameters": sum(trainable.values()), "trainable_by_model": trainable,
        "reference": "diffusers train_lcm_distill_lora_sdxl.py: --resolution 1024 --lora_rank 64 --gradient_checkpointing"
                     if method == "lcm" else f"the {config} config",
    })
    s = result["settings"]
    note = (f"{result['benchmark']}; {s['unet_parameters'] / 1e6:.0f}M teacher UNet parameters, "
            f"{s['trainable_parameters'] / 1e6:.1f}M trainable; cached latents and embeddings.")
    out = Path(output) if output else Path(f"benchmarks/results/{CONFIGS[config]}_gpu_sdxl.json")
    write_results(result, out, {"config": config, "LoRA rank": str(s["lora_rank"] or "-")}, note)
    return result
