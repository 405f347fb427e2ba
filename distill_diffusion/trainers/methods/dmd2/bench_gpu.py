"""SD 1.5-sized DMD2 training benchmark on a CUDA GPU (``distill-diffusion bench dmd2-gpu``): images/s and peak memory
of a generator + fake-score cycle, one-base LoRA mode against full mode.

The cycle is DMD2's (Yin et al., arXiv:2405.14867, §4) through the engine: ``fake_updates`` steps, the first with a
generator update (backward simulation, the generator's forward, the guided real score and the fake score at its noised
sample, the classifier on the fake score's mid block, backward to the generator), every one with a fake-score update
(fresh samples when the generator did not run, denoising and classifier losses). One-base LoRA mode holds one UNet
(the frozen teacher with a rank-64 generator adapter and a fake-score adapter); full mode an fp32 generator and an
fp32 fake score beside the frozen teacher. SD 1.5's UNet architecture with random weights
(:mod:`distill_diffusion.bench.gpu`): speed and memory depend on shapes and dtypes, not on weight values; the
meta-device estimate of the same comparison is ``bench lora-memory --method dmd2``. Torch is imported when it runs
(the CLI imports this module to build ``--help``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from distill_diffusion.bench.options import add_gpu_options, run_gpu

HELP = "DMD2 generator + fake-score cycle images/s and peak memory, one-base LoRA vs full mode, SD 1.5 UNet (random weights), CUDA GPU"
NO_GPU = "the SD 1.5 DMD2 benchmark needs a CUDA GPU; run it on a GPU machine (the CPU benchmark is `distill-diffusion bench dmd2`)"
#: DMD2's options here: rank-64 adapters, 5 fake-score updates per generator update (DMD2's SDXL setting), its head.
OPTIONS = {"lora_rank": 64, "lora_alpha": 64, "head_width": 128, "fake_updates": 5}
#: ``method.lora`` of each mode, in table order.
MODES = {"one-base LoRA": True, "full": False}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    add_gpu_options(p, "benchmarks/results/dmd2_gpu_sd15.json", unit=f"cycles of {OPTIONS['fake_updates']} engine steps")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    return run_gpu(args, run_sd15_dmd2_benchmark)


def time_mode(lora: bool, **kwargs: Any) -> dict[str, Any]:
    """One mode's :func:`~distill_diffusion.bench.gpu.time_method_step` result with its trainable parameter counts; its
    engine is freed before returning, so the next mode's peak memory is its own."""
    import gc

    import torch

    from distill_diffusion.bench import gpu

    result, engine = gpu.time_method_step("dmd2", {**OPTIONS, "lora": lora}, "DMD2 generator + fake-score cycle", NO_GPU,
                                          cycle=OPTIONS["fake_updates"], **kwargs)
    phases = {p.name: p for p in engine.method.phases()}
    result["settings"].update(**OPTIONS, lora=lora, **{f"{name}_parameters": sum(p.numel() for p in engine.method.trainable_parameters(phase))
                                                       for name, phase in phases.items()})
    del engine
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def run_sd15_dmd2_benchmark(batch_size: int = 8, resolution: int = 512, steps: int = 20, mixed_precision: str = "bf16",
                            gradient_checkpointing: bool = False, output: str | Path = "benchmarks/results/dmd2_gpu_sd15.json",
                            unet_config: dict[str, Any] | None = None, device: str | None = None) -> dict:
    """Time ``steps`` cycles after 3 warm-up cycles in each mode; print and write results.

    ``device=None`` needs CUDA (a one-line error otherwise, before anything is built); ``device="cpu"`` with a tiny
    ``unet_config`` runs it anywhere, as the tests do.
    """
    from distill_diffusion.bench import gpu

    kwargs = {"batch_size": batch_size, "resolution": resolution, "steps": steps, "mixed_precision": mixed_precision,
              "gradient_checkpointing": gradient_checkpointing, "unet_config": unet_config, "device": device}
    modes = {mode: time_mode(lora, **kwargs) for mode, lora in MODES.items()}
    one_base, full = modes.values()
    result = {"benchmark": one_base["benchmark"] + ", one-base LoRA mode vs full mode", "modes": modes,
              "peak_memory_one_base_over_full": (one_base["peak_memory_gib"] / full["peak_memory_gib"]
                                                 if full["peak_memory_gib"] else None)}
    rows = [(r, {"mode": mode, "trainable M (generator / fake score + head)":
                 f"{r['settings']['generator_parameters'] / 1e6:.1f} / {r['settings']['fake_score_parameters'] / 1e6:.1f}"})
            for mode, r in modes.items()]
    ratio = result["peak_memory_one_base_over_full"]
    gpu.write_results(result, Path(output), {}, f"{result['benchmark']}; {OPTIONS['fake_updates']} fake-score updates per generator "
                      "update" + (f"; peak memory one-base / full {ratio:.2f}." if ratio else "."), rows=rows)
    return result
