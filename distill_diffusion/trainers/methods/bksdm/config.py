"""Options of BK-SDM block-removal distillation (defaults: Kim et al., arXiv:2305.15798, §3.3 and §4; SDXL students:
Lee et al., KOALA, arXiv:2312.04005; docs/bksdm.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from distill_diffusion.config_types import check_choices
from distill_diffusion.errors import require
from distill_diffusion.trainers.methods.finetune import FineTuneConfig


@dataclass
class BKSDMConfig(FineTuneConfig):
    """The student architecture and the weights of the three loss terms (the task loss is the plain fine-tune's)."""

    #: Blocks removed from the teacher: base (one resnet/attention pair per stage), small (base without the mid
    #: block), tiny (small without the innermost stage); for SDXL also KOALA's koala_1b (base with the innermost
    #: transformers cut to 6 layers) and koala_700m (small with them cut to 5).
    variant: Literal["base", "small", "tiny", "koala_1b", "koala_700m"] = "small"
    #: A UNet config.json of your own student instead of a variant; initialised from the teacher by the same name map.
    student_config: str | None = None
    #: Weight of output distillation, MSE between the student's and the teacher's UNet outputs (paper: 1).
    lambda_out: float = 1.0
    #: Weight of feature distillation, summed MSE between paired stage outputs (paper: 1).
    lambda_feat: float = 1.0
    #: mse: the paper's summed MSE; normalized: each stage's MSE divided by the teacher feature's mean square, so
    #: no stage dominates by scale (the paper's weights were never tuned).
    feature_loss: Literal["mse", "normalized"] = "mse"
    #: stages: the output of every down and up stage (BK-SDM); self_attention: the output of every self-attention
    #: layer (KOALA's finding: the best features to distil on SDXL). Ignored when feature_pairs is given.
    feature_targets: Literal["stages", "self_attention"] = "stages"
    #: Feature pairs as student_module=teacher_module (e.g. up_blocks.0=up_blocks.1). Empty: every down and up stage
    #: with the teacher stage it was initialised from.
    feature_pairs: list[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choices(self, "method")
        require(self.lambda_out >= 0 and self.lambda_feat >= 0,
                f"method.lambda_out={self.lambda_out}, method.lambda_feat={self.lambda_feat}: KD weights must be >= 0; pass 0 to turn a term off, or the paper's 1")
