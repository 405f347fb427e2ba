"""SD 1.5-sized LCM-LoRA training benchmark on a CUDA GPU (``distill-diffusion bench lcm-gpu``): images/s and peak
memory of the engine's step.

The step is latent consistency distillation (Luo et al., "Latent Consistency Models", arXiv:2310.04378,
Alg. 1) in LoRA mode (Luo et al., "LCM-LoRA", arXiv:2311.05556): one UNet whose frozen base is the teacher
(batched cond+uncond forward and DDIM step), one target forward and one student forward+backward through
the LoRA, then AdamW on the LoRA weights, all through :class:`~distill_diffusion.trainers.engine.loop.Engine`.
The UNet is SD 1.5's architecture (about 860M parameters) built from its config with random weights, on
pre-encoded latents and text embeddings (as with the latent cache, so the VAE is not in the step). Speed and
memory depend on shapes and dtypes, not on weight values, so nothing needs to be downloaded. Reported:
training images/s (batch / median step time, CUDA synchronised), median step seconds, and the peak CUDA
memory allocated over warm-up and timed steps. Torch is imported when it runs (the CLI imports this module to build
``--help``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill_diffusion.bench.options import add_gpu_options
from distill_diffusion.errors import require

if TYPE_CHECKING:
    import torch

HELP = "LCM-LoRA training images/s and peak memory, SD 1.5 UNet (random weights), CUDA GPU"
NO_GPU = ("the SD 1.5 LCM-LoRA benchmark needs a CUDA GPU; run it on a GPU machine "
          "(the CPU benchmark is `distill-diffusion bench lcm`)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    add_gpu_options(p, "benchmarks/results/lcm_gpu_sd15.json")
    p.add_argument("--lora_rank", type=int, default=64)


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    run_sd15_lora_benchmark(batch_size=args.batch_size, resolution=args.resolution, steps=args.steps,
                            mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
                            lora_rank=args.lora_rank, output=args.output)  # fmt: skip
    return 0


def build_lora_engine(tmp: Path, batch_size: int, resolution: int, mixed_precision: str, gradient_checkpointing: bool,
                      lora_rank: int, unet_config: dict[str, Any], device: torch.device) -> tuple[Any, Any]:
    """The engine running LCM-LoRA (SD defaults, alpha = rank) over random latent batches, and its data."""
    from distill_diffusion.bench.gpu import sd_engine

    return sd_engine(tmp, "lcm", {"lora_rank": lora_rank, "lora_alpha": lora_rank}, batch_size, resolution, mixed_precision,
                     gradient_checkpointing, unet_config, device)


def _parameter_counts(unet: Any) -> dict[str, int]:
    trainable = [(n, p) for n, p in unet.named_parameters() if p.requires_grad]
    return {
        "unet_parameters": sum(p.numel() for n, p in unet.named_parameters() if "lora_" not in n),
        "trainable_parameters": sum(p.numel() for _, p in trainable),
        "trainable_lora_parameters": sum(p.numel() for n, p in trainable if "lora_" in n),
    }


def run_sd15_lora_benchmark(batch_size: int = 8, resolution: int = 512, steps: int = 20, mixed_precision: str = "bf16",
                            gradient_checkpointing: bool = False, lora_rank: int = 64,
                            output: str | Path = "benchmarks/results/lcm_gpu_sd15.json",
                            unet_config: dict[str, Any] | None = None, device: str | None = None) -> dict:
    """Time ``steps`` engine LCM-LoRA steps after 3 warm-up steps; print a table, write JSON + markdown.

    ``device=None`` needs CUDA (a one-line :class:`UserError` otherwise, before anything is built);
    ``device="cpu"`` (with a tiny ``unet_config``) runs it on a CPU-only machine, as the tests do.
    """
    import diffusers
    import torch

    from distill_diffusion.bench.gpu import SD15_UNET_CONFIG, check_args, device_name, time_steps

    config = dict(unet_config or SD15_UNET_CONFIG)
    require(lora_rank >= 1, f"lora_rank={lora_rank} must be >= 1")
    dev = check_args(device, batch_size, resolution, steps, mixed_precision, config, NO_GPU)
    with tempfile.TemporaryDirectory() as tmp:
        engine, _ = build_lora_engine(Path(tmp), batch_size, resolution, mixed_precision, gradient_checkpointing,
                                      lora_rank, config, dev)
        seconds, peak = time_steps(engine, dev, steps)
    method = engine.method.config
    result = {
        "benchmark": "LCM-LoRA training step, SD 1.5 UNet architecture (random weights)" if unet_config is None
                     else "LCM-LoRA training step, custom UNet config (random weights)",
        "device": device_name(dev), "torch": torch.__version__, "diffusers": diffusers.__version__,
        "images_per_second": batch_size / seconds, "median_step_seconds": seconds, "peak_memory_gib": peak,
        "settings": {
            "batch_size": batch_size, "resolution": resolution, "latent_size": resolution // 8, "steps_timed": steps,
            "warmup_steps": 3, "mixed_precision": mixed_precision, "gradient_checkpointing": gradient_checkpointing,
            "lora_rank": method.lora_rank, "lora_alpha": method.lora_alpha, "lora_target_modules": method.lora_target_modules,
            "guidance_scale_range": [method.guidance_scale_min, method.guidance_scale_max], "num_ddim_timesteps": method.num_ddim_timesteps,
            **_parameter_counts(engine.method.unet),
        },
    }
    _write(result, Path(output))
    return result


def _write(result: dict, output: Path) -> None:
    from distill_diffusion.bench.gpu import write_results

    s = result["settings"]
    note = (f"{result['benchmark']}; {s['unet_parameters'] / 1e6:.1f}M frozen UNet parameters, {s['trainable_parameters'] / 1e6:.2f}M "
            f"trainable (LoRA, alpha {s['lora_alpha']}); guidance_scale in [{s['guidance_scale_range'][0]}, {s['guidance_scale_range'][1]}].")
    write_results(result, output, {"LoRA rank": str(s["lora_rank"])}, note)
