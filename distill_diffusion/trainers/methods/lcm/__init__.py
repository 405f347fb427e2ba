"""Latent consistency distillation (LCM-LoRA and full LCM students), its presets' benchmarks and diagnostics.

:mod:`.method` is the method; :mod:`.bench_speed`, :mod:`.bench_gpu` and :mod:`.consistency` are its benchmarks.
"""

from distill_diffusion.trainers.methods.lcm.method import (
    EXPORT_DTYPES,
    LCM,
    LCMConfig,
    check_solver_grid,
    check_teacher,
)

__all__ = ["EXPORT_DTYPES", "LCM", "LCMConfig", "check_solver_grid", "check_teacher"]
