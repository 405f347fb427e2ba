"""Build a training run from a :class:`RunConfig`: validate inputs, load models and data, then run the engine.

Order matters for users: everything that can be checked cheaply (model path, dataset, output folder,
precision on this machine) is checked before any weights are loaded, so a typo costs a second, not a
model load, and nothing is written for a run that cannot start.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import ProjectConfiguration, set_seed

from distill_diffusion.config import RunConfig, TrainConfig
from distill_diffusion.errors import UserError, require
from distill_diffusion.paths import check_output_dir
from distill_diffusion.trainers import checkpointing as ckpt
from distill_diffusion.trainers.engine import Engine
from distill_diffusion.trainers.registry import get_method_class

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def weight_dtype(mixed_precision: str) -> torch.dtype:
    """Frozen teacher, VAE and text encoder live in this dtype (DESIGN.md rule 8)."""
    return WEIGHT_DTYPES[mixed_precision]


def check_environment(cfg: TrainConfig) -> None:
    """Settings this machine cannot honour, caught before anything is loaded."""
    if cfg.mixed_precision == "fp16":
        require(torch.cuda.is_available(), "--mixed_precision fp16 needs a CUDA GPU; use bf16 or no on this machine")
    if cfg.report_to in ("tensorboard", "all"):
        _require_module("tensorboard", "--report_to tensorboard needs tensorboard; pip install 'distill-diffusion[tensorboard]'")
    if cfg.report_to in ("wandb", "all"):
        _require_module("wandb", "--report_to wandb needs wandb; pip install 'distill-diffusion[wandb]'")
    if cfg.use_8bit_adam:
        _require_module("bitsandbytes", "--use_8bit_adam needs bitsandbytes; pip install 'distill-diffusion[bnb]'")
    check_output_dir(cfg.output_dir, "--output_dir")


def _require_module(name: str, message: str) -> None:
    import importlib.util

    require(importlib.util.find_spec(name) is not None, message)


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """Accelerator with explicit accumulation (the engine's), a seedable sampler and our own LR stepping."""
    if cfg.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    project = ProjectConfiguration(project_dir=cfg.output_dir, logging_dir=str(Path(cfg.output_dir) / cfg.logging_dir))
    return Accelerator(
        gradient_accumulation_steps=1,
        mixed_precision=cfg.mixed_precision,
        log_with=None if cfg.report_to == "none" else cfg.report_to,
        project_config=project,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        step_scheduler_with_optimizer=False,
    )


def build_engine(run: RunConfig) -> Engine:
    """Validate, load the teacher and data, build the method and the engine, resume if asked."""
    from distill_diffusion.data import build_train_dataset, collate_examples
    from distill_diffusion.models.loading import check_model_source, load_teacher, read_teacher_configs
    from distill_diffusion.trainers.data_loop import build_dataloader

    method_cls = get_method_class(run.method)
    require(bool(run.model.pretrained_model_name_or_path), "no teacher given; pass --pretrained_model_name_or_path (a diffusers folder, hub id or .safetensors file)")
    check_model_source(run.model)
    check_environment(run.train)
    method_cls.check_before_loading(run, read_teacher_configs(run.model))
    resume_from = ckpt.resolve_resume(run.train.resume_from_checkpoint, run.train.output_dir)
    dataset = build_train_dataset(run.data, seed=run.train.seed)

    accelerator = make_accelerator(run.train)
    if run.train.seed is not None:
        set_seed(run.train.seed, device_specific=True)
    components = load_teacher(run.model, weight_dtype(run.train.mixed_precision), device=accelerator.device)
    method = method_cls(components, run.method_config)
    if run.train.gradient_checkpointing:
        enable_gradient_checkpointing(method)
    if run.data.cache_latents:
        run.data.cache_dir = run.data.cache_dir or str(Path(run.train.output_dir) / "latent_cache")
        dataset = _cached(dataset, run, components, accelerator)
    loader = build_dataloader(dataset, run.train.train_batch_size, run.data.dataloader_num_workers, collate_examples, run.train.seed)
    engine = Engine(run, accelerator, method, loader)
    if resume_from is not None:
        engine.resume(resume_from)
    if accelerator.is_main_process:
        run.save(Path(run.train.output_dir) / "config.yaml")
        if run.train.report_to != "none":
            accelerator.init_trackers(run.train.tracker_project_name, config=_flat(run.to_dict()))
    return engine


def enable_gradient_checkpointing(method: object) -> None:
    for phase in method.phases():  # type: ignore[attr-defined]
        module = method.models[phase.module]  # type: ignore[attr-defined]
        if not hasattr(module, "enable_gradient_checkpointing"):
            raise UserError(f"--gradient_checkpointing: module {phase.module!r} does not support it; drop the flag")
        module.enable_gradient_checkpointing()


def _cached(dataset, run: RunConfig, components, accelerator: Accelerator):
    """Encode the dataset once (main process first, the others reuse the files) and read latents from disk."""
    from distill_diffusion.data import prepare_latent_cache
    from distill_diffusion.models.encode import encode_images, encode_prompt

    def images(pixels: torch.Tensor) -> torch.Tensor:
        return encode_images(components.vae, pixels.to(components.vae.device, components.vae.dtype))

    def texts(prompts: list[str]) -> torch.Tensor:
        return encode_prompt(components.tokenizer, components.text_encoder, prompts)

    model_key = f"{run.model.pretrained_model_name_or_path}@{run.model.revision}/{run.model.variant}"
    with accelerator.main_process_first():
        return prepare_latent_cache(run.data, dataset, images, texts, model_key, seed=run.train.seed)


def _flat(tree: dict, prefix: str = "") -> dict:
    """Trackers (tensorboard hparams) take flat scalar dicts."""
    out: dict = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, name + "."))
        else:
            out[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


def train(run: RunConfig) -> Path:
    """Run training to the end and export; returns the output folder."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("distill_diffusion").setLevel(logging.INFO)
    engine = build_engine(run)
    engine.train()
    engine.export()
    engine.accelerator.end_training()
    return engine.output_dir
