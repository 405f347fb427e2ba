"""``distill-diffusion quickstart``: the whole story on the embedded toy world, on a CPU.

1. Build (or reuse) the trained toy world: teacher, tiny CLIP, data (``toy build``).
2. Distil an LCM-LoRA from the toy teacher through the engine (``train lcm``, resumable).
3. Benchmark FID, CLIP score and prompt accuracy (the toy classifier's shape/colour/background) against step
   count (1024 images per row by default: FID is biased upward at small N, enough to blur the comparisons): the
   teacher under DDIM at 1, 2, 4, 8, 25, 50 steps and under LCMScheduler at 1, 2, 4, 8, and the LCM-LoRA
   (LCMScheduler) at 1, 2, 4, 8, same prompts and seeds; print the table and the paths of the plot and the grids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill_diffusion.toy.paths import TOY_GUIDANCE

#: The toy LCM-LoRA recipe: a config shipped in distill_diffusion/configs, loaded by name.
LCM_CONFIG = "tiny/lcm_lora"
#: Teacher guidance for the benchmark rows: the toy world's reference scale (``toy.paths.TOY_GUIDANCE``, 2.0), the
#: scale the LoRA distils (guidance_scale_min = max = 2.0); 3.0 scores the same within noise
#: (benchmarks/results/toy_quality/lcm_recipe_ablation.md).
TEACHER_GUIDANCE = TOY_GUIDANCE


def distil_lcm_lora(teacher: Path, data: Path, output_dir: Path, max_train_steps: int | None = None,
                    callbacks: list[Any] | None = None) -> Path:
    """Train (or resume, or reuse when finished) the toy LCM-LoRA; returns the export folder.

    The recipe is the shipped ``tiny/lcm_lora`` config; only the paths, resuming and the step count change
    (``callbacks``: engine callbacks, e.g. a timer).
    """
    from distill_diffusion.config import build_run_config, load_config
    from distill_diffusion.trainers.engine.build import train
    from distill_diffusion.trainers.methods.lcm import LCM

    if (output_dir / "pytorch_lora_weights.safetensors").is_file():
        return output_dir
    config = load_config(LCM_CONFIG)
    config["model"]["pretrained_model_name_or_path"] = str(teacher)
    config["data"]["train_data_dir"] = str(data)
    config["train"].update(output_dir=str(output_dir), resume_from_checkpoint="latest")
    if max_train_steps is not None:
        config["train"]["max_train_steps"] = max_train_steps
    return train(build_run_config("lcm", LCM, config), callbacks=callbacks or ())


def run_quickstart(output_dir: str | Path = "quickstart", cache_dir: str | Path | None = None,
                   num_images: int = 1024, lcm_steps: int | None = None, budget: str = "full") -> dict[str, Any]:
    """Steps 1-3 above; returns the benchmark result (rows, meta, files)."""
    from distill_diffusion.bench.quality import PipelineSpec, run_quality_benchmark, toy_bench_settings
    from distill_diffusion.toy.build import ensure_toy_world

    out = Path(output_dir)
    print("[1/3] toy world (built once, then cached)")
    world = ensure_toy_world(cache_dir=cache_dir, budget=budget)
    print(f"[2/3] LCM-LoRA distillation of the toy teacher -> {out / 'lcm_lora'}")
    lora = distil_lcm_lora(world.teacher, world.data, out / "lcm_lora", lcm_steps)
    print("[3/3] FID and CLIP score vs steps (same prompts and seeds for every row)")
    settings = toy_bench_settings(world, num_images, cache_dir)
    specs = [
        PipelineSpec("teacher", str(world.teacher), sampler="ddim", guidance_scale=TEACHER_GUIDANCE, steps=(1, 2, 4, 8, 25, 50)),
        PipelineSpec("teacher-lcm-sched", str(world.teacher), sampler="lcm", guidance_scale=TEACHER_GUIDANCE, steps=(1, 2, 4, 8)),
        PipelineSpec("lcm-lora", str(world.teacher), lora=str(lora), sampler="lcm", guidance_scale=1.0, steps=(1, 2, 4, 8)),
    ]
    result = run_quality_benchmark(specs, out / "bench", settings)
    files = result.get("files", {})
    if "markdown" in files:
        print(Path(files["markdown"]).read_text())
    for name, path in files.items():
        print(f"{name}: {path}")
    return result
