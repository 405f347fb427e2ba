"""Is the toy LCM-LoRA's 4-step gap to trailing DDIM the sampler's? The LoRA ``bench methods`` trained
(``tiny/lcm_lora``, in RUN_DIR) sampled two ways, N = 1024 images per row, the same prompts and seeds as every toy
table: LCMScheduler (multistep consistency sampling, fresh noise at every step; Luo et al., arXiv:2310.04378, Alg. 1)
and DDIM with trailing spacing (deterministic: each step re-noises with the model's own ε̂, Song et al. eq. 12 with
η = 0; TCD's γ = 0, Zheng et al., arXiv:2402.19159, §4.4). Rows already measured in OUTPUT_DIR are reused.

    python benchmarks/results/toy_quality/lcm_deterministic/measure.py OUTPUT_DIR RUN_DIR
"""

import sys
from pathlib import Path

from distill_diffusion.bench.quality import run_quality_benchmark, toy_bench_settings
from distill_diffusion.bench.specs import PipelineSpec
from distill_diffusion.toy.build import ensure_toy_world

out, run = Path(sys.argv[1]), Path(sys.argv[2])
world = ensure_toy_world()
teacher = str(world.teacher)
specs = [PipelineSpec("lcm-lora", teacher, lora=str(run), sampler="lcm", guidance_scale=1.0, steps=(4,)),
         PipelineSpec("lcm-lora-ddim-trailing", teacher, lora=str(run), sampler="ddim-trailing", guidance_scale=1.0, steps=(2, 4, 8))]
result = run_quality_benchmark(specs, out, toy_bench_settings(world, 1024))
for row in result["rows"]:
    print(row["pipeline"], row["steps"], round(row["fid"], 3), round(row["clip_score"], 1), round(row["acc_shape"], 3),
          round(row["acc_colour"], 3), round(row["acc_background"], 3))
