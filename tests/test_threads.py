"""The CPU thread policy (OMP_WAIT_POLICY before torch loads) and the `bench threads` benchmark's pieces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from distill_diffusion import threads
from distill_diffusion.bench import threads as bench
from distill_diffusion.cli import build_parser


@pytest.mark.parametrize("env, expected", [
    ({}, {"OMP_WAIT_POLICY": "PASSIVE"}),
    ({"OMP_NUM_THREADS": "2"}, {"OMP_WAIT_POLICY": "PASSIVE"}),  # a chosen count is kept; waiting still sleeps
    ({"OMP_WAIT_POLICY": "ACTIVE"}, {}),
    ({"GOMP_SPINCOUNT": "1000"}, {}),
])
def test_thread_settings(env: dict[str, str], expected: dict[str, str]) -> None:
    assert threads.thread_settings(env) == expected


def test_configure_sets_the_environment_before_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    env: dict[str, str] = {"PATH": "/bin"}
    monkeypatch.setattr(os, "environ", env)
    monkeypatch.delitem(sys.modules, "torch")
    assert threads.configure_cpu_threads() == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert env == {"PATH": "/bin", "OMP_WAIT_POLICY": "PASSIVE"}


def test_configure_leaves_a_process_that_imported_torch_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    env: dict[str, str] = {}
    monkeypatch.setattr(os, "environ", env)
    assert "torch" in sys.modules  # the test session imported it
    assert threads.configure_cpu_threads() == {} and env == {}


def test_the_cli_reaches_main_without_importing_torch() -> None:
    # the policy only works if nothing imported torch before main() applies it
    code = "import sys; from distill_diffusion.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr[-2000:]


def test_child_env_applies_only_the_variant() -> None:
    caller = {"PATH": "/bin", "OMP_NUM_THREADS": "7", "MKL_NUM_THREADS": "7", "GOMP_SPINCOUNT": "5"}
    fixed = bench.child_env(bench.Variant("2 threads, PASSIVE", 2, "PASSIVE"), caller)
    assert fixed == {"PATH": "/bin", "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}
    assert bench.child_env(bench.Variant("policy", None, None), caller) == {"PATH": "/bin"}


def test_busy_neighbour_is_killed_after() -> None:
    with bench.busy_neighbour(False) as none:
        assert none is None
    with bench.busy_neighbour(True) as proc:
        assert proc is not None and proc.poll() is None
    assert proc.poll() is not None


def test_vae_steps_are_timed() -> None:
    times = bench.time_vae_steps(steps=3, max_seconds=0.0, batch_size=2)
    assert len(times) == 1 and times[0] > 0  # past max_seconds after the first timed step


def test_benchmark_table_and_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    speed = {"1 thread": (0.3, 0.35), "2 threads": (0.2, 4.0), "2 threads, PASSIVE": (0.2, 0.3)}
    neighbours: list[bool] = []

    def fake_child(variant: bench.Variant, steps: int, max_seconds: float) -> dict[str, Any]:
        busy = neighbours[-1]
        seconds = speed.get(variant.label, (0.2, 0.3))[busy]
        return {"seconds_per_step": seconds, "step_seconds": [seconds], "threads": variant.threads or 2,
                "wait_policy": variant.wait_policy or "default", "load_1min_before": 0.0}

    class FakeNeighbour:
        def __init__(self, enabled: bool) -> None:
            neighbours.append(enabled)

        def __enter__(self) -> None:
            return None

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(bench, "run_child", fake_child)
    monkeypatch.setattr(bench, "busy_neighbour", FakeNeighbour)
    monkeypatch.setattr(bench, "usable_cores", lambda: 2)
    result = bench.run_threads_benchmark(steps=2, max_seconds=1.0, output=tmp_path / "t.json")
    rows = {row["variant"]: row for row in result["rows"]}
    assert list(rows) == [v.label for v in bench.variants(2)]
    assert rows["2 threads"]["busy_over_best_idle"] == pytest.approx(20.0)
    assert rows["1 thread"]["busy_over_idle"] == pytest.approx(0.35 / 0.3)
    assert json.loads((tmp_path / "t.json").read_text())["rows"][0]["variant"] == "1 thread"
    table = (tmp_path / "t.md").read_text()
    assert "| 2 threads | 2 / 2 | default | 0.200 | 4.000 | 20.00x | **20.00x** |" in table


def test_bench_threads_is_registered() -> None:
    args = build_parser().parse_args(["bench", "threads", "--steps", "2", "--output", "x.json"])
    assert args.steps == 2 and args.output == "x.json" and args.max_seconds == 20.0
