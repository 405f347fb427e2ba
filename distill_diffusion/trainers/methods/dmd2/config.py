"""DMD2's options (Yin et al., "Improved Distribution Matching Distillation for Fast Image Synthesis",
arXiv:2405.14867; DMD: arXiv:2311.18828). Defaults are the paper's SD 1.5 settings where it has them (its released SD
v1.5 experiment: real-score guidance 1.75, ten fake-score updates per generator update, GAN weights 1e-3 for the
generator and 1e-2 for the classifier); docs/dmd2.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from distill_diffusion.config_types import check_choices
from distill_diffusion.errors import require
from distill_diffusion.models.lora import LoRAOptions


@dataclass
class DMD2Config(LoRAOptions):
    """A 1-4-step generator distilled by distribution matching against an online fake-score model, with a GAN term.

    ``lora`` (one-base mode): the generator and the fake-score model are two LoRA adapters on the one frozen teacher
    UNet, which with both adapters off is the real score; one UNet in memory. false: a full fp32 generator and a full
    fp32 fake-score copy beside the frozen teacher (three UNets, the papers' setting).
    """

    #: Timesteps the generator denoises from, the sampler's trailing grid (1 step: [999]; 4 steps: 999/749/499/249).
    student_timesteps: list[int] = field(default_factory=lambda: [999, 749, 499, 249])
    #: How often each is drawn (DMD2 §4.5 trains its 4-step SDXL generator on the four alike).
    student_timestep_probs: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25, 0.25])
    #: Later timesteps get the sampler's own input there, the generator run from noise through the earlier steps
    #: (backward simulation, DMD2 §4.5); off: a noised real latent (the train/test mismatch DMD2 removes).
    backward_simulation: bool = True
    #: Guidance of the real score (the frozen teacher), diffusers scale: what the generator distils.
    real_guidance_scale: float = 1.75
    #: Fake-score updates per generator update (DMD2's two time-scale update rule, §4.2).
    fake_updates: int = 10
    #: The distribution matching loss noises the generator's sample to t ~ U[min, max]·T (DMD2: 0.02 and 0.98).
    dm_timestep_range: list[float] = field(default_factory=lambda: [0.02, 0.98])
    #: GAN term of the generator (DMD2 §4.3: non-saturating, through the classifier on the fake-score model's
    #: bottleneck); 0 turns the GAN off on both sides.
    gan_weight: float = 1e-3
    #: Weight of the classifier's loss in the fake-score phase (noised real latents against noised generator samples).
    classifier_weight: float = 1e-2
    #: Width of the classifier head's conv layers.
    head_width: int = 128
    #: Fake-score UNet blocks the classifier reads, a head on each with their logits summed (LADD's option of the same
    #: name). Unset (null): the bottleneck, the mid block (DMD2 §4.3).
    disc_blocks: list[str] | None = None
    #: dtype of the exported LoRA files.
    export_dtype: Literal["fp16", "bf16", "fp32"] = "fp16"

    def __post_init__(self) -> None:
        check_choices(self, "method")
        super().__post_init__()
        ts = self.student_timesteps
        require(bool(ts) and len(set(ts)) == len(ts) and ts == sorted(ts, reverse=True),
                f"method.student_timesteps={ts} must be distinct and descending; pass e.g. 999,749,499,249")
        require(len(self.student_timestep_probs) == len(ts) and min(self.student_timestep_probs) >= 0 and sum(self.student_timestep_probs) > 0,
                f"method.student_timestep_probs={self.student_timestep_probs}: give one probability >= 0 per student timestep ({len(ts)}), "
                "not all zero")
        require(self.fake_updates >= 1, f"method.fake_updates={self.fake_updates} must be >= 1 (fake-score updates per generator "
                "update; DMD2 uses 5-10)")
        require(self.real_guidance_scale >= 1, f"method.real_guidance_scale={self.real_guidance_scale} must be >= 1 (diffusers scale; "
                "1 = no guidance)")
        low, high = (self.dm_timestep_range + [None, None])[:2] if len(self.dm_timestep_range) == 2 else (None, None)
        require(low is not None and 0 <= low < high <= 1, f"method.dm_timestep_range={self.dm_timestep_range} must be two fractions "
                "0 <= min < max <= 1; pass e.g. 0.02,0.98")
        require(min(self.gan_weight, self.classifier_weight) >= 0, f"method.gan_weight={self.gan_weight} and "
                f"method.classifier_weight={self.classifier_weight} must be >= 0; pass 0 to turn the GAN off")
        # No check that real data backs the GAN: every data source (imagefolder, hf, webdataset, latents) yields a latent
        # per example, the classifier's real side. A `prepare-synthetic` latents folder holds the teacher's samples, so
        # there the classifier tells the teacher's samples from the generator's, not real images (docs/dmd2.md).
        require(self.head_width >= 4, f"method.head_width={self.head_width} must be >= 4; pass e.g. 128")
        require(self.disc_blocks is None or len(self.disc_blocks) > 0, "method.disc_blocks is empty; leave it out (null) for the "
                "bottleneck (DMD2's), or name one or more, e.g. down_blocks.2,mid_block")

    @property
    def gan(self) -> bool:
        """Whether the GAN term and its classifier train (both weights > 0)."""
        return self.gan_weight > 0 and self.classifier_weight > 0
