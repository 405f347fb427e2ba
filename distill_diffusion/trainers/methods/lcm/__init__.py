"""Latent consistency distillation (LCM-LoRA and full LCM students), its benchmarks and diagnostics.

:mod:`.config` holds its options and :mod:`.method` is the method; :mod:`.bench_speed`, :mod:`.bench_gpu` and
:mod:`.bench_consistency` are its benchmarks (``distill-diffusion bench lcm``, ``lcm-gpu``, ``consistency``). Exports
resolve lazily (PEP 562) so that building the CLI parser, which imports the benchmark modules, does not import torch.
"""

from distill_diffusion.lazy import lazy_exports

_EXPORTS = {"LCMConfig": "config", **{name: "method" for name in ("EXPORT_DTYPES", "LCM", "check_solver_grid", "check_teacher")}}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
