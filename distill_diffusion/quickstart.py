"""``distill-diffusion quickstart``: the whole story on the embedded toy world, on a CPU.

1. Install (or reuse) the trained toy world: its shipped weights and the data rendered from its seed, seconds
   (``toy build``; ``toy.shipped``).
2. Distil an LCM-LoRA from the toy teacher through the engine (``train lcm``, resumable).
3. Benchmark FID, CLIP score and prompt accuracy (the toy classifier's shape/colour/background) against step
   count (1024 images per row by default: FID is biased upward at small N, enough to blur the comparisons): the
   teacher under DDIM at 1, 2, 4, 8, 25, 50 steps and under trailing DDIM (its best training-free sampler at few
   steps, ``bench methods``) at 1, 2, 4, 8, and the LCM-LoRA (LCMScheduler) at 1, 2, 4, 8, same prompts and seeds;
   print the table and the paths of the plot and the grids.

The teacher's rows are the toy world's reference rows (:data:`~distill_diffusion.toy.shipped.REFERENCE_ROWS`, measured
by ``bench methods`` on the shipped world, about 7 of the 8 CPU-minutes of the table): a row whose key matches (the same
teacher files, sampler, steps, guidance, prompts, seeds, N and feature network; :mod:`~distill_diffusion.bench.row_cache`)
is read from there instead of generated, and the table says which. ``fresh`` measures every row here.

``--sdxl`` runs the same three steps on the toy SDXL teacher (``toy build --sdxl``) with ``tiny/lcm_lora_xl``: the
same table, in ``bench_xl/`` beside the LoRA in ``lcm_lora_xl/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill_diffusion.toy.paths import TOY_GUIDANCE

#: The toy LCM-LoRA recipe: a config shipped in distill_diffusion/configs, loaded by name (``tiny/lcm_lora_xl`` for the
#: SDXL teacher, ``ToyTeacher.config``).
LCM_CONFIG = "tiny/lcm_lora"
#: Teacher guidance for the benchmark rows: the toy world's reference scale (``toy.paths.TOY_GUIDANCE``, 2.0), the
#: scale the LoRA distils (guidance_scale_min = max = 2.0; distilling 3.0 costs FID for little faithfulness:
#: docs/lcm.md).
TEACHER_GUIDANCE = TOY_GUIDANCE


def distil_lcm_lora(teacher: Path, data: Path, output_dir: Path, max_train_steps: int | None = None,
                    callbacks: list[Any] | None = None, config_name: str = LCM_CONFIG) -> Path:
    """Train (or resume, or reuse when finished) the toy LCM-LoRA; returns the export folder.

    The recipe is the shipped ``config_name`` config (``tiny/lcm_lora``; ``tiny/lcm_lora_xl`` for the XL teacher);
    only the paths, resuming and the step count change (``callbacks``: engine callbacks, e.g. a timer).
    """
    from distill_diffusion.config import build_run_config, load_config
    from distill_diffusion.trainers.engine.build import train
    from distill_diffusion.trainers.methods.lcm import LCM

    if (output_dir / "pytorch_lora_weights.safetensors").is_file():
        return output_dir
    config = load_config(config_name)
    config["model"]["pretrained_model_name_or_path"] = str(teacher)
    config["data"]["train_data_dir"] = str(data)
    config["train"].update(output_dir=str(output_dir), resume_from_checkpoint="latest")
    if max_train_steps is not None:
        config["train"]["max_train_steps"] = max_train_steps
    return train(build_run_config("lcm", LCM, config), callbacks=callbacks or ())


def teacher_specs(teacher: str) -> list[Any]:
    """The teacher's rows of the quickstart's table: DDIM at 1-50 steps and trailing DDIM at 1-8, at the toy's guidance."""
    from distill_diffusion.bench.specs import PipelineSpec

    return [PipelineSpec("teacher", teacher, sampler="ddim", guidance_scale=TEACHER_GUIDANCE, steps=(1, 2, 4, 8, 25, 50)),
            PipelineSpec("teacher-trailing", teacher, sampler="ddim-trailing", guidance_scale=TEACHER_GUIDANCE, steps=(1, 2, 4, 8))]


def run_quickstart(output_dir: str | Path = "quickstart", cache_dir: str | Path | None = None,
                   num_images: int = 1024, lcm_steps: int | None = None, budget: str = "full",
                   sdxl: bool = False, fresh: bool = False) -> dict[str, Any]:
    """Steps 1-3 above (on the toy SDXL teacher with ``sdxl``); returns the benchmark result (rows, meta, files)."""
    from distill_diffusion.bench.quality import run_quality_benchmark, toy_bench_settings
    from distill_diffusion.bench.specs import PipelineSpec
    from distill_diffusion.toy.build import ensure_toy_world
    from distill_diffusion.toy.build_xl import ensure_toy_xl_teacher
    from distill_diffusion.toy.paths import ToyTeacher
    from distill_diffusion.toy.shipped import REFERENCE_ROWS

    out = Path(output_dir)
    print("[1/3] toy world" + (" and its SDXL teacher" if sdxl else "") + " (installed or built once, then cached)")
    toy = ToyTeacher((ensure_toy_xl_teacher if sdxl else ensure_toy_world)(cache_dir=cache_dir, budget=budget), sdxl)
    teacher, bench_dir = str(toy.path), toy.folder(out / "bench")
    print(f"[2/3] LCM-LoRA distillation of the toy teacher -> {toy.folder(out / 'lcm_lora')}")
    lora = distil_lcm_lora(toy.path, toy.data, toy.folder(out / "lcm_lora"), lcm_steps, config_name=toy.config(LCM_CONFIG))
    print("[3/3] FID and CLIP score vs steps (same prompts and seeds for every row)")
    settings = toy_bench_settings(toy.world, num_images, cache_dir)
    if fresh:  # measure the teacher's rows here instead of reading the shipped ones
        settings.reference_rows = None
    specs = [*teacher_specs(teacher), PipelineSpec("lcm-lora", teacher, lora=str(lora), sampler="lcm", guidance_scale=1.0, steps=(1, 2, 4, 8))]
    result = run_quality_benchmark(specs, bench_dir, settings)
    files = result.get("files", {})
    if "markdown" in files:
        print(Path(files["markdown"]).read_text())
    reused = [r for r in result["meta"].get("reused_rows", []) if r.endswith("(reference)")]
    if reused:
        print(f"{len(reused)} teacher rows are the toy world's reference rows ({REFERENCE_ROWS.name}, measured by bench methods on "
              "this world); quickstart --fresh measures them here")
    for name, path in files.items():
        print(f"{name}: {path}")
    return result
