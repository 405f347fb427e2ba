"""BK-SDM: a UNet with blocks removed, initialised from the teacher and taught by it at the output and the features.

Kim et al., "BK-SDM: A Lightweight, Fast, and Cheap Version of Stable Diffusion", arXiv:2305.15798, §3.3, eq. 4:
L = L_Task + λ_OutKD·L_OutKD + λ_FeatKD·L_FeatKD, all three on the same noise, timestep and text for both models:
L_Task the plain diffusion loss (the fine-tune's own, :class:`~distill_diffusion.trainers.methods.finetune.FineTune`),
L_OutKD = ‖ε_T − ε_S‖² on the UNet outputs, L_FeatKD the summed stage-output MSEs (:mod:`.features`); the paper
sets every λ to 1. SDXL teachers get SDXL students (Lee et al., KOALA, arXiv:2312.04005) and the whole conditioning
(pooled text, micro-conditioning) reaches both models through the batch's Conditioning. The students and the loss in the
project's terms: docs/bksdm.md.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import torch

from distill_diffusion.config import RunConfig
from distill_diffusion.errors import UserError, require
from distill_diffusion.models.denoiser import Denoiser
from distill_diffusion.models.loading import SDComponents, TeacherConfigs
from distill_diffusion.trainers.methods.base import LossOutput, StepContext
from distill_diffusion.trainers.methods.bksdm import architecture as arch
from distill_diffusion.trainers.methods.bksdm import features as feat
from distill_diffusion.trainers.methods.bksdm.config import BKSDMConfig
from distill_diffusion.trainers.methods.finetune import FineTune

logger = logging.getLogger(__name__)


def resolve_student_config(teacher_unet: dict[str, Any], config: BKSDMConfig) -> dict[str, Any]:
    """The student's UNet config: the variant's edit of the teacher's, or the user's ``student_config`` file."""
    if config.student_config is None:
        return arch.student_config(teacher_unet, config.variant)
    path = Path(config.student_config).expanduser()
    if path.is_dir():
        path = path / "config.json"
    require(path.is_file(), f"method.student_config={config.student_config}: no such file; pass a UNet config.json")
    try:
        student = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"method.student_config={path}: not valid JSON ({exc}); pass a UNet config.json") from None
    require(isinstance(student, dict), f"method.student_config={path}: not a config object; pass a UNet config.json")
    return {k: v for k, v in student.items() if not k.startswith("_")}


def plan(teacher_unet: dict[str, Any], config: BKSDMConfig) -> tuple[dict[str, Any], dict[str, str], list[feat.FeaturePair]]:
    """From configs alone (meta-device models, no weights): the student config, its weight map and its checked feature pairs."""
    student_cfg = resolve_student_config(teacher_unet, config)
    teacher, student = arch.meta_unet(teacher_unet, "teacher"), arch.meta_unet(student_cfg, "student")  # built once
    mapping = arch.weight_map_of(teacher, student)
    pairs: list[feat.FeaturePair] = []
    if config.lambda_feat > 0:
        if config.feature_pairs:
            pairs = feat.parse_pairs(config.feature_pairs, teacher, student)
        elif config.feature_targets == "self_attention":
            pairs = feat.self_attention_pairs(mapping)
        else:
            pairs = feat.stage_pairs(teacher, student)
        feat.check_pair_shapes(teacher, student, pairs, 2 ** (len(teacher.down_blocks) - 1))
    return student_cfg, mapping, pairs


class BKSDM(FineTune):
    """Block-removal feature distillation of a Stable Diffusion (1.x/2.x or XL) UNet into a smaller one."""

    paper: ClassVar[str] = "Kim et al., BK-SDM, arXiv:2305.15798, eq. 4"
    config_class: ClassVar[type] = BKSDMConfig
    resume_fields: ClassVar[tuple[str, ...]] = ("variant", "student_config")

    @classmethod
    def check_before_loading(cls, run: RunConfig, teacher: TeacherConfigs | None) -> None:
        """Variant, student config and feature pairs checked against the teacher's config before any weight loads."""
        if teacher is not None:
            plan(teacher.unet, run.method_config)

    def __init__(self, components: SDComponents, config: BKSDMConfig):
        self.teacher = components.unet  # frozen, in the weight dtype
        self.student_cfg, self.mapping, self.pairs = plan(dict(components.unet.config), config)
        super().__init__(components, config)
        self.teacher_denoiser = Denoiser(self.teacher, components.schedule, components.prediction_type)
        teacher, student = self.parameter_counts()
        logger.info(f"BK-SDM student: {student:,} UNet parameters against the teacher's {teacher:,}; initialised by name: "
                    f"{self.init_report.summary()}; feature pairs: {feat.describe(self.pairs)}")

    def build_unet(self, components: SDComponents) -> Any:
        """The student: built from its config in fp32 on the teacher's device, every tensor copied from the teacher."""
        from diffusers import UNet2DConditionModel

        with torch.device(next(self.teacher.parameters()).device):
            student = UNet2DConditionModel.from_config(self.student_cfg)
        self.init_report = arch.init_from_teacher(student, components.fp32_unet_state(), self.mapping)
        return student.requires_grad_(True)

    def compute_loss(self, phase: str, batch: dict[str, Any], ctx: StepContext) -> LossOutput:
        cfg = self.config
        # 1-3. One noised batch for both models: the same x0, eps, t and text (§3.3).
        x0, c, eps, t, z_t = self.noised_batch(batch)
        # 4. Student forward (engine-wrapped module) with its stage outputs captured on the unwrapped one.
        with feat.FeatureCapture(self.unet, feat.student_outputs(self.pairs)) as f_student:
            out_s = ctx.module("unet")(z_t, t, **c.unet_kwargs()).sample.float()
        task = self.task_loss(out_s, x0, eps, t)
        if cfg.lambda_out == 0 and not self.pairs:  # no KD term: the task loss alone, no teacher forward
            return LossOutput(task, {"loss_task": float(task.detach())})
        # 5. Teacher forward, frozen, in its own dtype.
        with torch.no_grad(), feat.FeatureCapture(self.teacher, feat.teacher_outputs(self.pairs)) as f_teacher:
            out_t = self.teacher_denoiser(z_t, t, c).model_output
        # 6. L = L_Task + λ_out·‖ε_T − ε_S‖² + λ_feat·Σ_l ‖f_T − f_S‖² (eq. 4), in fp32.
        out_kd = torch.nn.functional.mse_loss(out_s, out_t)
        feat_kd = feat.feature_loss(f_student, f_teacher, self.pairs, cfg.feature_loss == "normalized") if self.pairs else torch.zeros_like(task)
        loss = task + cfg.lambda_out * out_kd + cfg.lambda_feat * feat_kd
        return LossOutput(loss, {"loss_task": float(task.detach()), "loss_out_kd": float(out_kd.detach()), "loss_feat_kd": float(feat_kd.detach())})

    def export(self, output_dir: Path) -> None:
        """A ``StableDiffusionPipeline`` folder (``StableDiffusionXLPipeline`` for SDXL): the student UNet with the teacher's
        VAE, text encoder(s) and scheduler."""
        from distill_diffusion.models.export import build_pipeline
        from distill_diffusion.trainers.methods.bksdm.card import write_card

        build_pipeline(self.components, unet=self.unet, scheduler=self.components.scheduler).save_pretrained(output_dir, safe_serialization=True)
        write_card(self, output_dir)

    def parameter_counts(self) -> tuple[int, int]:
        """(teacher, student) UNet parameters."""
        return sum(p.numel() for p in self.teacher.parameters()), sum(p.numel() for p in self.unet.parameters())

