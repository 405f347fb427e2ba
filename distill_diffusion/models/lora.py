"""LoRA adapters on a diffusers UNet through peft: attach, validate targets, toggle, export for diffusers and kohya.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685 (``W + (alpha/r) B A``).
One UNet holds the frozen base (weight dtype) and the LoRA weights (fp32); the teacher of LCM-LoRA
(Luo et al., arXiv:2311.05556) is the same UNet with the adapters switched off.

Export format. ``StableDiffusionPipeline.save_lora_weights`` is given the keys of
``get_peft_model_state_dict`` (``lora_A``/``lora_B``) and the adapter's ``LoraConfig`` as metadata, the
layout diffusers' own ``save_lora_adapter`` writes, minus the config fields older peft versions reject.
Passing them through ``convert_state_dict_to_diffusers`` first (as the diffusers LCM-LoRA script does)
renames only the attention projections (``to_q.lora.down``) and leaves conv/ff layers as ``lora_A``;
diffusers 0.42.1's loader picks one format from the FIRST key, so with LCM-LoRA's target list (first key
``proj_in``) it silently drops every attention LoRA. Without the metadata the loader assumes alpha = rank.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill_diffusion.errors import require

#: A full-coverage LoRA on an SD UNet (the published LCM-LoRA list, arXiv:2311.05556): attention, feed-forward, resnet
#: convs, resamplers, time projections. Rank 64 over it gives the published adapter sizes (≈ 67.5M parameters on SD 1.5).
DEFAULT_TARGET_MODULES: tuple[str, ...] = (
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj",
)
ADAPTER = "default"
#: ``LoraConfig`` fields written as export metadata: all exist in peft 0.13 and later (0.15 is the oldest
#: supported), and ``rank_pattern`` / ``target_modules`` must be present because diffusers 0.34 reads them unguarded.
PORTABLE_CONFIG_FIELDS = frozenset({
    "r", "lora_alpha", "target_modules", "lora_dropout", "bias", "use_dora", "use_rslora",
    "rank_pattern", "alpha_pattern", "init_lora_weights",
})
KOHYA_FILE = "lora_kohya.safetensors"
_SUPPORTED = (nn.Linear, nn.Conv2d)
#: dtypes an exported LoRA may be written in (fp16: the size of the published adapters).
EXPORT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class LoRAOptions:
    """The options of a method whose student is a LoRA on the teacher's UNet, or the whole UNet."""

    #: LoRA student (one UNet: frozen base = teacher, LoRA = student). false trains a full copy of the UNet.
    lora: bool = True
    lora_rank: int = 64
    lora_alpha: int = 64
    #: UNet module names (peft suffix match); each must match a Linear/Conv2d layer.
    lora_target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))

    def __post_init__(self) -> None:
        require(self.lora_rank >= 1, f"method.lora_rank={self.lora_rank} must be >= 1; pass a positive rank such as 64")
        require(self.lora_alpha > 0, f"method.lora_alpha={self.lora_alpha} must be > 0; pass e.g. the rank")
        require(bool(self.lora_target_modules) and all(self.lora_target_modules), "method.lora_target_modules is empty; list UNet module names such as to_q,to_k,to_v")


def check_target_modules(unet: nn.Module, target_modules: Sequence[str]) -> None:
    """Every name must match at least one Linear/Conv2d (peft's rule: equal, or a ``.name`` suffix).

    peft only complains when NO name matches; a typo next to valid names would silently train less.
    """
    names = [(n, m) for n, m in unet.named_modules() if n]
    for target in target_modules:
        hits = [m for n, m in names if n == target or n.endswith("." + target)]
        if not hits:
            known = ", ".join(DEFAULT_TARGET_MODULES)
            require(False, f"LoRA target module {target!r} matches no layer of the UNet; use names such as {known}")
        require(
            any(isinstance(m, _SUPPORTED) for m in hits),
            f"LoRA target module {target!r} matches only {type(hits[0]).__name__} modules; target Linear or Conv2d layers",
        )


def attach_lora(unet: nn.Module, rank: int, alpha: int, dropout: float, target_modules: Sequence[str]) -> list[nn.Parameter]:
    """Add a zero-initialised LoRA (B = 0, so the UNet is unchanged) and return its parameters, cast to fp32.

    The base weights stay frozen in their dtype; peft creates the LoRA in the base layer's dtype, so the
    trainable part is upcast afterwards (``cast_training_params``; the precision policy: docs/training.md).
    """
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    require(rank >= 1, f"LoRA rank {rank} must be >= 1; pass e.g. --method.lora_rank 64")
    check_target_modules(unet, target_modules)
    unet.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights=True, target_modules=list(target_modules))
    unet.add_adapter(config, adapter_name=ADAPTER)
    cast_training_params(unet, torch.float32)
    return [p for p in unet.parameters() if p.requires_grad]


def attach_second_lora(unet: nn.Module, name: str, rank: int, alpha: int, target_modules: Sequence[str]) -> list[nn.Parameter]:
    """Add another zero-initialised adapter ``name`` beside :func:`attach_lora`'s (DMD2's fake-score model beside its
    generator on one frozen base) and return its parameters, in fp32.

    peft's ``add_adapter`` activates the new adapter and clears ``requires_grad`` on the others; afterwards the first
    adapter is the active one again and every adapter weight is trainable, so that each phase picks its own
    (:func:`adapter_parameters`) and switches per call with :func:`adapter_active`."""
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    require(name != ADAPTER and name not in getattr(unet, "peft_config", {}), f"a LoRA adapter {name!r} is already attached")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, init_lora_weights=True, target_modules=list(target_modules))
    with warnings.catch_warnings():  # peft warns that the model will hold several adapters: the point here
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        unet.add_adapter(config, adapter_name=name)
    for layer in tuner_layers(unet):
        layer._active_adapter = ADAPTER
    for key, param in unet.named_parameters():
        if ".lora_" in key:
            param.requires_grad_(True)
    cast_training_params(unet, torch.float32)
    return adapter_parameters(unet, name)


def adapter_parameters(unet: nn.Module, name: str) -> list[nn.Parameter]:
    """The weights of LoRA adapter ``name`` (``...lora_A.<name>.weight``)."""
    return [p for key, p in unet.named_parameters() if f".{name}." in key and ".lora_" in key]


@contextmanager
def adapter_active(layers: Sequence[Any], name: str) -> Iterator[None]:
    """Run the UNet with adapter ``name`` alone (its other adapters idle): the per-layer ``_active_adapter``, as
    :func:`adapters_disabled` flips ``_disable_adapters`` and for the same reasons (no ``requires_grad`` changes;
    recomputed in this mode under checkpointing, :mod:`~distill_diffusion.models.checkpointing`)."""
    with _layers_set(layers, "_active_adapter", name):
        yield


def tuner_layers(unet: nn.Module) -> list[Any]:
    """The peft LoRA layers of ``unet``, listed once (walking a UNet's modules every step costs milliseconds)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]


@contextmanager
def adapters_disabled(layers: Sequence[Any]) -> Iterator[None]:
    """Teacher mode: the same UNet runs as its frozen base (a LoRA student's teacher, or a discriminator backbone).

    Only peft's per-layer switch (``_disable_adapters``, what ``disable_adapters`` reads) is flipped, not
    ``unet.disable_adapters()``: that also clears ``requires_grad`` on the adapter weights and re-enabling sets it
    again, which breaks a backward pass whose graph spans both modes (a generator's sample, made with the adapter
    on, scored by the backbone with it off, gradients flowing back to the adapter).

    The switch is back on when backward runs: with gradient checkpointing, a block that ran in here is recomputed in
    teacher mode only through :func:`~distill_diffusion.models.checkpointing.checkpoint_in_mode` (what
    ``--gradient_checkpointing`` installs), not through diffusers' default checkpointing function.
    """
    with _layers_set(layers, "_disable_adapters", True):
        yield


@contextmanager
def _layers_set(layers: Sequence[Any], attribute: str, value: Any) -> Iterator[None]:
    """Set one peft per-layer mode attribute on every layer, and put each layer's own value back afterwards."""
    previous = [getattr(layer, attribute) for layer in layers]
    for layer in layers:
        setattr(layer, attribute, value)
    try:
        yield
    finally:
        for layer, was in zip(layers, previous):
            setattr(layer, attribute, was)


def lora_state_dict(unet: nn.Module, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """``get_peft_model_state_dict`` (keys ``<module>.lora_A.weight``), cast to ``dtype``, on the CPU."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(unet, adapter_name=ADAPTER)
    return {k: v.detach().to("cpu", dtype).contiguous() for k, v in state.items()}


def adapter_metadata(unet: nn.Module) -> dict[str, Any]:
    """The adapter's ``LoraConfig`` as JSON-able data (rank, alpha, targets), saved inside the safetensors file.

    Only :data:`PORTABLE_CONFIG_FIELDS` are kept: diffusers rebuilds ``LoraConfig(**metadata)`` on load, and
    the full ``to_dict()`` of a recent peft holds keywords (``lora_bias``, ``target_parameters``, ...) that an
    older peft rejects with a TypeError, so the adapter would not load at all.
    """
    meta = unet.peft_config[ADAPTER].to_dict()
    return {k: sorted(v) if isinstance(v, set) else v for k, v in meta.items() if k in PORTABLE_CONFIG_FIELDS}


#: ``ss_base_model_version`` of a kohya-ss file per family (what kohya-ss' scripts write; UIs read it to pick a base).
KOHYA_BASE_VERSIONS = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}


def save_lora(unet: nn.Module, output_dir: Path, dtype: torch.dtype = torch.float16, family: str = "sd1",
              kohya_name: str = KOHYA_FILE) -> dict[str, Path]:
    """Write ``pytorch_lora_weights.safetensors`` (stock ``load_lora_weights`` of the family's pipeline) and a kohya copy
    (ComfyUI/A1111; SDXL in the sgm names kohya-ss' SDXL LoRAs use)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    state = lora_state_dict(unet, dtype)
    meta = adapter_metadata(unet)
    pipeline = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipeline.save_lora_weights(output_dir, unet_lora_layers=state, unet_lora_adapter_metadata=meta, safe_serialization=True)
    kohya = save_kohya(state, output_dir / kohya_name, rank=int(meta["r"]), alpha=float(meta["lora_alpha"]), family=family,
                       unet_config=dict(unet.config))
    return {"diffusers": output_dir / "pytorch_lora_weights.safetensors", "kohya": kohya}


def save_kohya(state: dict[str, torch.Tensor], path: Path, rank: int, alpha: float, family: str = "sd1",
               unet_config: dict[str, Any] | None = None) -> Path:
    """kohya-ss layout (``lora_unet_<module>.lora_down.weight``, ``.lora_up.weight``, ``.alpha``).

    SD 1.x/2.x through diffusers' ``convert_state_dict_to_kohya``; SDXL with the sgm module names
    (:mod:`distill_diffusion.models.kohya`, needs ``unet_config``). diffusers' converter writes alpha = rank for every
    module; the real alpha is written instead, because A1111/ComfyUI scale by alpha / rank.
    """
    from safetensors.torch import save_file

    if family == "sdxl":
        require(unet_config is not None, "an SDXL kohya copy needs the UNet's config (its block layout)")
        kohya = _kohya_sdxl(state, unet_config)
    else:
        from diffusers.utils import convert_state_dict_to_kohya

        kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in state.items()})
    dtype = next(iter(state.values())).dtype
    kohya = {k: (torch.tensor(alpha, dtype=dtype) if k.endswith(".alpha") else v.contiguous()) for k, v in kohya.items()}
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_base_model_version": KOHYA_BASE_VERSIONS.get(family, "sd_v2"),
    }
    save_file(kohya, str(path), metadata=meta)
    return path


def _kohya_sdxl(state: dict[str, torch.Tensor], unet_config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """peft ``<module>.lora_A/B.weight`` → ``lora_unet_<sgm module>.lora_down/up.weight`` (+ ``.alpha``, set by the caller)."""
    from distill_diffusion.models.kohya import kohya_unet_keys

    out: dict[str, torch.Tensor] = {}
    for key, prefix in kohya_unet_keys(state, "sdxl", unet_config).items():
        part = "lora_down" if ".lora_A." in key else "lora_up"
        out[f"{prefix}.{part}.weight"] = state[key]
        out[f"{prefix}.alpha"] = state[key].new_zeros(())
    return out
