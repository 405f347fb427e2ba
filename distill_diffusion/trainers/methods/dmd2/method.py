"""DMD2: a 1-4-step generator trained by distribution matching against an online fake score, with a GAN term.

Yin et al., "Improved Distribution Matching Distillation for Fast Image Synthesis", arXiv:2405.14867 (DMD:
arXiv:2311.18828). Two engine phases:

- ``generator``: the generator denoises pure noise at its first timestep (later ones: the sampler's own input, made by
  running the generator from noise, §4.5) to a sample x; x is noised to t ~ U[0.02, 0.98]·T; the real score (the
  frozen teacher with CFG at ``real_guidance_scale``) and the fake score predict x0 there, and the distribution
  matching loss moves x along their normalised difference (DMD §3.2, :func:`~distill_diffusion.core.losses.
  distribution_matching_loss`). With the GAN on (§4.3) it also pushes a classifier on the fake-score model's
  bottleneck features of noised x towards "real" (non-saturating loss). It runs every ``fake_updates``-th step (the
  two time-scale update rule, §4.2).
- ``fake_score``: every step, the fake-score model learns to denoise the generator's samples (the step's own when the
  generator ran, fresh ones otherwise; detached), and the classifier head (with the fake-score model under it) tells
  noised real latents from noised samples.

One-base LoRA mode (``lora``): the generator and the fake-score model are two LoRA adapters (``default`` and
``fake_score``) on the one frozen teacher UNet, which with both off is the real score; per call one adapter is active
(:func:`~distill_diffusion.models.lora.adapter_active`, safe under gradient checkpointing) and each phase updates only
its own adapter (:meth:`DMD2.trainable_parameters`; the engine clears ``requires_grad`` on the other phase's weights).
Full mode trains an fp32 generator and an fp32 fake-score copy beside the frozen teacher, as the papers do.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from distill_diffusion.config import RunConfig
from distill_diffusion.core import guidance_scale_to_lcm_w
from distill_diffusion.core.losses import distribution_matching_loss
from distill_diffusion.errors import require
from distill_diffusion.models.batch import latents_and_embeddings
from distill_diffusion.models.conditioning import Conditioning, cat
from distill_diffusion.models.denoiser import Denoiser
from distill_diffusion.models.loading import SDComponents, TeacherConfigs
from distill_diffusion.models.lora import (
    ADAPTER,
    adapter_active,
    adapter_parameters,
    adapters_disabled,
    attach_lora,
    attach_second_lora,
    check_target_modules,
    tuner_layers,
)
from distill_diffusion.models.students import build_student
from distill_diffusion.models.teacher import UncondEmbedding, guided_prediction
from distill_diffusion.trainers.methods.adversarial.heads import (
    TIME_DIM,
    DiscriminatorHeads,
    timestep_condition,
)
from distill_diffusion.trainers.methods.adversarial.method import sample_student_timesteps
from distill_diffusion.trainers.methods.adversarial.simulation import (
    BackwardSimulation,
    check_backward_simulation,
)
from distill_diffusion.trainers.methods.adversarial.student import FewStepStudent
from distill_diffusion.trainers.methods.base import (
    LossOutput,
    MethodBase,
    Phase,
    StepContext,
)
from distill_diffusion.trainers.methods.dmd2.config import DMD2Config
from distill_diffusion.trainers.methods.ladd import backbone as bb

#: The fake-score model's adapter in one-base LoRA mode (the generator's is peft's ``default``, what the export saves).
FAKE_ADAPTER = "fake_score"
#: Store key of the generator's samples of the step, per micro-batch.
_SAMPLES = "dmd2_samples"


def classifier_taps(config: DMD2Config, unet_config: dict[str, Any]) -> list[str]:
    """The fake-score blocks the classifier reads: ``disc_blocks``, else the bottleneck (the mid block, DMD2 §4.3)."""
    return [bb.tap_names(unet_config)[-1]] if config.disc_blocks is None else list(config.disc_blocks)


class DMD2(FewStepStudent, MethodBase):
    """A 1-4-step student of a Stable Diffusion teacher (1.x/2.x or SDXL) by distribution matching (DMD2)."""

    paper: ClassVar[str] = "Yin et al., DMD2, arXiv:2405.14867, §4"
    config_class: ClassVar[type] = DMD2Config
    phase_names: ClassVar[tuple[str, ...]] = ("generator", "fake_score")
    card_name: ClassVar[str] = "dmd2"
    resume_fields: ClassVar[tuple[str, ...]] = ("lora", "lora_rank", "lora_alpha", "lora_target_modules", "head_width", "disc_blocks")

    @classmethod
    def check_before_loading(cls, run: RunConfig, teacher: TeacherConfigs | None) -> None:
        config: DMD2Config = run.method_config
        if teacher is None:
            return
        t_max = teacher.num_train_timesteps - 1
        require(config.student_timesteps[0] == t_max and min(config.student_timesteps) >= 0,
                f"method.student_timesteps={config.student_timesteps} must start at {t_max} (the generator's first input is pure "
                f"noise, the sampler's at t = {t_max}) and lie in 0..{t_max}; pass e.g. {t_max},{t_max * 3 // 4},{t_max // 2},{t_max // 4}")
        if config.backward_simulation:
            check_backward_simulation(config.student_timesteps, teacher.scheduler)
        if config.lora:
            check_target_modules(teacher.meta_unet(), config.lora_target_modules)
        bb.check_taps(teacher.unet, classifier_taps(config, teacher.unet))

    def __init__(self, components: SDComponents, config: DMD2Config):
        self.components, self.config, self.schedule = components, config, components.schedule
        self.teacher_unet = components.unet
        if config.lora:  # ONE UNet: the frozen base is the real score, one adapter each for the generator and the fake score
            self.unet = self.fake_unet = components.unet
            attach_lora(self.unet, config.lora_rank, config.lora_alpha, 0.0, config.lora_target_modules)
            attach_second_lora(self.unet, FAKE_ADAPTER, config.lora_rank, config.lora_alpha, config.lora_target_modules)
            self.layers = tuner_layers(self.unet)
        else:
            self.unet, self.fake_unet, self.layers = build_student(components), build_student(components), []
        self.unet.train()
        self.fake_unet.train()
        self.device = next(self.unet.parameters()).device
        self.uncond = UncondEmbedding(components)
        unet_config = dict(components.unet.config)
        self.taps = classifier_taps(config, unet_config)
        self.head = DiscriminatorHeads({t: bb.tap_channels(unet_config, t) for t in self.taps}, TIME_DIM, config.head_width).to(self.device)
        self.models = {"unet": self.unet, "head": self.head} | ({} if config.lora else {"fake": self.fake_unet})
        self.simulation = None
        if config.backward_simulation:
            check_backward_simulation(config.student_timesteps, dict(components.scheduler.config))
            self.simulation = BackwardSimulation(self.scheduler(), self.schedule, components.prediction_type, config.student_timesteps)

    # ------------------------------------------------------------------ phases and their weights

    def phases(self) -> list[Phase]:
        fake_modules = ("unet", "head") if self.config.lora else ("fake", "head")
        # both AdamW as the train section says (DMD2's train_sd.py: the same settings for both); --phases.fake_score.*
        # overrides the fake score's
        return [Phase("generator", ("unet",), every=self.config.fake_updates),
                Phase("fake_score", fake_modules, ema=False, gradient_checkpointing=fake_modules[:1])]

    def trainable_parameters(self, phase: Phase) -> list[nn.Parameter]:
        """Each phase its own weights: in one-base mode the generator's adapter, or the fake-score adapter and the head."""
        if not self.config.lora:
            return super().trainable_parameters(phase)
        unet = adapter_parameters(self.unet, FAKE_ADAPTER if phase.name == "fake_score" else ADAPTER)
        return unet + ([p for p in self.head.parameters() if p.requires_grad] if "head" in phase.modules else [])

    # ------------------------------------------------------------------ the networks in their roles

    def fake_mode(self) -> AbstractContextManager:
        """The fake-score model's mode: its adapter alone active in one-base mode; nothing to switch in full mode."""
        return adapter_active(self.layers, FAKE_ADAPTER) if self.config.lora else nullcontext()

    def denoiser(self, unet: nn.Module) -> Denoiser:
        """``unet`` (a phase's view of the generator or the fake score) as a :class:`Denoiser` of the teacher's schedule."""
        return Denoiser(unet, self.schedule, self.components.prediction_type)

    def classify(self, head: nn.Module, x: Tensor, c: Conditioning) -> list[Tensor]:
        """The classifier's logits for ``x`` noised at t ~ U{0..T−1} (DMD2 §4.3: noised real or generated latents),
        through the fake-score model's bottleneck; gradients reach ``x`` and the fake-score weights that train.

        The features come from the unwrapped fake-score UNet (a DDP wrapper has no blocks to call one by one); its
        weights still get their gradients synchronised, as the same backward runs through the phase's wrapped forward
        of the denoising loss. ``head``: this phase's view of the head (wrapped when the phase updates it)."""
        t = torch.randint(0, self.schedule.num_train_timesteps, (x.shape[0],), device=x.device)
        z = self.schedule.add_noise(x, torch.randn_like(x), t)
        with self.fake_mode():
            features = bb.unet_features(self.fake_unet, z, t, c, self.taps)
        return head(features, timestep_condition(t).to(x.device))

    # ------------------------------------------------------------------ the algorithm

    def compute_loss(self, phase: str, batch: dict[str, Any], ctx: StepContext) -> LossOutput:
        x0, c = latents_and_embeddings(batch, self.components)
        return self.generator_loss(x0, c, ctx) if phase == "generator" else self.fake_score_loss(x0, c, ctx)

    def generate(self, x0: Tensor, c: Conditioning, unet: nn.Module) -> tuple[Tensor, Tensor]:
        """The generator's sample x̂0 and its timesteps: pure noise at the first student timestep; at a later one the
        sampler's input there (backward simulation) or, without it, a noised real latent."""
        cfg = self.config
        t = sample_student_timesteps(cfg.student_timesteps, cfg.student_timestep_probs, x0.shape[0], x0.device)
        noise = torch.randn_like(x0)
        first = (t == cfg.student_timesteps[0]).view(-1, *([1] * (x0.ndim - 1)))
        z = torch.where(first, noise, self.schedule.add_noise(x0, noise, t))
        if self.simulation is not None:
            z = self.simulation(unet, z, t, c)
        return self.denoiser(unet)(z, t, c).x0, t

    def generator_loss(self, x0: Tensor, c: Conditioning, ctx: StepContext) -> LossOutput:
        cfg = self.config
        unet = ctx.module("unet")
        x, t_student = self.generate(x0, c, unet)
        ctx.store.setdefault(_SAMPLES, {})[ctx.micro_batch] = x.detach()
        # 1. Distribution matching (DMD eqs. 7-8): the real and the fake score's x0 at x noised to t ∈ [0.02, 0.98]·T.
        low, high = (int(f * (self.schedule.num_train_timesteps - 1)) for f in cfg.dm_timestep_range)
        t = torch.randint(low, high + 1, (x.shape[0],), device=x.device)
        z_t = self.schedule.add_noise(x.detach(), torch.randn_like(x), t)
        with torch.no_grad():
            w = torch.full((x.shape[0],), guidance_scale_to_lcm_w(cfg.real_guidance_scale), device=x.device)
            with adapters_disabled(self.layers):
                real, _ = guided_prediction(self.denoiser(self.teacher_unet), z_t, t, c, self.uncond(c), w)
            with self.fake_mode():
                fake = self.denoiser(self.fake_unet)(z_t, t, c).x0
        dm = distribution_matching_loss(x, real, fake)
        loss, logs = dm, {"g_dm": float(dm.detach())}
        # 2. GAN (DMD2 §4.3): the classifier should call the noised sample real, −log σ(D) (non-saturating).
        if cfg.gan:
            logits = self.classify(ctx.module("head"), x, c)
            gan = sum(F.softplus(-k).mean() for k in logits)
            loss = loss + cfg.gan_weight * gan
            logs["g_gan"] = float(gan.detach())
        logs["t_student"] = float(t_student.float().mean())
        return LossOutput(loss, logs)

    def fake_score_loss(self, x0: Tensor, c: Conditioning, ctx: StepContext) -> LossOutput:
        cfg = self.config
        fake_module = ctx.module("unet" if cfg.lora else "fake")
        samples = ctx.store.get(_SAMPLES, {}).pop(ctx.micro_batch, None)
        if samples is None:  # a step without a generator update: fresh samples of the current generator
            with torch.no_grad():
                samples, _ = self.generate(x0, c, self.unet)
        # 3. The fake score learns the generator's distribution: denoising loss on its (detached) samples.
        eps = torch.randn_like(samples)
        t = torch.randint(0, self.schedule.num_train_timesteps, (samples.shape[0],), device=samples.device)
        fake_score = self.denoiser(fake_module)
        with self.fake_mode():
            out = fake_score(self.schedule.add_noise(samples, eps, t), t, c)
        denoise = F.mse_loss(out.model_output, fake_score.target(samples, eps, t))
        loss, logs = denoise, {"fake_denoise": float(denoise.detach())}
        # 4. The classifier: noised real latents against noised generator samples, softplus(−D(real)) + softplus(D(fake)).
        if cfg.gan:
            logits = self.classify(ctx.module("head"), torch.cat([x0, samples]), cat([c, c]))
            n = x0.shape[0]
            cls = sum(F.softplus(-k[:n]).mean() + F.softplus(k[n:]).mean() for k in logits)
            loss = loss + cfg.classifier_weight * cls
            logs["d_cls"] = float(cls.detach())
        return LossOutput(loss, logs)

    # ------------------------------------------------------------------ the export's card

    def write_card(self, folder: Path) -> None:
        from distill_diffusion.trainers.methods.dmd2.card import write_card

        write_card(self, folder)
