"""Load a frozen Stable Diffusion 1.x/2.x or SDXL teacher from a diffusers folder, a hub id or one .safetensors file.

The source is checked and its family read first (:mod:`distill_diffusion.models.sources`); then stock diffusers loads
it: ``from_pretrained`` for folders and hub ids (``local_files_only`` forbids downloads, and a repo that cannot be found
becomes a :class:`UserError` naming the fix, not a traceback), ``from_single_file(config=ModelConfig.original_config)``
for a single file. SDXL loads through ``StableDiffusionXLPipeline`` (Podell et al., arXiv:2307.01952). The prediction
type is the scheduler config's. ``ModelConfig.pretrained_vae_model_name_or_path`` swaps in another ``AutoencoderKL``
(SDXL's fp16-fix VAE), as diffusers' SDXL training scripts do.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import torch

from distill_diffusion.config import ModelConfig
from distill_diffusion.core.parameterization import PREDICTION_TYPES
from distill_diffusion.core.schedule import NoiseSchedule
from distill_diffusion.errors import UserError, require
from distill_diffusion.models.sources import (
    HUB_ID,
    REFINER_ERROR,
    check_model_source,
    detect_family,
    looks_like_path,
    read_json,
    source_family,
)


@dataclass
class SDComponents:
    """A loaded teacher: frozen modules, its own scheduler, and what was detected about it."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    family: str  # "sd1" | "sd2" | "sdxl"
    prediction_type: str
    source: str
    #: Loads the UNet again from its source in a given dtype (set by :func:`load_teacher`).
    reload_unet: Any = None
    #: SDXL's second text encoder (``CLIPTextModelWithProjection``) and its tokenizer; None for SD 1.x/2.x.
    text_encoder_2: Any = None
    tokenizer_2: Any = None
    #: The pipeline's ``force_zeros_for_empty_prompt`` (SDXL base: true): CFG's unconditional input is zeros.
    force_zeros_for_empty_prompt: bool = False

    @property
    def text_encoders(self) -> list[Any]:
        """The text encoders that exist (one for SD 1.x/2.x, two for SDXL)."""
        return [m for m in (self.text_encoder, self.text_encoder_2) if m is not None]

    def fp32_unet_state(self) -> dict[str, torch.Tensor]:
        """The UNet's weights in fp32 as stored, for trainable copies (a full student, a fine-tune).

        The teacher lives in the weight dtype (fp16/bf16 under mixed precision); upcasting it would start the
        student from rounded weights, so those are read from the source again instead.
        """
        if next(self.unet.parameters()).dtype == torch.float32 or self.reload_unet is None:
            return {k: v.float() for k, v in self.unet.state_dict().items()}
        return self.reload_unet(torch.float32).state_dict()

    @cached_property
    def schedule(self) -> NoiseSchedule:
        """The training noise schedule, read from the checkpoint's own scheduler config (built once)."""
        return NoiseSchedule.from_scheduler_config(self.scheduler.config)


def _load_error(cfg: ModelConfig, kind: str, exc: Exception) -> UserError:
    first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:300]
    name = cfg.pretrained_model_name_or_path
    if kind != "hub":
        return UserError(f"cannot load model {name!r} ({first}); check its files, model.variant and model.original_config")
    if cfg.local_files_only:
        return UserError(
            f"cannot load model {name!r} from local files ({first}); download it first "
            f"(huggingface-cli download {name}) or set --model.local_files_only false"
        )
    return UserError(f"cannot load model {name!r} ({first}); check the id/revision/variant, network and HF token, or pass a local folder")


@dataclass(frozen=True)
class TeacherConfigs:
    """The teacher's pipeline index, UNet and scheduler configs, read without its weights (checks before loading)."""

    model_index: dict[str, Any]
    unet: dict[str, Any]
    scheduler: dict[str, Any]

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.get("num_train_timesteps", 1000))

    def meta_unet(self) -> Any:
        """The UNet built on the meta device: its module tree without memory or weights (milliseconds)."""
        from diffusers import UNet2DConditionModel

        try:
            with torch.device("meta"):
                return UNet2DConditionModel.from_config(self.unet)
        except Exception as exc:  # diffusers raises ValueError, TypeError or KeyError for configs it cannot build
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise UserError(f"the teacher's UNet config does not build a UNet2DConditionModel ({exc.__class__.__name__}: "
                            f"{first}); repair unet/config.json or pass another model") from None


def cross_attention_width(unet_config: Any) -> int:
    """Width of the text embeddings a UNet attends to (``cross_attention_dim``, per stage in some configs: the first)."""
    dim = unet_config["cross_attention_dim"]
    return int(dim[0] if isinstance(dim, (list, tuple)) else dim)


_CONFIG_FILES = ("model_index.json", "unet/config.json", "scheduler/scheduler_config.json")


def read_teacher_configs(cfg: ModelConfig) -> TeacherConfigs | None:
    """The teacher's configs without its weights: from a local folder (or a single file's local
    ``original_config``) on disk, from the hub through diffusers' ``load_config`` (small JSON files).

    None for a single file whose configs diffusers infers while loading (no local ``original_config``).
    """
    kind = check_model_source(cfg)
    if kind == "hub":
        return _hub_configs(cfg)
    root = Path(cfg.pretrained_model_name_or_path if kind == "diffusers_dir" else cfg.original_config or "").expanduser()
    if kind == "single_file" and not (cfg.original_config and root.is_dir()):
        return None
    return TeacherConfigs(*(read_json(root / name) for name in _CONFIG_FILES))


def _hub_configs(cfg: ModelConfig) -> TeacherConfigs:
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    src, common = cfg.pretrained_model_name_or_path, {"revision": cfg.revision, "local_files_only": cfg.local_files_only}
    try:
        with warnings.catch_warnings():
            # diffusers' load_config passes an argument huggingface_hub deprecated: noise before our error line
            warnings.filterwarnings("ignore", message="The `local_dir_use_symlinks`")
            return TeacherConfigs(
                dict(StableDiffusionPipeline.load_config(src, **common)),
                dict(UNet2DConditionModel.load_config(src, subfolder="unet", **common)),
                dict(DDPMScheduler.load_config(src, subfolder="scheduler", **common)),
            )
    except (OSError, ValueError) as exc:  # the same failures loading would meet, named the same way
        raise _load_error(cfg, "hub", exc) from None


def _dtype_kwarg() -> str:
    """diffusers renamed ``torch_dtype`` to ``dtype`` (the old name warns); use what this version knows."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


def _load_vae(cfg: ModelConfig, weight_dtype: torch.dtype) -> Any:
    """The VAE override (diffusers' SDXL scripts' ``--pretrained_vae_model_name_or_path``), or None."""
    from diffusers import AutoencoderKL

    vae = (cfg.pretrained_vae_model_name_or_path or "").strip()
    if not vae:
        return None
    src = str(Path(vae).expanduser()) if Path(vae).expanduser().exists() else vae
    try:
        return AutoencoderKL.from_pretrained(src, local_files_only=cfg.local_files_only, use_safetensors=True,
                                             **{_dtype_kwarg(): weight_dtype})
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:300]
        raise UserError(f"cannot load the VAE {vae!r} ({first}); pass an AutoencoderKL folder or hub id") from None


def check_vae_channels(vae: Any, unet: Any, vae_source: str) -> None:
    """A VAE must make latents with the channels the UNet takes (one line otherwise)."""
    have, want = int(vae.config.latent_channels), int(unet.config.in_channels)
    require(have == want, f"the VAE {vae_source} has latent_channels={have} but the teacher UNet takes in_channels={want}; "
            "pass a VAE of the teacher's family (SD 1.x/2.x/SDXL VAEs have 4)")


def _pipeline_class(family: str) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


def _load_pipeline(cfg: ModelConfig, kind: str, weight_dtype: torch.dtype) -> Any:
    """Stock diffusers loading; loader errors (missing repo, offline, bad variant) become UserErrors."""
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    src = str(Path(cfg.pretrained_model_name_or_path).expanduser()) if kind != "hub" else cfg.pretrained_model_name_or_path
    common: dict[str, Any] = {_dtype_kwarg(): weight_dtype, "local_files_only": cfg.local_files_only}
    vae = _load_vae(cfg, weight_dtype)
    if vae is not None:
        common["vae"] = vae
    try:
        family = source_family(cfg, kind, src)
        pipeline_class = _pipeline_class(family)
        if family != "sdxl":
            common["safety_checker"] = None
        if kind == "single_file":
            return pipeline_class.from_single_file(src, config=cfg.original_config, **common)
        extra = {"requires_safety_checker": False} if family != "sdxl" else {"add_watermarker": False}
        # use_safetensors: a folder or hub repo whose weights are only pickles fails instead of being unpickled.
        return pipeline_class.from_pretrained(
            src, revision=cfg.revision, variant=cfg.variant, feature_extractor=None, use_safetensors=True, **extra, **common,
        )
    except SingleFileComponentError as exc:  # a component's weights are missing or do not fit its config
        first = str(exc).strip().splitlines()[0][:300]
        raise UserError(f"cannot load {src} ({first}); pass a full SD or SDXL checkpoint (UNet, VAE and text encoders) "
                        "whose architecture matches model.original_config, or a diffusers folder") from None
    except (OSError, ValueError) as exc:
        raise _load_error(cfg, kind, exc) from None


def load_teacher(cfg: ModelConfig, weight_dtype: torch.dtype = torch.float32, device: Any = None) -> SDComponents:
    """Load the teacher frozen (``requires_grad_(False)``, ``eval()``) with UNet/VAE/text encoders in ``weight_dtype``.

    Methods decide what to unfreeze and cast their trainable weights to fp32 (the precision policy: docs/training.md).
    """
    kind = check_model_source(cfg)
    pipe = _load_pipeline(cfg, kind, weight_dtype)
    family = detect_family(dict(pipe.config), dict(pipe.unet.config))
    if family == "sdxl":
        require(getattr(pipe, "text_encoder", None) is not None, f"{cfg.pretrained_model_name_or_path} "
                + REFINER_ERROR.format(what="the loaded pipeline has no text_encoder"))
    check_vae_channels(pipe.vae, pipe.unet, cfg.pretrained_vae_model_name_or_path or "of the pipeline")
    prediction_type = pipe.scheduler.config.get("prediction_type", "epsilon")
    require(
        prediction_type in PREDICTION_TYPES,
        f"scheduler prediction_type {prediction_type!r} is not supported; use a model with one of {', '.join(PREDICTION_TYPES)}",
    )
    text_encoder_2 = getattr(pipe, "text_encoder_2", None)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, text_encoder_2):
        if module is None:
            continue
        module.requires_grad_(False)
        module.eval()
        # Loaded in weight_dtype already; .to(dtype) again would only trigger diffusers' fp32-modules warning.
        if any(p.dtype != weight_dtype for p in module.parameters() if p.is_floating_point()):
            module.to(dtype=weight_dtype)
        if device is not None:
            module.to(device)
    source = cfg.pretrained_model_name_or_path + (f"@{cfg.revision}" if kind == "hub" and cfg.revision else "")
    return SDComponents(
        unet=pipe.unet,
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        scheduler=pipe.scheduler,
        family=family,
        prediction_type=prediction_type,
        source=source,
        reload_unet=partial(_load_unet, cfg, kind),
        text_encoder_2=text_encoder_2,
        tokenizer_2=getattr(pipe, "tokenizer_2", None),
        force_zeros_for_empty_prompt=bool(pipe.config.get("force_zeros_for_empty_prompt", False)),
    )


def _load_unet(cfg: ModelConfig, kind: str, dtype: torch.dtype) -> Any:
    """The teacher's UNet alone, from the same source as :func:`load_teacher` (used for fp32 trainable copies)."""
    from diffusers import UNet2DConditionModel

    src = str(Path(cfg.pretrained_model_name_or_path).expanduser()) if kind != "hub" else cfg.pretrained_model_name_or_path
    common = {_dtype_kwarg(): dtype, "local_files_only": cfg.local_files_only}
    try:
        if kind == "single_file":
            return UNet2DConditionModel.from_single_file(src, config=cfg.original_config, subfolder="unet", **common)
        return UNet2DConditionModel.from_pretrained(src, subfolder="unet", revision=cfg.revision, variant=cfg.variant,
                                                    use_safetensors=True, **common)
    except (OSError, ValueError) as exc:
        raise _load_error(cfg, kind, exc) from None


@dataclass(frozen=True)
class ExtraModel:
    """A model a method needs beside the teacher (a discriminator's feature network, a student of another shape).

    ``kind`` is ``"<library>:<class>"`` (``transformers:Dinov2Model``, ``diffusers:UNet2DConditionModel``);
    ``source`` a local folder or hub id, loaded by :func:`distill_diffusion.models.loading.load_extra_model`
    with the teacher's rules (``local_files_only``, safetensors only, one-line errors).
    """

    kind: str
    source: str
    subfolder: str | None = None


def load_extra_model(spec: ExtraModel, cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> Any:
    """Load ``spec`` frozen in ``dtype``, by the teacher's rules: a local folder or hub id, ``cfg.local_files_only``,
    safetensors only (a folder of pickles fails to load instead of being unpickled), one-line errors."""
    import importlib

    library, _, class_name = spec.kind.partition(":")
    require(library in ("transformers", "diffusers") and class_name, f"extra model kind {spec.kind!r} is not "
            "'transformers:<Class>' or 'diffusers:<Class>'; fix the method's extra_models()")
    cls = getattr(importlib.import_module(library), class_name, None)
    require(cls is not None, f"{library} has no {class_name}; upgrade {library} or fix the method's extra_models()")
    src, fix = spec.source.strip(), "pass a local model folder (with safetensors weights) or a hub id"
    require(bool(src), f"no source for the {class_name} this method needs; {fix}")
    path = Path(src).expanduser()
    if path.exists():
        require(path.is_dir(), f"{src} is a file, not a model folder; {fix}")
    else:
        require(not looks_like_path(src) and bool(HUB_ID.fullmatch(src)), f"{src}: no such folder; {fix}")
    try:
        model = cls.from_pretrained(str(path) if path.exists() else src, subfolder=spec.subfolder or "",
                                    local_files_only=cfg.local_files_only, use_safetensors=True)
    except Exception as exc:  # a config that cannot build the model raises anything (patch_size 0: ZeroDivisionError)
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]
        raise UserError(f"cannot load {class_name} from {src} ({first}); {fix}") from None
    return model.to(dtype).requires_grad_(False).eval()
