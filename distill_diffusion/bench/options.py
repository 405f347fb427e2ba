"""Command-line options shared by ``generate``, ``eval`` and the benchmarks (argparse only, no torch)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from distill_diffusion.paths import check_output_file
from distill_diffusion.toy.paths import TOY_GUIDANCE


def add_speed_options(p: argparse.ArgumentParser, *, steps: int, batch_sizes: list[int], output: str) -> None:
    """Timed steps, batch sizes, results file and a fixed thread count: the CPU speed benchmarks' options."""
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch_sizes", type=int, nargs="+", default=batch_sizes)
    p.add_argument("--output", default=output)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps shared CPUs reproducible)")


def add_gpu_options(p: argparse.ArgumentParser, output: str, unit: str = "steps") -> None:
    """Batch, resolution, timed steps, precision, checkpointing and results file: the SD 1.5 GPU benchmarks' options
    (``unit``: what ``--steps`` counts, e.g. a method's cycles of several engine steps)."""
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--steps", type=int, default=20, help=f"timed {unit} (after 3 warm-up {unit})")
    p.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default="bf16")
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--output", default=output)


def run_speed(args: argparse.Namespace, benchmark: Callable[..., object]) -> int:
    """Run a speed benchmark at the fixed thread count with the options of :func:`add_speed_options`."""
    from distill_diffusion.threads import fix_threads

    fix_threads(args.threads)
    benchmark(steps=args.steps, batch_sizes=tuple(args.batch_sizes), output=args.output)
    return 0


def run_gpu(args: argparse.Namespace, benchmark: Callable[..., object]) -> int:
    """Run a GPU training benchmark with the options of :func:`add_gpu_options`."""
    benchmark(batch_size=args.batch_size, resolution=args.resolution, steps=args.steps, mixed_precision=args.mixed_precision,
              gradient_checkpointing=args.gradient_checkpointing, output=args.output)
    return 0


def add_toy_run_options(p: argparse.ArgumentParser, *, output_dir: str, run_dir: str, guidance_scale: float = TOY_GUIDANCE) -> None:
    """Results folder, training folder, images per row, guidance, toy cache and teacher: the toy method benchmarks'
    options (read by :func:`bench.toy_runs.load_toy_teacher`).

    ``guidance_scale``: the default teacher guidance; the toy's reference scale unless the method distils another."""
    p.add_argument("--output_dir", default=None, help=f"results (default {output_dir}, with _xl for --sdxl)")
    p.add_argument("--run_dir", default=None, help=f"training output, resumed when present (default {run_dir}, with _xl for --sdxl)")
    p.add_argument("--sdxl", action="store_true", help="distil the toy SDXL teacher (toy build --sdxl) with the tiny _xl configs")
    p.set_defaults(toy_folders=(output_dir, run_dir))
    p.add_argument("--num_images", type=int, default=1024, help="images per row (FID is biased at small N)")
    p.add_argument("--guidance_scale", type=float, default=guidance_scale, help="the teacher's guidance (and the students' where they take one)")
    p.add_argument("--cache_dir", default=None, help="toy-world cache (default $DISTILL_DIFFUSION_CACHE)")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Seeds, batch size, device and dtype of a pipeline that generates images."""
    p.add_argument("--seed", type=int, default=0, help="image i uses seed+i (independent of batch size)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--device", default=None, help="default: accelerate's device (cuda if available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--local_files_only", action="store_true", help="never download from the hub")


def add_metric_options(p: argparse.ArgumentParser) -> None:
    """The FID feature network, CLIP model, resizing, KID and the real set's statistics cache."""
    p.add_argument("--fid_feature", default="inception", help="inception | clip:PATH (a CLIPModel folder)")
    p.add_argument("--inception_weights", default=None, help="path of weights-inception-2015-12-05-6726825d.pth")
    p.add_argument("--clip_model", default=None, help="CLIPModel folder or hub id for the CLIP score")
    p.add_argument("--resize", default="none", help="none | 256 | lanczos-256 (applied to real and generated)")
    p.add_argument("--kid", action="store_true", help="also report KID (unbiased at small N; FID blank if N < dim)")
    p.add_argument("--stats_cache", default=None, help="file for the real set's feature statistics")


def check_stats_cache(path: str | None) -> None:
    """A stats cache that does not exist yet is written after the real set is read: check it can be."""
    if path is not None and not Path(path).expanduser().is_file():
        check_output_file(path, "--stats_cache")
