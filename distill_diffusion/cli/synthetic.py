"""Command-line entry ``prepare-synthetic``: argparse wiring only (:mod:`distill_diffusion.cli` registers it); the work
is in :mod:`distill_diffusion.pipelines.synthetic`, imported when the command runs so ``--help`` stays fast."""

from __future__ import annotations

import argparse

HELP = "teacher-generated latents (+ text embeddings) in the latent-cache format, for data.source latents (LADD)"
#: What the CLI prints when the run is interrupted (Ctrl-C): finished shards are kept.
RESUME_HINT = "finished shards are kept; run the same command again to continue"
#: Options that choose how a dataset's captions are read (meaningless with --prompts).
DATASET_DEFAULTS = {"caption_column": "text", "image_column": "image", "dataset_split": "train"}


def add_prepare_synthetic(sub: argparse._SubParsersAction) -> None:
    """``distill-diffusion prepare-synthetic --pretrained_model_name_or_path M --prompts FILE --output_dir DIR``."""
    p = sub.add_parser("prepare-synthetic", help=HELP, description=HELP + ". Interrupted runs continue where they stopped "
                       "when the same command is run again.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model = p.add_argument_group("teacher")
    model.add_argument("--pretrained_model_name_or_path", required=True, help="SD 1.x/2.x diffusers folder, hub id or .safetensors")
    model.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    model.add_argument("--variant", default=None, help="weight file variant, e.g. fp16")
    model.add_argument("--original_config", default=None, help="for a single .safetensors file: a folder or hub id with the configs")
    model.add_argument("--local_files_only", action="store_true", help="never download from the hub")
    prompts = p.add_argument_group("prompts (one source)")
    source = prompts.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompts", help="prompt file: text (one per line), .jsonl (a text/prompt/caption field), JSON list or COCO captions")
    source.add_argument("--train_data_dir", help="captions of an image folder with metadata.jsonl (no image is decoded)")
    source.add_argument("--dataset_name", help="captions of a `datasets` dataset (name or save_to_disk folder)")
    prompts.add_argument("--caption_column", default=DATASET_DEFAULTS["caption_column"], help="caption key of the dataset")
    prompts.add_argument("--image_column", default=DATASET_DEFAULTS["image_column"], help="image column of a `datasets` dataset")
    prompts.add_argument("--dataset_split", default=DATASET_DEFAULTS["dataset_split"])
    sampling = p.add_argument_group("sampling")
    sampling.add_argument("--num_samples", type=int, default=None, help="latents to make, cycling the prompts (default: one per prompt)")
    sampling.add_argument("--scheduler", default="ddim", help="teacher sampler: ddim, ddim-trailing, dpm, dpm-karras or unipc")
    sampling.add_argument("--num_inference_steps", type=int, default=50)
    sampling.add_argument("--guidance_scale", type=float, default=7.5,
                          help="CFG scale (diffusers convention); 7.5 for SD, about 3 for the toy world")
    sampling.add_argument("--resolution", type=int, default=512, help="image size in pixels (a multiple of 8); latents are smaller by the VAE's factor")
    sampling.add_argument("--seed", type=int, default=0, help="sample i uses seed + i (independent of batch size and resuming)")
    sampling.add_argument("--batch_size", type=int, default=8)
    sampling.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default="no", help="the teacher's dtype (fp16 needs CUDA)")
    sampling.add_argument("--device", default=None, help="default: accelerate's device (cuda if available)")
    output = p.add_argument_group("output")
    output.add_argument("--output_dir", required=True, help="folder for the shards and index.json (data.latents_dir)")
    output.add_argument("--shard_size", type=int, default=1024, help="latents per shard file")
    output.add_argument("--overwrite", action="store_true", help="replace latents made with other settings")
    p.set_defaults(func=cmd_prepare_synthetic, resume_hint=RESUME_HINT)


def cmd_prepare_synthetic(args: argparse.Namespace) -> int:
    from distill_diffusion.config import DataConfig, ModelConfig
    from distill_diffusion.errors import require
    from distill_diffusion.pipelines.synthetic import SyntheticConfig, prepare_synthetic

    data = None
    if args.prompts is None:
        data = DataConfig(source="imagefolder" if args.train_data_dir else "hf", train_data_dir=args.train_data_dir,
                          dataset_name=args.dataset_name, dataset_split=args.dataset_split, caption_column=args.caption_column,
                          image_column=args.image_column)
    else:
        dataset_only = [f"--{k}" for k, v in DATASET_DEFAULTS.items() if getattr(args, k) != v]
        require(not dataset_only, f"{', '.join(dataset_only)} only apply to dataset captions; drop them or pass "
                "--train_data_dir / --dataset_name instead of --prompts")
    cfg = SyntheticConfig(
        model=ModelConfig(pretrained_model_name_or_path=args.pretrained_model_name_or_path, revision=args.revision,
                          variant=args.variant, original_config=args.original_config, local_files_only=args.local_files_only),
        output_dir=args.output_dir, prompts=args.prompts, data=data, num_samples=args.num_samples, scheduler=args.scheduler,
        num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale, resolution=args.resolution,
        seed=args.seed, batch_size=args.batch_size, shard_size=args.shard_size, mixed_precision=args.mixed_precision,
        device=args.device, overwrite=args.overwrite,
    )  # fmt: skip
    out, count = prepare_synthetic(cfg)
    print(f"{count} latents in {out} ({cfg.scheduler}, {cfg.num_inference_steps} steps, guidance {cfg.guidance_scale}, "
          f"resolution {cfg.resolution}); train on them with --data.source latents --data.latents_dir {out}")
    return 0
