"""Typed run configuration: model, data and training sections, per-phase optimizer settings, the method's section.

Every section is a dataclass validated in ``__post_init__`` (bad values raise :class:`UserError`
naming the field and the fix); ``Literal`` fields list their valid values. A run config is built from a
YAML config (a file, or a config shipped in ``distill_diffusion/configs`` by name: ``tiny/lcm_lora``),
then dotted command-line overrides (``--train.learning_rate 1e-4``, ``--phases.unet.learning_rate 1e-5``)
or diffusers-style bare flags (``--learning_rate 1e-4``, resolved to the one section that has the field).
The method class then checks rules across sections (``check_config``). The resolved config is saved
next to every output and loads back with ``--config``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

# the loaders are re-exported, so the Python API imports a config's loading and building from one module
from distill_diffusion.config_files import (  # noqa: F401
    CONFIGS_DIR,
    check_config_method,
    config_names,
    load_config,
    load_yaml,
)
from distill_diffusion.config_types import (
    build_dataclass,
    check_choices,
    public_dict,
    read_renamed,
    renamed_overrides,
    set_dotted,
)
from distill_diffusion.errors import require
from distill_diffusion.hub import HubOptions

#: numpy/accelerate seeds are unsigned 32-bit.
MAX_SEED = 2**32 - 1


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    require(ok, f"{name}={value!r} must be {'>= 0' if allow_zero else '> 0'}; pass a {'non-negative' if allow_zero else 'positive'} value")


@dataclass
class ModelConfig:
    """Which teacher to load (a local diffusers folder, a hub id, or a single ``.safetensors`` file)."""

    #: Teacher: a diffusers folder, a hub id, or a single .safetensors checkpoint.
    pretrained_model_name_or_path: str = ""
    #: Hub revision (branch, tag or commit) of the teacher.
    revision: str | None = None
    #: Weight file variant of the teacher, e.g. fp16.
    variant: str | None = None
    #: For single-file checkpoints: a local diffusers folder (or hub id) holding the component configs.
    original_config: str | None = None
    #: Load only local files, never download from the hub (tests and air-gapped clusters).
    local_files_only: bool = False
    #: Another AutoencoderKL (a folder or hub id) used instead of the teacher's VAE, e.g. an fp16-safe SDXL VAE.
    pretrained_vae_model_name_or_path: str | None = None

    def __post_init__(self) -> None:
        self.pretrained_model_name_or_path = str(self.pretrained_model_name_or_path or "")


@dataclass
class DataConfig:
    """Captioned images for training (see ``distill_diffusion.data``)."""

    #: imagefolder (folder with metadata.jsonl), hf (a `datasets` name or path), webdataset (tar shards),
    #: latents (a folder of latents and text embeddings written by `distill-diffusion prepare-synthetic`).
    source: Literal["imagefolder", "hf", "webdataset", "latents"] = "imagefolder"
    #: Image folder (source imagefolder): images plus metadata.jsonl with file_name and text.
    train_data_dir: str | None = None
    #: A `datasets` name or local path (source hf).
    dataset_name: str | None = None
    #: The `datasets` configuration name, if the dataset has several.
    dataset_config_name: str | None = None
    #: Split to train on (source hf).
    dataset_split: str = "train"
    #: Webdataset shard spec, e.g. ``/data/shards/{00000..00099}.tar``.
    shards: str | None = None
    #: Latent folder (source latents): made by `distill-diffusion prepare-synthetic`, or a latent cache.
    latents_dir: str | None = None
    #: Column (or webdataset key) of the images.
    image_column: str = "image"
    #: Column (or webdataset key) of the captions.
    caption_column: str = "text"
    #: Training image size in pixels (a multiple of 8); images are resized and cropped to it (source latents:
    #: the resolution the latents were made at).
    resolution: int = 512
    #: Crop the centre (true) or a random square (false).
    center_crop: bool = True
    #: Flip images horizontally at random.
    random_flip: bool = False
    #: SDXL micro-conditioning (time ids): each image's own original size and crop offset (data, as diffusers' SDXL
    #: training scripts), or the resolution and no crop for every image (fixed); unused by SD 1.x/2.x.
    micro_conditioning: Literal["data", "fixed"] = "data"
    #: Share of captions replaced by the empty prompt (caption dropout, for CFG training).
    proportion_empty_prompts: float = 0.0
    #: Largest tolerated share of unreadable images before the run stops with an error.
    max_bad_fraction: float = 0.05
    #: Train on the first N samples only (quick tries).
    max_train_samples: int | None = None
    #: Data-loading worker processes (0 loads in the training process).
    dataloader_num_workers: int = 0
    #: Pre-compute VAE latents and text embeddings once (disables random crop/flip per epoch).
    cache_latents: bool = False
    #: Folder of the latent cache (default: inside output_dir).
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        check_choices(self, "data")
        _positive("data.resolution", self.resolution)
        require(self.resolution % 8 == 0, f"data.resolution={self.resolution} must be a multiple of 8 (SD's VAE downsamples by 8); pick e.g. 512 or 768")
        require(0.0 <= self.proportion_empty_prompts <= 1.0, f"data.proportion_empty_prompts={self.proportion_empty_prompts} must be in [0, 1]; pass e.g. 0.1")
        require(0.0 <= self.max_bad_fraction <= 1.0, f"data.max_bad_fraction={self.max_bad_fraction} must be in [0, 1]; pass e.g. 0.05")
        _positive("data.dataloader_num_workers", self.dataloader_num_workers, allow_zero=True)
        if self.max_train_samples is not None:
            _positive("data.max_train_samples", self.max_train_samples)


@dataclass
class TrainConfig(HubOptions):
    """The engine's settings (and the Hub upload's, from :class:`HubOptions`); names follow the diffusers training scripts."""

    #: Folder of the run: checkpoints, config.yaml, logs and the exported model.
    output_dir: str = "outputs/run"
    #: Seed of noise, timesteps and data order (None: a random seed, recorded).
    seed: int | None = 0
    #: Images per device per micro-batch.
    train_batch_size: int = 4
    #: Optimizer steps to train.
    max_train_steps: int = 1000
    #: Micro-batches per optimizer step.
    gradient_accumulation_steps: int = 1
    #: Peak learning rate (phases.PHASE.learning_rate overrides it per phase).
    learning_rate: float = 1e-4
    #: Multiply the learning rate by batch size x accumulation x processes.
    scale_lr: bool = False
    #: Learning-rate schedule after the warm-up (diffusers get_scheduler names).
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"] = "constant"
    #: Steps of linear warm-up from 0 to the learning rate.
    lr_warmup_steps: int = 0
    #: Restarts of cosine_with_restarts.
    lr_num_cycles: int = 1
    #: Power of the polynomial schedule.
    lr_power: float = 1.0
    #: Optimizer (AdamW, as the diffusers scripts).
    optimizer: Literal["adamw"] = "adamw"
    #: bitsandbytes' 8-bit AdamW (pip install 'distill-diffusion[bnb]').
    use_8bit_adam: bool = False
    #: Adam beta1 (phases.PHASE.adam_beta1 overrides it per phase; likewise beta2 and weight decay).
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    #: Adam epsilon.
    adam_epsilon: float = 1e-8
    #: Clip the gradient norm to this (0 = no clipping).
    max_grad_norm: float = 1.0
    #: Autocast dtype; the frozen teacher is stored in it too (fp16 needs a CUDA GPU).
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    #: Recompute activations in the backward pass: less memory, slower steps.
    gradient_checkpointing: bool = False
    #: Allow TF32 matrix products on Ampere and newer GPUs.
    allow_tf32: bool = False
    #: Keep an EMA of the trained weights and export it.
    use_ema: bool = False
    #: Decay of that EMA.
    ema_decay: float = 0.9999
    #: Save a resumable checkpoint every N steps.
    checkpointing_steps: int = 500
    #: Keep only the newest N checkpoints.
    checkpoints_total_limit: int | None = None
    #: A checkpoint folder, or latest (the newest in output_dir) to resume from.
    resume_from_checkpoint: str | None = None
    #: Where to log metrics.
    report_to: Literal["none", "tensorboard", "wandb", "all"] = "none"
    #: Tracker log folder, inside output_dir.
    logging_dir: str = "logs"
    #: Project name in tensorboard or wandb.
    tracker_project_name: str = "distill-diffusion"
    #: Make validation images every N steps (0 = never).
    validation_steps: int = 0
    #: Prompts for validation images: comma-separated (``a cat,a dog``), a JSON list for prompts with commas
    #: (``'["a cat, sitting", "a dog"]'``), or one existing file, read as validation_prompts_file.
    validation_prompts: list[str] = field(default_factory=list)
    #: A text file with one validation prompt per line (commas allowed), or a JSON list; fills validation_prompts.
    validation_prompts_file: str | None = None
    #: Images per validation prompt.
    num_validation_images: int = 1
    #: Sampling steps of the validation images.
    validation_inference_steps: int = 25
    #: Stop with an error after this many non-finite losses in a row (each is skipped and counted).
    max_nonfinite_steps: int = 10
    #: Show the tqdm progress bar (off in tests and benchmarks).
    progress_bar: bool = True

    def __post_init__(self) -> None:
        require(bool(self.output_dir.strip()), "train.output_dir is empty; pass a folder for the run, e.g. --output_dir outputs/run")
        self.check_hub_options(self.output_dir)
        require(self.seed is None or 0 <= self.seed <= MAX_SEED, f"train.seed={self.seed} is out of range; pass a seed in [0, {MAX_SEED}]")
        for name in ("train_batch_size", "max_train_steps", "gradient_accumulation_steps", "learning_rate", "max_nonfinite_steps",
                     "lr_num_cycles", "lr_power", "num_validation_images", "validation_inference_steps"):
            _positive(f"train.{name}", getattr(self, name))
        for name in ("lr_warmup_steps", "max_grad_norm", "adam_weight_decay", "validation_steps"):
            _positive(f"train.{name}", getattr(self, name), allow_zero=True)
        _positive("train.checkpointing_steps", self.checkpointing_steps)
        if self.checkpoints_total_limit is not None:
            _positive("train.checkpoints_total_limit", self.checkpoints_total_limit)
        check_choices(self, "train")
        require(0.0 < self.ema_decay < 1.0, f"train.ema_decay={self.ema_decay} must be in (0, 1); pass e.g. 0.9999")
        require(0.0 <= self.adam_beta1 < 1.0 and 0.0 <= self.adam_beta2 < 1.0, "train.adam_beta1/adam_beta2 must be in [0, 1); pass e.g. 0.9 and 0.999")
        self._read_validation_prompts()
        require(not self.validation_steps or any(p.strip() for p in self.validation_prompts), f"train.validation_steps="
                f"{self.validation_steps} but no validation prompt; pass --validation_prompts 'a,b' (or a file), or --validation_steps 0")

    def _read_validation_prompts(self) -> None:
        """Fill ``validation_prompts`` from the file, or a file given as the only prompt (as ``generate --prompts`` takes)."""
        from distill_diffusion.prompts import load_prompts

        if not self.validation_prompts_file and len(self.validation_prompts) == 1 and Path(self.validation_prompts[0]).expanduser().is_file():
            self.validation_prompts_file, self.validation_prompts = self.validation_prompts[0], []
        if not self.validation_prompts_file:
            return
        prompts = load_prompts(self.validation_prompts_file)  # the saved config.yaml holds both: equal lists are accepted
        require(not self.validation_prompts or self.validation_prompts == prompts,
                "train.validation_prompts and train.validation_prompts_file are both given and differ; pass only one")
        self.validation_prompts = prompts


@dataclass
class PhaseConfig:
    """One phase's overrides of the train section's optimizer settings (``phases: {discriminator: {...}}``).

    A value left None takes the train section's (times the phase's own ``lr_scale`` for the learning rate).
    """

    #: Learning rate of this phase's optimizer (None: train.learning_rate).
    learning_rate: float | None = None
    #: Adam beta1 of this phase (None: train.adam_beta1); GAN discriminators often use 0.
    adam_beta1: float | None = None
    #: Adam beta2 of this phase (None: train.adam_beta2).
    adam_beta2: float | None = None
    #: Weight decay of this phase (None: train.adam_weight_decay).
    adam_weight_decay: float | None = None
    #: Gradient clipping norm of this phase's parameters (None: train.max_grad_norm; 0 = off).
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        if self.learning_rate is not None:
            _positive("phases.learning_rate", self.learning_rate)
        for name in ("adam_beta1", "adam_beta2"):
            value = getattr(self, name)
            require(value is None or 0.0 <= value < 1.0, f"phases.{name}={value} must be in [0, 1); pass e.g. 0.9")
        for name in ("adam_weight_decay", "max_grad_norm"):
            if getattr(self, name) is not None:
                _positive(f"phases.{name}", getattr(self, name), allow_zero=True)


@dataclass
class RunConfig:
    """A whole run: the three shared sections, per-phase optimizer overrides and the method's own section."""

    method: str
    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    method_config: Any
    #: Optimizer overrides by phase name (``phases.<phase>``); phases not named use the train section's values.
    phases: dict[str, PhaseConfig] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method_name": self.method,
            "model": public_dict(self.model),
            "data": public_dict(self.data),
            "train": public_dict(self.train),  # never the Hub token
            "phases": {name: public_dict(p) for name, p in self.phases.items()},
            "method": public_dict(self.method_config),
        }

    def save(self, path: str | Path) -> Path:
        """Write the resolved config as YAML (loadable again with ``--config``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
#: Top-level keys of a config: ``method_name`` names the method it is for (every shipped config and every saved
#: run config has it), then the sections.
CONFIG_KEYS = ("method_name", *SECTIONS, "phases", "method")


def parse_overrides(args: Sequence[str]) -> list[tuple[str, str]]:
    """Turn ``["--train.lr", "1", "--flag", "--x=y"]`` into ``[("train.lr", "1"), ("flag", "true"), ("x", "y")]``."""
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        require(arg.startswith("--") and len(arg) > 2, f"unexpected argument {arg!r}; options look like --section.name VALUE")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]
            i += 2
        else:
            value = "true"  # a bare flag such as --gradient_checkpointing
            i += 1
        pairs.append((key.replace("-", "_"), value))
    return pairs


def _resolve_key(key: str, config_cls: type) -> tuple[str, str]:
    """Map ``section.name`` (``name`` may be dotted: a nested option or ``phases.<phase>.<field>``) or a bare
    diffusers-style ``name`` to (section, name). Bare names never resolve to ``phases``: ``--learning_rate``
    is the train section's."""
    classes = {**SECTIONS, "method": config_cls}
    if "." in key:
        section, name = key.split(".", 1)
        require(section in (*classes, "phases"), f"unknown section {section!r} in --{key}; use one of: {', '.join((*classes, 'phases'))}")
        require(section != "phases" or "." in name, f"--{key} names no option; write --phases.PHASE.OPTION VALUE")
        return section, name
    owners = [s for s, cls in classes.items() if key in {f.name for f in dataclasses.fields(cls)}]
    require(bool(owners), f"unknown option --{key}; use --section.name with a section of: {', '.join(classes)}")
    require(len(owners) == 1, f"option --{key} is ambiguous; write it as one of: {', '.join(f'--{s}.{key}' for s in owners)}")
    return owners[0], key


def _section(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """One section of a config as a dict; a scalar or list there (``train: 5``) is a UserError."""
    value = config.get(name)
    require(value is None or isinstance(value, Mapping),
            f"config section {name!r} holds {value!r}, not a mapping; write it as '{name}:' followed by "
            "indented 'option: value' lines")
    return dict(value or {})


def _build_phases(raw: Mapping[str, Any], phase_names: Sequence[str]) -> dict[str, PhaseConfig]:
    """The ``phases`` section: each key a phase of the method, each value that phase's :class:`PhaseConfig`."""
    unknown = sorted(map(str, set(raw) - set(phase_names)))
    require(not unknown, f"unknown phase(s) {', '.join(unknown)} in the phases section; this method's phases: "
            f"{', '.join(phase_names)}")
    return {name: build_dataclass(PhaseConfig, _section(raw, name), f"phases.{name}") for name in raw}


def _method_parts(method_cls: type) -> tuple[type, tuple[str, ...], Any]:
    """(config class, phase names, cross-section check) of a method class; a bare config dataclass also works
    (tests, benchmarks), with the default phase ``unet`` and no cross-section check."""
    if dataclasses.is_dataclass(method_cls):
        return method_cls, ("unet",), None
    return method_cls.config_class, tuple(getattr(method_cls, "phase_names", ("unet",))), getattr(method_cls, "check_config", None)


def build_run_config(
    method: str,
    method_cls: type,
    config: Mapping[str, Any] | None = None,
    overrides: Sequence[tuple[str, str]] = (),
) -> RunConfig:
    """Merge a config (:func:`load_config`) and overrides, validate every section, then run the method's cross-section checks.

    ``method_cls`` is the method class (its ``config_class`` is the method section, its ``phase_names`` the
    valid keys of ``phases``, its ``check_config(run)`` the rules across sections), or a config dataclass.
    """
    config_cls, phase_names, check_config = _method_parts(method_cls)
    config = config or {}
    extra = sorted(map(str, set(config) - set(CONFIG_KEYS)))
    require(not extra, f"unknown config section(s) {', '.join(extra)}; valid: {', '.join(CONFIG_KEYS)}")
    check_config_method(config, method)
    raw = {s: _section(config, s) for s in (*SECTIONS, "phases", "method")}
    raw["method"] = read_renamed(config_cls, raw["method"], "method")  # a config or saved run from before a rename
    for key, value in renamed_overrides(config_cls, overrides, "method"):
        section, name = _resolve_key(key, config_cls)
        set_dotted(raw[section], name, value, key)
    built = {s: build_dataclass(cls, raw[s], s) for s, cls in SECTIONS.items()}
    run = RunConfig(method=method, method_config=build_dataclass(config_cls, raw["method"], "method"),
                    phases=_build_phases(raw["phases"], phase_names), **built)
    if check_config is not None:
        check_config(run)
    return run
