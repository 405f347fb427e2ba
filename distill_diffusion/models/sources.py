"""Where a teacher comes from, checked before anything loads: a diffusers folder, a hub id or one .safetensors file,
and which family (SD 1.x/2.x or SDXL) it is.

Sources (``ModelConfig.pretrained_model_name_or_path``):

- a local diffusers pipeline folder (has ``model_index.json`` and ``unet/``);
- a hub id (``owner/name``), with ``revision``/``variant``;
- a single ``.safetensors`` file in the original LDM/A1111 layout (its component configs from
  ``ModelConfig.original_config``). Pickled ``.ckpt``/``.pt``/``.bin`` files are refused: loading them runs arbitrary
  code.

Family rule (works for real checkpoints and the toy): SDXL if the pipeline has ``text_encoder_2``, or
the UNet has ``addition_embed_type == "text_time"`` or ``cross_attention_dim == 2048``; a single file is SDXL when it
has ``conditioner.embedders.1.*`` keys (the original SDXL layout: embedders 0 and 1 are the two text encoders).
SD 2.x if ``cross_attention_dim == 1024`` (OpenCLIP ViT-H); everything else with one CLIP text encoder
is SD 1.x-like (768 for real SD 1.x, the toy's 64). The SDXL refiner (Podell et al., arXiv:2307.01952), which has
only the second text encoder, is refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import safe_open

from distill_diffusion.config import ModelConfig
from distill_diffusion.errors import UserError, require

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?")
SOURCE_FIX = "pass a diffusers pipeline folder, a hub id (owner/name) or a .safetensors file"
#: Key prefixes of the three parts of an original LDM/A1111 SD 1.x/2.x checkpoint.
_SINGLE_FILE_PARTS = (("model.diffusion_model.", "UNet"), ("first_stage_model.", "VAE"), ("cond_stage_model.", "text encoder"))
#: The same for an original SDXL checkpoint (embedder 0: CLIP ViT-L, embedder 1: OpenCLIP ViT-bigG).
_SDXL_SINGLE_FILE_PARTS = (("model.diffusion_model.", "UNet"), ("first_stage_model.", "VAE"),
                           ("conditioner.embedders.1.", "second text encoder"))
_SDXL_KEY, _SDXL_FIRST_ENCODER_KEY = "conditioner.embedders.1.", "conditioner.embedders.0."
REFINER_ERROR = ("is an SDXL refiner (no first text encoder, {what}); distil the SDXL base model "
            "(stabilityai/stable-diffusion-xl-base-1.0) instead")
SD_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SDXL_PARTS = (*SD_PARTS, "text_encoder_2", "tokenizer_2")


def detect_family(model_index: Mapping[str, Any], unet_config: Mapping[str, Any]) -> str:
    """``"sdxl"``, ``"sd2"`` or ``"sd1"`` from the pipeline index and UNet config (rule in the module doc)."""
    cross = unet_config.get("cross_attention_dim")
    cross = cross[0] if isinstance(cross, (list, tuple)) else cross
    second_encoder = model_index.get("text_encoder_2")
    if (second_encoder and second_encoder[0] is not None) or unet_config.get("addition_embed_type") == "text_time" or cross == 2048:
        return "sdxl"
    return "sd2" if cross == 1024 else "sd1"


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path} ({exc.__class__.__name__}); repair or re-download the model folder") from None


def _check_pipeline_dir(path: Path) -> None:
    if not (path / "model_index.json").is_file():
        what = "a single model (config.json)" if (path / "config.json").is_file() else "no model_index.json"
        raise UserError(f"model folder {path} has {what}, so it is not a diffusers pipeline; {SOURCE_FIX}")
    index = read_json(path / "model_index.json")
    unet_config = read_json(path / "unet" / "config.json") if (path / "unet" / "config.json").is_file() else {}
    sdxl = detect_family(index, unet_config) == "sdxl"
    if sdxl:
        check_not_refiner(index, str(path))
    for name in SDXL_PARTS if sdxl else SD_PARTS:
        require(
            (path / name).is_dir(),
            f"model folder {path} has no {name}/ subfolder ({index.get('_class_name', 'unknown')} pipeline); "
            "pass a Stable Diffusion 1.x/2.x or SDXL pipeline folder",
        )


def index_names(index: Mapping[str, Any], name: str) -> bool:
    """A ``model_index.json`` entry that names a class (a refiner's ``text_encoder`` is ``[null, null]``)."""
    entry = index.get(name)
    return bool(entry) and not (isinstance(entry, (list, tuple)) and entry[0] is None)


def check_not_refiner(index: Mapping[str, Any], where: str) -> None:
    """An SDXL pipeline index must have the first text encoder; the refiner has only text_encoder_2 (one line)."""
    require(index_names(index, "text_encoder") and index_names(index, "tokenizer"),
            f"{where} " + REFINER_ERROR.format(what="model_index.json has text_encoder null"))


def _check_single_file(path: Path, cfg: ModelConfig) -> None:
    suffix = path.suffix.lower()
    require(
        suffix not in PICKLE_SUFFIXES,
        f"{path} is a pickle ({suffix}); pickled checkpoints are not loaded because unpickling runs code. "
        "Convert it to .safetensors (e.g. with safetensors.torch.save_file on a trusted machine) or pass a diffusers folder",
    )
    require(suffix == ".safetensors", f"{path}: unknown weights format {suffix!r}; {SOURCE_FIX}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
    except Exception as exc:  # safetensors raises its own SafetensorError for a bad header
        raise UserError(f"{path} is not a readable safetensors file ({exc}); re-export or re-download it") from None
    family = single_file_family(keys)
    if family == "sdxl":
        require(any(k.startswith(_SDXL_FIRST_ENCODER_KEY) for k in keys),
                f"{path} " + REFINER_ERROR.format(what=f"no {_SDXL_FIRST_ENCODER_KEY}* keys"))
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
    if config_path.exists() or looks_like_path(cfg.original_config):
        require(config_path.is_dir(), f"model.original_config {cfg.original_config}: no such folder; {SOURCE_FIX}")
        _check_pipeline_dir(config_path)


def single_file_family(keys: list[str]) -> str:
    """``"sdxl"`` for an original SDXL checkpoint (``conditioner.embedders.1.*`` keys), else ``"sd"`` (1.x/2.x: diffusers
    tells them apart by the text encoder's keys while loading)."""
    return "sdxl" if any(k.startswith(_SDXL_KEY) for k in keys) else "sd"


def single_file_keys(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())


def looks_like_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~", "\\")) or text.count("/") > 1 or Path(text).suffix.lower() in (
        ".safetensors", *PICKLE_SUFFIXES)


def check_model_source(cfg: ModelConfig) -> str:
    """Validate the model source cheaply, before any load: ``"diffusers_dir"``, ``"single_file"`` or ``"hub"``.

    Raises :class:`UserError` for an empty or missing path, a folder that is not an SD/SDXL pipeline, a pickle
    file, an SDXL refiner, a single file whose component configs cannot be found offline, or a VAE override that is
    a missing path.
    """
    check_vae_source(cfg)
    src = cfg.pretrained_model_name_or_path.strip()
    require(bool(src), f"model.pretrained_model_name_or_path is empty; {SOURCE_FIX}")
    path = Path(src).expanduser()
    if path.is_dir():
        _check_pipeline_dir(path)
        return "diffusers_dir"
    if path.is_file():
        _check_single_file(path, cfg)
        return "single_file"
    require(not looks_like_path(src), f"model.pretrained_model_name_or_path {src}: no such file or folder; {SOURCE_FIX}")
    require(bool(HUB_ID.fullmatch(src)), f"model.pretrained_model_name_or_path {src!r} is neither an existing path nor a hub id; {SOURCE_FIX}")
    return "hub"


def check_vae_source(cfg: ModelConfig) -> None:
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
    require(not looks_like_path(vae) and bool(HUB_ID.fullmatch(vae)),
            f"model.pretrained_vae_model_name_or_path {vae}: no such folder; {fix}")


def source_family(cfg: ModelConfig, kind: str, src: str) -> str:
    """``"sdxl"`` or ``"sd"`` before loading: from the single file's keys, or the (local or hub) pipeline index."""
    from diffusers import StableDiffusionPipeline

    if kind == "single_file":
        return single_file_family(single_file_keys(Path(src)))
    index = StableDiffusionPipeline.load_config(src, revision=cfg.revision, local_files_only=cfg.local_files_only)
    family = detect_family(index, {})
    parts = SDXL_PARTS if family == "sdxl" else SD_PARTS
    if family == "sdxl":
        check_not_refiner(index, src)
    require(all(index_names(index, k) for k in parts),
            f"{src} is a {index.get('_class_name', 'non-SD')} pipeline, not Stable Diffusion 1.x/2.x or SDXL; pass an SD or SDXL model")
    return "sdxl" if family == "sdxl" else "sd"

