"""Command-line entries ``generate``, ``eval`` and ``bench quality``: argparse wiring only (cli.py registers
them); the work is in eval/ and pipelines/, imported when a command runs so ``--help`` stays fast."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from distill_diffusion.errors import require
from distill_diffusion.paths import check_output_dir, check_output_file


def _add_common_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="image i uses seed+i (independent of batch size)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--device", default=None, help="default: accelerate's device (cuda if available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--local_files_only", action="store_true", help="never download from the hub")


def add_generate(sub: argparse._SubParsersAction) -> None:
    """``distill-diffusion generate --model BASE [--lora DIR] [--steps 4] --prompts FILE|toy --output_dir DIR``."""
    from distill_diffusion.pipelines.presets import PRESETS

    p = sub.add_parser("generate", help="images + manifest.jsonl from a model (+ LoRA) with an inference preset")
    p.add_argument("--model", required=True, help="diffusers folder, hub id or .safetensors (teacher or student)")
    p.add_argument("--lora", default=None, help="LoRA folder (pytorch_lora_weights.safetensors) or file")
    p.add_argument("--preset", default=None, choices=list(PRESETS), help="default: lcm with --lora, else ddim")
    p.add_argument("--steps", type=int, default=None, help="default: the preset's")
    p.add_argument("--guidance", type=float, default=None, help="diffusers guidance_scale; default: the preset's")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--prompts", help="text file (one per line), JSON list / COCO captions, or 'toy'")
    group.add_argument("--prompt", help="one prompt")
    p.add_argument("--num_images", type=int, default=None, help="one image per prompt, cycling the prompts")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--no_fuse_lora", action="store_true", help="keep the LoRA as adapter layers")
    p.add_argument("--lora_scale", type=float, default=1.0)
    p.add_argument("--grid", action="store_true", help="also write grid.png next to the folder")
    _add_common_model(p)
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from distill_diffusion.config import ModelConfig
    from distill_diffusion.eval.bench_quality import parse_dtype
    from distill_diffusion.eval.generate import check_seeds, generate_to_folder, resolve_prompts
    from distill_diffusion.pipelines import get_preset, load_pipeline
    from distill_diffusion.pipelines.loader import check_pipeline_request

    # Every check first: a bad argument must fail before the pipeline loads and before anything is written.
    preset_name = args.preset or ("lcm" if args.lora else "ddim")
    kwargs = get_preset(preset_name).call_kwargs(args.steps, args.guidance)
    prompts = resolve_prompts([args.prompt] if args.prompt is not None else args.prompts, args.num_images, args.seed)
    require(args.batch_size >= 1, f"--batch_size {args.batch_size}; pass 1 or more")
    check_seeds(args.seed, len(prompts))
    check_output_dir(args.output_dir, "--output_dir")
    dtype = parse_dtype(args.dtype)
    check_pipeline_request(
        ModelConfig(pretrained_model_name_or_path=args.model, local_files_only=args.local_files_only), args.lora,
        preset_name, steps=[kwargs["num_inference_steps"]], device=args.device, lora_scale=args.lora_scale,
    )  # fmt: skip
    pipe = load_pipeline(
        args.model, args.lora, preset_name, device=args.device or str(PartialState().device), dtype=dtype,
        local_files_only=args.local_files_only, fuse_lora=not args.no_fuse_lora, lora_scale=args.lora_scale,
    )  # fmt: skip
    extra = {"model": args.model, "lora": args.lora, "preset": preset_name}
    folder, timing = generate_to_folder(
        pipe, prompts, args.output_dir, seed=args.seed, batch_size=args.batch_size, manifest_extra=extra, **kwargs
    )
    if args.grid:
        from distill_diffusion.eval.grid import make_grid

        make_grid([(f"{kwargs['num_inference_steps']} steps", folder)], Path(folder) / "grid.png", max_rows=8)
    print(f"wrote {len(prompts)} images to {folder} ({preset_name}, {kwargs['num_inference_steps']} steps, "
          f"guidance {kwargs['guidance_scale']}, {timing.seconds_per_image or 0:.3f} s/image)")  # fmt: skip
    return 0


def _add_metric_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fid_feature", default="inception", help="inception | clip:PATH (a CLIPModel folder)")
    p.add_argument("--inception_weights", default=None, help="path of weights-inception-2015-12-05-6726825d.pth")
    p.add_argument("--clip_model", default=None, help="CLIPModel folder or hub id for the CLIP score")
    p.add_argument("--resize", default="none", help="none | 256 | lanczos-256 (applied to real and generated)")
    p.add_argument("--kid", action="store_true", help="also report KID (unbiased at small N; FID blank if N < dim)")
    p.add_argument("--stats_cache", default=None, help="file for the real set's feature statistics")


def add_eval(sub: argparse._SubParsersAction) -> None:
    """``distill-diffusion eval GENERATED --real DIR [--clip_model PATH]``."""
    p = sub.add_parser("eval", help="FID/KID vs a real image folder and CLIP score of a generated folder")
    p.add_argument("generated", help="folder written by `generate` (manifest.jsonl gives the prompts)")
    p.add_argument("--real", default=None, help="folder of real images (FID reference)")
    p.add_argument("--prompts", default=None, help="prompt file for a folder without manifest (sorted file order)")
    p.add_argument("--output", default=None, help="also write the result as JSON here")
    p.add_argument("--device", default=None)
    _add_metric_options(p)
    p.set_defaults(func=cmd_eval)


def _check_stats_cache(path: str | None) -> None:
    """A stats cache that does not exist yet is written after the real set is read: check it can be."""
    if path is not None and not Path(path).expanduser().is_file():
        check_output_file(path, "--stats_cache")


def cmd_eval(args: argparse.Namespace) -> int:
    from distill_diffusion.data.prompts import load_prompts
    from distill_diffusion.eval.evaluate import evaluate_folder

    if args.output is not None:
        check_output_file(args.output, "--output")
    _check_stats_cache(args.stats_cache)
    result = evaluate_folder(
        args.generated, args.real, feature=args.fid_feature, inception_weights=args.inception_weights,
        clip_model=args.clip_model, resize=args.resize, kid=args.kid, stats_cache=args.stats_cache,
        prompts=load_prompts(args.prompts) if args.prompts is not None else None, device=args.device,
    )  # fmt: skip
    text = json.dumps(result, indent=2)
    if args.output is not None:
        Path(args.output).expanduser().parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).expanduser().write_text(text + "\n")
    print(text)
    return 0


def add_bench_quality(bench: argparse._SubParsersAction) -> None:
    """``distill-diffusion bench quality --teacher PATH --pipeline lcm=PATH,lora=DIR,preset=lcm ...``."""
    p = bench.add_parser("quality", help="FID / CLIP / speed vs steps for several pipelines (table + plot)")
    p.add_argument("--pipeline", action="append", default=[], metavar="NAME=PATH[,lora=DIR][,preset=P][,guidance=G][,steps=1|2|4]")
    p.add_argument("--teacher", default=None, help="shortcut: --pipeline teacher=PATH,preset=ddim,steps=1|2|4|8|25|50")
    p.add_argument("--teacher_guidance", type=float, default=None, help="teacher guidance_scale (default 7.5)")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8], help="steps for pipelines without steps=")
    p.add_argument("--prompts", required=True, help="text file, JSON list / COCO captions, or 'toy'")
    p.add_argument("--num_images", type=int, default=None, help="images per (pipeline, steps); cycles prompts")
    p.add_argument("--real", default=None, help="folder of real images for FID (omit: CLIP and speed only)")
    p.add_argument("--output_dir", default="benchmarks/results/quality")
    p.add_argument("--grid_rows", type=int, default=4)
    _add_metric_options(p)
    _add_common_model(p)
    p.set_defaults(func=cmd_bench_quality)


def cmd_bench_quality(args: argparse.Namespace) -> int:
    from distill_diffusion.eval.bench_quality import (
        TEACHER_STEPS,
        BenchmarkSettings,
        PipelineSpec,
        parse_pipeline_spec,
        run_quality_benchmark,
    )

    _check_stats_cache(args.stats_cache)
    specs = []
    if args.teacher is not None:
        specs.append(PipelineSpec("teacher", args.teacher, preset="ddim", guidance_scale=args.teacher_guidance, steps=TEACHER_STEPS))
    specs += [parse_pipeline_spec(text, args.steps) for text in args.pipeline]
    settings = BenchmarkSettings(
        prompts=args.prompts, num_images=args.num_images, real_dir=args.real, fid_feature=args.fid_feature,
        inception_weights=args.inception_weights, clip_model=args.clip_model, resize=args.resize, kid=args.kid,
        stats_cache=args.stats_cache, seed=args.seed, batch_size=args.batch_size, device=args.device,
        dtype=args.dtype, local_files_only=args.local_files_only, grid_rows=args.grid_rows,
    )  # fmt: skip
    result = run_quality_benchmark(specs, args.output_dir, settings)
    if result["files"]:
        print(Path(result["files"]["markdown"]).read_text())
        print("\n".join(f"{k}: {v}" for k, v in result["files"].items()))
    return 0
