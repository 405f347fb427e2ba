"""Options LADD and ADD share: the student, the two phases' balance and the generator's losses (defaults: Sauer et al.,
arXiv:2403.12015 and arXiv:2311.17042; docs/ladd.md, docs/add.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from distill_diffusion.config_types import check_choices
from distill_diffusion.errors import require
from distill_diffusion.models.lora import LoRAOptions


@dataclass
class AdversarialConfig(LoRAOptions):
    """Student and loss options of an adversarially distilled 1-4-step student (generator and discriminator phases:
    ``phases.generator.*``, ``phases.discriminator.*`` set each one's learning rate, betas and clipping).

    ``lora``: a LoRA student (one UNet: adapter on = student; adapter off = the teacher); false trains a full fp32
    copy of the UNet against the frozen teacher.
    """

    #: Timesteps the student is trained to denoise from in one step (trailing spacing: 999, 749, 499, 249)...
    student_timesteps: list[int] = field(default_factory=lambda: [999, 749, 499, 249])
    #: ...and how often each is drawn (LADD's 0.7 / 0.1 / 0.1 / 0.1 favours the 1-step case).
    student_timestep_probs: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.1, 0.1])
    #: Rows drawn at the first (noisiest) student timestep start from pure Gaussian noise, as the sampler's first step
    #: does, instead of a noised real latent: SD's schedule keeps SNR ≈ 0.0047 at T − 1 (Lin et al., arXiv:2305.08891,
    #: §2), enough for the student to read the real image's low frequencies from its training input and lean on them,
    #: while its first input at sampling time carries none. ADD's image-conditioned discriminator (``add``) pairs a
    #: sample with the real image it came from, which such rows no longer do.
    first_step_pure_noise: bool = False
    #: Rows drawn at a later student timestep, the k-th of the sampler's schedule, get the sampler's own input there: the
    #: current student (no gradients) run from pure noise through the k earlier timesteps as LCMScheduler does (denoise,
    #: re-noise with fresh noise), instead of a noised real latent (backward simulation, Yin et al., DMD2,
    #: arXiv:2405.14867, §4.5), so the later steps learn to correct the student's own samples. Needs the student timesteps
    #: to be the sampler's trailing grid from T − 1 (999, 749, 499, 249); costs k forwards without gradients per such row.
    backward_simulation: bool = False
    #: Condition the discriminator on the student timestep each fake was made at (a real sample gets the timestep of the
    #: fake made from it, so its label says nothing of it): each student timestep then has its own decision boundary
    #: (Lin et al., SDXL-Lightning, arXiv:2402.13929, §3.2, condition theirs on the student's timesteps). Unconditioned, a
    #: discriminator fitted mostly to the first timestep's fakes (0.7 of them) rewards whatever those lack, and the later
    #: timesteps overshoot in that direction (docs/ladd.md, "Multi-step sampling").
    disc_student_timestep: bool = False
    #: Discriminator updates per generator update (each on a fresh batch; users needed more D than G updates).
    disc_updates: int = 1
    #: Width of each discriminator head's conv layers.
    head_width: int = 128
    #: hinge (the papers') or non_saturating (softplus) adversarial losses.
    adv_loss: Literal["hinge", "non_saturating"] = "hinge"
    #: Weight of the adversarial term in the generator's loss (0 with distill_weight > 0: pure score distillation).
    adv_weight: float = 1.0
    #: R1 penalty γ/2·‖∇D‖² on the heads' inputs for real samples (0 = off; ADD uses 1e-5).
    r1_gamma: float = 0.0
    #: > 0: approximate R1 instead of the gradient penalty: γ·‖D(f) − D(f + σ·n)‖² for real samples' head inputs f and
    #: Gaussian n of this std σ (one more heads forward, no double backward; cheaper at SD scale).
    r1_approximate_sigma: float = 0.0
    #: Weight of the distillation term ᾱ_t·‖x̂_student − x̂_teacher(re-noised student sample)‖² (0 = off; ADD's λ 2.5).
    distill_weight: float = 0.0
    #: Teacher guidance of the distillation term, diffusers scale (1 = no CFG pass).
    distill_guidance_scale: float = 3.0
    #: dtype of the exported LoRA files.
    export_dtype: Literal["fp16", "bf16", "fp32"] = "fp16"

    def __post_init__(self) -> None:
        check_choices(self, "method")
        super().__post_init__()
        require(bool(self.student_timesteps) and len(set(self.student_timesteps)) == len(self.student_timesteps),
                f"method.student_timesteps={self.student_timesteps} must be distinct timesteps; pass e.g. 999,749,499,249")
        require(len(self.student_timestep_probs) == len(self.student_timesteps) and min(self.student_timestep_probs) >= 0
                and sum(self.student_timestep_probs) > 0,
                f"method.student_timestep_probs={self.student_timestep_probs} does not fit the timesteps; give one probability >= 0 per "
                f"student timestep ({len(self.student_timesteps)}), not all zero")
        require(self.disc_updates >= 1, f"method.disc_updates={self.disc_updates} must be >= 1; pass e.g. 2")
        require(self.head_width >= 4, f"method.head_width={self.head_width} must be >= 4; pass e.g. 128")
        require(min(self.r1_gamma, self.distill_weight, self.adv_weight) >= 0,
                f"method.r1_gamma={self.r1_gamma}, method.distill_weight={self.distill_weight}, method.adv_weight={self.adv_weight} "
                "must be >= 0; pass 0 to turn one off")
        require(self.r1_approximate_sigma >= 0, f"method.r1_approximate_sigma={self.r1_approximate_sigma} must be >= 0; pass e.g. 0.01 "
                "(with method.r1_gamma > 0), or 0 for the exact gradient penalty")
        require(self.adv_weight > 0 or self.distill_weight > 0, "method.adv_weight and method.distill_weight are both 0: the generator "
                "would learn nothing; pass --method.adv_weight 1 (or a distillation weight)")
        require(self.distill_guidance_scale >= 1, f"method.distill_guidance_scale={self.distill_guidance_scale} must be >= 1 (diffusers scale)")
        require(self.student_timesteps == sorted(self.student_timesteps, reverse=True),
                f"method.student_timesteps={self.student_timesteps} are not in descending order; list them from the noisiest down, "
                "e.g. 999,749,499,249")
