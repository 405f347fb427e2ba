"""CPU thread benchmark: training steps per thread count and OpenMP wait policy, idle vs a busy neighbour.

``distill-diffusion bench threads``. Two workloads, a few steps per configuration: the toy build's VAE stage
(``toy.vae.vae_loss`` on batches of 16 toy images at 32^2, AdamW) and the tiny UNet's noise-prediction
step (batch 32 of 8x8x4 latents, forward + backward + AdamW, what the toy build and distillation training run). Every
configuration runs in a fresh subprocess because ``OMP_NUM_THREADS`` and ``OMP_WAIT_POLICY`` are read once,
when the OpenMP runtime starts at ``import torch``. The busy neighbour is a second process spinning on one
core, like another job on a shared machine. Nothing at module level imports torch (the child must set its
environment first).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill_diffusion import threads
from distill_diffusion.bench import write_results

HELP = "CPU thread count and OpenMP wait policy, idle vs a busy neighbour (toy VAE steps)"
OUTPUT = "benchmarks/results/cpu_threads.json"
SPIN = "while True: pass"
#: The caller's thread settings, removed from each child's environment so that only the variant's apply.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
WORKLOADS = ("vae", "unet")


def recent_load() -> float:
    """Runnable processes averaged over the last minute (0.0 where the OS has no load average)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


@dataclass(frozen=True)
class Variant:
    """One configuration: a thread count and wait policy, or (``threads=None``) the adaptive policy of ``threads``."""

    label: str
    threads: int | None
    wait_policy: str | None  # None: the OpenMP runtime's default


def variants(cores: int) -> tuple[Variant, ...]:
    """One thread, one thread per core with the default and the PASSIVE wait policy, and the project's policy."""
    return (
        Variant("1 thread", 1, None),
        Variant(f"{cores} threads", cores, None),
        Variant(f"{cores} threads, PASSIVE", cores, "PASSIVE"),
        Variant("policy: adaptive threads", None, None),
    )


def child_env(variant: Variant, env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without the caller's thread settings, plus the variant's."""
    out = {k: v for k, v in env.items() if k not in THREAD_VARS}
    if variant.threads is not None:
        out["OMP_NUM_THREADS"] = str(variant.threads)
    if variant.wait_policy is not None:
        out["OMP_WAIT_POLICY"] = variant.wait_policy
    return out


@contextmanager
def busy_neighbour(enabled: bool) -> Iterator[subprocess.Popen | None]:
    """A process spinning on one core while the block runs (killed after); yields it, or None if not ``enabled``."""
    if not enabled:
        yield None
        return
    proc = subprocess.Popen([sys.executable, "-c", SPIN])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _vae_step(batch_size: int = 16) -> Callable[[], None]:
    """One toy-VAE training step (the toy build's VAE stage)."""
    import torch

    from distill_diffusion.toy.tiny import build_tiny_components
    from distill_diffusion.toy.vae import toy_pixels, vae_loss

    vae = build_tiny_components()["vae"].train()
    data = toy_pixels(4 * batch_size)
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3)

    def step() -> None:
        x = data[torch.randint(0, len(data), (batch_size,), generator=generator)]
        loss = vae_loss(vae, x, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _unet_step(batch_size: int = 32) -> Callable[[], None]:
    """One tiny-UNet noise-prediction step (forward + backward + AdamW; the toy build's UNet stage, distillation training)."""
    import torch

    from distill_diffusion.toy.tiny import build_tiny_components

    parts = build_tiny_components()
    unet = parts["unet"].train()
    generator = torch.Generator().manual_seed(0)
    size = unet.config.sample_size
    z = torch.randn(batch_size, unet.config.in_channels, size, size, generator=generator)
    c = torch.randn(batch_size, parts["tokenizer"].model_max_length, unet.config.cross_attention_dim, generator=generator)
    t = torch.randint(0, 1000, (batch_size,), generator=generator)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        loss = unet(z, t, encoder_hidden_states=c).sample.float().square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


STEPS: dict[str, Callable[[], Callable[[], None]]] = {"vae": _vae_step, "unet": _unet_step}


def time_steps(workload: str, steps: int, max_seconds: float) -> list[float]:
    """Seconds of each of ``steps`` training steps of ``workload`` after one warm-up step; stops early past ``max_seconds``.

    At least one step is timed, so a configuration on the wrong side of the cliff still gives a number. The
    adaptive policy (when on) measures the load outside the timed region, as training does between steps.
    """
    step = STEPS[workload]()
    times: list[float] = []
    start = time.perf_counter()
    for i in range(steps + 1):
        threads.tick()
        t0 = time.perf_counter()
        step()
        if i > 0:
            times.append(time.perf_counter() - t0)
            if time.perf_counter() - start > max_seconds:
                break
    return times


def child_main(argv: list[str]) -> None:
    """Subprocess entry: turn the adaptive policy on if asked, time the steps, print one JSON line."""
    workload, steps, max_seconds, use_policy = argv[0], int(argv[1]), float(argv[2]), argv[3] == "policy"
    if use_policy:
        threads.enable_adaptive_threads()
    import torch

    times = time_steps(workload, steps, max_seconds)
    print(json.dumps({"step_seconds": times, "threads": torch.get_num_threads(),
                      "wait_policy": os.environ.get("OMP_WAIT_POLICY", "default")}))


def run_child(workload: str, variant: Variant, steps: int, max_seconds: float) -> dict[str, Any]:
    """Time ``variant`` in a fresh interpreter; returns the child's numbers plus the median and the load before."""
    load = recent_load()
    mode = "policy" if variant.threads is None else "fixed"
    cmd = [sys.executable, "-m", "distill_diffusion.bench.threads", workload, str(steps), str(max_seconds), mode]
    proc = subprocess.run(cmd, env=child_env(variant, os.environ), capture_output=True, text=True,
                          timeout=4 * max_seconds + 300)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child for {variant.label!r} failed:\n{proc.stderr[-2000:]}")
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**found, "seconds_per_step": statistics.median(found["step_seconds"]), "load_1min_before": round(load, 2)}


def run_threads_benchmark(steps: int = 5, max_seconds: float = 20.0, output: str | Path = OUTPUT,
                          workloads: tuple[str, ...] = WORKLOADS) -> dict[str, Any]:
    """Every workload and variant, idle and next to a busy neighbour; prints the table, writes JSON + markdown."""
    cores = len(threads.usable_cores())
    rows = []
    for workload in workloads:
        block = []
        for variant in variants(cores):
            row: dict[str, Any] = {"workload": workload, "variant": variant.label}
            for key, neighbour in (("idle", False), ("busy_neighbour", True)):
                with busy_neighbour(neighbour):
                    row[key] = run_child(workload, variant, steps, max_seconds)
            block.append(row)
        best_idle = min(row["idle"]["seconds_per_step"] for row in block)
        for row in block:
            row["busy_over_idle"] = row["busy_neighbour"]["seconds_per_step"] / row["idle"]["seconds_per_step"]
            row["busy_over_best_idle"] = row["busy_neighbour"]["seconds_per_step"] / best_idle
        rows += block
    result = {
        "benchmark": "training steps (toy VAE batch 16; tiny UNet batch 32) per CPU thread setting, idle vs one busy neighbour",
        "cores": cores, "steps": steps, "max_seconds": max_seconds,
        "device": platform.processor() or platform.machine(), "python": platform.python_version(), "rows": rows,
    }
    write_results(result, format_table(result), output)
    return result


def format_table(result: dict[str, Any]) -> str:
    """Markdown table: seconds per step idle and with the neighbour, and the slowdowns."""
    lines = ["| workload | setting | threads (idle / busy) | OMP_WAIT_POLICY | idle s/step | busy neighbour s/step "
             "| busy / idle | busy / best idle |", "|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        idle, busy = row["idle"], row["busy_neighbour"]
        lines.append(f"| {row['workload']} | {row['variant']} | {idle['threads']} / {busy['threads']} | {idle['wait_policy']} "
                     f"| {idle['seconds_per_step']:.3f} | {busy['seconds_per_step']:.3f} "
                     f"| {row['busy_over_idle']:.2f}x | **{row['busy_over_best_idle']:.2f}x** |")
    lines += ["", f"Median of up to {result['steps']} timed steps after one warm-up step (fewer when a setting "
              f"passed {result['max_seconds']:.0f} s), each setting in a fresh process; {result['cores']} cores, "
              f"{result['device']}. The neighbour is one process spinning (`{SPIN}`). Best idle: the fastest idle "
              "step of the same workload."]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``distill-diffusion bench threads``."""
    p.add_argument("--steps", type=int, default=5, help="timed steps per setting (after one warm-up step)")
    p.add_argument("--max_seconds", type=float, default=20.0, help="stop timing a setting after this long")
    p.add_argument("--output", default=OUTPUT)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark with the parsed options; returns the exit code."""
    run_threads_benchmark(args.steps, args.max_seconds, args.output)
    return 0


if __name__ == "__main__":
    child_main(sys.argv[1:])
