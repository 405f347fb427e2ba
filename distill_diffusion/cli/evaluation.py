"""Command-line entries ``generate`` and ``eval``: argparse wiring only (:mod:`distill_diffusion.cli` registers
them); the work is in eval/ and pipelines/, imported when a command runs so ``--help`` stays fast."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from distill_diffusion.bench.options import add_metric_options, add_model_options, check_stats_cache
from distill_diffusion.errors import require
from distill_diffusion.paths import check_output_dir, check_output_file


class _DeprecatedPreset(argparse.Action):
    """``--preset NAME``, the old spelling of ``--sampler NAME``: still accepted, with a one-line warning."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        from distill_diffusion.pipelines.samplers import warn_preset_deprecated

        warn_preset_deprecated("--preset", "--sampler")
        setattr(namespace, self.dest, values)


def add_generate(sub: argparse._SubParsersAction) -> None:
    """``distill-diffusion generate --model BASE [--lora DIR] [--sampler lcm] [--steps 4] --prompts FILE|toy --output_dir DIR``."""
    from distill_diffusion.pipelines.samplers import SAMPLERS

    p = sub.add_parser("generate", help="images + manifest.jsonl from a model (+ LoRA) with a sampler")
    p.add_argument("--model", required=True, help="diffusers folder, hub id or .safetensors (teacher or student)")
    p.add_argument("--lora", default=None, help="LoRA folder (pytorch_lora_weights.safetensors) or file")
    p.add_argument("--sampler", default=None, choices=list(SAMPLERS),
                   help="scheduler, steps and guidance to sample with; default: the one the LoRA's (else the model's) model "
                        "card records; a model without one: ddim; a LoRA without one: required")  # fmt: skip
    p.add_argument("--preset", dest="sampler", choices=list(SAMPLERS), action=_DeprecatedPreset, help=argparse.SUPPRESS)
    p.add_argument("--steps", "--num_inference_steps", dest="steps", type=int, default=None,
                   help="default: the model card's, else the sampler's")
    p.add_argument("--guidance", "--guidance_scale", dest="guidance", type=float, default=None,
                   help="diffusers guidance_scale; default: the model card's, else the sampler's")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--prompts", help="text file (one per line), JSON list / COCO captions, or 'toy'")
    group.add_argument("--prompt", help="one prompt")
    p.add_argument("--num_images", type=int, default=None, help="one image per prompt, cycling the prompts")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--no_fuse_lora", action="store_true", help="keep the LoRA as adapter layers")
    p.add_argument("--lora_scale", type=float, default=1.0)
    p.add_argument("--grid", action="store_true", help="also write grid.png next to the folder")
    p.add_argument("--height", type=int, default=None, help="image height in pixels; default: the model's")
    p.add_argument("--width", type=int, default=None, help="image width in pixels; default: the model's")
    p.add_argument("--time_ids", type=int, nargs="+", default=None, metavar="N",
                   help="SDXL micro-conditioning: original height width, crop top left, target height width "
                        "(default: the image size, no crop)")  # fmt: skip
    add_model_options(p)
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from distill_diffusion.bench.quality import parse_dtype
    from distill_diffusion.config import ModelConfig
    from distill_diffusion.eval.generate import check_seeds, generate_to_folder, resolve_prompts
    from distill_diffusion.pipelines import load_pipeline, resolve_sampling
    from distill_diffusion.pipelines.geometry import check_size, local_family, micro_conditioning_kwargs
    from distill_diffusion.pipelines.loader import check_pipeline_request

    # Every check first: a bad argument must fail before the pipeline loads and before anything is written.
    choice = resolve_sampling(args.model, args.lora, args.sampler, local_files_only=args.local_files_only)
    sampler, kwargs = choice.sampler, choice.call_kwargs(args.steps, args.guidance)
    prompts = resolve_prompts([args.prompt] if args.prompt is not None else args.prompts, args.num_images, args.seed)
    require(args.batch_size >= 1, f"--batch_size {args.batch_size}; pass 1 or more")
    check_seeds(args.seed, len(prompts))
    check_output_dir(args.output_dir, "--output_dir")
    dtype = parse_dtype(args.dtype)
    check_pipeline_request(
        ModelConfig(pretrained_model_name_or_path=args.model, local_files_only=args.local_files_only), args.lora,
        sampler, steps=[kwargs["num_inference_steps"]], device=args.device, lora_scale=args.lora_scale,
    )  # fmt: skip
    check_size(args.model, args.height, args.width)
    family = local_family(args.model)
    micro = micro_conditioning_kwargs(family, args.time_ids) if family is not None else {}
    if choice.note:
        print(choice.note, file=sys.stderr)
    pipe = load_pipeline(
        args.model, args.lora, sampler, device=args.device or str(PartialState().device), dtype=dtype,
        local_files_only=args.local_files_only, fuse_lora=not args.no_fuse_lora, lora_scale=args.lora_scale,
    )  # fmt: skip
    if family is None:  # a hub id or single file: its family is known once loaded
        micro = micro_conditioning_kwargs("sdxl" if hasattr(pipe, "text_encoder_2") else "sd", args.time_ids)
    size = {k: v for k, v in (("height", args.height), ("width", args.width)) if v is not None}
    extra = {"model": args.model, "lora": args.lora, "sampler": sampler, **({"time_ids": args.time_ids} if micro else {})}
    folder, timing = generate_to_folder(
        pipe, prompts, args.output_dir, seed=args.seed, batch_size=args.batch_size, manifest_extra=extra,
        pipe_kwargs={**size, **micro}, **kwargs,
    )
    if args.grid:
        from distill_diffusion.eval.grid import make_grid

        make_grid([(f"{kwargs['num_inference_steps']} steps", folder)], Path(folder) / "grid.png", max_rows=8)
    print(f"wrote {len(prompts)} images to {folder} ({sampler}, {kwargs['num_inference_steps']} steps, "
          f"guidance {kwargs['guidance_scale']}, {timing.seconds_per_image or 0:.3f} s/image)")  # fmt: skip
    return 0


def add_eval(sub: argparse._SubParsersAction) -> None:
    """``distill-diffusion eval GENERATED --real DIR [--clip_model PATH]``."""
    p = sub.add_parser("eval", help="FID/KID vs a real image folder and CLIP score of a generated folder")
    p.add_argument("generated", help="folder written by `generate` (manifest.jsonl gives the prompts)")
    p.add_argument("--real", default=None, help="folder of real images (FID reference)")
    p.add_argument("--prompts", default=None, help="prompt file for a folder without manifest (sorted file order)")
    p.add_argument("--output", default=None, help="also write the result as JSON here")
    p.add_argument("--device", default=None)
    add_metric_options(p)
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from distill_diffusion.eval.evaluate import evaluate_folder
    from distill_diffusion.prompts import load_prompts

    if args.output is not None:
        check_output_file(args.output, "--output")
    check_stats_cache(args.stats_cache)
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
