"""LADD: latent adversarial diffusion distillation of a 1-4-step student, the teacher UNet as the discriminator's backbone.

Sauer et al., "Fast High-Resolution Image Synthesis with Latent Adversarial Diffusion Distillation", arXiv:2403.12015,
§3: the student denoises a noised latent in one step; its sample, re-noised at a high-biased noise level, and a real
latent re-noised alike go through the frozen teacher UNet up to its deepest tapped block; small conv heads on those
features, conditioned on the noise level and the pooled text, tell them apart (hinge loss). An optional distillation
term compares the student's sample with the teacher's prediction from it (ADD, arXiv:2311.17042, eq. 5, c(t) = ᾱ_t).
SPECS.md §3 lists the stability knobs users of the open re-implementations needed; they are built in here.

With a LoRA student one UNet serves three roles: adapter on, the student; adapter off, the teacher and the
discriminator backbone (its weights frozen, so in the generator phase gradients reach only the adapter, through the
backbone's input). Two engine phases: ``generator`` (the student) and ``discriminator`` (the heads), each with its own
optimizer and LR schedule; the discriminator phase reads the generator's samples from the step's store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.nn import functional as F

from distill_diffusion.config import RunConfig
from distill_diffusion.core import append_dims
from distill_diffusion.errors import require
from distill_diffusion.models.batch import latents_and_embeddings
from distill_diffusion.models.denoiser import Denoiser
from distill_diffusion.models.loading import SDXL_ERROR, SDComponents, TeacherConfigs, cross_attention_width
from distill_diffusion.models.lora import (
    EXPORT_DTYPES,
    adapters_disabled,
    attach_lora,
    check_target_modules,
    save_lora,
    tuner_layers,
)
from distill_diffusion.models.students import build_student
from distill_diffusion.models.teacher import UncondEmbedding, guided_prediction
from distill_diffusion.trainers.methods.base import (
    LossOutput,
    MethodBase,
    OptimizerSettings,
    Phase,
    StepContext,
)
from distill_diffusion.trainers.methods.ladd import backbone as bb
from distill_diffusion.trainers.methods.ladd.config import LADDConfig
from distill_diffusion.trainers.methods.ladd.heads import DiscriminatorHeads
from distill_diffusion.trainers.methods.ladd.noise import (
    log_snr_table,
    sample_disc_timesteps,
    sample_student_timesteps,
)

KOHYA_FILE = "ladd_lora_kohya.safetensors"


def taps_of(config: LADDConfig, unet_config: dict[str, Any]) -> list[str]:
    return list(config.disc_blocks) if config.disc_blocks else bb.tap_names(unet_config)


class LADD(MethodBase):
    """A 1-4-step student of a Stable Diffusion 1.x/2.x teacher, trained against a latent discriminator."""

    paper: ClassVar[str] = "Sauer et al., LADD, arXiv:2403.12015, §3"
    config_class: ClassVar[type] = LADDConfig
    phase_names: ClassVar[tuple[str, ...]] = ("generator", "discriminator")
    resume_fields: ClassVar[tuple[str, ...]] = ("lora", "lora_rank", "lora_alpha", "lora_target_modules", "disc_blocks", "head_width")

    @classmethod
    def check_config(cls, run: RunConfig) -> None:
        require(run.train.train_batch_size >= 2, f"train.train_batch_size={run.train.train_batch_size}: the discriminator's hinge loss "
                "collapses at batch 1 (each step sees one real and one fake sample, and D separates them trivially); pass "
                "--train_batch_size 2 or more")

    @classmethod
    def check_before_loading(cls, run: RunConfig, teacher: TeacherConfigs | None) -> None:
        config: LADDConfig = run.method_config
        if teacher is None:
            return
        bb.check_taps(teacher.unet, taps_of(config, teacher.unet))
        t_max = teacher.num_train_timesteps - 1
        require(max(config.student_timesteps) <= t_max and min(config.student_timesteps) >= 0,
                f"method.student_timesteps={config.student_timesteps} must lie in 0..{t_max} (the teacher's training timesteps); "
                f"pass e.g. {t_max},{t_max * 3 // 4},{t_max // 2},{t_max // 4}")
        if config.lora:
            check_target_modules(teacher.meta_unet(), config.lora_target_modules)

    def __init__(self, components: SDComponents, config: LADDConfig):
        require(components.family != "sdxl", f"{components.source}: {SDXL_ERROR}")
        unet_config = dict(components.unet.config)
        self.taps = taps_of(config, unet_config)
        bb.check_taps(unet_config, self.taps)
        self.components, self.config, self.schedule = components, config, components.schedule
        if config.lora:
            # ONE UNet: base frozen in the weight dtype (teacher, backbone), LoRA in fp32 (student)
            self.unet = self.backbone = components.unet
            attach_lora(self.unet, config.lora_rank, config.lora_alpha, 0.0, config.lora_target_modules)
            self.layers = tuner_layers(self.unet)
        else:
            self.backbone = components.unet
            self.unet = build_student(components)
            self.layers = []
        self.unet.train()
        device = next(self.unet.parameters()).device
        channels = {tap: bb.tap_channels(unet_config, tap) for tap in self.taps}
        self.heads = DiscriminatorHeads(channels, cross_attention_width(unet_config), config.head_width).to(device)
        self.uncond = UncondEmbedding(components.tokenizer, components.text_encoder)
        self.log_snr = log_snr_table(self.schedule, device)
        self.models = {"unet": self.unet, "disc": self.heads}

    def phases(self) -> list[Phase]:
        # the discriminator's own Adam betas (0, 0.99) and no weight decay, as GANs train; --phases.discriminator.* overrides
        disc = OptimizerSettings(betas=(0.0, 0.99), weight_decay=0.0)
        return [Phase("generator", ("unet",)),
                Phase("discriminator", ("disc",), optimizer=disc, repeats=self.config.disc_updates, ema=False, gradient_checkpointing=False)]

    # ------------------------------------------------------------------ the algorithm

    def compute_loss(self, phase: str, batch: dict[str, Any], ctx: StepContext) -> LossOutput:
        x0, c = latents_and_embeddings(batch, self.components)
        return self.generator_loss(x0, c, ctx) if phase == "generator" else self.discriminator_loss(x0, c, ctx)

    def generator_loss(self, x0: Tensor, c: Tensor, ctx: StepContext) -> LossOutput:
        cfg = self.config
        # 1. The student denoises z_t in one step, t from its timesteps (mostly 999: the 1-step case).
        t = sample_student_timesteps(cfg.student_timesteps, cfg.student_timestep_probs, x0.shape[0], x0.device)
        z_t = self.schedule.add_noise(x0, torch.randn_like(x0), t)
        fake = Denoiser(ctx.module("unet"), self.schedule, self.components.prediction_type)(z_t, t, c).x0
        ctx.store["fake"], ctx.store["fake_c"] = fake.detach(), c
        # 2. Re-noise the sample at the discriminator's level and score it; gradients reach the student through the
        #    frozen backbone's input (adapter off: its weights are the teacher's).
        t_d = sample_disc_timesteps(self.log_snr, x0.shape[0], cfg.disc_noise_mean, cfg.disc_noise_std)
        logits = self.discriminate(self.schedule.add_noise(fake, torch.randn_like(fake), t_d), t_d, c)
        adv = -logits.mean() if cfg.adv_loss == "hinge" else F.softplus(-logits).mean()
        loss, logs = cfg.adv_weight * adv, {"g_adv": float(adv.detach()), "d_fake_g": float(logits.detach().mean())}
        # 3. Optional distillation: ᾱ_s·‖x̂ − x̂_teacher(z_s)‖² at a fresh s on the re-noised sample (ADD eq. 5).
        if cfg.distill_weight > 0:
            distill = self.distillation_loss(fake, c)
            loss = loss + cfg.distill_weight * distill
            logs["g_distill"] = float(distill.detach())
        return LossOutput(loss, logs)

    def discriminator_loss(self, x0: Tensor, c: Tensor, ctx: StepContext) -> LossOutput:
        cfg = self.config
        fake, fake_c = ctx.store["fake"], ctx.store["fake_c"]
        n = x0.shape[0]
        # 4. Real latents and the generator's samples, re-noised at independent high-biased levels, through the frozen
        #    backbone in one batch (no gradients: only the heads learn here).
        t_d = sample_disc_timesteps(self.log_snr, n + fake.shape[0], cfg.disc_noise_mean, cfg.disc_noise_std)
        both = torch.cat([x0, fake])
        z_d = self.schedule.add_noise(both, torch.randn_like(both), t_d)
        texts = torch.cat([c, fake_c.to(c.dtype)])
        with torch.no_grad(), adapters_disabled(self.layers):
            features = bb.unet_features(self.backbone, z_d, t_d, texts, self.taps)
        features = {k: v.float().requires_grad_(cfg.r1_gamma > 0) for k, v in features.items()}
        logits = ctx.module("disc")(features, t_d, texts)
        real, fake_logits = logits[:n], logits[n:]
        # 5. Hinge: max(0, 1 − D(real)) + max(0, 1 + D(fake)); or the non-saturating softplus pair.
        if cfg.adv_loss == "hinge":
            loss = F.relu(1 - real).mean() + F.relu(1 + fake_logits).mean()
        else:
            loss = F.softplus(-real).mean() + F.softplus(fake_logits).mean()
        logs = {"d_loss": float(loss.detach()), "d_real": float(real.detach().mean()), "d_fake": float(fake_logits.detach().mean())}
        # 6. Optional R1 on the heads' inputs for real samples: γ/2·‖∇_f D(f)‖².
        if cfg.r1_gamma > 0:
            grads = torch.autograd.grad(real.sum(), list(features.values()), create_graph=True)
            r1 = sum(g[:n].square().sum(dim=(1, 2, 3)).mean() for g in grads)
            loss = loss + cfg.r1_gamma / 2 * r1
            logs["r1"] = float(r1.detach())
        return LossOutput(loss, logs)

    def discriminate(self, z: Tensor, t: Tensor, c: Tensor) -> Tensor:
        """Logits of the heads on the backbone's features of ``z`` (gradients flow to ``z`` and the heads)."""
        with adapters_disabled(self.layers):
            features = bb.unet_features(self.backbone, z, t, c, self.taps)
        return self.heads(features, t, c)

    def distillation_loss(self, fake: Tensor, c: Tensor) -> Tensor:
        """ᾱ_s-weighted MSE between the student's sample and the guided teacher's x̂0 from it re-noised at s ~ U{0..T−1}."""
        s = torch.randint(0, self.schedule.num_train_timesteps, (fake.shape[0],), device=fake.device)
        z_s = self.schedule.add_noise(fake.detach(), torch.randn_like(fake), s)
        w = torch.full((fake.shape[0],), self.config.distill_guidance_scale - 1.0, device=fake.device)
        with torch.no_grad(), adapters_disabled(self.layers):
            teacher = Denoiser(self.backbone, self.schedule, self.components.prediction_type)
            target, _ = guided_prediction(teacher, z_s, s, c, self.uncond(c), w)
        weight = append_dims(self.schedule.alpha(s).square().float(), fake.ndim)
        return (weight * (fake - target).square()).mean()

    # ------------------------------------------------------------------ sampling and export

    def scheduler(self) -> Any:
        """``LCMScheduler`` on the full training grid, so N steps visit the trailing timesteps 999, 749, ... the student
        learnt (``original_inference_steps`` = T), each step a one-step denoise then a re-noise to the next."""
        from diffusers import LCMScheduler

        return LCMScheduler.from_config(self.components.scheduler.config, original_inference_steps=self.schedule.num_train_timesteps)

    def validation_pipeline(self) -> Any:
        from distill_diffusion.models.export import build_pipeline

        return build_pipeline(self.components, unet=self.unet, scheduler=self.scheduler())

    def validation_call_kwargs(self) -> dict[str, Any]:
        return {"guidance_scale": 1.0, "num_inference_steps": 1}

    def export(self, output_dir: Path) -> None:
        """LoRA: ``pytorch_lora_weights.safetensors`` + kohya copy + the sampler's ``scheduler_config.json``; full: a
        pipeline folder with that scheduler. The discriminator heads live in the checkpoints, to resume."""
        from distill_diffusion.trainers.methods.ladd.card import write_card

        if self.config.lora:
            save_lora(self.unet, output_dir, EXPORT_DTYPES[self.config.export_dtype], self.components.family, KOHYA_FILE)
            self.scheduler().save_pretrained(output_dir)
        else:
            self.validation_pipeline().save_pretrained(output_dir, safe_serialization=True)
        write_card(self, output_dir)
