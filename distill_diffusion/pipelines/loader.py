"""One call from a model (and an optional LoRA) to a stock diffusers pipeline with a sampler's scheduler.

``load_pipeline("teacher/", lora="lcm_lora/", sampler="lcm")`` returns a ``StableDiffusionPipeline`` with
``LCMScheduler.from_config(teacher.scheduler.config)`` and the LoRA loaded through diffusers'
``load_lora_weights`` (fused by default). A ``scheduler_config.json`` beside the LoRA weights (distilled
exports write one) sets the fields the adapter was distilled for (``original_inference_steps``, ``timestep_scaling``). Sample with ``pipe(prompt, **get_sampler("lcm").call_kwargs())``.
Nothing here is ours at inference time: the same pipeline can be built by hand with stock diffusers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from distill_diffusion.config import ModelConfig
from distill_diffusion.errors import UserError, require
from distill_diffusion.models.loading import load_teacher
from distill_diffusion.models.sources import PICKLE_SUFFIXES, check_model_source
from distill_diffusion.pipelines.samplers import (
    SAMPLERS,
    Sampler,
    attach_sampler,
    build_scheduler,
    check_steps,
    get_sampler,
)

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
#: The components of a pipeline folder whose weights ``load_pipeline`` reads (the safety checker is not loaded).
WEIGHT_SUBFOLDERS = ("unet", "vae", "text_encoder")


def reject_pickle_weights(folder: str | Path, what: str) -> None:
    """Refuse a model folder whose weights exist only as pickles (``.bin``, ``.ckpt``, ...): unpickling runs code.

    A folder that also holds ``.safetensors`` passes: loaders are told ``use_safetensors=True`` and take those.
    """
    path = Path(folder).expanduser()
    if not path.is_dir():
        return
    pickles = sorted(f.name for f in path.iterdir() if f.suffix.lower() in PICKLE_SUFFIXES and f.is_file())
    if pickles and not any(path.glob("*.safetensors")):
        raise UserError(
            f"{what} {path} has only pickle weights ({', '.join(pickles[:3])}), which run code when unpickled: "
            "pickle weights are not loaded; convert to safetensors, e.g. save_pretrained(..., safe_serialization=True) "
            "on a trusted machine"
        )


def check_device(device: torch.device | str | None) -> None:
    """Refuse a device string torch cannot parse, or a device this machine does not have, before any load."""
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"device {device!r} is not a device name; pass cpu, cuda, cuda:N or mps (--device)") from None
    if parsed.type == "cpu":
        return
    require(parsed.type != "meta", f"device {device!r} holds no data; pass cpu, cuda, cuda:N or mps (--device)")
    backend = getattr(torch, parsed.type, None)
    available = bool(backend is not None and backend.is_available())
    count = backend.device_count() if available and hasattr(backend, "device_count") else int(available)
    require(count > 0, f"device {device!r}: no {parsed.type} device is available here; pass --device cpu or run where one is")
    require(
        parsed.index is None or parsed.index < count,
        f"device {device!r}: this machine has {count} {parsed.type} device(s); pass an index from 0 to {count - 1}",
    )


def check_model_folder(model: str) -> None:
    """A pipeline folder must be a pipeline, not a LoRA, and must not hold pickle-only component weights."""
    reject_lora_as_model(model)
    for sub in WEIGHT_SUBFOLDERS:
        reject_pickle_weights(Path(model).expanduser() / sub, "model component folder")


def reject_lora_as_model(model: str) -> None:
    """A LoRA folder passed as the model gets a pointed hint instead of 'no model_index.json'."""
    path = Path(model).expanduser()
    if path.is_dir() and not (path / "model_index.json").is_file() and (path / LORA_WEIGHTS).is_file():
        raise UserError(
            f"{path} holds LoRA weights, not a pipeline; pass the base model as the model and this folder as the LoRA"
        )


def resolve_lora(lora: str | Path) -> tuple[str, str | None]:
    """``(folder_or_file, weight_name)`` for ``load_lora_weights``; missing or pickled weights are UserErrors."""
    path = Path(lora).expanduser()
    if path.is_file():
        require(
            path.suffix.lower() == ".safetensors",
            f"LoRA {path}: only .safetensors files are loaded ({', '.join(PICKLE_SUFFIXES)} can run code); "
            "convert it or pass the folder an export wrote",
        )
        return str(path.parent), path.name
    require(path.is_dir(), f"LoRA {path}: no such file or folder; pass the folder holding {LORA_WEIGHTS}")
    if (path / LORA_WEIGHTS).is_file():
        return str(path), LORA_WEIGHTS
    if (path / "adapter_model.safetensors").is_file():
        raise UserError(
            f"LoRA {path} is a raw peft adapter (adapter_model.safetensors), which diffusers loads with no effect; "
            f"re-export it with save_lora_weights (distill-diffusion exports write {LORA_WEIGHTS})"
        )
    candidates = sorted(path.glob("*.safetensors"))
    require(
        len(candidates) == 1,
        f"LoRA folder {path} has {len(candidates)} .safetensors files and no {LORA_WEIGHTS}; pass the weights file itself",
    )
    return str(path), candidates[0].name


def trained_scheduler_config(lora: str | Path | None) -> dict[str, Any] | None:
    """The ``scheduler_config.json`` saved next to a LoRA's weights (distilled exports write one), if any."""
    if lora is None:
        return None
    folder, _ = resolve_lora(lora)
    path = Path(folder) / "scheduler_config.json"
    return _json_object(path, "delete it or re-export the LoRA") if path.is_file() else None


def _json_object(path: Path, fix: str) -> dict[str, Any]:
    """A config file that must hold a JSON object; anything else is a one-line error ending in ``fix``."""
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); {fix}") from None
    require(isinstance(config, dict), f"{path} is not a config (a JSON object); {fix}")
    return config


def check_unet_fits_sampler(sampler: Sampler, unet_config: Mapping[str, Any]) -> None:
    """A sampler for a w-conditioned student (``needs_guidance_embedding``) needs a UNet with a guidance embedding."""
    if sampler.needs_guidance_embedding and unet_config.get("time_cond_proj_dim") is None:
        plain = ", ".join(name for name, s in SAMPLERS.items() if not s.needs_guidance_embedding)
        raise UserError(
            f"sampler {sampler.name!r} needs a UNet with a guidance embedding (time_cond_proj_dim), which this model "
            f"lacks; use a sampler for a plain UNet or its adapter ({plain})"
        )


def _pipeline_class(sampler: Sampler, unet: Any) -> type:
    import diffusers

    check_unet_fits_sampler(sampler, dict(unet.config))
    return getattr(diffusers, sampler.pipeline)


#: A diffusers-format LoRA key of a UNet layer: ``unet.<layer>.lora.down.weight`` (or ``lora_A``, peft's name).
_UNET_LORA_KEY = re.compile(r"^unet\.(?P<layer>.+)\.(?P<part>lora\.down|lora\.up|lora_A|lora_B)\.weight$")


def check_lora_fits(model: str, lora: str | Path) -> None:
    """Before any weight loads: each UNet layer the LoRA adapts is a layer of the model's UNet, with the LoRA's input and
    output widths (the safetensors header against a UNet built from the local folder's config on the meta device).

    A LoRA of another base model is then one line, not one loader log line per layer. Hub ids, single files and keys in
    other formats (kohya's, text-encoder LoRAs) are left to the loader (:func:`apply_lora`).
    """
    unet_config = _local_config(model, "unet")
    folder, weight_name = resolve_lora(lora)
    widths = _lora_widths(Path(folder) / weight_name)
    layers = _meta_unet_layers(unet_config) if unet_config and widths else None
    if layers is None:
        return
    misfits = []
    for (layer, side), width in sorted(widths.items()):
        weight = getattr(layers.get(layer), "weight", None)
        have = None if weight is None else int(weight.shape[1] if side == "in" else weight.shape[0])
        if have != width:
            misfits.append(f"it adapts {layer}, which this UNet lacks" if have is None else
                           f"{layer} has {have} {side}put features, the LoRA {width}")
    more = f" (and {len(misfits) - 1} more)" if len(misfits) > 1 else ""
    if misfits:
        check_lora_family(lora, {layer for layer, _ in widths}, model_family(model, unet_config))
    require(not misfits, f"LoRA {lora} does not fit this model's UNet: {misfits[0] if misfits else ''}{more}; pass the base "
            "model it was trained on, or a LoRA trained on this one")


def model_family(model: str, unet_config: Mapping[str, Any]) -> str:
    """``sdxl`` / ``sd2`` / ``sd1`` of a local pipeline folder, from its ``model_index.json`` and UNet config."""
    from distill_diffusion.models.sources import detect_family

    index_path = Path(model).expanduser() / "model_index.json"
    index = _json_object(index_path, "repair or re-download the model folder") if index_path.is_file() else {}
    return detect_family(index, unet_config)


def lora_family(layers: set[str]) -> str | None:
    """``sdxl`` or ``sd`` for a UNet LoRA that adapts attention layers, from where they are (None: no attention keys).

    SDXL's UNet has no attention in its first down level (Podell et al., arXiv:2307.01952, Tab. 1; diffusers'
    ``DownBlock2D`` there), SD 1.x/2.x's has (``CrossAttnDownBlock2D``); SDXL's also adapts ``add_embedding``."""
    if any(layer.startswith("add_embedding.") for layer in layers):
        return "sdxl"
    attention = [layer for layer in layers if ".attentions." in layer]
    if not attention:
        return None
    return "sd" if any(layer.startswith("down_blocks.0.attentions.") for layer in attention) else "sdxl"


def check_lora_family(lora: str | Path, layers: set[str], family: str) -> None:
    """A LoRA of the other family (SDXL onto SD 1.x/2.x or the reverse) is named as such, in one line."""
    found = lora_family(layers)
    model_is_xl = family == "sdxl"
    if found is None or (found == "sdxl") == model_is_xl:
        return
    names = ("an SDXL LoRA", "an SD 1.x/2.x model") if found == "sdxl" else ("an SD 1.x/2.x LoRA", "an SDXL model")
    raise UserError(f"LoRA {lora} is {names[0]} (its layers follow that UNet's layout) and this is {names[1]}; pass the "
                    "base model it was trained on, or a LoRA trained on this one")


def _lora_widths(path: Path) -> dict[tuple[str, str], int]:
    """``{(layer, "in" | "out"): width}`` of a LoRA file's diffusers-format UNet keys, from its header only."""
    from safetensors import safe_open

    widths = {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                match = _UNET_LORA_KEY.match(key)
                shape = handle.get_slice(key).get_shape() if match else None
                if match and len(shape) >= 2:
                    down = match["part"] in ("lora.down", "lora_A")
                    widths[(match["layer"], "in" if down else "out")] = int(shape[1] if down else shape[0])
    except Exception:  # not a readable safetensors file: the loader's error names it
        return {}
    return widths


def _meta_unet_layers(unet_config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The modules of the UNet ``unet_config`` describes, built without memory (None when it cannot be built)."""
    import diffusers

    cls = getattr(diffusers, str(unet_config.get("_class_name", "UNet2DConditionModel")), None)
    try:
        with torch.device("meta"), _quiet_loaders():
            return dict(cls.from_config(dict(unet_config)).named_modules())
    except Exception:  # an unusual or broken config: loading reports it
        return None


@contextlib.contextmanager
def _quiet_loaders() -> Iterator[None]:
    """diffusers, transformers and peft log below CRITICAL only inside: a failed LoRA load logs every layer's mismatch."""
    import warnings

    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers", "peft")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def apply_lora(pipe: Any, lora: str | Path, fuse: bool, lora_scale: float) -> None:
    """Stock ``load_lora_weights``; a file that matches no layer (wrong key format) is a UserError."""
    folder, weight_name = resolve_lora(lora)
    try:
        with _quiet_loaders():
            pipe.load_lora_weights(folder, weight_name=weight_name)
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines()] or [type(exc).__name__]
        first = next((line for line in lines if line.startswith("size mismatch")), lines[0])[:200]
        raise UserError(
            f"cannot load LoRA {lora} into this model ({first}); check it was trained on this base model "
            "and saved with save_lora_weights"
        ) from None
    if not any("lora_A" in name for name, _ in pipe.unet.named_modules()):
        raise UserError(
            f"LoRA {lora} matched no UNet layer (wrong key format?); export it with save_lora_weights "
            "(diffusers format) for this base model"
        )
    if fuse:
        # Fuse into the base weights, then drop the adapter modules: plain Linear/Conv at inference speed.
        pipe.fuse_lora(lora_scale=lora_scale)
        pipe.unload_lora_weights()
    elif lora_scale != 1.0:
        pipe.set_adapters(pipe.get_active_adapters(), adapter_weights=[lora_scale])


def _local_config(model: str, component: str) -> dict[str, Any]:
    """``model/<component>/<config file>`` of a local pipeline folder; ``{}`` for a hub id or single file."""
    name = "scheduler_config.json" if component == "scheduler" else "config.json"
    path = Path(model).expanduser() / component / name
    return _json_object(path, "repair or re-download the model folder") if path.is_file() else {}


def preview_scheduler(model: str, sampler: str, lora: str | Path | None = None) -> Any:
    """The scheduler :func:`load_pipeline` will build, from config files alone (no weights are read).

    Base config: the model folder's ``scheduler/scheduler_config.json``, or the scheduler's defaults for a
    hub id or single file (SD's 1000 training timesteps); the LoRA's trained fields are applied as in loading.
    """
    return build_scheduler(get_sampler(sampler), _local_config(model, "scheduler"), trained_scheduler_config(lora))


def check_pipeline_request(
    cfg: ModelConfig,
    lora: str | Path | None = None,
    sampler: str = "ddim",
    *,
    steps: Sequence[int] = (),
    device: torch.device | str | None = None,
    lora_scale: float = 1.0,
) -> None:
    """Every check of a :func:`load_pipeline` call that needs no weights, plus the step counts to sample.

    Run first so that bad input fails in milliseconds, before seconds (or minutes) of loading.
    """
    spec = get_sampler(sampler)
    check_device(device)
    require(math.isfinite(lora_scale), f"LoRA scale {lora_scale} is invalid; pass a finite number such as 1.0 (--lora_scale)")
    check_model_folder(cfg.pretrained_model_name_or_path)
    check_model_source(cfg)
    if lora is not None:
        resolve_lora(lora)
        check_lora_fits(cfg.pretrained_model_name_or_path, lora)
    if (Path(cfg.pretrained_model_name_or_path).expanduser() / "unet").is_dir():
        check_unet_fits_sampler(spec, _local_config(cfg.pretrained_model_name_or_path, "unet"))
    if steps:
        scheduler = preview_scheduler(cfg.pretrained_model_name_or_path, sampler, lora)
        for count in sorted(set(steps)):  # every count: a trained set need not be 1..N (LADD: 1, 2 or 4)
            check_steps(scheduler, count, spec)


def load_pipeline(
    model: str,
    lora: str | Path | None = None,
    sampler: str = "ddim",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    local_files_only: bool = False,
    *,
    fuse_lora: bool = True,
    lora_scale: float = 1.0,
    revision: str | None = None,
    variant: str | None = None,
    original_config: str | None = None,
) -> Any:
    """A stock diffusers pipeline for ``model`` (+ ``lora``) sampling with ``sampler``'s scheduler.

    ``model``: a diffusers SD 1.x/2.x or SDXL folder, a hub id, or a single ``.safetensors`` checkpoint (with
    ``original_config``), validated by :func:`distill_diffusion.models.sources.check_model_source`; pickle
    weights are refused. ``dtype`` defaults to float32. Returns the sampler's ``pipeline`` class (e.g.
    ``StableDiffusionPipeline``; ``StableDiffusionXLPipeline`` for an SDXL model, the family read from it) with the sampler recorded on it (:func:`~.samplers.attach_sampler`), safety
    checker off and the progress bar disabled. Bad input → UserError, raised by :func:`check_pipeline_request`
    before any weight loads.
    """
    spec = get_sampler(sampler)
    cfg = ModelConfig(pretrained_model_name_or_path=model, revision=revision, variant=variant,
                      original_config=original_config, local_files_only=local_files_only)
    check_pipeline_request(cfg, lora, sampler, device=device, lora_scale=lora_scale)
    parts = load_teacher(cfg, weight_dtype=dtype or torch.float32)
    cls = _pipeline_class(spec, parts.unet)
    scheduler = build_scheduler(spec, parts.scheduler.config, trained_scheduler_config(lora))
    if parts.family == "sdxl":
        from distill_diffusion.models.export import build_pipeline

        # one pipeline for every SDXL sampler: StableDiffusionXLPipeline feeds a w-conditioned UNet its guidance
        # embedding (a full LCM student) as the SD family's LatentConsistencyModelPipeline does
        pipe = build_pipeline(parts, scheduler=scheduler)
    else:
        pipe = cls(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
                   scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if lora is not None:
        apply_lora(pipe, lora, fuse_lora, lora_scale)
    if device is not None:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    attach_sampler(pipe, spec)
    return pipe
