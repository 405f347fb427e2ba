"""SD 1.4-sized BK-SDM benchmark on a CUDA GPU (``distill-diffusion bench bksdm-gpu``): training images/s and peak
memory, and sampling latency of teacher vs student.

The training step is BK-SDM's (Kim et al., arXiv:2305.15798, eq. 4) through the engine: one forward of the frozen
teacher (weight dtype) with its stage features hooked, one forward+backward of the fp32 student, AdamW, EMA. The
latency is one UNet evaluation of a classifier-free-guided sampling step (batch 2: cond + uncond) in the weight
dtype, teacher against student. SD 1.4's UNet architecture (the same as SD 1.5's) with random weights
(:mod:`distill_diffusion.bench.gpu`): speed and memory depend on shapes and dtypes, not on weight values. Torch is
imported when it runs (the CLI imports this module to build ``--help``).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill_diffusion.bench.options import add_gpu_options

if TYPE_CHECKING:
    import torch

HELP = "BK-SDM-Small training images/s, peak memory and teacher-vs-student sampling latency, SD 1.4 UNet (random weights), CUDA GPU"
NO_GPU = ("the SD 1.4 BK-SDM benchmark needs a CUDA GPU; run it on a GPU machine (the CPU benchmark is `distill-diffusion bench bksdm`)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    add_gpu_options(p, "benchmarks/results/bksdm_gpu_sd14.json")
    p.add_argument("--variant", choices=("base", "small", "tiny"), default="small")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    run_sd14_bksdm_benchmark(batch_size=args.batch_size, resolution=args.resolution, steps=args.steps,
                             mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
                             output=args.output, variant=args.variant)  # fmt: skip
    return 0


def sampling_latency(unet: Any, latent_size: int, dtype: torch.dtype, dev: torch.device, steps: int) -> float:
    """Median seconds of one guided sampling step's UNet call (batch 2) in ``dtype``, without gradients."""
    import torch

    from distill_diffusion.bench.timing import median_seconds

    dim = unet.config.cross_attention_dim
    with torch.no_grad():
        z = torch.randn(2, unet.config.in_channels, latent_size, latent_size, device=dev, dtype=dtype)
        c = torch.randn(2, 77, dim, device=dev, dtype=dtype)
        t = torch.tensor([500, 500], device=dev)

        def call() -> None:
            unet(z, t, encoder_hidden_states=c)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        return median_seconds(call, steps)


def run_sd14_bksdm_benchmark(batch_size: int = 8, resolution: int = 512, steps: int = 20, mixed_precision: str = "bf16",
                             gradient_checkpointing: bool = False, output: str | Path = "benchmarks/results/bksdm_gpu_sd14.json",
                             unet_config: dict[str, Any] | None = None, device: str | None = None, variant: str = "small") -> dict:
    """Time ``steps`` engine steps after 3 warm-ups, then the sampling latency of both UNets; print and write results.

    ``device=None`` needs CUDA (a one-line error otherwise, before anything is built); ``device="cpu"`` with a tiny
    ``unet_config`` runs it anywhere, as the tests do.
    """
    import torch

    from distill_diffusion.bench import gpu
    from distill_diffusion.trainers.engine.build import weight_dtype

    result, engine = gpu.time_method_step("bksdm", {"variant": variant}, f"BK-SDM-{variant} training step", NO_GPU, batch_size=batch_size,
                                          resolution=resolution, steps=steps, mixed_precision=mixed_precision,
                                          gradient_checkpointing=gradient_checkpointing, unet_config=unet_config, device=device,
                                          architecture="SD 1.4")
    method, dtype, latent, dev = engine.method, weight_dtype(mixed_precision), resolution // 8, engine.method.teacher.device
    del engine
    student = torch.nn.Module.to(copy.deepcopy(method.unet).eval(), dtype=dtype)
    latency = {"teacher": sampling_latency(method.teacher, latent, dtype, dev, steps), "student": sampling_latency(student, latent, dtype, dev, steps)}
    teacher_params, student_params = method.parameter_counts()
    result.update(sampling_step_ms={k: v * 1e3 for k, v in latency.items()}, sampling_speedup=latency["teacher"] / latency["student"])
    result["settings"].update(variant=variant, teacher_parameters=teacher_params, student_parameters=student_params)
    extra = {"teacher step ms (CFG)": f"{result['sampling_step_ms']['teacher']:.1f}",
             "student step ms (CFG)": f"{result['sampling_step_ms']['student']:.1f}"}
    gpu.write_results(result, Path(output), extra, f"{result['benchmark']}; student {student_params / 1e6:.1f}M parameters against "
                      f"{teacher_params / 1e6:.1f}M; sampling: one guided UNet call (batch 2) in {dtype}, "
                      f"{result['sampling_speedup']:.2f}x faster.")
    return result
