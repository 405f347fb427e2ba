"""Load a frozen Stable Diffusion 1.x/2.x or SDXL teacher from a diffusers folder, a hub id or one .safetensors file.

Sources (``ModelConfig.pretrained_model_name_or_path``):

- a local diffusers pipeline folder (has ``model_index.json`` and ``unet/``);
- a hub id (``owner/name``), with ``revision``/``variant``; ``local_files_only`` forbids downloads, and a
  repo that cannot be found becomes a :class:`UserError` naming the fix, not a traceback;
- a single ``.safetensors`` file in the original LDM/A1111 layout, through diffusers
  ``from_single_file(config=ModelConfig.original_config)``. Pickled ``.ckpt``/``.pt``/``.bin`` files are
  refused: loading them runs arbitrary code.

Family rule (works for real checkpoints and the toy): SDXL if the pipeline has ``text_encoder_2``, or
the UNet has ``addition_embed_type == "text_time"`` or ``cross_attention_dim == 2048``; a single file is SDXL when it
has ``conditioner.embedders.1.*`` keys (the original SDXL layout: embedders 0 and 1 are the two text encoders).
SD 2.x if ``cross_attention_dim == 1024`` (OpenCLIP ViT-H); everything else with one CLIP text encoder
is SD 1.x-like (768 for real SD 1.x, the toy's 64). The prediction type is the scheduler config's.
SDXL loads through ``StableDiffusionXLPipeline`` (Podell et al., arXiv:2307.01952); the refiner, which has only the
second text encoder and 5 micro-conditioning ids, is refused. ``ModelConfig.pretrained_vae_model_name_or_path``
swaps in another ``AutoencoderKL`` (SDXL's fp16-fix VAE), as diffusers' SDXL training scripts do.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from distill_diffusion.config import ModelConfig
from distill_diffusion.core.parameterization import PREDICTION_TYPES
from distill_diffusion.core.schedule import NoiseSchedule
from distill_diffusion.errors import UserError, require

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?")
_FIX = "pass a diffusers pipeline folder, a hub id (owner/name) or a .safetensors file"
#: Key prefixes of the three parts of an original LDM/A1111 SD 1.x/2.x checkpoint.
_SINGLE_FILE_PARTS = (("model.diffusion_model.", "UNet"), ("first_stage_model.", "VAE"), ("cond_stage_model.", "text encoder"))
#: The same for an original SDXL checkpoint (embedder 0: CLIP ViT-L, embedder 1: OpenCLIP ViT-bigG).
_SDXL_SINGLE_FILE_PARTS = (("model.diffusion_model.", "UNet"), ("first_stage_model.", "VAE"),
                           ("conditioner.embedders.1.", "second text encoder"))
_SDXL_KEY, _SDXL_FIRST_ENCODER_KEY = "conditioner.embedders.1.", "conditioner.embedders.0."
_REFINER = ("is an SDXL refiner (no first text encoder, {what}); distil the SDXL base model "
            "(stabilityai/stable-diffusion-xl-base-1.0) instead")
_SD_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_SDXL_PARTS = (*_SD_PARTS, "text_encoder_2", "tokenizer_2")


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


def detect_family(model_index: Mapping[str, Any], unet_config: Mapping[str, Any]) -> str:
    """``"sdxl"``, ``"sd2"`` or ``"sd1"`` from the pipeline index and UNet config (rule in the module doc)."""
    cross = unet_config.get("cross_attention_dim")
    cross = cross[0] if isinstance(cross, (list, tuple)) else cross
    second_encoder = model_index.get("text_encoder_2")
    if (second_encoder and second_encoder[0] is not None) or unet_config.get("addition_embed_type") == "text_time" or cross == 2048:
        return "sdxl"
    return "sd2" if cross == 1024 else "sd1"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path} ({exc.__class__.__name__}); repair or re-download the model folder") from None


def _check_pipeline_dir(path: Path) -> None:
    if not (path / "model_index.json").is_file():
        what = "a single model (config.json)" if (path / "config.json").is_file() else "no model_index.json"
        raise UserError(f"model folder {path} has {what}, so it is not a diffusers pipeline; {_FIX}")
    index = _read_json(path / "model_index.json")
    unet_config = _read_json(path / "unet" / "config.json") if (path / "unet" / "config.json").is_file() else {}
    sdxl = detect_family(index, unet_config) == "sdxl"
    if sdxl:
        check_not_refiner(index, str(path))
    for name in _SDXL_PARTS if sdxl else _SD_PARTS:
        require(
            (path / name).is_dir(),
            f"model folder {path} has no {name}/ subfolder ({index.get('_class_name', 'unknown')} pipeline); "
            "pass a Stable Diffusion 1.x/2.x or SDXL pipeline folder",
        )


def _present(index: Mapping[str, Any], name: str) -> bool:
    """A ``model_index.json`` entry that names a class (a refiner's ``text_encoder`` is ``[null, null]``)."""
    entry = index.get(name)
    return bool(entry) and not (isinstance(entry, (list, tuple)) and entry[0] is None)


def check_not_refiner(index: Mapping[str, Any], where: str) -> None:
    """An SDXL pipeline index must have the first text encoder; the refiner has only text_encoder_2 (one line)."""
    require(_present(index, "text_encoder") and _present(index, "tokenizer"),
            f"{where} " + _REFINER.format(what="model_index.json has text_encoder null"))


def _check_single_file(path: Path, cfg: ModelConfig) -> None:
    suffix = path.suffix.lower()
    require(
        suffix not in PICKLE_SUFFIXES,
        f"{path} is a pickle ({suffix}); pickled checkpoints are not loaded because unpickling runs code. "
        "Convert it to .safetensors (e.g. with safetensors.torch.save_file on a trusted machine) or pass a diffusers folder",
    )
    require(suffix == ".safetensors", f"{path}: unknown weights format {suffix!r}; {_FIX}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
    except Exception as exc:  # safetensors raises its own SafetensorError for a bad header
        raise UserError(f"{path} is not a readable safetensors file ({exc}); re-export or re-download it") from None
    family = single_file_family(keys)
    if family == "sdxl":
        require(any(k.startswith(_SDXL_FIRST_ENCODER_KEY) for k in keys),
                f"{path} " + _REFINER.format(what=f"no {_SDXL_FIRST_ENCODER_KEY}* keys"))
    for prefix, part in _SDXL_SINGLE_FILE_PARTS if family == "sdxl" else _SINGLE_FILE_PARTS:
        require(
            any(k.startswith(prefix) for k in keys),
            f"{path} has no {part} weights (no {prefix}* keys), so it is not a full single-file SD checkpoint; "
            "pass a full LDM/A1111 checkpoint (UNet, VAE and text encoder), or a diffusers pipeline folder",
        )
    if cfg.original_config is None:
        require(
            not cfg.local_files_only,
            f"{path}: a single-file checkpoint needs model.original_config (a diffusers folder or hub id with the "
            "component configs) when model.local_files_only is set; pass --model.original_config",
        )
        return
    config_path = Path(cfg.original_config).expanduser()
    if config_path.exists() or _looks_like_path(cfg.original_config):
        require(config_path.is_dir(), f"model.original_config {cfg.original_config}: no such folder; {_FIX}")
        _check_pipeline_dir(config_path)


def single_file_family(keys: list[str]) -> str:
    """``"sdxl"`` for an original SDXL checkpoint (``conditioner.embedders.1.*`` keys), else ``"sd"`` (1.x/2.x: diffusers
    tells them apart by the text encoder's keys while loading)."""
    return "sdxl" if any(k.startswith(_SDXL_KEY) for k in keys) else "sd"


def _single_file_keys(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~", "\\")) or text.count("/") > 1 or Path(text).suffix.lower() in (
        ".safetensors", *PICKLE_SUFFIXES)


def check_model_source(cfg: ModelConfig) -> str:
    """Validate the model source cheaply, before any load: ``"diffusers_dir"``, ``"single_file"`` or ``"hub"``.

    Raises :class:`UserError` for an empty or missing path, a folder that is not an SD/SDXL pipeline, a pickle
    file, an SDXL refiner, a single file whose component configs cannot be found offline, or a VAE override that is
    a missing path.
    """
    _check_vae_source(cfg)
    src = cfg.pretrained_model_name_or_path.strip()
    require(bool(src), f"model.pretrained_model_name_or_path is empty; {_FIX}")
    path = Path(src).expanduser()
    if path.is_dir():
        _check_pipeline_dir(path)
        return "diffusers_dir"
    if path.is_file():
        _check_single_file(path, cfg)
        return "single_file"
    require(not _looks_like_path(src), f"model.pretrained_model_name_or_path {src}: no such file or folder; {_FIX}")
    require(bool(_HUB_ID.fullmatch(src)), f"model.pretrained_model_name_or_path {src!r} is neither an existing path nor a hub id; {_FIX}")
    return "hub"


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
    return TeacherConfigs(*(_read_json(root / name) for name in _CONFIG_FILES))


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


def _check_vae_source(cfg: ModelConfig) -> None:
    """``model.pretrained_vae_model_name_or_path``: an existing folder, or a hub id (nothing else is read here)."""
    vae = (cfg.pretrained_vae_model_name_or_path or "").strip()
    if not vae:
        return
    path = Path(vae).expanduser()
    fix = "pass an AutoencoderKL folder (config.json + safetensors weights) or a hub id, e.g. madebyollin/sdxl-vae-fp16-fix"
    if path.exists():
        require(path.is_dir() and (path / "config.json").is_file(),
                f"model.pretrained_vae_model_name_or_path {vae} is not a model folder with a config.json; {fix}")
        return
    require(not _looks_like_path(vae) and bool(_HUB_ID.fullmatch(vae)),
            f"model.pretrained_vae_model_name_or_path {vae}: no such folder; {fix}")


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


def _source_family(cfg: ModelConfig, kind: str, src: str) -> str:
    """``"sdxl"`` or ``"sd"`` before loading: from the single file's keys, or the (local or hub) pipeline index."""
    from diffusers import StableDiffusionPipeline

    if kind == "single_file":
        return single_file_family(_single_file_keys(Path(src)))
    index = StableDiffusionPipeline.load_config(src, revision=cfg.revision, local_files_only=cfg.local_files_only)
    family = detect_family(index, {})
    parts = _SDXL_PARTS if family == "sdxl" else _SD_PARTS
    if family == "sdxl":
        check_not_refiner(index, src)
    require(all(_present(index, k) for k in parts),
            f"{src} is a {index.get('_class_name', 'non-SD')} pipeline, not Stable Diffusion 1.x/2.x or SDXL; pass an SD or SDXL model")
    return "sdxl" if family == "sdxl" else "sd"


def _load_pipeline(cfg: ModelConfig, kind: str, weight_dtype: torch.dtype) -> Any:
    """Stock diffusers loading; loader errors (missing repo, offline, bad variant) become UserErrors."""
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    src = str(Path(cfg.pretrained_model_name_or_path).expanduser()) if kind != "hub" else cfg.pretrained_model_name_or_path
    common: dict[str, Any] = {_dtype_kwarg(): weight_dtype, "local_files_only": cfg.local_files_only}
    vae = _load_vae(cfg, weight_dtype)
    if vae is not None:
        common["vae"] = vae
    try:
        family = _source_family(cfg, kind, src)
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
                + _REFINER.format(what="the loaded pipeline has no text_encoder"))
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
        require(not _looks_like_path(src) and bool(_HUB_ID.fullmatch(src)), f"{src}: no such folder; {fix}")
    try:
        model = cls.from_pretrained(str(path) if path.exists() else src, subfolder=spec.subfolder or "",
                                    local_files_only=cfg.local_files_only, use_safetensors=True)
    except Exception as exc:  # a config that cannot build the model raises anything (patch_size 0: ZeroDivisionError)
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]
        raise UserError(f"cannot load {class_name} from {src} ({first}); {fix}") from None
    return model.to(dtype).requires_grad_(False).eval()
