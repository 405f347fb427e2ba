"""Resume tiny/ladd's step-condition run (../ladd_step_condition) from 3000 to 4500 steps and score it at 1/2/4 steps; the teacher rows are the committed ones of the same build, N and seeds (../ladd_issue_fixes). Run against commit 50f3a50 (train_students then took the world). Usage: python measure.py RUN_DIR OUT_DIR"""
import json
import sys
import time
from pathlib import Path

from distill_diffusion.bench.adversarial_toy import STUDENT_STEPS, TOY_GUIDANCE, bar_lines, train_students
from distill_diffusion.bench.quality import PipelineSpec, run_quality_benchmark, toy_bench_settings
from distill_diffusion.bench.step_bars import step_bar_lines
from distill_diffusion.toy.build import ensure_toy_world

run_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
world = ensure_toy_world()
t = time.time()
seconds = train_students(world, run_dir, {"ladd": 4500}, ["ladd"])
spec = PipelineSpec("ladd", str(world.teacher), lora=str(run_dir / "ladd"), sampler="ladd", guidance_scale=1.0, steps=STUDENT_STEPS)
result = run_quality_benchmark([spec], out, toy_bench_settings(world, 1024, None))
old = json.loads(Path("/work/main/benchmarks/results/toy_quality/adversarial/ladd_issue_fixes/results.json").read_text())
rows = [r for r in old["rows"] if r["pipeline"] != "ladd"] + result["rows"]
lines = [*bar_lines(rows, TOY_GUIDANCE), "", *step_bar_lines(rows, {"ladd": ["ladd"]})]
(out / "bars.md").write_text("\n".join(lines) + "\n")
(out / "training.json").write_text(json.dumps({"runs": {"ladd": "tiny/ladd resumed 3000 -> 4500"}, "seconds": seconds, "total_minutes": round((time.time() - t) / 60, 1)}, indent=2))
print("\n".join(lines))
