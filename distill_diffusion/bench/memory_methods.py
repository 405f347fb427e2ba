"""Peak GPU memory of progressive, BK-SDM, LADD and ADD training steps, estimated from meta-device models: no weights, no GPU.

The step of each method as the engine runs it, term by term, with the activation profiles and margins of
:mod:`~distill_diffusion.bench.memory_estimate` (tensors saved for backward under per-unit gradient checkpointing,
flash attention, autocast) and the phase bookkeeping of :mod:`~distill_diffusion.bench.memory_dmd2` (the terms held
throughout plus the larger phase). Trained weights are fp32 with fp32 gradients, AdamW's two fp32 moments and, where
the config keeps one, an fp32 EMA copy; under bf16/fp16 autocast each trained fp32 weight has a cast copy in the weight
dtype while its forward runs; frozen models sit in the weight dtype.

- **Progressive** (Salimans & Ho, arXiv:2202.00512, Alg. 2): a full student (with its w-embedding under guidance
  distillation), the original teacher and, from the second round on, the previous round's student as the round's
  teacher, both frozen (:mod:`~distill_diffusion.trainers.methods.progressive.method`). The teacher's two DDIM steps
  run without gradients before the student's forward (cond + uncond while the guidance is distilled: twice the batch,
  bounded by twice the largest checkpoint unit's tensors, as the teacher's forward in LCM-LoRA's estimate).
- **BK-SDM / KOALA** (Kim et al., arXiv:2305.15798, eq. 4; Lee et al., arXiv:2312.04005): the smaller student, trained
  whole, and the frozen teacher. The student's forward keeps its captured features (the hooks hold them, checkpointing
  or not); then the teacher's no-grad forward, whose captured features are held until the loss.
- **LADD** (Sauer et al., arXiv:2403.12015): a LoRA on the frozen teacher (or a full student beside it) and the
  discriminator heads. Generator phase: the student's forward, then the backbone (the teacher with the adapter off,
  up to the mid block: a slight overestimate when the deepest tap is a down block) with gradients to its input, the
  heads, and the guided teacher's no-grad distillation target, all held until the one backward. Discriminator phase:
  the backbone's no-grad features of real and generated latents (twice the batch) and their fp32 copies, the heads'
  forward and gradients, and the generator's rollback snapshot the engine keeps until the step's last phase stepped.

- **ADD** (Sauer et al., arXiv:2311.17042): LADD's LoRA student and phases, with the discriminator's features taken
  from images: the student's samples decoded by the VAE (fp32 weights under ``force_upcast``, its convolutions in the
  autocast dtype, checkpointed per block under gradient checkpointing) and read by a frozen DINOv2 ViT (weight dtype,
  not checkpointed: transformers checkpoints its layers only in training mode), both with gradients to their
  input in the generator phase. The discriminator phase decodes and reads the real latents without gradients (bounded
  above by what the decoder's largest block saves with gradients) and, with R1, runs the heads' backward twice.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distill_diffusion.bench.memory_dmd2 import summarise
from distill_diffusion.bench.memory_estimate import (
    CONTEXT_GIB,
    DTYPES,
    FRAGMENTATION,
    activation_profile,
    add_meta_lora,
    dtype_width,
    heads_saved,
    meta_unet,
    meta_unet_inputs,
    resident_and_batch_bytes,
)

#: The one phase of a progressive or BK-SDM step, and LADD's two (the engine's phase names).
STEP = ("training step",)
LADD_PHASES = ("generator phase", "discriminator phase")


def autocast_width(dtype: torch.dtype) -> int | None:
    """The autocast dtype's width under mixed precision, else None (an fp32 module's tensors stay fp32)."""
    return dtype_width(dtype) if dtype != torch.float32 else None


def trained_terms(trainable: int, ema: bool, what: str) -> dict[str, int]:
    """fp32 weights, AdamW moments and (``ema``) the EMA copy of ``trainable`` parameters."""
    terms = {f"{what} weights (fp32)": trainable * 4, f"{what} AdamW moments (fp32)": trainable * 8}
    if ema:
        terms[f"{what} EMA copy (fp32)"] = trainable * 4
    return terms


def training_phase(phase: str, trainable: int, cast_width: int, held: int, transient: int, recompute: int) -> dict[str, int]:
    """A phase's terms: gradients of what it trains, autocast's copies of those weights, the activations held until its
    backward and, above them, the larger of a no-grad transient (before the backward) and the backward's recompute."""
    return {f"{phase}: gradients (fp32)": trainable * 4, f"{phase}: autocast copies of trained fp32 weights": trainable * cast_width,
            f"{phase}: activations held until the backward": held,
            f"{phase}: max(no-grad forward transient, backward recompute)": max(transient, recompute)}


def captured_bytes(unet: nn.Module, outputs: dict[str, str], batch: int, latent: int, dtype: torch.dtype) -> int:
    """Bytes of the module outputs BK-SDM's hooks capture (:class:`~distill_diffusion.trainers.methods.bksdm.features.
    FeatureCapture`) in one meta forward of ``unet`` at ``batch``."""
    from distill_diffusion.trainers.methods.bksdm.features import FeatureCapture

    args, kwargs = meta_unet_inputs(unet, batch, latent, dtype)
    with torch.no_grad(), FeatureCapture(unet, outputs) as features:
        unet(*args, **kwargs)
    return sum(t.numel() * t.element_size() for t in features.values())


def progressive_terms(unet_config: dict[str, Any], options: dict[str, Any], batch: int, latent: int, dtype: torch.dtype,
                      checkpointing: bool, ema: bool) -> tuple[dict[str, int], dict[str, Any]]:
    """Progressive's terms in bytes (a round after the first: two frozen teachers) and what the table says of them."""
    extra = {"time_cond_proj_dim": options.get("time_cond_proj_dim", 256)} if options.get("guidance", "distill") == "distill" else {}
    teacher, student = meta_unet(unet_config, dtype), meta_unet({**unet_config, **extra}, dtype).requires_grad_(True)
    base, trainable, width = sum(p.numel() for p in teacher.parameters()), sum(p.numel() for p in student.parameters()), dtype_width(dtype)
    profile = activation_profile(student, batch, latent, dtype)
    held, recompute = profile.held(checkpointing)
    terms = {"frozen teacher + the previous round's student, weight dtype": (base + trainable) * width,
             **trained_terms(trainable, ema, "student")}
    cast = autocast_width(dtype) or 0
    terms.update(training_phase(STEP[0], trainable, cast, held, 2 * max(profile.unit_saved, default=0), recompute))
    return terms, {"unet_parameters": base, "trainable_parameters": trainable}


def bksdm_terms(unet_config: dict[str, Any], options: dict[str, Any], batch: int, latent: int, dtype: torch.dtype,
                checkpointing: bool, ema: bool) -> tuple[dict[str, int], dict[str, Any]]:
    """BK-SDM's terms in bytes: the student trained whole, the frozen teacher, both models' captured features."""
    from distill_diffusion.trainers.methods.bksdm import features as feat
    from distill_diffusion.trainers.methods.bksdm.config import BKSDMConfig
    from distill_diffusion.trainers.methods.bksdm.method import plan

    student_cfg, _, pairs = plan(unet_config, BKSDMConfig(**options))
    teacher, student = meta_unet(unet_config, dtype), meta_unet(student_cfg, dtype).requires_grad_(True)
    base, trainable, width = sum(p.numel() for p in teacher.parameters()), sum(p.numel() for p in student.parameters()), dtype_width(dtype)
    profile, teacher_profile = activation_profile(student, batch, latent, dtype), activation_profile(teacher, batch, latent, dtype)
    held, recompute = profile.held(checkpointing)
    features = captured_bytes(student, feat.student_outputs(pairs), batch, latent, dtype)
    features += captured_bytes(teacher, feat.teacher_outputs(pairs), batch, latent, dtype)
    terms = {"frozen teacher UNet, weight dtype": base * width, **trained_terms(trainable, ema, "student")}
    cast = autocast_width(dtype) or 0
    terms.update(training_phase(STEP[0], trainable, cast, held + features, max(teacher_profile.unit_saved, default=0), recompute))
    return terms, {"unet_parameters": base, "trainable_parameters": trainable, "feature_pairs": len(pairs), "captured_features_gib": features / 2**30}


def adversarial_terms(unet_config: dict[str, Any], cfg: Any, batch: int, latent: int, dtype: torch.dtype, checkpointing: bool,
                      ema: bool, judge: Any) -> tuple[dict[str, int], dict[str, Any]]:
    """LADD's or ADD's terms in bytes (LoRA mode, or a full student when ``lora`` is off): the student's, and from
    ``judge(unet, profile)`` the discriminator's (heads' parameters, what the generator phase holds for them and adds
    at its backward, and the discriminator phase's own terms)."""
    unet, width = meta_unet(unet_config, dtype), dtype_width(dtype)
    base = sum(p.numel() for p in unet.parameters())
    if cfg.lora:
        trainable = add_meta_lora(unet, cfg.lora_rank, cfg.lora_target_modules)
        frozen = {"frozen UNet (teacher; the LoRA's base), weight dtype": base * width}
    else:
        trainable = base
        frozen = {"frozen teacher UNet, weight dtype": base * width}
        unet.requires_grad_(True)
    profile = activation_profile(unet, batch, latent, dtype)
    student, student_extra = profile.held(checkpointing)
    heads, held, extra, discriminator = judge(unet, profile)
    distill = 2 * max(profile.unit_saved, default=0) if cfg.distill_weight > 0 else 0  # the guided teacher, cond + uncond
    cast = autocast_width(dtype) or 0
    generator = training_phase(LADD_PHASES[0], trainable, cast, student + held, distill, max(student_extra, extra))
    discriminator = {f"{LADD_PHASES[1]}: gradients (fp32)": heads * 4,
                     f"{LADD_PHASES[1]}: generator's rollback snapshot (weights + moments)": trainable * 12, **discriminator}
    terms = {**frozen, **trained_terms(trainable, ema, "student"), **trained_terms(heads, False, "discriminator heads"),
             **generator, **discriminator}
    return terms, {"unet_parameters": base, "trainable_parameters": trainable, "head_parameters": heads}


def ladd_terms(unet_config: dict[str, Any], options: dict[str, Any], batch: int, latent: int, dtype: torch.dtype,
               checkpointing: bool, ema: bool) -> tuple[dict[str, int], dict[str, Any]]:
    """LADD's terms: the backbone (the teacher up to the mid block, adapter off) and heads on its tapped features."""
    from distill_diffusion.trainers.methods.ladd.config import LADDConfig

    cfg, width = LADDConfig(**options), dtype_width(dtype)

    def judge(unet: nn.Module, profile: Any) -> tuple[int, int, int, dict[str, int]]:
        heads, head_saved, taps = _ladd_heads(unet_config, cfg, batch, latent, dtype)
        backbone, backbone_extra = profile.encoder().held(checkpointing)
        no_grad = max(activation_profile(unet, 2 * batch, latent, dtype).unit_saved, default=0)
        p = LADD_PHASES[1]
        return heads, backbone + head_saved[batch], backbone_extra, {
            f"{p}: tapped features of real + generated latents (weight dtype and fp32)": taps * (width + 4),
            f"{p}: heads' activations held until the backward": head_saved[2 * batch],
            f"{p}: no-grad backbone forward (transient)": no_grad}

    return adversarial_terms(unet_config, cfg, batch, latent, dtype, checkpointing, ema, judge)


def add_terms(unet_config: dict[str, Any], options: dict[str, Any], batch: int, latent: int, dtype: torch.dtype,
              checkpointing: bool, ema: bool) -> tuple[dict[str, int], dict[str, Any]]:
    """ADD's terms: the VAE decode and DINOv2 read of the samples, heads on its tokens (:mod:`.memory_add`)."""
    from distill_diffusion.bench.memory_add import add_judge
    from distill_diffusion.trainers.methods.add.config import ADDConfig

    cfg = ADDConfig(**options)
    judge = add_judge(unet_config, cfg, batch, latent, dtype, checkpointing)
    return adversarial_terms(unet_config, cfg, batch, latent, dtype, checkpointing, ema, judge)


def _ladd_heads(unet_config: dict[str, Any], cfg: Any, batch: int, latent: int, dtype: torch.dtype) -> tuple[int, dict[int, int], int]:
    """LADD's heads: their parameters, the bytes their forward saves at the batch and at twice it, and the elements of
    the tapped features at twice the batch (real + generated)."""
    from distill_diffusion.models.conditioning import pooled_text_width
    from distill_diffusion.trainers.methods.adversarial.heads import TIME_DIM, DiscriminatorHeads
    from distill_diffusion.trainers.methods.ladd import backbone as bb
    from distill_diffusion.trainers.methods.ladd.method import taps_of

    taps = taps_of(cfg, unet_config)
    cond_dim = TIME_DIM + pooled_text_width(unet_config) + (TIME_DIM if cfg.disc_student_timestep else 0)
    with torch.device("meta"):
        heads = DiscriminatorHeads({tap: bb.tap_channels(unet_config, tap) for tap in taps}, cond_dim, cfg.head_width)
    unet = meta_unet(unet_config, dtype)
    (z, t, text), kwargs = meta_unet_inputs(unet, 2 * batch, latent, dtype)
    with torch.no_grad():
        features = bb.unet_features(unet, z, t, _conditioning(text, kwargs), taps)
    saved = {}
    for b in (batch, 2 * batch):
        feats = {k: v[:b].float().requires_grad_(True) for k, v in features.items()}
        saved[b] = heads_saved(heads, feats, cond_dim, dtype)
    return sum(p.numel() for p in heads.parameters()), saved, sum(v.numel() for v in features.values())


def _conditioning(text: torch.Tensor, kwargs: dict[str, Any]) -> Any:
    from distill_diffusion.models.conditioning import Conditioning

    added = kwargs.get("added_cond_kwargs")
    return Conditioning(text, added["text_embeds"], added["time_ids"]) if added else text


ESTIMATORS = {"progressive": (progressive_terms, STEP), "bksdm": (bksdm_terms, STEP), "ladd": (ladd_terms, LADD_PHASES),
              "add": (add_terms, LADD_PHASES)}


def estimate_method_training(method: str, unet_config: dict[str, Any], options: dict[str, Any], *, batch_size: int, resolution: int,
                             mixed_precision: str = "bf16", gradient_checkpointing: bool = True, use_ema: bool = True,
                             resident: dict[str, int] | None = None, vae_factor: int = 8) -> dict[str, Any]:
    """Every term (GiB), each phase's sum, the peak (terms held throughout + the larger phase) and the peak with the
    margins, for ``method``'s step with ``options`` (its config's method section) on ``unet_config``."""
    dtype, latent = DTYPES[mixed_precision], resolution // vae_factor
    terms_of, phases = ESTIMATORS[method]
    terms, counts = terms_of(unet_config, options, batch_size, latent, dtype, gradient_checkpointing, use_ema)
    fixed = sum(resident_and_batch_bytes(meta_unet(unet_config, dtype), resident, batch_size, latent, dtype_width(dtype)))
    return {**summarise(terms, fixed, phases), **counts, "resident_parameters": dict(resident or {}),
            "settings": {"method": method, "batch_size": batch_size, "resolution": resolution, "latent_size": latent,
                         "mixed_precision": mixed_precision, "gradient_checkpointing": gradient_checkpointing, "use_ema": use_ema,
                         "margin": {"context_gib": CONTEXT_GIB, "fragmentation": FRAGMENTATION}}}
