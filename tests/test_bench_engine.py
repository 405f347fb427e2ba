"""The engine-overhead benchmark runs and writes its results files (timings are not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

from distill_diffusion.trainers.bench_engine import run_engine_benchmark


def test_engine_benchmark_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "engine.json"
    result = run_engine_benchmark(steps=2, batch_sizes=(2,), output=out)
    saved = json.loads(out.read_text())
    assert saved["rows"][0]["batch_size"] == 2
    assert saved["rows"][0]["ratio_vs_forward_backward"] > 0
    assert "engine / fwd+bwd" in out.with_suffix(".md").read_text()
    assert result["target_ratio"] == 1.10
