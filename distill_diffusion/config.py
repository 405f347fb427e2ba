"""Typed run configuration: model, data and training sections plus a per-method section.

Every section is a dataclass validated in ``__post_init__`` (bad values raise :class:`UserError`
naming the field and the fix). A run config is built from a YAML preset, then dotted command-line
overrides (``--train.learning_rate 1e-4``) or diffusers-style bare flags (``--learning_rate 1e-4``,
resolved to the one section that has the field). The resolved config is saved next to every output.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distill_diffusion.errors import UserError, require

MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)
REPORT_TO = ("none", "tensorboard", "wandb", "all")
DATA_SOURCES = ("imagefolder", "hf", "webdataset")
#: numpy/accelerate seeds are unsigned 32-bit.
MAX_SEED = 2**32 - 1


def _choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    require(value in choices, f"{name}={value!r} is not valid; use one of: {', '.join(map(str, choices))}")


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    require(ok, f"{name}={value!r} must be {'>= 0' if allow_zero else '> 0'}; pass a {'non-negative' if allow_zero else 'positive'} value")


@dataclass
class ModelConfig:
    """Which teacher to load (a local diffusers folder, a hub id, or a single ``.safetensors`` file)."""

    pretrained_model_name_or_path: str = ""
    revision: str | None = None
    variant: str | None = None
    #: For single-file checkpoints: a local diffusers folder (or hub id) holding the component configs.
    original_config: str | None = None
    #: Allow hub downloads. Off means local files only (tests and air-gapped clusters).
    local_files_only: bool = False

    def __post_init__(self) -> None:
        self.pretrained_model_name_or_path = str(self.pretrained_model_name_or_path or "")


@dataclass
class DataConfig:
    """Captioned images for training (see ``distill_diffusion.data``)."""

    #: imagefolder (folder with metadata.jsonl), hf (a `datasets` name or path), webdataset (tar shards).
    source: str = "imagefolder"
    train_data_dir: str | None = None
    dataset_name: str | None = None
    dataset_config_name: str | None = None
    dataset_split: str = "train"
    #: Webdataset shard spec, e.g. ``/data/shards/{00000..00099}.tar``.
    shards: str | None = None
    image_column: str = "image"
    caption_column: str = "text"
    resolution: int = 512
    center_crop: bool = True
    random_flip: bool = False
    #: Share of captions replaced by the empty prompt (caption dropout, for CFG training).
    proportion_empty_prompts: float = 0.0
    #: Largest tolerated share of unreadable images before the run stops with an error.
    max_bad_fraction: float = 0.05
    max_train_samples: int | None = None
    dataloader_num_workers: int = 0
    #: Pre-compute VAE latents and text embeddings once (disables random crop/flip per epoch).
    cache_latents: bool = False
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        _choice("data.source", self.source, DATA_SOURCES)
        _positive("data.resolution", self.resolution)
        require(self.resolution % 8 == 0, f"data.resolution={self.resolution} must be a multiple of 8 (SD's VAE downsamples by 8); pick e.g. 512 or 768")
        require(0.0 <= self.proportion_empty_prompts <= 1.0, f"data.proportion_empty_prompts={self.proportion_empty_prompts} must be in [0, 1]; pass e.g. 0.1")
        require(0.0 <= self.max_bad_fraction <= 1.0, f"data.max_bad_fraction={self.max_bad_fraction} must be in [0, 1]; pass e.g. 0.05")
        _positive("data.dataloader_num_workers", self.dataloader_num_workers, allow_zero=True)
        if self.max_train_samples is not None:
            _positive("data.max_train_samples", self.max_train_samples)


@dataclass
class TrainConfig:
    """The engine's settings; names follow the diffusers training scripts."""

    output_dir: str = "outputs/run"
    seed: int | None = 0
    train_batch_size: int = 4
    max_train_steps: int = 1000
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    scale_lr: bool = False
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    lr_num_cycles: int = 1
    lr_power: float = 1.0
    optimizer: str = "adamw"
    use_8bit_adam: bool = False
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    allow_tf32: bool = False
    use_ema: bool = False
    ema_decay: float = 0.9999
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None
    report_to: str = "none"
    logging_dir: str = "logs"
    tracker_project_name: str = "distill-diffusion"
    validation_steps: int = 0
    #: Prompts for validation images. On the command line: comma-separated (``a cat,a dog``) or, for prompts
    #: that contain commas, a JSON list (``'["a cat, sitting", "a dog"]'``); or use validation_prompts_file.
    validation_prompts: list[str] = field(default_factory=list)
    #: A text file with one validation prompt per line (commas allowed), or a JSON list; fills validation_prompts.
    validation_prompts_file: str | None = None
    num_validation_images: int = 1
    validation_inference_steps: int = 25
    #: Stop with an error after this many non-finite losses in a row (each is skipped and counted).
    max_nonfinite_steps: int = 10
    #: Show the tqdm progress bar (off in tests and benchmarks).
    progress_bar: bool = True

    def __post_init__(self) -> None:
        require(bool(self.output_dir.strip()), "train.output_dir is empty; pass a folder for the run, e.g. --output_dir outputs/run")
        require(self.seed is None or 0 <= self.seed <= MAX_SEED, f"train.seed={self.seed} is out of range; pass a seed in [0, {MAX_SEED}]")
        for name in ("train_batch_size", "max_train_steps", "gradient_accumulation_steps", "learning_rate", "max_nonfinite_steps",
                     "lr_num_cycles", "lr_power", "num_validation_images", "validation_inference_steps"):
            _positive(f"train.{name}", getattr(self, name))
        for name in ("lr_warmup_steps", "max_grad_norm", "adam_weight_decay", "validation_steps"):
            _positive(f"train.{name}", getattr(self, name), allow_zero=True)
        _positive("train.checkpointing_steps", self.checkpointing_steps)
        if self.checkpoints_total_limit is not None:
            _positive("train.checkpoints_total_limit", self.checkpoints_total_limit)
        _choice("train.mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _choice("train.lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        _choice("train.report_to", self.report_to, REPORT_TO)
        _choice("train.optimizer", self.optimizer, ("adamw",))
        require(0.0 < self.ema_decay < 1.0, f"train.ema_decay={self.ema_decay} must be in (0, 1); pass e.g. 0.9999")
        require(0.0 <= self.adam_beta1 < 1.0 and 0.0 <= self.adam_beta2 < 1.0, "train.adam_beta1/adam_beta2 must be in [0, 1); pass e.g. 0.9 and 0.999")
        if self.validation_prompts_file:
            self._read_validation_prompts()

    def _read_validation_prompts(self) -> None:
        """Fill ``validation_prompts`` from the file. The saved config.yaml holds both, so equal lists are accepted."""
        # imported here: distill_diffusion.data imports this module
        from distill_diffusion.data.prompts import load_prompts

        prompts = load_prompts(self.validation_prompts_file)
        require(not self.validation_prompts or self.validation_prompts == prompts,
                "train.validation_prompts and train.validation_prompts_file are both given and differ; pass only one")
        self.validation_prompts = prompts


# --------------------------------------------------------------------------------------------------
# Building dataclasses from plain data, with clear errors


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _split_list(name: str, value: str) -> list[Any]:
    """A list option given as one string: a JSON list (``'["a, b", "c"]'``, items may hold commas) or comma-separated."""
    if value.lstrip().startswith("["):
        try:
            items = json.loads(value)
        except json.JSONDecodeError as exc:
            raise UserError(f"{name}={value!r} is not a valid JSON list ({exc.msg}); write e.g. '[\"a, b\", \"c\"]'") from None
        require(isinstance(items, list), f"{name}={value!r} must be a JSON list; write e.g. '[\"a\", \"b\"]'")
        return items
    return [v for v in value.split(",") if v]


def _number(name: str, value: Any, tp: type) -> int | float:
    """``value`` as a finite int or float; NaN and infinities are refused for every numeric option."""
    require(not isinstance(value, (bool, list, dict)), f"{name}={value!r} must be a {tp.__name__}; pass a single number")
    try:
        if isinstance(value, str):
            text = value.strip()
            number: float = float(text) if tp is float else _parse_int(text)
        else:
            number = float(value) if tp is float else value
    except (TypeError, ValueError):
        raise UserError(f"{name}={value!r} is not a number; pass a {tp.__name__}") from None
    require(isinstance(number, (int, float)), f"{name}={value!r} must be a {tp.__name__}; pass a single number")
    require(math.isfinite(number), f"{name}={value!r} is not a finite number; pass a finite {tp.__name__}")
    if tp is int:
        require(float(number) == int(number), f"{name}={value!r} must be a whole number; pass e.g. {round(number)}")
        return int(number)
    return float(number)


def _parse_int(text: str) -> int | float:
    """``"12"``, ``"0x10"``, and also ``"1e3"`` or ``"2.0"`` (checked to be whole by the caller)."""
    try:
        return int(text, 0)
    except ValueError:
        return float(text)


def _convert(name: str, value: Any, tp: Any) -> Any:
    """Convert ``value`` (from YAML or a command-line string) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            require(type(None) in args, f"{name} may not be empty; give a value")
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(name, value, inner[0])
    if origin in (list, Sequence):
        if isinstance(value, str):
            value = _split_list(name, value)
        require(isinstance(value, (list, tuple)), f"{name}={value!r} must be a list; write a YAML list, or a,b or '[\"a\", \"b\"]' on the command line")
        return [_convert(name, v, args[0] if args else str) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        require(text in ("true", "false", "1", "0", "yes", "no"), f"{name}={value!r} must be true or false; write true or false")
        return text in ("true", "1", "yes")
    if tp in (int, float):
        return _number(name, value, tp)
    if tp is str:
        require(not isinstance(value, (list, dict)), f"{name}={value!r} must be a string; write plain text")
        return str(value)
    return value


def build_dataclass(cls: type, data: Mapping[str, Any] | None, section: str) -> Any:
    """Instantiate ``cls`` from ``data``; unknown keys fail with the list of valid ones."""
    data = dict(data or {})
    for key in data:
        require(isinstance(key, str), f"{section} option name {key!r} is not a name; write options as name: value")
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    require(not unknown, f"unknown {section} option(s) {', '.join(unknown)}; valid ones: {', '.join(sorted(types_))}")
    return cls(**{k: _convert(f"{section}.{k}", v, types_[k]) for k, v in data.items()})


@dataclass
class RunConfig:
    """A whole run: the three shared sections and the method's own section."""

    method: str
    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    method_config: Any

    def to_dict(self) -> dict[str, Any]:
        return {
            "method_name": self.method,
            "model": dataclasses.asdict(self.model),
            "data": dataclasses.asdict(self.data),
            "train": dataclasses.asdict(self.train),
            "method": dataclasses.asdict(self.method_config),
        }

    def save(self, path: str | Path) -> Path:
        """Write the resolved config as YAML (loadable again with ``--config``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML preset; a missing or malformed file is a :class:`UserError`."""
    path = Path(path)
    state = "is not a file" if path.exists() else "does not exist"
    require(path.is_file(), f"config file {path} {state}; pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not UTF-8 text (a binary file?); pass a YAML file to --config") from None
    except OSError as exc:
        raise UserError(f"config file {path} cannot be read ({exc.strerror}); check its permissions") from None
    except (yaml.YAMLError, ValueError) as exc:  # PyYAML raises ValueError for impossible dates such as 2001-13-45
        first = str(exc).splitlines()[0] if str(exc) else "parse error"
        raise UserError(f"config file {path} is not valid YAML ({first}); fix the syntax") from None
    require(isinstance(data, dict), f"config file {path} must hold a mapping of sections; write 'model:', 'data:', 'train:' and 'method:' sections")
    return data


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


def _resolve_key(key: str, method_cls: type) -> tuple[str, str]:
    """Map ``section.name`` or a bare diffusers-style ``name`` to (section, field)."""
    classes = {**SECTIONS, "method": method_cls}
    if "." in key:
        section, name = key.split(".", 1)
        require(section in classes, f"unknown section {section!r} in --{key}; use one of: {', '.join(classes)}")
        return section, name
    owners = [s for s, cls in classes.items() if key in {f.name for f in dataclasses.fields(cls)}]
    require(bool(owners), f"unknown option --{key}; use --section.name with a section of: {', '.join(classes)}")
    require(len(owners) == 1, f"option --{key} is ambiguous; write it as one of: {', '.join(f'--{s}.{key}' for s in owners)}")
    return owners[0], key


def _section(preset: Mapping[str, Any], name: str) -> dict[str, Any]:
    """One section of a preset as a dict; a scalar or list there (``train: 5``) is a UserError."""
    value = preset.get(name)
    require(value is None or isinstance(value, Mapping),
            f"config section {name!r} holds {value!r}, not a mapping; write it as '{name}:' followed by "
            "indented 'option: value' lines")
    return dict(value or {})


def build_run_config(
    method: str,
    method_cls: type,
    preset: Mapping[str, Any] | None = None,
    overrides: Sequence[tuple[str, str]] = (),
) -> RunConfig:
    """Merge a preset and overrides, then validate every section."""
    preset = preset or {}
    extra = sorted(map(str, set(preset) - {*SECTIONS, "method", "method_name"}))
    require(not extra, f"unknown config section(s) {', '.join(extra)}; valid: model, data, train, method")
    raw = {s: _section(preset, s) for s in (*SECTIONS, "method")}
    for key, value in overrides:
        section, name = _resolve_key(key, method_cls)
        raw[section][name] = value
    built = {s: build_dataclass(cls, raw[s], s) for s, cls in SECTIONS.items()}
    method_config = build_dataclass(method_cls, raw["method"], "method")
    return RunConfig(method=method, method_config=method_config, **built)
