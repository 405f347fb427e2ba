"""Build a training run from a :class:`RunConfig`: validate inputs, load models and data, then run the engine.

Order matters for users: everything that can be checked cheaply (model path, dataset, output folder,
precision on this machine) is checked before any weights are loaded, so a typo costs a second, not a
model load, and nothing is written for a run that cannot start.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import ProjectConfiguration, set_seed

from distill_diffusion.config import RunConfig, TrainConfig
from distill_diffusion.config_types import read_renamed
from distill_diffusion.errors import UserError, require
from distill_diffusion.hub import check_hub_access
from distill_diffusion.paths import check_output_dir
from distill_diffusion.trainers.engine import checkpoints as ckpt
from distill_diffusion.trainers.engine import sharding
from distill_diffusion.trainers.engine.export import push_to_hub
from distill_diffusion.trainers.engine.loop import Callback, Engine
from distill_diffusion.trainers.methods.registry import get_method_class

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def weight_dtype(mixed_precision: str) -> torch.dtype:
    """Frozen teacher, VAE and text encoder live in this dtype (docs/training.md, "Precision policy")."""
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
    if cfg.push_to_hub:
        check_hub_access(cfg)


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
        # one data seed for every process (accelerate's default is each process's own torch seed, seed + rank
        # after a device-specific set_seed): the ranks then shuffle alike and an epoch is a partition of the data
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
        step_scheduler_with_optimizer=False,
    )


def check_process_count(started: int, env: Mapping[str, str] | None = None) -> None:
    """Refuse a launch whose process count is not what the launcher asked for.

    ``accelerate launch --cpu --num_processes N`` starts ONE process (it sets MASTER_ADDR but no WORLD_SIZE), and
    ``--multi_gpu`` on a machine without GPUs starts N independent single-process runs that race on one output
    folder (each sees ``num_processes == 1`` under a WORLD_SIZE of N).
    """
    env = os.environ if env is None else env
    fix = (f"on CPUs launch with: ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N --num_machines 1 ...; "
           f"on GPUs check that {started} process(es) see their GPU")
    if "WORLD_SIZE" in env:
        asked = int(env["WORLD_SIZE"])
        require(asked == started, f"the launcher started {asked} processes but each sees {started} (no shared process group); {fix}")
    elif "MASTER_ADDR" in env and "ACCELERATE_USE_CPU" in env:
        require(started > 1, f"accelerate launch was asked for several processes but started one (--cpu ignores --num_processes); {fix}")


def shared_seed(accelerator: Accelerator, seed: int | None) -> int:
    """``seed``, or without one a random seed drawn by the main process and sent to all (they must agree)."""
    if seed is not None:
        return seed
    from accelerate.utils import broadcast_object_list

    drawn = broadcast_object_list([random.randrange(2**31)])[0]
    accelerator.dataloader_config.data_seed = drawn  # read when the engine prepares the data loader
    return int(drawn)


def check_resumable(folder: Path, run: RunConfig, method_cls: type) -> None:
    """Before any model loads: the checkpoint is complete, and was written by a run whose weights fit this one."""
    ckpt.verify_checkpoint(folder)
    check_not_past_the_end(folder, run, method_cls)
    saved = ckpt.read_state(folder).get("run")
    if not saved:  # written before checkpoints recorded their run
        return
    now = run.to_dict()
    # a checkpoint from before an option was renamed records it under its former name
    saved = {**saved, "method": read_renamed(type(run.method_config), saved.get("method") or {}, "method", warn=False)}
    require(saved.get("method_name") == run.method, f"{folder} was written by `train {saved.get('method_name')}`; "
            f"resume it with that method, or pass a new --output_dir")
    fields = [("train", "use_ema")] + [("method", name) for name in getattr(method_cls, "resume_fields", ())]
    for section, name in fields:
        was, is_ = saved.get(section, {}).get(name), now[section].get(name)
        require(was == is_, f"{folder} was trained with --{section}.{name} {_show(was)}, this run has {_show(is_)}; "
                f"resume with --{section}.{name} {_show(was)}, or pass a new --output_dir")


def check_not_past_the_end(folder: Path, run: RunConfig, method_cls: type) -> None:
    """A one-stage run resumed from a checkpoint past ``--max_train_steps`` would train nothing and only rewrite the
    export, card and config.yaml. (A method's own plan of stages cannot end earlier: its lengths are resume fields.)"""
    from distill_diffusion.trainers.methods.base import MethodBase

    step, end = ckpt.read_state(folder)["train"].get("global_step"), run.train.max_train_steps
    if getattr(method_cls, "stages", MethodBase.stages) is not MethodBase.stages or not isinstance(step, int):
        return
    require(step <= end, f"{folder} is at step {step}, past --max_train_steps {end}: resuming it would train nothing and "
            f"only rewrite the export; pass --max_train_steps above {step} to train on from it, or resume an earlier checkpoint")


def _show(value: object) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def build_engine(run: RunConfig, callbacks: Sequence[Callback] = ()) -> Engine:
    """Validate, load the teacher and data, build the method and the engine, resume if asked."""
    from distill_diffusion.data import build_train_dataset, collate_examples
    from distill_diffusion.models.loading import load_teacher, read_teacher_configs
    from distill_diffusion.models.sources import check_model_source
    from distill_diffusion.trainers.engine.data_loop import build_dataloader

    method_cls = get_method_class(run.method)
    require(bool(run.model.pretrained_model_name_or_path), "no teacher given; pass --pretrained_model_name_or_path (a diffusers folder, hub id or .safetensors file)")
    check_model_source(run.model)
    check_environment(run.train)
    teacher = read_teacher_configs(run.model)
    method_cls.check_before_loading(run, teacher)
    resume_from = ckpt.resolve_resume(run.train.resume_from_checkpoint, run.train.output_dir)
    if resume_from is not None:
        check_resumable(resume_from, run, method_cls)
    dataset = build_train_dataset(run.data, seed=run.train.seed)
    if teacher is not None:
        check_data_fits(run, dataset, teacher.unet)

    accelerator = make_accelerator(run.train)
    check_process_count(accelerator.num_processes)
    sharding.check_sharding(accelerator)
    seed = shared_seed(accelerator, run.train.seed)
    set_seed(seed)  # the same on every process: a method's random init (LoRA A, new projections, targets) must not differ per rank
    components = load_teacher(run.model, weight_dtype(run.train.mixed_precision), device=accelerator.device)
    if teacher is None:  # a single file whose configs only loading reveals
        check_data_fits(run, dataset, dict(components.unet.config))
    method = build_method(method_cls, run, components)
    if run.train.gradient_checkpointing:
        enable_gradient_checkpointing(method)
    if run.data.cache_latents:
        run.data.cache_dir = run.data.cache_dir or str(Path(run.train.output_dir) / "latent_cache")
        dataset = _cached(dataset, run, components, accelerator)
    loader = build_dataloader(dataset, run.train.train_batch_size, run.data.dataloader_num_workers, collate_examples, run.train.seed)
    engine = Engine(run, accelerator, method, loader, callbacks, plain_copy=_plain_copy(method_cls, run, accelerator))
    set_seed(seed, device_specific=True)  # models and data order are shared; noise and timesteps differ per process
    if resume_from is not None:
        engine.resume(resume_from)
    if accelerator.is_main_process:
        run.save(Path(run.train.output_dir) / "config.yaml")
        if run.train.report_to != "none":
            accelerator.init_trackers(run.train.tracker_project_name, config=_flat(run.to_dict()))
    return engine


def _plain_copy(method_cls: type, run: RunConfig, accelerator: Accelerator) -> Any:
    """Under FSDP2, how the engine builds an unsharded copy of the method to export and validate (None otherwise)."""
    if not sharding.is_sharded(accelerator):
        return None
    from distill_diffusion.models.loading import load_teacher

    return lambda: build_method(method_cls, run, load_teacher(run.model, weight_dtype(run.train.mixed_precision), device=accelerator.device))


def check_data_fits(run: RunConfig, dataset: Any, unet_config: Mapping[str, Any]) -> None:
    """Latents read from a folder (``data.source: latents``) must suit this teacher: its UNet's input channels, text
    width and (SDXL) pooled text embeddings, and the resolution they were made at must be ``data.resolution``."""
    if run.data.source != "latents":
        return
    from distill_diffusion.data.synthetic import check_latents_fit
    from distill_diffusion.models.conditioning import pooled_text_width
    from distill_diffusion.models.loading import cross_attention_width

    pooled = pooled_text_width(unet_config) if unet_config.get("addition_embed_type") == "text_time" else None
    check_latents_fit(dataset, run.data.resolution, int(unet_config["in_channels"]), cross_attention_width(unet_config), pooled)


def build_method(method_cls: type, run: RunConfig, components: Any) -> Any:
    """The method on the teacher's components, with the extra models it declares loaded like the teacher."""
    from distill_diffusion.models.loading import load_extra_model

    specs = method_cls.extra_models(run.method_config) if hasattr(method_cls, "extra_models") else {}
    dtype = weight_dtype(run.train.mixed_precision)
    extras = {name: load_extra_model(spec, run.model, dtype) for name, spec in specs.items()}
    return method_cls(components, run.method_config, **({"extra_models": extras} if extras else {}))


def enable_gradient_checkpointing(method: Any) -> None:
    """``--gradient_checkpointing`` on the modules of every phase that allows it, and on the frozen networks the
    method's gradient passes through (:meth:`~distill_diffusion.trainers.methods.base.MethodBase.enable_frozen_checkpointing`).

    Each block is recomputed in the mode it ran in (:func:`~distill_diffusion.models.checkpointing.checkpoint_in_mode`),
    so a module that serves in two roles (a LoRA student's UNet as its own teacher or discriminator backbone, adapters
    off) gets the gradients of the run without checkpointing.
    """
    from distill_diffusion.models.checkpointing import enable_checkpointing

    for phase in method.phases():
        names = phase.modules if phase.gradient_checkpointing is True else phase.gradient_checkpointing or ()
        for name in names:
            module = method.models[name]
            if not getattr(module, "_supports_gradient_checkpointing", False):
                raise UserError(f"--gradient_checkpointing: module {name!r} does not support it; drop the flag")
            enable_checkpointing(module)
    method.enable_frozen_checkpointing()


def _cached(dataset, run: RunConfig, components, accelerator: Accelerator):
    """Encode the dataset once (main process first, the others reuse the files) and read latents from disk."""
    from distill_diffusion.data import prepare_latent_cache
    from distill_diffusion.models.encode import encode_conditioning, encode_images

    def images(pixels: torch.Tensor) -> torch.Tensor:
        return encode_images(components.vae, pixels.to(components.vae.device, components.vae.dtype))

    def texts(prompts: list[str]) -> Any:
        return encode_conditioning(components, prompts)

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


def train(run: RunConfig, callbacks: Sequence[Callback] = ()) -> Path:
    """Run training to the end, export, and upload the export under ``--push_to_hub``; returns the output folder.
    ``callbacks`` see every step's logs."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("distill_diffusion").setLevel(logging.INFO)
    engine = build_engine(run, callbacks)
    engine.train()
    engine.export()
    engine.accelerator.end_training()
    if run.train.push_to_hub and engine.accelerator.is_main_process:
        push_to_hub(run, [stage.name for stage in engine.stages if stage.export])
    return engine.output_dir
