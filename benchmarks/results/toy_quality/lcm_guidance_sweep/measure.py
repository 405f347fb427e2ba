"""The toy LCM-LoRA's two knobs and its solver grid, on the shipped toy world, against the shipped teacher rows.

Trains (or reuses) two variants of ``tiny/lcm_lora`` through the CLI: distilled at guidance 3 instead of 2
(``w3``), and on the first toy world's coarse solver grid, N = 8 skipping steps instead of SD's 50 (``n8``); then
scores them beside the shipped LoRA (``bench methods``' ``lcm-lora`` run, sampled at guidance 1 to 2.5) and the
teacher's 50-step guidance sweep, N = 1024 images per row, the same prompts and seeds as every toy table. Rows
already measured in OUTPUT_DIR (and the shipped teacher rows) are reused.
Run from the project root after ``distill-diffusion bench methods --run_dir toy_runs/methods``:

    python benchmarks/results/toy_quality/lcm_guidance_sweep/measure.py OUTPUT_DIR RUN_DIR
"""

import sys
from pathlib import Path

from distill_diffusion.bench.quality import run_quality_benchmark, toy_bench_settings
from distill_diffusion.bench.specs import PipelineSpec
from distill_diffusion.cli import main
from distill_diffusion.toy.build import ensure_toy_world

VARIANTS = {
    "w3": ["--method.guidance_scale_min", "3", "--method.guidance_scale_max", "3"],
    "n8": ["--method.num_ddim_timesteps", "8"],
}

out, runs = Path(sys.argv[1]), Path(sys.argv[2])
world = ensure_toy_world()
for name, options in VARIANTS.items():
    if not (runs / name / "pytorch_lora_weights.safetensors").is_file():
        code = main(["train", "lcm", "--config", "tiny/lcm_lora", "--model.pretrained_model_name_or_path", str(world.teacher),
                     "--data.train_data_dir", str(world.data), "--train.output_dir", str(runs / name),
                     "--train.resume_from_checkpoint", "latest", *options])  # fmt: skip
        assert code == 0, f"training {name} failed"
shipped, *others = Path("toy_runs/methods").glob("lcm-lora-*")
assert not others, "more than one lcm-lora run in toy_runs/methods: keep the one bench methods trained last"
teacher = str(world.teacher)
specs = [
    PipelineSpec("teacher", teacher, sampler="ddim", guidance_scale=(1.5, 2.0, 3.0, 4.5), steps=(50,)),
    PipelineSpec("lcm-lora", teacher, lora=str(shipped), sampler="lcm", guidance_scale=(1.0, 1.5, 2.0, 2.5), steps=(1, 2, 4, 8)),
    PipelineSpec("lcm-lora-w3", teacher, lora=str(runs / "w3"), sampler="lcm", guidance_scale=(1.0, 1.5), steps=(4,)),
    PipelineSpec("lcm-lora-n8", teacher, lora=str(runs / "n8"), sampler="lcm", guidance_scale=1.0, steps=(1, 2, 4, 8)),
]
result = run_quality_benchmark(specs, out, toy_bench_settings(world, 1024))
for row in result["rows"]:
    print(row["pipeline"], row["steps"], row["guidance_scale"], round(row["fid"], 3), round(row["clip_score"], 1),
          round(row["acc_shape"], 3), round(row["acc_colour"], 3), round(row["acc_background"], 3))
