"""Peak GPU memory of LoRA consistency distillation, estimated from a meta-device model: no weights, no GPU.

The step is LCM-LoRA's (Luo et al., arXiv:2310.04378 Alg. 1; arXiv:2311.05556) as the engine runs it: one UNet whose
frozen base, in the weight dtype, is the teacher (a no-grad cond+uncond forward at twice the batch) and whose LoRA,
in fp32, is the student (a no-grad target forward, then a forward and backward), AdamW on the LoRA. Every term is
computed from the model built on PyTorch's ``meta`` device (shapes only, seconds even for SDXL's 2.6B parameters):

- weights: the UNet's parameter count (exact: the real model's) in the weight dtype; LoRA parameters (peft, the
  targets given) in fp32, with their fp32 gradients and AdamW's two fp32 moments;
- resident frozen modules: the text encoders and VAE the engine keeps on the device (given as parameter counts);
- activations: the tensors autograd saves for backward, counted by ``torch.autograd.graph.saved_tensors_hooks``
  during a meta forward of the LoRA-wrapped UNet under bf16/fp16 autocast, less the weights autograd keeps (a
  saved parameter or a view of one is no new memory; the weights are counted once, above). Attention is counted as flash /
  memory-efficient SDPA saves it (q, k, v, output and the fp32 log-sum-exp), not as the materialised probabilities
  the meta device's math kernel would keep; what CUDA autocast saves in fp32 (``group_norm`` and ``layer_norm`` run
  in fp32 under it: each norm's input, and a GroupNorm's output that the SiLU after it saves) counts at 4 bytes. Each saved tensor is attributed to the checkpointed unit it was saved in
  (diffusers checkpoints every ``ResnetBlock2D`` and ``BasicTransformerBlock``), or to none. Without checkpointing the
  student holds all of them. With it (Chen et al., arXiv:1604.06174) it holds the tensors saved outside units plus each
  unit's input, and in backward recomputes one unit at a time: the largest unit's own saved tensors plus two
  gradients of its input's size;
- the teacher's no-grad forward at twice the batch runs before the student's: its transient is bounded by the largest
  unit's saved tensors at that batch (all of one unit's intermediates alive at once).

Peak = weights + LoRA states + resident modules + batch + max(teacher transient, student activations + recompute).
Not counted, and added as a stated margin: the CUDA context (about 0.5 GiB), kernels' workspaces and the caching
allocator's fragmentation (10%).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

GIB = 2**30
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}
#: Outside the estimate: the CUDA context and a share of the total for the allocator's fragmentation and workspaces.
CONTEXT_GIB, FRAGMENTATION = 0.5, 0.10
#: The VAE of SD 1.x and SDXL base (the same architecture; SDXL's is retrained): its published config.
SD_VAE_CONFIG = {"block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
                 "up_block_types": ["UpDecoderBlock2D"] * 4, "layers_per_block": 2, "latent_channels": 4}
#: Modules diffusers' UNet checkpoints one by one under ``enable_gradient_checkpointing``.
CHECKPOINT_UNITS = ("ResnetBlock2D", "BasicTransformerBlock")


def dtype_width(dtype: torch.dtype) -> int:
    """Bytes an element of ``dtype``."""
    return torch.empty((), dtype=dtype).element_size()


class _FlashSDPA(torch.autograd.Function):
    """Stands in for ``scaled_dot_product_attention`` in the meta forward: the output shape and what flash attention
    saves for backward (q, k, v, out, fp32 log-sum-exp per query), no [N, N] probabilities."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        lse.full_precision = True  # fp32 under autocast too (activation_profile counts other fp32 tensors at its dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:  # never run: the estimate does no backward
        raise NotImplementedError


@contextlib.contextmanager
def _flash_attention() -> Iterator[None]:
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = lambda q, k, v, *args, **kwargs: _FlashSDPA.apply(q, k, v)
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


@dataclass
class ActivationProfile:
    """Bytes saved for backward in one forward: outside checkpoint units, and per unit its input and its own."""

    outside: int = 0
    unit_inputs: list[int] = field(default_factory=list)
    unit_saved: list[int] = field(default_factory=list)
    #: (bytes saved outside units, units entered) when the decoder (``up_blocks``) starts; None: it never ran
    encoder_end: tuple[int, int] | None = None

    @property
    def total(self) -> int:
        return self.outside + sum(self.unit_saved)

    def encoder(self) -> ActivationProfile:
        """What the forward saved up to the mid block's output: a truncated forward's profile (a classifier on the
        bottleneck, :func:`~distill_diffusion.trainers.methods.ladd.backbone.unet_features`)."""
        outside, units = self.encoder_end or (self.outside, len(self.unit_saved))
        return ActivationProfile(outside, self.unit_inputs[:units], self.unit_saved[:units])

    def held(self, gradient_checkpointing: bool) -> tuple[int, int]:
        """(held through the forward, extra at the backward's worst point): :meth:`checkpointed`, or without
        checkpointing every saved tensor and two gradients of the largest unit input."""
        return self.checkpointed() if gradient_checkpointing else (self.total, 2 * max(self.unit_inputs, default=0))

    def checkpointed(self) -> tuple[int, int]:
        """(held through the forward, extra at the backward's worst unit) under per-unit checkpointing."""
        worst = max(range(len(self.unit_saved)), key=self.unit_saved.__getitem__, default=None)
        if worst is None:
            return self.outside, 0
        return self.outside + sum(self.unit_inputs), self.unit_saved[worst] + 2 * self.unit_inputs[worst]


@contextlib.contextmanager
def autocast_fp32_tensors(model: nn.Module) -> Iterator[set[int]]:
    """The ids of the tensors CUDA autocast saves in fp32 during ``model``'s forward, which the meta forward (no
    autocast) holds in the weight dtype: ``group_norm`` and ``layer_norm`` run in fp32 under autocast (torch.amp's op
    lists), so each saves an fp32 copy of its input, and a GroupNorm's fp32 output is what the SiLU after it saves (a
    convolution or linear layer after a norm saves its input cast back to the autocast dtype, as counted)."""
    ids: set[int] = set()
    outputs: set[int] = set()
    keep: list[Any] = []  # the tensors whose ids are recorded stay alive, so no id is reused

    def norm_input(module: nn.Module, args: tuple) -> None:
        ids.add(id(args[0]))
        keep.append(args[0])

    def norm_output(module: nn.Module, args: tuple, output: Any) -> None:
        outputs.add(id(output))
        keep.append(output)

    def activation_input(module: nn.Module, args: tuple) -> None:
        if id(args[0]) in outputs:
            ids.add(id(args[0]))

    handles = []
    for m in model.modules():
        if isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
            handles.append(m.register_forward_pre_hook(norm_input))
            if isinstance(m, nn.GroupNorm):
                handles.append(m.register_forward_hook(norm_output))
        elif isinstance(m, nn.SiLU):
            handles.append(m.register_forward_pre_hook(activation_input))
    try:
        yield ids
    finally:
        for h in handles:
            h.remove()


def meta_unet(unet_config: dict[str, Any], dtype: torch.dtype) -> nn.Module:
    """The UNet of ``unet_config`` on the meta device in ``dtype``, frozen."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
    nn.Module.to(unet, dtype=dtype)  # plain .to: diffusers' override warns about fp32-kept modules
    return unet.requires_grad_(False)


def add_meta_lora(unet: nn.Module, rank: int, target_modules: Sequence[str]) -> int:
    """Attach a peft LoRA (fp32, as the engine keeps it) to the meta UNet; returns its parameter count."""
    from peft import LoraConfig

    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(target_modules), init_lora_weights="gaussian"))
    lora = [p for name, p in unet.named_parameters() if "lora_" in name]
    for p in lora:
        p.data = p.data.float()
        p.requires_grad_(True)
    return sum(p.numel() for p in lora)


def meta_unet_inputs(unet: nn.Module, batch: int, latent: int, dtype: torch.dtype) -> tuple[tuple, dict[str, Any]]:
    """Meta inputs of one UNet call: latents, timesteps, text states, and SDXL's added conditions when it has them."""
    from distill_diffusion.models.conditioning import pooled_text_width

    cfg = dict(unet.config)
    meta = {"device": "meta", "dtype": dtype}
    args = (torch.empty(batch, cfg["in_channels"], latent, latent, **meta), torch.zeros(batch, dtype=torch.long, device="meta"),
            torch.empty(batch, 77, cfg["cross_attention_dim"], **meta))
    if cfg.get("addition_embed_type") != "text_time":
        return args, {}
    added = {"text_embeds": torch.empty(batch, pooled_text_width(cfg), **meta), "time_ids": torch.empty(batch, 6, **meta)}
    return args, {"added_cond_kwargs": added}


def activation_profile(unet: nn.Module, batch: int, latent: int, dtype: torch.dtype) -> ActivationProfile:
    """Saved-for-backward bytes of one forward of ``unet`` (its trainable parameters decide what autograd keeps), per
    checkpoint unit (:data:`CHECKPOINT_UNITS`); :func:`profile_saved` says how each tensor counts."""
    units = [m for m in unet.modules() if type(m).__name__ in CHECKPOINT_UNITS]
    args, kwargs = meta_unet_inputs(unet, batch, latent, dtype)
    return profile_saved(unet, lambda: unet(*args, **kwargs), units, dtype, decoder_start=unet.up_blocks[0])


def profile_saved(model: nn.Module, call: Any, units: Sequence[nn.Module], dtype: torch.dtype,
                  decoder_start: nn.Module | None = None) -> ActivationProfile:
    """Saved-for-backward bytes of ``call()``, a meta forward of ``model`` under autocast to ``dtype`` with flash
    attention's saved tensors (:class:`_FlashSDPA`), attributed to the checkpoint unit (one of ``units``) each tensor
    was saved in; ``decoder_start``: the module whose start marks the end of an encoder (:meth:`ActivationProfile.encoder`).

    A saved parameter, or a view of one (a linear layer saves its weight's transpose), is the weight itself and no
    new memory: the weights are counted once, as weights. The meta device has no autocast, so an fp32 LoRA's path
    runs in fp32 (peft casts each adapter's input to its dtype): those saved fp32 tensors count at ``dtype``'s width,
    as autocast casts them before the matmul that saves them (one copy per adapter, as on a GPU); the tensors autocast
    saves in fp32 (:func:`autocast_fp32_tensors`: the norms' inputs, the SiLU's after a GroupNorm) count at 4 bytes."""
    profile, stack, seen = ActivationProfile(), [], {}
    weights = {id(p) for p in model.parameters()}
    width = dtype_width(dtype)

    def nbytes(t: torch.Tensor) -> int:
        """As autocast holds ``t``: an fp32 tensor of the meta forward (an fp32 module's, the VAE's) in ``dtype``."""
        fp32 = t.dtype == torch.float32 and not getattr(t, "full_precision", False)
        return t.numel() * (width if fp32 else t.element_size())

    def pack(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in seen and id(t if t._base is None else t._base) not in weights:
            seen[id(t)] = t  # one tensor saved by two ops is held once; keep it so its id is not reused
            size = 4 * t.numel() if id(t) in autocast_fp32 else nbytes(t)
            if stack:
                profile.unit_saved[stack[0]] += size
            else:
                profile.outside += size
        return t

    def enter(module: nn.Module, args: tuple) -> None:
        if not stack:
            profile.unit_inputs.append(nbytes(args[0]) if args else 0)  # the checkpoint keeps it as autocast made it
            profile.unit_saved.append(0)
        stack.append(len(profile.unit_saved) - 1 if not stack else stack[0])

    def leave(module: nn.Module, args: tuple, output: Any) -> None:
        stack.pop()

    def decoder(module: nn.Module, args: tuple) -> None:
        profile.encoder_end = (profile.outside, len(profile.unit_saved))

    handles = [h for m in units for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    if decoder_start is not None:
        handles.append(decoder_start.register_forward_pre_hook(decoder))
    autocast = torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32)
    try:
        with _flash_attention(), autocast, autocast_fp32_tensors(model) as autocast_fp32, \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            call()
    finally:
        for h in handles:
            h.remove()
    return profile


def heads_saved(heads: nn.Module, features: dict[str, torch.Tensor], cond_dim: int, dtype: torch.dtype) -> int:
    """Saved-for-backward bytes of discriminator heads' forward on ``features`` (meta tensors, as the discriminator
    phase holds them: fp32, with gradients), conditioned on a meta vector of width ``cond_dim``: no checkpoint unit,
    so all of it is :attr:`ActivationProfile.outside`."""
    batch = next(iter(features.values())).shape[0]
    return profile_saved(heads, lambda: heads(features, torch.empty(batch, cond_dim, device="meta")), [], dtype).outside


def meta_parameter_count(build: Any) -> int:
    """Parameters of the module ``build()`` makes, built on the meta device."""
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


def sdxl_resident_parameters() -> dict[str, int]:
    """Parameters of SDXL base's frozen text encoders and VAE (their published configs), built on the meta device."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def clip(hidden: int, layers: int, heads: int, act: str) -> CLIPTextConfig:
        return CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                              num_attention_heads=heads, max_position_embeddings=77, projection_dim=hidden, hidden_act=act)

    return {
        "text_encoder": meta_parameter_count(lambda: CLIPTextModel(clip(768, 12, 12, "quick_gelu"))),  # CLIP ViT-L/14
        "text_encoder_2": meta_parameter_count(lambda: CLIPTextModelWithProjection(clip(1280, 32, 20, "gelu"))),  # bigG/14
        "vae": meta_parameter_count(lambda: AutoencoderKL(**SD_VAE_CONFIG)),
    }


def resident_and_batch_bytes(unet: nn.Module, resident: dict[str, int] | None, batch_size: int, latent: int, width: int) -> tuple[int, int]:
    """Bytes of the frozen modules kept on the device (``resident``: name → parameters; text encoders in the weight
    dtype of ``width`` bytes, a ``vae`` in fp32 as under ``force_upcast``) and of a batch of cached fp32 latents and
    text embeddings."""
    cfg = dict(unet.config)
    resident_bytes = sum(n * (4 if name == "vae" else width) for name, n in (resident or {}).items())
    return resident_bytes, batch_size * (cfg["in_channels"] * latent**2 + 77 * cfg["cross_attention_dim"]) * 4


def estimate_lora_training(unet_config: dict[str, Any], *, batch_size: int, resolution: int, lora_rank: int,
                           target_modules: Sequence[str], mixed_precision: str = "bf16", gradient_checkpointing: bool = True,
                           resident: dict[str, int] | None = None, vae_factor: int = 8) -> dict[str, Any]:
    """Every term of the peak (bytes and GiB) and the settings; ``resident`` maps frozen modules kept on the device to
    parameter counts (text encoders in the weight dtype, a ``vae`` in fp32 as under ``force_upcast``)."""
    dtype = DTYPES[mixed_precision]
    unet = meta_unet(unet_config, dtype)
    base = sum(p.numel() for p in unet.parameters())
    lora = add_meta_lora(unet, lora_rank, target_modules)
    latent = resolution // vae_factor
    profile = activation_profile(unet, batch_size, latent, dtype)
    held, recompute = profile.held(gradient_checkpointing)
    width = dtype_width(dtype)
    resident_bytes, batch_bytes = resident_and_batch_bytes(unet, resident, batch_size, latent, width)
    terms = {
        "UNet weights (frozen, weight dtype)": base * width,
        "LoRA weights + gradients + AdamW moments (fp32)": lora * 16,
        "frozen text encoders and VAE kept on the device": resident_bytes,
        "batch (cached latents and embeddings)": batch_bytes,
        "student activations held through the forward": held,
        "backward recompute of the largest unit": recompute,
        "teacher cond+uncond no-grad forward (transient)": 2 * max(profile.unit_saved, default=0),
    }
    fixed = sum(terms[k] for k in list(terms)[:4])
    peak = fixed + max(terms["teacher cond+uncond no-grad forward (transient)"], held + recompute)
    return {
        "terms_gib": {k: v / GIB for k, v in terms.items()},
        "peak_gib": peak / GIB,
        "peak_with_margin_gib": peak / GIB * (1 + FRAGMENTATION) + CONTEXT_GIB,
        "activations_without_checkpointing_gib": profile.total / GIB,
        "unet_parameters": base, "lora_parameters": lora, "resident_parameters": dict(resident or {}),
        "checkpoint_units": len(profile.unit_saved),
        "settings": {"batch_size": batch_size, "resolution": resolution, "latent_size": latent, "lora_rank": lora_rank,
                     "mixed_precision": mixed_precision, "gradient_checkpointing": gradient_checkpointing,
                     "target_modules": list(target_modules), "margin": {"context_gib": CONTEXT_GIB, "fragmentation": FRAGMENTATION}},
    }
