"""DMD2's peak GPU memory in one-base LoRA mode and in full mode, estimated from meta-device models: no weights, no GPU.

DMD2 (Yin et al., arXiv:2405.14867, §4) trains a generator and a fake-score model against a frozen real score (the
teacher), with a classifier head on the fake score's bottleneck; the engine runs its two phases one after the other
(:mod:`distill_diffusion.trainers.methods.dmd2.method`). Full mode holds three UNets: the frozen teacher in the weight
dtype and an fp32 generator and fake score with AdamW. One-base LoRA mode holds one: the frozen teacher with two fp32
LoRA adapters (generator and fake score). The terms, per mode, from the models of
:mod:`~distill_diffusion.bench.memory_estimate` (its activation profile and margins):

- always held: the frozen UNet; the generator's, the fake score's and the head's fp32 weights and AdamW moments; the
  resident text encoders and VAE; the batch;
- generator phase: its gradients; the generator's forward at the batch and the classifier's (the fake score up to
  its mid block) held until the one backward; before the classifier, the real score's no-grad cond+uncond forward at
  twice the batch (bounded by twice the largest unit's tensors, as the teacher's in LCM-LoRA's estimate);
- fake-score phase: its gradients (fake score and head); the generator phase's rollback snapshot (its weights and
  moments, which the engine keeps until the step's last phase has stepped, so a failing phase can undo the step); the
  denoising forward at the batch and the classifier's on real and generated latents (twice the batch) held;
- under bf16/fp16 autocast, the casts of fp32 trainable weights that autograd saves for backward: the generator's and
  the fake-score encoder's in the generator phase, the fake score's in its own (the meta forward runs in the weight
  dtype already, so the profile has no casts).

Both with-grad forwards of a phase are profiled with the phase's trainable weights (the generator phase's classifier,
whose weights are frozen there, is counted as if they trained: a small overestimate). Peak = always held +
max(generator phase, fake-score phase); the CUDA context and fragmentation margins are added as for LCM-LoRA.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from distill_diffusion.bench.memory_estimate import (
    CONTEXT_GIB,
    DTYPES,
    FRAGMENTATION,
    GIB,
    ActivationProfile,
    activation_profile,
    add_meta_lora,
    dtype_width,
    meta_parameter_count,
    meta_unet,
    resident_and_batch_bytes,
)

#: The two modes, in table order: one-base LoRA mode and full mode (``method.lora`` true / false).
MODES = ("one-base LoRA", "full")
#: The engine's two phases of a DMD2 step; a term whose name starts with one is held only while that phase runs.
PHASES = ("generator phase", "fake-score phase")
#: Modules a truncated forward up to the mid block runs (:func:`~distill_diffusion.trainers.methods.ladd.backbone.unet_features`).
ENCODER_MODULES = ("conv_in", "time_embedding", "add_embedding", "down_blocks", "mid_block")


def head_parameters(unet_config: dict[str, Any], width: int) -> int:
    """Parameters of DMD2's classifier head on the mid block (:class:`~distill_diffusion.trainers.methods.adversarial.
    heads.DiscriminatorHeads`)."""
    from distill_diffusion.trainers.methods.adversarial.heads import TIME_DIM, DiscriminatorHeads
    from distill_diffusion.trainers.methods.ladd import backbone as bb

    return meta_parameter_count(lambda: DiscriminatorHeads({"mid_block": bb.tap_channels(unet_config, "mid_block")}, TIME_DIM, width))


def encoder_share(unet: nn.Module) -> float:
    """The share of the UNet's parameters that a forward up to the mid block uses."""
    encoder = sum(p.numel() for name in ENCODER_MODULES if getattr(unet, name, None) is not None
                  for p in getattr(unet, name).parameters())
    return encoder / sum(p.numel() for p in unet.parameters())


def phase_activations(profiles: dict[int, ActivationProfile], batch: int, checkpointing: bool) -> dict[str, int]:
    """Activation bytes of each phase at its worst point, from the trainable UNet's profiles at the batch and at twice
    it: a whole forward (the generator's, or the fake score's denoising one) and the classifier's truncated one (at the
    batch on generated samples, at twice it on real and generated latents) held until the phase's one backward."""
    unet, unet_extra = profiles[batch].held(checkpointing)
    classifier, classifier_extra = profiles[batch].encoder().held(checkpointing)
    both, both_extra = profiles[2 * batch].encoder().held(checkpointing)
    real_score = 2 * max(profiles[batch].unit_saved, default=0)  # the no-grad cond+uncond forward, before the classifier's
    return {PHASES[0]: unet + max(real_score, classifier + max(unet_extra, classifier_extra)),
            PHASES[1]: unet + both + max(unet_extra, both_extra)}


def mode_terms(trainable: int, head: int, base: int, width: int, cast_width: int, share: float,
               activations: dict[str, int]) -> dict[str, int]:
    """Every term of one mode in bytes: ``trainable`` parameters per trained UNet role (an adapter, or a whole UNet),
    ``head`` the classifier's, ``base`` the frozen UNet's in the weight dtype of ``width`` bytes; ``cast_width``: bytes
    of autocast's saved copy of a trainable fp32 weight (0 in fp32); ``share``: :func:`encoder_share`."""
    return {
        "frozen UNet (real score), weight dtype": base * width,
        "generator + fake-score weights (fp32)": 2 * trainable * 4,
        "classifier head weights (fp32)": head * 4,
        "AdamW moments of generator, fake score and head (fp32)": (2 * trainable + head) * 8,
        "generator phase: gradients (fp32)": trainable * 4,
        "generator phase: activations": activations[PHASES[0]],
        "generator phase: autocast copies of fp32 weights": int(trainable * cast_width * (1 + share)),
        "fake-score phase: gradients (fp32)": (trainable + head) * 4,
        "fake-score phase: generator's rollback snapshot (weights + moments)": trainable * 12,
        "fake-score phase: activations": activations[PHASES[1]],
        "fake-score phase: autocast copies of fp32 weights": trainable * cast_width,
    }


def estimate_dmd2_training(unet_config: dict[str, Any], *, batch_size: int, resolution: int, lora_rank: int,
                           target_modules: Sequence[str], head_width: int = 128, mixed_precision: str = "bf16",
                           gradient_checkpointing: bool = True, resident: dict[str, int] | None = None,
                           vae_factor: int = 8) -> dict[str, Any]:
    """Each mode's terms (GiB), peak and peak with margins, and one-base / full; ``resident`` as for
    :func:`~distill_diffusion.bench.memory_estimate.estimate_lora_training`."""
    dtype, latent = DTYPES[mixed_precision], resolution // vae_factor
    width = dtype_width(dtype)
    lora_unet = meta_unet(unet_config, dtype)
    base = sum(p.numel() for p in lora_unet.parameters())
    lora = add_meta_lora(lora_unet, lora_rank, target_modules)  # one adapter; the other has the same shapes
    full_unet = meta_unet(unet_config, dtype).requires_grad_(True)  # fp32 under autocast: activations in the weight dtype
    head = head_parameters(unet_config, head_width)
    share = encoder_share(full_unet)
    fixed = sum(resident_and_batch_bytes(lora_unet, resident, batch_size, latent, width))
    cast_width = width if mixed_precision != "no" else 0  # autocast's copies of fp32 weights; in fp32 nothing is cast
    modes = {}
    for mode, unet, trainable in ((MODES[0], lora_unet, lora), (MODES[1], full_unet, base)):
        profiles = {b: activation_profile(unet, b, latent, dtype) for b in (batch_size, 2 * batch_size)}
        terms = mode_terms(trainable, head, base, width, cast_width, share, phase_activations(profiles, batch_size, gradient_checkpointing))
        modes[mode] = summarise(terms, fixed)
    return {
        "modes": modes, "one_base_over_full": modes[MODES[0]]["peak_gib"] / modes[MODES[1]]["peak_gib"],
        "states_one_base_over_full": modes[MODES[0]]["weights_gradients_moments_gib"] / modes[MODES[1]]["weights_gradients_moments_gib"],
        "unet_parameters": base, "lora_parameters_per_adapter": lora, "head_parameters": head,
        "resident_parameters": dict(resident or {}),
        "settings": {"batch_size": batch_size, "resolution": resolution, "latent_size": latent, "lora_rank": lora_rank,
                     "head_width": head_width, "mixed_precision": mixed_precision, "gradient_checkpointing": gradient_checkpointing,
                     "target_modules": list(target_modules), "margin": {"context_gib": CONTEXT_GIB, "fragmentation": FRAGMENTATION}},
    }


def summarise(terms: dict[str, int], resident_and_batch: int, phase_names: Sequence[str] = PHASES) -> dict[str, Any]:
    """A step's terms in GiB with the resident modules and batch, its peak (always held + the worse phase), margins,
    and its weights, AdamW moments and the larger phase's gradients alone (the terms that differ most between modes).
    A term whose name starts with one of ``phase_names`` is held only while that phase runs."""
    terms = {**terms, "frozen text encoders and VAE, batch": resident_and_batch}
    phases = {p: sum(v for k, v in terms.items() if k.startswith(p)) for p in phase_names}
    held = sum(terms.values()) - sum(phases.values())
    states = held - resident_and_batch + max(terms[f"{p}: gradients (fp32)"] for p in phase_names)
    peak = held + max(phases.values())
    return {"terms_gib": {k: v / GIB for k, v in terms.items()}, "phases_gib": {k: v / GIB for k, v in phases.items()},
            "weights_gradients_moments_gib": states / GIB, "peak_gib": peak / GIB,
            "peak_with_margin_gib": peak / GIB * (1 + FRAGMENTATION) + CONTEXT_GIB}
