"""Does the toy LCM-LoRA's 4-step row lose to trailing DDIM because 500 steps are too few? ``tiny/lcm_lora`` trained
4x longer (2000 steps, everything else the shipped config's, through ``train lcm``), scored at 1, 2, 4 and 8 steps
against the shipped teacher rows, N = 1024 images per row, the same prompts and seeds as every toy table. Rows
already measured in OUTPUT_DIR are reused.

    python benchmarks/results/toy_quality/lcm_training_length/measure.py OUTPUT_DIR RUN_DIR
"""

import sys
from pathlib import Path

from distill_diffusion.bench.quality import run_quality_benchmark, toy_bench_settings
from distill_diffusion.bench.specs import PipelineSpec
from distill_diffusion.cli import main
from distill_diffusion.toy.build import ensure_toy_world

STEPS = 2000
out, run = Path(sys.argv[1]), Path(sys.argv[2])
world = ensure_toy_world()
if not (run / "pytorch_lora_weights.safetensors").is_file():
    code = main(["train", "lcm", "--config", "tiny/lcm_lora", "--model.pretrained_model_name_or_path", str(world.teacher),
                 "--data.train_data_dir", str(world.data), "--train.output_dir", str(run),
                 "--train.resume_from_checkpoint", "latest", "--train.max_train_steps", str(STEPS)])  # fmt: skip
    assert code == 0, "training failed"
teacher = str(world.teacher)
specs = [PipelineSpec(f"lcm-lora-{STEPS}", teacher, lora=str(run), sampler="lcm", guidance_scale=1.0, steps=(1, 2, 4, 8))]
result = run_quality_benchmark(specs, out, toy_bench_settings(world, 1024))
for row in result["rows"]:
    print(row["pipeline"], row["steps"], row["guidance_scale"], round(row["fid"], 3), round(row["clip_score"], 1),
          round(row["acc_shape"], 3), round(row["acc_colour"], 3), round(row["acc_background"], 3))
