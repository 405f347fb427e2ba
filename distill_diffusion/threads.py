"""CPU thread policy: torch uses the cores other processes leave free, re-checked while a run goes on.

On a 2-core machine with torch at one thread per core, one busy neighbour process made training steps
3-40x slower (toy VAE 0.11 s -> 0.33-4.7 s, toy UNet fine-tune 0.12 s -> 0.40 s): each OpenMP thread waits at
the end of every parallel region for a partner that the neighbour has pushed off its core. One thread is
untouched by the neighbour (VAE 0.17 -> 0.18 s, UNet 0.17 -> 0.17 s), but 1.5x slower on an idle machine.
``OMP_WAIT_POLICY=PASSIVE`` removed the cliff for the VAE but made an idle UNet step 2.4x slower (0.115 ->
0.275 s), and no ``GOMP_SPINCOUNT`` kept both speeds (``benchmarks/results/cpu_threads.md``). So the count
follows the machine: every ``INTERVAL`` seconds (and once at the start, over a short window) the CPU time
other processes used on this process's cores is read from ``/proc/stat`` minus this process's own, and torch
gets one thread per core they left free, at least one. A neighbour then costs about the gap between one thread
and all of them (1.5-1.7x on 2 cores), for at most ``INTERVAL`` seconds more.

Off where the user chose: ``OMP_NUM_THREADS`` set (``accelerate launch`` sets it to 1 per process on CPUs),
a benchmark's ``--threads``, or a platform without ``/proc/stat``. The CLI turns it on
(:func:`enable_adaptive_threads`); training, the toy build and generation call :func:`tick` as they go.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

#: Seconds between two measurements while a run goes on.
INTERVAL = 10.0
#: The first measurement's window, taken at the first tick (before the first training step).
FIRST_WINDOW = 0.25
PROC_STAT = Path("/proc/stat")
SELF_STAT = Path("/proc/self/stat")


def usable_cores() -> list[int]:
    """Indices of the cores this process may run on (its CPU affinity where the OS reports it)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def parse_proc_stat(text: str, cores: list[int]) -> tuple[int, int]:
    """``(busy, total)`` jiffies summed over ``cores`` from ``/proc/stat``'s ``cpuN`` lines (idle and iowait are not busy)."""
    busy = total = 0
    wanted = {f"cpu{i}" for i in cores}
    for line in text.splitlines():
        name, *fields = line.split()
        if name in wanted:
            values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
            total += sum(values)
            busy += sum(values) - values[3] - values[4]
    return busy, total


def parse_self_stat(text: str) -> int:
    """This process's CPU jiffies (``utime + stime``, all threads) from ``/proc/self/stat``."""
    fields = text.rsplit(")", 1)[1].split()  # the command name may hold spaces; fields resume after ')'
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of the whole line


def others_busy(before: tuple[int, int, int], after: tuple[int, int, int], cores: int) -> float:
    """Cores' worth of CPU that other processes used between two ``(busy, total, own)`` samples."""
    d_busy, d_total, d_own = (a - b for a, b in zip(after, before))
    if d_total <= 0:
        return 0.0
    return max(0.0, (d_busy - d_own) / d_total * cores)


def pick_threads(cores: int, others: float) -> int:
    """One thread per core the others left free (a core counts as taken from half its time on), at least one."""
    return max(1, min(cores, cores - int(others + 0.5)))


class AdaptiveThreads:
    """Keeps ``torch.get_num_threads()`` at :func:`pick_threads` of the measured load (see the module docstring)."""

    def __init__(self, interval: float = INTERVAL):
        self.interval, self.cores = interval, usable_cores()
        self.last: tuple[int, int, int] | None = None
        self.when = 0.0

    def sample(self) -> tuple[int, int, int]:
        busy, total = parse_proc_stat(PROC_STAT.read_text(), self.cores)
        return busy, total, parse_self_stat(SELF_STAT.read_text())

    def tick(self) -> None:
        now = time.monotonic()
        if self.last is None:
            self.last = self.sample()
            time.sleep(FIRST_WINDOW)
        elif now - self.when < self.interval:
            return
        current = self.sample()
        self.apply(others_busy(self.last, current, len(self.cores)))
        self.last, self.when = current, time.monotonic()

    def apply(self, others: float) -> None:
        import torch

        threads = pick_threads(len(self.cores), others)
        if threads != torch.get_num_threads():
            logger.info(f"other processes use {others:.1f} of {len(self.cores)} cores: torch now runs {threads} thread(s)")
            torch.set_num_threads(threads)


_adaptive: AdaptiveThreads | None = None


def enable_adaptive_threads(env: Mapping[str, str] | None = None) -> bool:
    """Turn the policy on unless the user fixed the thread count (``OMP_NUM_THREADS``) or ``/proc/stat`` is missing."""
    global _adaptive
    env = os.environ if env is None else env
    if "OMP_NUM_THREADS" in env or not (PROC_STAT.is_file() and SELF_STAT.is_file()):
        _adaptive = None
        return False
    _adaptive = AdaptiveThreads()
    return True


def fix_threads(count: int) -> None:
    """A fixed thread count (a benchmark's ``--threads``): the policy stays off for this process."""
    import torch

    global _adaptive
    _adaptive = None
    torch.set_num_threads(count)


def tick() -> None:
    """Re-check the load if the policy is on and ``INTERVAL`` has passed; cheap otherwise (call it every step)."""
    if _adaptive is not None:
        _adaptive.tick()
