"""SD 1.4-sized BK-SDM benchmark on a CUDA GPU: training images/s and peak memory, and sampling latency of teacher vs student.

The training step is BK-SDM's (Kim et al., arXiv:2305.15798, eq. 4) through the engine: one forward of the frozen
teacher (weight dtype) with its stage features hooked, one forward+backward of the fp32 student, AdamW, EMA. The
latency is one UNet evaluation of a classifier-free-guided sampling step (batch 2: cond + uncond) in the weight
dtype, teacher against student. SD 1.4's UNet architecture (the same as SD 1.5's) with random weights
(:mod:`distill_diffusion.bench.gpu`): speed and memory depend on shapes and dtypes, not on weight values.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import torch

from distill_diffusion.bench import gpu
from distill_diffusion.bench.engine import median_seconds

NO_GPU = ("the SD 1.4 BK-SDM benchmark needs a CUDA GPU; run it on a GPU machine (the CPU benchmark is `distill-diffusion bench bksdm`)")


@torch.no_grad()
def sampling_latency(unet: Any, latent_size: int, dtype: torch.dtype, dev: torch.device, steps: int) -> float:
    """Median seconds of one guided sampling step's UNet call (batch 2) in ``dtype``."""
    dim = unet.config.cross_attention_dim
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
    import diffusers

    from distill_diffusion.trainers.engine.build import weight_dtype

    config = dict(unet_config or gpu.SD15_UNET_CONFIG)
    dev = gpu.check_args(device, batch_size, resolution, steps, mixed_precision, config, NO_GPU)
    with tempfile.TemporaryDirectory() as tmp:
        engine, _ = gpu.sd_engine(Path(tmp), "bksdm", {"variant": variant}, batch_size, resolution, mixed_precision,
                                  gradient_checkpointing, config, dev)
        seconds, peak = gpu.time_steps(engine, dev, steps)
    method, dtype, latent = engine.method, weight_dtype(mixed_precision), resolution // 8
    del engine
    student = torch.nn.Module.to(copy.deepcopy(method.unet).eval(), dtype=dtype)
    latency = {"teacher": sampling_latency(method.teacher, latent, dtype, dev, steps), "student": sampling_latency(student, latent, dtype, dev, steps)}
    teacher_params, student_params = method.parameter_counts()
    result = {
        "benchmark": f"BK-SDM-{variant} training step, " + ("SD 1.4 UNet architecture" if unet_config is None else "custom UNet config")
                     + " (random weights)",
        "device": gpu.device_name(dev), "torch": torch.__version__, "diffusers": diffusers.__version__,
        "images_per_second": batch_size / seconds, "median_step_seconds": seconds, "peak_memory_gib": peak,
        "sampling_step_ms": {k: v * 1e3 for k, v in latency.items()}, "sampling_speedup": latency["teacher"] / latency["student"],
        "settings": {
            "batch_size": batch_size, "resolution": resolution, "latent_size": latent, "steps_timed": steps, "warmup_steps": 3,
            "mixed_precision": mixed_precision, "gradient_checkpointing": gradient_checkpointing, "variant": variant,
            "teacher_parameters": teacher_params, "student_parameters": student_params,
        },
    }
    extra = {"teacher step ms (CFG)": f"{result['sampling_step_ms']['teacher']:.1f}",
             "student step ms (CFG)": f"{result['sampling_step_ms']['student']:.1f}"}
    gpu.write_results(result, Path(output), extra, f"{result['benchmark']}; student {student_params / 1e6:.1f}M parameters against "
                      f"{teacher_params / 1e6:.1f}M; sampling: one guided UNet call (batch 2) in {dtype}, "
                      f"{result['sampling_speedup']:.2f}x faster.")
    return result
