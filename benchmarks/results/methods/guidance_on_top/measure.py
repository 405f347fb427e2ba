"""Guidance on top of each `bench methods` student at sampling (the knob that needs no retraining): FID / CLIP / shape.

Run from the project root after `distill-diffusion bench methods --run_dir toy_runs/methods` (each student is found by
its run folder's name); rows already measured in OUTPUT_DIR are reused:

    python benchmarks/results/methods/guidance_on_top/measure.py OUTPUT_DIR
"""
import sys
from pathlib import Path

from distill_diffusion.bench.quality import run_quality_benchmark, toy_bench_settings
from distill_diffusion.bench.specs import PipelineSpec
from distill_diffusion.toy.build import ensure_toy_world

world = ensure_toy_world()
info = {d.name.rsplit("-", 1)[0]: {"run": str(d)} for d in Path("toy_runs/methods").iterdir() if d.is_dir() and d.name != "dinov2"}
teacher = str(world.teacher)
specs = []
for name in ("ladd", "add", "dmd2"):
    specs.append(PipelineSpec(name, teacher, lora=info[name]["run"], sampler="ladd", guidance_scale=(1.0, 1.5, 3.0), steps=(1, 4)))
specs.append(PipelineSpec("lcm-full", info["lcm-full"]["run"], sampler="lcm", guidance_scale=(1.5, 2.0, 3.0), steps=(1, 4)))
prog = info["progressive"]["run"]
for steps, folder in ((4, "round-4-4-steps"), (1, "round-6-1-steps")):
    specs.append(PipelineSpec(f"progressive-{steps}", f"{prog}/{folder}", sampler="progressive", guidance_scale=(1.0, 1.25, 1.5), steps=(steps,)))
r = run_quality_benchmark(specs, sys.argv[1], toy_bench_settings(world, 1024))
for row in r["rows"]:
    print(row["pipeline"], row["steps"], row["guidance_scale"], round(row["fid"], 3), round(row["clip_score"], 1), round(row["acc_shape"], 3))
