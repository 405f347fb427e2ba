"""The one-step student trained against a discriminator, as two engine phases; LADD and ADD say what D looks at.

Sauer et al., ADD (arXiv:2311.17042, §3) and LADD (arXiv:2403.12015, §3): the student denoises a noised real latent
in one step, from a timestep of its own small set; a discriminator (frozen feature network + small trainable heads)
tells its samples from real ones with the hinge loss; an optional distillation term compares the student's sample with
the teacher's prediction from it re-noised (ADD eq. 5, c(t) = ᾱ_t). The stability knobs users of the open
re-implementations needed are built in here (batch 1 refused: the hinge loss collapses there; the discriminator's own
Adam betas, R1); docs/ladd.md lists them.

With a LoRA student one UNet serves as student (adapter on) and teacher (adapter off: peft's per-layer switch keeps the
autograd graph, so gradients still reach the adapter through a frozen pass's input). Two engine phases, ``generator``
(the student) and ``discriminator`` (the heads), each with its own optimizer and LR schedule; the discriminator's first
update reads the generator's samples of each micro-batch from the step's store instead of running the student again,
and each later update (``disc_updates`` > 1, fresh micro-batches) samples the updated student afresh, so no update
scores a sample twice. The losses take each head's logit per position (ADD eqs. 2-3): hinge per head and position,
summed over heads.

A subclass gives :meth:`AdversarialMethod.build_heads` and :meth:`AdversarialMethod.features` (what the heads read and
their condition), and optionally :meth:`AdversarialMethod.source_condition`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from distill_diffusion.config import RunConfig
from distill_diffusion.core import append_dims, guidance_scale_to_lcm_w
from distill_diffusion.errors import require
from distill_diffusion.models.batch import latents_and_embeddings
from distill_diffusion.models.conditioning import Conditioning, cat
from distill_diffusion.models.denoiser import Denoiser
from distill_diffusion.models.loading import SDComponents, TeacherConfigs
from distill_diffusion.models.lora import (
    adapters_disabled,
    attach_lora,
    check_target_modules,
    tuner_layers,
)
from distill_diffusion.models.students import build_student
from distill_diffusion.models.teacher import UncondEmbedding, guided_prediction
from distill_diffusion.trainers.methods.adversarial.config import AdversarialConfig
from distill_diffusion.trainers.methods.adversarial.heads import (
    TIME_DIM,
    rows,
    sample_scores,
    sum_over_heads,
    timestep_condition,
)
from distill_diffusion.trainers.methods.adversarial.simulation import (
    BackwardSimulation,
    check_backward_simulation,
)
from distill_diffusion.trainers.methods.adversarial.student import FewStepStudent
from distill_diffusion.trainers.methods.base import (
    LossOutput,
    MethodBase,
    OptimizerSettings,
    Phase,
    StepContext,
)

#: Store key of the generator's samples of the step, one :class:`Fakes` per micro-batch index.
_FAKES = "fakes"


@dataclass
class Fakes:
    """Samples of the student for the discriminator (no gradients): the latents, their text embeddings, what
    :meth:`AdversarialMethod.source_condition` gave for the real latents they came from, and (for a method that reuses
    them, ``reuses_fake_features``) their features and condition as the generator computed them."""

    latents: Tensor
    c: Conditioning
    source: Any
    #: The student timestep each sample was made at (the discriminator's condition with ``disc_student_timestep``).
    t: Tensor
    features: tuple[dict[str, Tensor], Tensor] | None = None


def sample_student_timesteps(timesteps: list[int], probs: list[float], batch: int, device: torch.device) -> Tensor:
    """``batch`` draws from ``timesteps`` with probabilities ``probs`` (normalised)."""
    p = torch.tensor(probs, dtype=torch.float32)
    index = torch.multinomial(p / p.sum(), batch, replacement=True)
    return torch.tensor(timesteps, dtype=torch.long)[index].to(device)


def hinge_or_softplus(real: list[Tensor] | None, fake: list[Tensor], kind: str) -> Tensor:
    """The discriminator's loss Σ_k [max(0, 1 − D_k(real)) + max(0, 1 + D_k(fake))] (hinge) or the softplus pair
    softplus(−D_k(real)) + softplus(D_k(fake)); with ``real`` None, the generator's −Σ_k D_k(fake) or
    Σ_k softplus(−D_k(fake)). ``real`` and ``fake`` hold one [B, positions] tensor of logits per head: each term is
    applied per head and per position, averaged over positions and batch and summed over heads (ADD, arXiv:2311.17042,
    eqs. 2-3, with StyleGAN-T's per-token heads), so a position inside the margin keeps its gradient whatever the
    others score, and the generator's term grows with the number of heads K."""
    if real is None:
        return sum_over_heads(fake, torch.neg if kind == "hinge" else lambda x: F.softplus(-x))
    if kind == "hinge":
        return sum_over_heads(real, lambda x: F.relu(1 - x)) + sum_over_heads(fake, lambda x: F.relu(1 + x))
    return sum_over_heads(real, lambda x: F.softplus(-x)) + sum_over_heads(fake, F.softplus)


def mean_logit(logits: list[Tensor]) -> float:
    """The mean logit over heads, positions and batch (for the logs: comparable with the hinge's margins ±1)."""
    return float(sum_over_heads(logits).detach()) / len(logits)


class AdversarialMethod(FewStepStudent, MethodBase):
    """A 1-4-step student of a Stable Diffusion teacher (1.x/2.x or SDXL), trained against a discriminator (ADD, LADD)."""

    config_class: ClassVar[type] = AdversarialConfig
    phase_names: ClassVar[tuple[str, ...]] = ("generator", "discriminator")
    #: Name of the method in model cards and the kohya copy of a LoRA export.
    card_name: ClassVar[str] = "adversarial"
    #: The discriminator scores the generator's own features of its samples (:class:`Fakes` keeps them for it).
    reuses_fake_features: ClassVar[bool] = False

    @classmethod
    def check_config(cls, run: RunConfig) -> None:
        require(run.train.train_batch_size >= 2, f"train.train_batch_size={run.train.train_batch_size}: the discriminator's hinge loss "
                "collapses at batch 1 (each step sees one real and one fake sample, and D separates them trivially); pass "
                "--train_batch_size 2 or more")

    @classmethod
    def check_before_loading(cls, run: RunConfig, teacher: TeacherConfigs | None) -> None:
        config: AdversarialConfig = run.method_config
        if teacher is None:
            return
        t_max = teacher.num_train_timesteps - 1
        require(max(config.student_timesteps) <= t_max and min(config.student_timesteps) >= 0,
                f"method.student_timesteps={config.student_timesteps} must lie in 0..{t_max} (the teacher's training timesteps); "
                f"pass e.g. {t_max},{t_max * 3 // 4},{t_max // 2},{t_max // 4}")
        # pure noise is the sampler's input only at its first timestep, the schedule's last
        require(not config.first_step_pure_noise or config.student_timesteps[0] == t_max,
                f"method.first_step_pure_noise gives the first student timestep pure noise, the sampler's input at t = {t_max}, "
                f"but it is {config.student_timesteps[0]}; start method.student_timesteps at {t_max} or pass "
                "--method.first_step_pure_noise false")
        if config.backward_simulation:
            check_backward_simulation(config.student_timesteps, teacher.scheduler)
        if config.lora:
            check_target_modules(teacher.meta_unet(), config.lora_target_modules)

    def __init__(self, components: SDComponents, config: AdversarialConfig):
        self.components, self.config, self.schedule = components, config, components.schedule
        if config.lora:
            # ONE UNet: base frozen in the weight dtype (teacher), LoRA in fp32 (student)
            self.unet = self.teacher_unet = components.unet
            attach_lora(self.unet, config.lora_rank, config.lora_alpha, 0.0, config.lora_target_modules)
            self.layers = tuner_layers(self.unet)
        else:
            self.teacher_unet = components.unet
            self.unet = build_student(components)
            self.layers = []
        self.unet.train()
        self.device = next(self.unet.parameters()).device
        self.uncond = UncondEmbedding(components)
        self.heads = self.build_heads().to(self.device)
        self.models = {"unet": self.unet, "disc": self.heads}
        self.simulation = None
        if config.backward_simulation:
            check_backward_simulation(config.student_timesteps, dict(components.scheduler.config))
            self.simulation = BackwardSimulation(self.scheduler(), self.schedule, components.prediction_type, config.student_timesteps)

    # ------------------------------------------------------------------ what a subclass says

    def build_heads(self) -> nn.Module:
        """The discriminator's trainable heads, called ``heads(features, cond) -> logits``, one [B, positions] tensor per
        head (:class:`~distill_diffusion.trainers.methods.adversarial.heads.DiscriminatorHeads`); their condition is
        :meth:`features`' plus :meth:`student_timestep_width` more values."""
        raise NotImplementedError

    def student_timestep_width(self) -> int:
        """How many values :meth:`with_student_timestep` appends to the heads' condition (0 unless ``disc_student_timestep``)."""
        return TIME_DIM if self.config.disc_student_timestep else 0

    def with_student_timestep(self, cond: Tensor, t: Tensor) -> Tensor:
        """``cond`` with the embedding of each row's student timestep appended (``disc_student_timestep``), else itself."""
        return torch.cat([cond, timestep_condition(t)], dim=1) if self.config.disc_student_timestep else cond

    def features(self, latents: Tensor, c: Conditioning, source: Any, own_rows: int) -> tuple[dict[str, Tensor], Tensor]:
        """The heads' inputs and condition for ``latents`` (gradients flow to ``latents`` unless under no_grad).

        ``source``: what :meth:`source_condition` gave for the real latents the fakes came from, for the rows after
        the first ``own_rows`` (which are real samples, conditioned on themselves)."""
        raise NotImplementedError

    def discriminator_inputs(self, x0: Tensor, c: Conditioning, fakes: Fakes) -> tuple[dict[str, Tensor], Tensor]:
        """The heads' inputs and condition for the real latents ``x0`` followed by the samples ``fakes`` (called under
        no_grad). Default: both through :meth:`features` in one batch; a method whose features of a sample do not
        change between the phases reuses the generator's (``fakes.features``, when it made them)."""
        texts = cat([c, fakes.c.to(dtype=c.dtype)])
        return self.features(torch.cat([x0, fakes.latents]), texts, fakes.source, own_rows=x0.shape[0])

    def source_condition(self, x0: Tensor) -> Any:
        """What the discriminator's condition needs from the real latents a fake sample came from (None: nothing)."""
        return None

    def describe_discriminator(self) -> str:
        """One line for the model card: what the discriminator looked at."""
        return ""

    # ------------------------------------------------------------------ the algorithm

    def phases(self) -> list[Phase]:
        # the discriminator's own Adam betas (0, 0.99) and no weight decay, as GANs train; --phases.discriminator.* overrides
        disc = OptimizerSettings(betas=(0.0, 0.99), weight_decay=0.0)
        return [Phase("generator", ("unet",)),
                Phase("discriminator", ("disc",), optimizer=disc, repeats=self.config.disc_updates, ema=False, gradient_checkpointing=False)]

    def compute_loss(self, phase: str, batch: dict[str, Any], ctx: StepContext) -> LossOutput:
        x0, c = latents_and_embeddings(batch, self.components)
        return self.generator_loss(x0, c, ctx) if phase == "generator" else self.discriminator_loss(x0, c, ctx)

    def generator_loss(self, x0: Tensor, c: Conditioning, ctx: StepContext) -> LossOutput:
        cfg = self.config
        # 1. The student denoises z_t in one step, t from its timesteps (LADD: mostly 999, the 1-step case).
        fake, t = self.student_sample(x0, c, ctx.module("unet"))
        with torch.no_grad():
            source = self.source_condition(x0)
        # 2. Score the sample; gradients reach the student through the frozen feature network's input.
        features, cond = self.features(fake, c, source, own_rows=0)
        # kept for the discriminator's first update, per micro-batch: each of its micro-batches scores the samples the
        # generator made from the same real latents
        kept = ({k: v.detach() for k, v in features.items()}, cond.detach()) if self.reuses_fake_features else None
        ctx.store.setdefault(_FAKES, {})[ctx.micro_batch] = Fakes(fake.detach(), c, source, t, kept)
        logits = self.heads(features, self.with_student_timestep(cond, t))
        adv = hinge_or_softplus(None, logits, cfg.adv_loss)
        loss, logs = cfg.adv_weight * adv, {"g_adv": float(adv.detach()), "d_fake_g": mean_logit(logits)}
        # 3. Optional distillation: ᾱ_s·‖x̂ − x̂_teacher(z_s)‖² at a fresh s on the re-noised sample (ADD eq. 5).
        if cfg.distill_weight > 0:
            distill = self.distillation_loss(fake, c)
            loss = loss + cfg.distill_weight * distill
            logs["g_distill"] = float(distill.detach())
        return LossOutput(loss, logs)

    def student_sample(self, x0: Tensor, c: Conditioning, unet: nn.Module) -> tuple[Tensor, Tensor]:
        """The student's one-step sample x̂0 from ``student_input`` at a timestep drawn from its own (ADD §3.1), and
        those timesteps."""
        cfg = self.config
        t = sample_student_timesteps(cfg.student_timesteps, cfg.student_timestep_probs, x0.shape[0], x0.device)
        z_t = self.student_input(x0, t)
        if self.simulation is not None:  # later timesteps: the sampler's own input (DMD2 §4.5), not a noised real latent
            z_t = self.simulation(unet, z_t, t, c)
        return Denoiser(unet, self.schedule, self.components.prediction_type)(z_t, t, c).x0, t

    def student_input(self, x0: Tensor, t: Tensor) -> Tensor:
        """The student's input z_t = α_t·x0 + σ_t·ε (ADD §3.1); with ``first_step_pure_noise``, ε alone at the first
        student timestep, the sampler's starting point (SD's ᾱ_{T−1} > 0: Lin et al., arXiv:2305.08891)."""
        noise = torch.randn_like(x0)
        z_t = self.schedule.add_noise(x0, noise, t)
        if not self.config.first_step_pure_noise:
            return z_t
        return torch.where(append_dims(t == self.config.student_timesteps[0], x0.ndim), noise.to(z_t.dtype), z_t)

    def discriminator_loss(self, x0: Tensor, c: Conditioning, ctx: StepContext) -> LossOutput:
        cfg = self.config
        n = x0.shape[0]
        # 4. Real latents and the generator's samples through the frozen feature network (no gradients: only the heads
        #    learn here).
        with torch.no_grad():
            fakes = self.unseen_fakes(x0, c, ctx)
            features, cond = self.discriminator_inputs(x0, c, fakes)
            # a real sample is labelled with the student timestep of the fake made from it
            cond = self.with_student_timestep(cond, torch.cat([fakes.t, fakes.t]))
        exact_r1 = cfg.r1_gamma > 0 and cfg.r1_approximate_sigma == 0
        features = {k: v.float().requires_grad_(exact_r1) for k, v in features.items()}
        logits = ctx.module("disc")(features, cond)
        real, fake_logits = rows(logits, slice(None, n)), rows(logits, slice(n, None))
        # 5. Hinge per head and position: max(0, 1 − D_k(real)) + max(0, 1 + D_k(fake)), summed over heads; or the
        #    non-saturating softplus pair.
        loss = hinge_or_softplus(real, fake_logits, cfg.adv_loss)
        logs = {"d_loss": float(loss.detach()), "d_real": mean_logit(real), "d_fake": mean_logit(fake_logits)}
        # 6. Optional R1 on the heads' inputs for real samples: γ/2·‖∇_f D(f)‖² with D(f) = Σ_k mean over positions of
        #    D_k, or its approximation γ·‖D(f) − D(f + σn)‖² per head and position, summed over heads.
        if exact_r1:
            if hasattr(ctx.module("disc"), "set_reshard_after_backward"):
                # FSDP2 frees gathered weights after a backward, and the penalty's backward runs through the heads a
                # second time: keep them (the engine frees them after the phase)
                ctx.module("disc").set_reshard_after_backward(False)
            grads = torch.autograd.grad(sample_scores(real).sum(), list(features.values()), create_graph=True)
            r1 = sum(g[:n].square().flatten(1).sum(1).mean() for g in grads)
            loss = loss + cfg.r1_gamma / 2 * r1
            logs["r1"] = float(r1.detach())
        elif cfg.r1_gamma > 0:
            noisy = {k: v[:n] + cfg.r1_approximate_sigma * torch.randn_like(v[:n]) for k, v in features.items()}
            moved = ctx.module("disc")(noisy, cond[:n])
            r1 = sum_over_heads([(a - b).square() for a, b in zip(moved, real, strict=True)])
            loss = loss + cfg.r1_gamma * r1
            logs["r1"] = float(r1.detach())
        return LossOutput(loss, logs)

    def unseen_fakes(self, x0: Tensor, c: Conditioning, ctx: StepContext) -> Fakes:
        """Samples no discriminator update has scored: the generator's of this micro-batch (each taken once, by the
        first update), else (a later update, on fresh micro-batches) the current student's from ``x0`` (no gradients;
        called under no_grad). Every update then judges samples it has not seen, from every micro-batch."""
        fakes = ctx.store.get(_FAKES, {}).pop(ctx.micro_batch, None)
        if fakes is not None:
            return fakes
        fake, t = self.student_sample(x0, c, ctx.module("unet"))
        return Fakes(fake, c, self.source_condition(x0), t)

    def distillation_loss(self, fake: Tensor, c: Conditioning) -> Tensor:
        """ᾱ_s-weighted MSE between the student's sample and the guided teacher's x̂0 from it re-noised at s ~ U{0..T−1}."""
        s = torch.randint(0, self.schedule.num_train_timesteps, (fake.shape[0],), device=fake.device)
        z_s = self.schedule.add_noise(fake.detach(), torch.randn_like(fake), s)
        w = torch.full((fake.shape[0],), guidance_scale_to_lcm_w(self.config.distill_guidance_scale), device=fake.device)
        with torch.no_grad(), adapters_disabled(self.layers):
            teacher = Denoiser(self.teacher_unet, self.schedule, self.components.prediction_type)
            target, _ = guided_prediction(teacher, z_s, s, c, self.uncond(c), w)
        weight = append_dims(self.schedule.alpha(s).square().float(), fake.ndim)
        return (weight * (fake - target).square()).mean()

    # ------------------------------------------------------------------ the export's card

    def write_card(self, folder: Path) -> None:
        from distill_diffusion.trainers.methods.adversarial.card import write_card

        write_card(self, folder)
