"""``distill-diffusion bench quality``: FID / CLIP / speed vs steps for several pipelines (:mod:`distill_diffusion.eval.bench_quality`).

``--teacher PATH --pipeline NAME=PATH,lora=DIR,sampler=S ...``: argparse wiring only; the work is imported when it runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distill_diffusion.eval.prompt_accuracy import PromptScorer

from distill_diffusion.bench.options import add_metric_options, add_model_options, check_stats_cache

HELP = "FID / CLIP / speed vs steps (and guidance) for several pipelines (table + plots)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    p.add_argument("--pipeline", action="append", default=[], metavar="NAME=PATH[,lora=DIR][,sampler=S][,guidance=1|1.5|2][,steps=1|2|4]",
                   help="several guidance scales make a sweep: a row per (steps, guidance) and a FID-vs-CLIP curve")  # fmt: skip
    p.add_argument("--teacher", default=None, help="shortcut: --pipeline teacher=PATH,sampler=ddim,steps=1|2|4|8|25|50")
    p.add_argument("--teacher_guidance", type=float, nargs="+", default=None,
                   help="teacher guidance_scale (default 7.5); several values sweep it (curve, 'at equal FID' summary)")  # fmt: skip
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8], help="steps for pipelines without steps=")
    p.add_argument("--prompts", required=True, help="text file, JSON list / COCO captions, or 'toy'")
    p.add_argument("--num_images", type=int, default=None, help="images per (pipeline, steps); cycles prompts")
    p.add_argument("--real", default=None, help="folder of real images for FID (omit: CLIP and speed only)")
    p.add_argument("--output_dir", default="benchmarks/results/quality")
    p.add_argument("--grid_rows", type=int, default=4)
    p.add_argument("--toy_classifier", default=None, metavar="PATH|toy",
                   help="add prompt-accuracy columns (acc_shape, acc_colour, acc_background) from a toy classifier "
                        "folder, or 'toy' for the cached toy world's")  # fmt: skip
    add_metric_options(p)
    add_model_options(p)


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; prints the table and the files written; returns the exit code."""
    from distill_diffusion.eval.bench_quality import (
        TEACHER_STEPS,
        BenchmarkSettings,
        PipelineSpec,
        parse_pipeline_spec,
        run_quality_benchmark,
    )

    check_stats_cache(args.stats_cache)
    specs = []
    if args.teacher is not None:
        guidance = tuple(args.teacher_guidance) if args.teacher_guidance is not None else None
        specs.append(PipelineSpec("teacher", args.teacher, sampler="ddim", guidance_scale=guidance, steps=TEACHER_STEPS))
    specs += [parse_pipeline_spec(text, args.steps) for text in args.pipeline]
    settings = BenchmarkSettings(
        prompts=args.prompts, num_images=args.num_images, real_dir=args.real, fid_feature=args.fid_feature,
        inception_weights=args.inception_weights, clip_model=args.clip_model, resize=args.resize, kid=args.kid,
        stats_cache=args.stats_cache, seed=args.seed, batch_size=args.batch_size, device=args.device,
        dtype=args.dtype, local_files_only=args.local_files_only, grid_rows=args.grid_rows,
        prompt_scorer=_toy_scorer(args.toy_classifier),
    )  # fmt: skip
    result = run_quality_benchmark(specs, args.output_dir, settings)
    if result["files"]:
        print(Path(result["files"]["markdown"]).read_text())
        print("\n".join(f"{k}: {v}" for k, v in result["files"].items()))
    return 0


def _toy_scorer(spec: str | None) -> PromptScorer | None:
    """The toy classifier's prompt scorer for ``--toy_classifier`` (None without it); a bad path fails here,
    before anything is generated."""
    if spec is None:
        return None
    from distill_diffusion.toy.classifier import resolve_toy_classifier, toy_prompt_scorer

    return toy_prompt_scorer(resolve_toy_classifier(spec))
