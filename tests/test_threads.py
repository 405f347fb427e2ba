"""The CPU thread policy (OMP_WAIT_POLICY before torch loads) and the `bench threads` benchmark's pieces."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from distill_diffusion import threads
from distill_diffusion.bench import threads as bench
from distill_diffusion.cli import build_parser

PROC_STAT = """cpu  300 0 100 600 0 0 0 0 0 0
cpu0 100 0 50 300 0 0 0 0 0 0
cpu1 200 0 50 300 7 0 0 0 0 0
intr 12345
"""


def test_proc_stat_sums_only_this_process_cores() -> None:
    assert threads.parse_proc_stat(PROC_STAT, [0, 1]) == (400, 1007)
    assert threads.parse_proc_stat(PROC_STAT, [1]) == (250, 557)  # iowait is not busy


def test_self_stat_reads_utime_and_stime_after_a_name_with_spaces() -> None:
    fields = ["S"] + ["0"] * 10 + ["30", "12"] + ["0"] * 30  # fields 3.. of the line; utime, stime are 14 and 15
    assert threads.parse_self_stat("4242 (py thon) " + " ".join(fields)) == 42


@pytest.mark.parametrize(("before", "after", "cores", "expected"), [
    ((0, 0, 0), (100, 200, 100), 2, 0.0),      # all the busy time was ours
    ((0, 0, 0), (200, 200, 100), 2, 1.0),      # another process kept one of two cores busy
    ((0, 0, 0), (150, 200, 100), 2, 0.5),
    ((10, 10, 10), (10, 10, 10), 2, 0.0),      # no time passed
    ((0, 0, 0), (50, 200, 100), 2, 0.0),       # never negative
])
def test_others_busy(before: tuple, after: tuple, cores: int, expected: float) -> None:
    assert threads.others_busy(before, after, cores) == pytest.approx(expected)


@pytest.mark.parametrize(("cores", "others", "expected"), [
    (2, 0.0, 2), (2, 0.4, 2), (2, 0.5, 1), (2, 1.0, 1), (2, 2.0, 1), (8, 3.2, 5), (1, 0.0, 1), (4, 9.0, 1),
])
def test_pick_threads_uses_the_cores_others_leave_free(cores: int, others: float, expected: int) -> None:
    assert threads.pick_threads(cores, others) == expected


def test_policy_is_off_when_the_user_fixed_the_thread_count() -> None:
    assert not threads.enable_adaptive_threads({"OMP_NUM_THREADS": "3"})
    assert threads._adaptive is None


def test_adaptive_threads_follow_the_measured_load(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    before = torch.get_num_threads()
    samples = iter([(0, 0, 0), (200, 200, 100), (400, 400, 300), (500, 600, 400)])  # 1 core busy, then 0, then 0
    policy = threads.AdaptiveThreads(interval=0.0)
    policy.cores = [0, 1]
    monkeypatch.setattr(policy, "sample", lambda: next(samples))
    monkeypatch.setattr(threads, "FIRST_WINDOW", 0.0)
    try:
        policy.tick()
        assert torch.get_num_threads() == 1
        policy.tick()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_tick_is_a_no_op_when_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "_adaptive", None)
    threads.tick()


def test_fix_threads_turns_the_policy_off(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_adaptive", threads.AdaptiveThreads())
    try:
        threads.fix_threads(1)
        assert threads._adaptive is None and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


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


@pytest.mark.parametrize("workload", bench.WORKLOADS)
def test_steps_are_timed(workload: str) -> None:
    times = bench.time_steps(workload, steps=3, max_seconds=0.0)
    assert len(times) == 1 and times[0] > 0  # past max_seconds after the first timed step


def test_benchmark_table_and_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    speed = {"1 thread": (0.3, 0.35), "2 threads": (0.2, 4.0), "2 threads, PASSIVE": (0.2, 0.3)}
    neighbours: list[bool] = []

    def fake_child(workload: str, variant: bench.Variant, steps: int, max_seconds: float) -> dict[str, Any]:
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
    monkeypatch.setattr(bench.threads, "usable_cores", lambda: [0, 1])
    result = bench.run_threads_benchmark(steps=2, max_seconds=1.0, output=tmp_path / "t.json", workloads=("vae",))
    rows = {row["variant"]: row for row in result["rows"]}
    assert list(rows) == [v.label for v in bench.variants(2)]
    assert rows["2 threads"]["busy_over_best_idle"] == pytest.approx(20.0)
    assert rows["1 thread"]["busy_over_idle"] == pytest.approx(0.35 / 0.3)
    assert json.loads((tmp_path / "t.json").read_text())["rows"][0]["variant"] == "1 thread"
    table = (tmp_path / "t.md").read_text()
    assert "| vae | 2 threads | 2 / 2 | default | 0.200 | 4.000 | 20.00x | **20.00x** |" in table


def test_bench_threads_is_registered() -> None:
    args = build_parser().parse_args(["bench", "threads", "--steps", "2", "--output", "x.json"])
    assert args.steps == 2 and args.output == "x.json" and args.max_seconds == 20.0
