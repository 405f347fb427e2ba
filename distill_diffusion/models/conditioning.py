"""The UNet's conditioning as one object: text embeddings, and SDXL's pooled text embedding and micro-conditioning.

SD 1.x/2.x condition their UNet on the text encoder's hidden states alone. SDXL (Podell et al., arXiv:2307.01952,
§2.1-2.2) adds two inputs through ``added_cond_kwargs``: ``text_embeds``, text_encoder_2's pooled projection, and
``time_ids``, the micro-conditioning (original size (h, w), crop top-left (top, left), target size (h, w)), both
embedded and added to the timestep embedding (diffusers' ``addition_embed_type="text_time"``).

Methods never look inside: every method receives a :class:`Conditioning` from
:func:`distill_diffusion.models.batch.latents_and_embeddings` and treats it like the text-embedding tensor it was
before (rows, ``len``, :func:`cat`, ``expand``, ``to``, ``detach``); only :meth:`Conditioning.unet_kwargs` turns it
into UNet arguments. An SD Conditioning has ``text_embeds`` and ``time_ids`` None and adds no
``added_cond_kwargs``, so an SD UNet is called exactly as before. The :class:`~distill_diffusion.models.denoiser.Denoiser`
also takes a bare tensor (wrapped by :func:`as_conditioning`), for SD callers that hold only embeddings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from distill_diffusion.errors import require

#: SDXL's micro-conditioning: original (h, w), crop top-left (top, left), target (h, w) (arXiv:2307.01952, §2.2).
TIME_IDS_LENGTH = 6


def check_time_ids(time_ids: Tensor) -> None:
    """Time ids are [B, 6] (SDXL base); one-line error otherwise (the refiner's 5 include an aesthetic score)."""
    require(time_ids.ndim == 2 and time_ids.shape[-1] == TIME_IDS_LENGTH,
            f"time_ids of shape {list(time_ids.shape)}: SDXL micro-conditioning takes {TIME_IDS_LENGTH} values per sample, "
            "original (height, width), crop top-left (top, left), target (height, width)")


@dataclass
class Conditioning:
    """``encoder_hidden_states`` [B, L, D], and for SDXL ``text_embeds`` [B, P] and ``time_ids`` [B, 6]."""

    encoder_hidden_states: Tensor
    text_embeds: Tensor | None = None
    time_ids: Tensor | None = None

    def __post_init__(self) -> None:
        require((self.text_embeds is None) == (self.time_ids is None),
                "Conditioning needs both text_embeds and time_ids (SDXL) or neither (SD 1.x/2.x)")
        if self.time_ids is not None:
            check_time_ids(self.time_ids)

    @property
    def has_added(self) -> bool:
        """Whether the UNet gets ``added_cond_kwargs`` (SDXL's pooled text and micro-conditioning)."""
        return self.text_embeds is not None

    def _map(self, fn: Any, time_ids_fn: Any = None) -> Conditioning:
        """Apply ``fn`` to every tensor (``time_ids_fn`` to the time ids, default ``fn``)."""
        if not self.has_added:
            return Conditioning(fn(self.encoder_hidden_states))
        return Conditioning(fn(self.encoder_hidden_states), fn(self.text_embeds), (time_ids_fn or fn)(self.time_ids))

    def __len__(self) -> int:
        return int(self.encoder_hidden_states.shape[0])

    def __getitem__(self, rows: Any) -> Conditioning:
        """Rows of the batch (an int keeps the batch dimension, like ``c[i:i+1]``)."""
        if isinstance(rows, int):
            rows = slice(rows, rows + 1 if rows != -1 else None)
        return self._map(lambda x: x[rows])

    @property
    def device(self) -> torch.device:
        return self.encoder_hidden_states.device

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder_hidden_states.dtype

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> Conditioning:
        """Move to ``device``; ``dtype`` casts the embeddings only: time ids are pixel counts and stay as they are
        (diffusers passes them in the UNet's dtype, which the Denoiser does when calling it)."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        return self._map(lambda x: x.to(device=device, dtype=dtype), lambda x: x.to(device=device))

    def detach(self) -> Conditioning:
        return self._map(Tensor.detach)

    def expand(self, batch: int) -> Conditioning:
        """One row repeated to ``batch`` rows (a view, like ``tensor.expand``)."""
        require(len(self) == 1 or len(self) == batch, f"cannot expand a conditioning of {len(self)} rows to {batch}")
        return self._map(lambda x: x.expand(batch, *x.shape[1:]))

    def zeros_like(self) -> Conditioning:
        """Zero embeddings, same time ids (diffusers' ``force_zeros_for_empty_prompt`` unconditional branch)."""
        return self._map(torch.zeros_like, lambda x: x)

    def pooled(self) -> Tensor:
        """One text vector per sample, fp32: the pooled embedding where the model has one (SDXL), else the mean of the
        text tokens (SD 1.x/2.x have no pooled input). Used as a discriminator's text condition."""
        return self.text_embeds.float() if self.has_added else self.encoder_hidden_states.float().mean(dim=1)

    def with_time_ids(self, time_ids: Tensor) -> Conditioning:
        """The same text with other micro-conditioning (e.g. the cond branch's, given to the uncond branch)."""
        return replace(self, time_ids=time_ids.to(self.device))

    def unet_kwargs(self, dtype: torch.dtype | None = None) -> dict[str, Any]:
        """``UNet2DConditionModel`` keyword arguments, cast to ``dtype`` (the UNet's) when given."""
        cast = (lambda x: x.to(dtype)) if dtype is not None else (lambda x: x)
        kwargs: dict[str, Any] = {"encoder_hidden_states": cast(self.encoder_hidden_states)}
        if self.has_added:
            kwargs["added_cond_kwargs"] = {"text_embeds": cast(self.text_embeds), "time_ids": cast(self.time_ids)}
        return kwargs

    def tensors(self) -> dict[str, Tensor]:
        """The parts that exist, by their cache/batch names (``prompt_embeds``, ``text_embeds``, ``time_ids``)."""
        out = {"prompt_embeds": self.encoder_hidden_states}
        if self.has_added:
            out.update(text_embeds=self.text_embeds, time_ids=self.time_ids)
        return out


def cat(parts: Sequence[Conditioning | Tensor]) -> Conditioning:
    """Rows of several conditionings, in order (``torch.cat`` for :class:`Conditioning`)."""
    items = [as_conditioning(p) for p in parts]
    require(len({p.has_added for p in items}) == 1, "cannot concatenate SDXL and SD 1.x/2.x conditionings")
    first = items[0]
    if not first.has_added:
        return Conditioning(torch.cat([p.encoder_hidden_states for p in items]))
    return Conditioning(torch.cat([p.encoder_hidden_states for p in items]), torch.cat([p.text_embeds for p in items]),
                        torch.cat([p.time_ids.to(first.time_ids.dtype) for p in items]))


def as_conditioning(c: Conditioning | Tensor) -> Conditioning:
    """A Conditioning as it is; a bare embedding tensor as an SD 1.x/2.x Conditioning."""
    return c if isinstance(c, Conditioning) else Conditioning(c)


def from_mapping(batch: Mapping[str, Any]) -> Conditioning:
    """The conditioning stored under :meth:`Conditioning.tensors`' names (a cached or synthetic batch)."""
    if batch.get("text_embeds") is None:
        return Conditioning(batch["prompt_embeds"])
    return Conditioning(batch["prompt_embeds"], batch["text_embeds"], batch["time_ids"])


def pooled_text_width(unet_config: Mapping[str, Any]) -> int:
    """Width of :meth:`Conditioning.pooled` for a UNet: the pooled embedding's (``projection_class_embeddings_input_dim``
    less the six embedded time ids) for a ``text_time`` UNet, else the cross-attention width."""
    if unet_config.get("addition_embed_type") == "text_time":
        return int(unet_config["projection_class_embeddings_input_dim"]) - TIME_IDS_LENGTH * int(unet_config["addition_time_embed_dim"])
    dim = unet_config["cross_attention_dim"]
    return int(dim[0] if isinstance(dim, (list, tuple)) else dim)


def micro_conditioning_ids(original_size: Tensor, crop_top_left: Tensor, target_size: tuple[int, int]) -> Tensor:
    """SDXL time ids [B, 6] = (original h, w, crop top, left, target h, w), as diffusers' SDXL training scripts'
    ``compute_time_ids``; ``original_size`` and ``crop_top_left`` are [B, 2] per-image records of preprocessing."""
    target = torch.tensor(target_size, dtype=torch.long).expand(original_size.shape[0], 2)
    return torch.cat([original_size.long().cpu(), crop_top_left.long().cpu(), target], dim=1)


def placeholder(unet_config: Mapping[str, Any], batch: int = 1, tokens: int = 77) -> Conditioning:
    """Zero conditioning of the shapes a UNet takes (77 text tokens; SDXL's pooled text and six time ids too): for
    probing a UNet's shapes and operation counts on the meta device, where only shapes matter."""
    dim = unet_config["cross_attention_dim"]
    hidden = torch.zeros(batch, tokens, int(dim[0] if isinstance(dim, (list, tuple)) else dim))
    if unet_config.get("addition_embed_type") != "text_time":
        return Conditioning(hidden)
    return Conditioning(hidden, torch.zeros(batch, pooled_text_width(unet_config)), torch.zeros(batch, TIME_IDS_LENGTH))
