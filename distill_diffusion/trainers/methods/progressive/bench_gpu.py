"""SD 1.5-sized progressive-distillation training benchmark on a CUDA GPU (``distill-diffusion bench progressive-gpu``):
images/s and peak memory of a round's step.

The step is a halving round of progressive distillation (Salimans & Ho, arXiv:2202.00512, Alg. 2) on a
w-conditioned student after the guidance stage (Meng et al., arXiv:2210.03142): two forwards of the round's frozen
teacher (the previous student, in the weight dtype), one forward+backward of the fp32 student, AdamW on the whole
UNet, an EMA update, all through the engine; SD 1.5's UNet architecture with random weights
(:mod:`distill_diffusion.bench.gpu`). Torch is imported when it runs (the CLI imports this module to build ``--help``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from distill_diffusion.bench.options import add_gpu_options, run_gpu

HELP = "progressive distillation training images/s and peak memory, SD 1.5 UNet (random weights), CUDA GPU"
NO_GPU = ("the SD 1.5 progressive-distillation benchmark needs a CUDA GPU; run it on a GPU machine "
          "(the CPU benchmark is `distill-diffusion bench progressive`)")


#: Options that make the timed steps the first halving round's: a one-step guidance stage (:func:`past_guidance_stage`
#: ends it) and a round longer than any timing.
FIRST_ROUND: dict[str, Any] = {"steps_per_round": [10**6], "guidance_steps": 1}


def past_guidance_stage(engine: Any) -> None:
    """Move a fresh engine to its first halving round (the teacher is then the random w-conditioned student; a plan
    without a guidance stage starts there already)."""
    if engine.method.plan.stages()[0].name != "guidance":
        return
    engine.method.on_stage_end(0, {})
    engine.state.stage = engine.state.global_step = 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    add_gpu_options(p, "benchmarks/results/progressive_gpu_sd15.json")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    return run_gpu(args, run_sd15_progressive_benchmark)


def run_sd15_progressive_benchmark(batch_size: int = 8, resolution: int = 512, steps: int = 20, mixed_precision: str = "bf16",
                                   gradient_checkpointing: bool = False, output: str | Path = "benchmarks/results/progressive_gpu_sd15.json",
                                   unet_config: dict[str, Any] | None = None, device: str | None = None) -> dict:
    """Time ``steps`` engine steps of the first halving round (64 → 32) after 3 warm-up steps; print and write results.

    ``device=None`` needs CUDA (a one-line error otherwise, before anything is built); ``device="cpu"`` with a tiny
    ``unet_config`` runs it anywhere, as the tests do.
    """
    from distill_diffusion.bench import gpu

    options = {"start_steps": 64, "target_steps": 32, **FIRST_ROUND}
    result, engine = gpu.time_method_step("progressive", options, "progressive distillation halving-round step", NO_GPU, batch_size=batch_size,
                                          resolution=resolution, steps=steps, mixed_precision=mixed_precision,
                                          gradient_checkpointing=gradient_checkpointing, unet_config=unet_config, device=device,
                                          prepare=past_guidance_stage)
    result["settings"].update(student_parameters=sum(p.numel() for p in engine.method.unet.parameters()),
                              round="64 → 32 steps, w-conditioned student")
    _write(result, Path(output))
    return result


def _write(result: dict, output: Path) -> None:
    from distill_diffusion.bench import gpu

    s = result["settings"]
    gpu.write_results(result, output, {}, f"{result['benchmark']}; {s['student_parameters'] / 1e6:.1f}M trainable student "
                      f"parameters ({s['round']}).")
