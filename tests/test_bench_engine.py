"""The engine-overhead benchmark runs and writes its results files (timings are not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

from distill_diffusion.bench.engine import run_engine_benchmark


def test_engine_benchmark_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "engine.json"
    result = run_engine_benchmark(steps=2, batch_sizes=(2,), output=out)
    saved = json.loads(out.read_text())
    assert saved["rows"][0]["batch_size"] == 2
    assert saved["rows"][0]["ratio_vs_forward_backward"] > 0
    assert "engine / fwd+bwd" in out.with_suffix(".md").read_text()
    assert result["target_ratio"] == 1.10


def test_lcm_benchmark_writes_results(tmp_path: Path) -> None:
    from distill_diffusion.trainers.methods.lcm.bench_speed import run_lcm_benchmark

    out = tmp_path / "lcm.json"
    result = run_lcm_benchmark(steps=2, batch_sizes=(2,), repeats=1, output=out)
    saved = json.loads(out.read_text())
    row = saved["training"][0]
    assert row["sum_of_passes"] == sum(v for k, v in row["seconds"].items() if not k.startswith("engine"))
    assert set(saved["generation_seconds_per_image"]) == {"LCM 4 steps", "teacher DDIM 50 steps"}
    assert result["latency_ratio"] > 0 and "4-step / 50-step" in out.with_suffix(".md").read_text()
