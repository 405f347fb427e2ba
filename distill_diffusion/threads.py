"""CPU thread policy: OpenMP threads sleep instead of spinning while they wait, set before torch is imported.

On a 2-core machine with torch at one thread per core, one busy neighbour process made the toy VAE's
training steps 20-40x slower (0.114 s -> 2.5-4.7 s): at the end of every parallel region OpenMP threads
spin-wait for a thread that the neighbour has pushed off its core. ``OMP_WAIT_POLICY=PASSIVE`` makes waiting
threads sleep at once; measured with ``distill-diffusion bench threads`` (``benchmarks/results/cpu_threads.md``),
two passive threads took 0.26 s a step next to the neighbour in all four measurements (2.3x the best idle step) and
0.16 s idle, against 0.18-0.30 s idle and 0.32-0.99 s busy for one thread. So the thread count is left to
torch (one per core) or to the user; cutting it by the load average would be slower and lag a minute behind.

The OpenMP runtime reads its environment once, when it starts (at ``import torch``), so the policy is an
environment variable set before that, which child processes (accelerate launches, data-loader workers)
inherit.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

#: Variables through which a user has already chosen how OpenMP threads wait (GNU OpenMP reads both).
USER_WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def thread_settings(env: Mapping[str, str]) -> dict[str, str]:
    """The environment variables to add to ``env``: ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a wait policy.

    An explicit ``OMP_NUM_THREADS`` is kept as it is: the passive wait helps at any thread count.
    """
    if any(var in env for var in USER_WAIT_VARS):
        return {}
    return {"OMP_WAIT_POLICY": "PASSIVE"}


def configure_cpu_threads() -> dict[str, str]:
    """Apply :func:`thread_settings` to ``os.environ``; returns what was set.

    Does nothing once torch is imported: the OpenMP runtime may have read its environment by then, and a
    host process that imported torch first (a notebook, a test run) owns its threading settings.
    """
    if "torch" in sys.modules:
        return {}
    settings = thread_settings(os.environ)
    os.environ.update(settings)
    return settings
