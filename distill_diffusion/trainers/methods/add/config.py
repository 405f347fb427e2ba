"""Options of adversarial diffusion distillation (defaults: Sauer et al., arXiv:2311.17042, §3-4; docs/add.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from distill_diffusion.errors import require
from distill_diffusion.trainers.methods.adversarial.config import AdversarialConfig


@dataclass
class ADDConfig(AdversarialConfig):
    """ADD's options: the shared student and loss options (ADD's defaults: student timesteps drawn uniformly, R1 γ 1e-5,
    distillation λ 2.5) and the discriminator's feature network, a frozen DINOv2 ViT on the decoded images."""

    student_timestep_probs: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25, 0.25])
    r1_gamma: float = 1e-5
    distill_weight: float = 2.5
    #: The discriminator's frozen feature network: a transformers ``Dinov2Model`` folder or hub id (ADD: ViT-S/14).
    feature_network: str = "facebook/dinov2-small"
    #: Transformer blocks (1-based) whose tokens the heads read. Empty: four evenly spaced blocks ending at the last.
    feature_layers: list[int] | None = None
    #: Side in pixels the decoded images are resized to before the ViT (a multiple of its patch size; DINOv2: 224).
    feature_resolution: int = 224
    #: Condition the heads on the ViT's CLS embedding of the real image the student's input was noised from, beside
    #: the pooled text embedding (ADD §3.2: text and image conditioning).
    image_conditioning: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.feature_resolution >= 8, f"method.feature_resolution={self.feature_resolution} must be >= 8; DINOv2 uses 224")
        require(not self.feature_layers or min(self.feature_layers) >= 1,
                f"method.feature_layers={self.feature_layers}: blocks are numbered from 1; pass e.g. 3,6,9,12")
