"""Progressive distillation: halve the sampling steps round after round, after distilling guidance into the student.

Salimans & Ho, "Progressive Distillation for Fast Sampling of Diffusion Models", arXiv:2202.00512, Alg. 2; guided
text-to-image: Meng et al., "On Distillation of Guided Diffusion Models", arXiv:2210.03142 (stage 1: a w-conditioned
student matches the teacher's classifier-free guidance; stage 2: the halving rounds on it). Published PyTorch ports
get Alg. 2 wrong in two ways avoided here: one swaps t' and t''; one does not solve for x̃ exactly.

Each round is an engine :class:`Stage`: fresh optimizer and LR schedule, a restarted EMA; at its end the student
(its EMA when kept) becomes the teacher of the next round and is exported as a pipeline folder. Guidance in the
LCM/Meng form ``(1 + w)·cond − w·uncond``; diffusers' guidance scale is ``w + 1``, the form users give it in
(``guidance_scale_min``, ``guidance_scale_max``; :mod:`distill_diffusion.core.guidance` converts).

Alg. 2 starts the student as the teacher. The student's weights are the teacher's, but where it predicts another
quantity (v or x0 from an eps teacher) the same outputs mean another x̂ (on SD 1.5's schedule −z instead of the
teacher's x̂ at t = 999), so a first stage regresses it on the teacher's x̂ at random t: the guidance stage, or
without one a conversion stage at the first round's guidance (:class:`~.plan.RoundPlan`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from distill_diffusion.config import RunConfig, TrainConfig
from distill_diffusion.core import (
    append_dims,
    ddim_step,
    guidance_embedding,
    guidance_scale_to_lcm_w,
    progressive_target_x0,
    sample_lcm_w,
)
from distill_diffusion.core.losses import weighted_mse
from distill_diffusion.errors import require
from distill_diffusion.models import sharded
from distill_diffusion.models.batch import latents_and_embeddings
from distill_diffusion.models.conditioning import Conditioning
from distill_diffusion.models.denoiser import Denoiser
from distill_diffusion.models.loading import SDComponents, TeacherConfigs
from distill_diffusion.models.students import build_student
from distill_diffusion.models.teacher import UncondEmbedding, guided_prediction
from distill_diffusion.trainers.methods.base import LossOutput, MethodBase, Phase, Stage, StepContext
from distill_diffusion.trainers.methods.progressive.config import ProgressiveConfig
from distill_diffusion.trainers.methods.progressive.plan import RoundPlan, check_start_steps


def check_max_train_steps_used(max_train_steps: int, config: ProgressiveConfig) -> None:
    """``train.max_train_steps`` is each stage's length where the method section gives none; with every length given it
    must stay unset (the default), or equal them all (a saved config.yaml whose lengths it filled in)."""
    distill = config.guidance == "distill"
    if config.steps_per_round is None or (distill and config.guidance_steps is None) or max_train_steps == TrainConfig.max_train_steps:
        return
    lengths = set(config.steps_per_round) | ({config.guidance_steps} if distill else set())
    require(lengths == {max_train_steps}, f"train.max_train_steps={max_train_steps} is not used: method.steps_per_round"
            f"{' and method.guidance_steps' if distill else ''} set the length of every stage of progressive distillation; "
            "drop --max_train_steps, or drop method.steps_per_round to train each round for train.max_train_steps steps")


class Progressive(MethodBase):
    """Progressive distillation of a Stable Diffusion teacher (1.x/2.x or SDXL) into an N/2^k-step DDIM student."""

    paper: ClassVar[str] = ("Salimans & Ho, Progressive Distillation, arXiv:2202.00512, Alg. 2; "
                            "Meng et al., On Distillation of Guided Diffusion Models, arXiv:2210.03142")
    config_class: ClassVar[type] = ProgressiveConfig
    resume_fields: ClassVar[tuple[str, ...]] = (
        "start_steps", "target_steps", "steps_per_round", "guidance", "guidance_steps", "guidance_scale_min", "guidance_scale_max",
        "time_cond_proj_dim",
        "prediction_type", "convert_steps",
    )

    @classmethod
    def check_config(cls, run: RunConfig) -> None:
        """Rounds without their own step counts take ``train.max_train_steps`` each (written into the saved config); where
        every stage has its own, a ``train.max_train_steps`` that would be ignored is refused."""
        config = run.method_config
        check_max_train_steps_used(run.train.max_train_steps, config)
        config.steps_per_round = config.round_steps(run.train.max_train_steps)
        if config.guidance == "distill" and config.guidance_steps is None:
            config.guidance_steps = run.train.max_train_steps

    @classmethod
    def planned_stages(cls, run: RunConfig, teacher: TeacherConfigs | None) -> list[Stage]:
        """The run's :class:`RoundPlan` stages on the teacher's schedule (SD's 1000 eps-prediction timesteps where its
        configs cannot be read without loading)."""
        scheduler = teacher.scheduler if teacher is not None else {}
        return RoundPlan(run.method_config, int(scheduler.get("num_train_timesteps", 1000)),
                         scheduler.get("prediction_type", "epsilon"), run.train.max_train_steps).stages()

    @classmethod
    def stage_length_options(cls, steps: int) -> dict[str, Any]:
        """Every round, the conversion stage and the guidance stage ``steps`` long (rounds and guidance stage without
        their own counts take ``train.max_train_steps``)."""
        return {"steps_per_round": None, "guidance_steps": None, "convert_steps": steps}

    @classmethod
    def check_before_loading(cls, run: RunConfig, teacher: TeacherConfigs | None) -> None:
        if teacher is not None:
            check_start_steps(teacher.num_train_timesteps, run.method_config)

    def __init__(self, components: SDComponents, config: ProgressiveConfig):
        check_start_steps(components.schedule.num_train_timesteps, config)
        self.components, self.config, self.schedule = components, config, components.schedule
        # check_config gave every stage its count (steps_per_round, guidance_steps) before the engine builds this
        self.plan = RoundPlan(config, self.schedule.num_train_timesteps, components.prediction_type)
        self.uncond = UncondEmbedding(components)
        self.w_conditioned = config.guidance == "distill"
        # the original teacher stays frozen in the weight dtype; the student is an fp32 copy predicting v (or x)
        self.teacher_unet = components.unet
        extra = {"time_cond_proj_dim": config.time_cond_proj_dim} if self.w_conditioned else {}
        self.unet = build_student(components, **extra)
        if self.w_conditioned:
            with torch.no_grad():  # w enters as a zero addition: at the start w changes nothing
                self.unet.time_embedding.cond_proj.weight.zero_()
        self.unet.train()
        self.round_teacher: Any = None  # the previous round's student, frozen (built at the first stage end)
        self.stage = 0  # the stage the student's weights are trained in (or, after its end, were trained in)
        self.models = {"unet": self.unet}

    def phases(self) -> list[Phase]:
        return [Phase("unet", "unet")]

    def stages(self) -> list[Stage]:
        return self.plan.stages()

    # ------------------------------------------------------------------ the algorithm

    def compute_loss(self, phase: str, batch: dict[str, Any], ctx: StepContext) -> LossOutput:
        self.stage = ctx.stage
        x0, c = latents_and_embeddings(batch, self.components)
        w = self.sample_w(x0.shape[0], x0.device)
        if self.plan.round_index(ctx.stage) is None:
            z_t, t, x_target = self.guidance_target(x0, c, w)
        else:
            z_t, t, x_target = self.round_target(x0, c, w, ctx.stage)
        # the student's x̂ at (z_t, t), through the engine-prepared module (DDP), with gradients
        x_pred = self.student_denoiser(ctx.module("unet"))(z_t, t, c, **self.w_condition(w)).x0
        # 5. L = w(λ_t)·||x̂ − x̃||² with w = max(SNR, 1) or SNR + 1 (Salimans & Ho §4), in fp32
        return LossOutput(weighted_mse(x_pred, x_target, self.loss_weights(t)), {})

    def guidance_target(self, x0: Tensor, c: Conditioning, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Meng et al. stage 1 (and the conversion stage): ``(z_t, t, x̂)``, t ~ U{0..T−1}, x̂ the original teacher's
        as the first round uses it (:meth:`first_teacher`): its CFG ``(1+w)·x̂(z_t, c) − w·x̂(z_t, ∅)``."""
        t = torch.randint(0, self.schedule.num_train_timesteps, (x0.shape[0],), device=x0.device)
        z_t = self.schedule.add_noise(x0, torch.randn_like(x0), t)
        with torch.no_grad():
            x_target, _ = self.first_teacher(z_t, t, c, w)
        return z_t, t, x_target

    def first_teacher(self, z: Tensor, t: Tensor, c: Conditioning, w: Tensor) -> tuple[Tensor, Tensor]:
        """``(x̂, ε̂)`` of the original teacher, guided at w (no uncond pass when the plan has no guidance)."""
        teacher = Denoiser(self.teacher_unet, self.schedule, self.components.prediction_type)
        if self.w_conditioned or (self.config.guidance == "fixed" and self.config.guidance_scale_min > 1):
            return guided_prediction(teacher, z, t, c, self.uncond(c), w)
        out = teacher(z, t, c)
        return out.x0, out.eps

    def round_target(self, x0: Tensor, c: Conditioning, w: Tensor, stage: int) -> tuple[Tensor, Tensor, Tensor]:
        """Alg. 2 on the round's grid: ``(z_t, t, x̃)`` for i ~ U{0..N−1} and z_t = α_t·x + σ_t·ε."""
        grid = self.plan.grid(stage)
        i = torch.randint(0, grid.student_steps, (x0.shape[0],), device=x0.device)
        t = grid.pairs.to(x0.device)[i, 0]
        z_t = self.schedule.add_noise(x0, torch.randn_like(x0), t)
        return z_t, t, self.x_tilde(z_t, i, c, w, stage)

    @torch.no_grad()
    def x_tilde(self, z_t: Tensor, i: Tensor, c: Conditioning, w: Tensor, stage: int) -> Tensor:
        """The x target of student step ``i`` (t → t''): one student DDIM step onto it lands where two teacher steps do.

        Two teacher DDIM steps z_t → z_t' → z_t'' through the teacher grid's midpoint t', then
        ``x̃ = (z_t'' − (σ_t''/σ_t)·z_t) / (α_t'' − (σ_t''/σ_t)·α_t)``; at the clean end (t'' < 0) x̃ = z_t''.
        """
        grid = self.plan.grid(stage)
        t, tpp = grid.pairs.to(z_t.device)[i].unbind(1)
        tp = grid.midpoints.to(z_t.device)[i]
        z_tpp = self.teacher_step(self.teacher_step(z_t, t, tp, c, w), tp, tpp, c, w)
        s, ndim = self.schedule, z_t.ndim
        return progressive_target_x0(z_t.float(), z_tpp, append_dims(s.alpha(t), ndim), append_dims(s.sigma(t), ndim),
                                     append_dims(s.alpha(tpp), ndim), append_dims(s.sigma(tpp), ndim))

    def teacher_step(self, z: Tensor, t: Tensor, s: Tensor, c: Conditioning, w: Tensor) -> Tensor:
        """One deterministic DDIM step t → s of this round's teacher.

        The first round without a guidance stage uses the original teacher, guided at w (no uncond pass at
        w = 0); later rounds (and every round after a guidance stage) use the previous round's student, which
        has the guidance in it (w-conditioned, or baked in at a fixed w).
        """
        if self.round_teacher is None:
            x0, eps = self.first_teacher(z, t, c, w)
        else:
            out = self.student_denoiser(self.round_teacher)(z, t, c, **self.w_condition(w))
            x0, eps = out.x0, out.eps
        return ddim_step(x0, eps, append_dims(self.schedule.alpha(s), z.ndim), append_dims(self.schedule.sigma(s), z.ndim))

    def student_denoiser(self, unet: Any = None) -> Denoiser:
        """The student (``unet``: its engine-wrapped module) as a denoiser in its own parameterisation."""
        return Denoiser(self.unet if unet is None else unet, self.schedule, self.config.prediction_type)

    def sample_w(self, batch_size: int, device: torch.device) -> Tensor:
        """w ~ U[w_min, w_max] for a w-conditioned student; w_min (fixed) or 0 (none) otherwise (w = guidance_scale − 1)."""
        cfg = self.config
        if cfg.guidance == "none":
            return torch.zeros(batch_size, device=device)
        if cfg.guidance == "fixed":
            return torch.full((batch_size,), guidance_scale_to_lcm_w(cfg.guidance_scale_min), device=device)
        return sample_lcm_w(batch_size, cfg.guidance_scale_min, cfg.guidance_scale_max, device)

    def w_condition(self, w: Tensor) -> dict[str, Tensor]:
        """``timestep_cond`` = the sinusoidal embedding of w·1000 (as diffusers' pipelines feed guidance_scale − 1)."""
        return {"timestep_cond": guidance_embedding(w, self.config.time_cond_proj_dim)} if self.w_conditioned else {}

    def loss_weights(self, t: Tensor) -> Tensor:
        """max(SNR, 1) (truncated SNR) or SNR + 1 on the x error, per sample."""
        snr = self.schedule.snr(t).float()
        return torch.clamp(snr, min=1.0) if self.config.loss_weighting == "truncated_snr" else snr + 1.0

    # ------------------------------------------------------------------ rounds, resume, export

    @torch.no_grad()
    def on_stage_end(self, stage: int, ema: dict[str, list[Tensor]]) -> None:
        """The round's student (its EMA when kept) becomes the next round's teacher and the next student's start.

        After the conversion stage only the start: the first round's teacher stays the original one (exact targets).
        """
        if ema.get("unet"):  # shard by shard when the engine shards the student (FSDP2: no _foreach_copy_ on DTensors)
            params = self.trainable_parameters(Phase("unet", "unet"))
            torch._foreach_copy_([sharded.local(p) for p in params], [sharded.local(t) for t in ema["unet"]])
        if not (self.plan.has_convert_stage and stage == 0):
            # every process holds the whole round teacher: a sharded student's weights are gathered (collective)
            self._set_round_teacher({k: sharded.full(v) for k, v in self.unet.state_dict().items()})
        self.stage = stage  # the student is this stage's until the next one's first step: exported, validated at its N

    def _set_round_teacher(self, state: dict[str, Tensor]) -> None:
        if self.round_teacher is None:
            # frozen like the original teacher, in its dtype (fp16/bf16 under mixed precision: half the memory)
            self.round_teacher = self._plain_copy().requires_grad_(False).eval()
            dtype = next(self.teacher_unet.parameters()).dtype
            if dtype != torch.float32:
                self.round_teacher.to(dtype)
        self.round_teacher.load_state_dict(state)

    def _plain_copy(self) -> Any:
        """A module like the student, unsharded: a copy of it, or under FSDP2 (which cannot be copied) a new one of its
        class and config, built without drawing from the run's random stream (the weights are loaded after)."""
        if not sharded.is_dtensor(next(self.unet.parameters())):
            return copy.deepcopy(self.unet)
        with torch.random.fork_rng(devices=[]):
            return type(self.teacher_unet).from_config(self.unet.config).to(self.teacher_unet.device)

    def state_dict(self) -> dict[str, Tensor]:
        """The current round's teacher (a resume inside round k needs the student of round k − 1) and the stage."""
        state = {"stage": torch.tensor(self.stage)}
        if self.round_teacher is not None:
            state.update({f"round_teacher.{k}": v for k, v in self.round_teacher.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.stage = int(state["stage"])
        teacher = {k.removeprefix("round_teacher."): v for k, v in state.items() if k.startswith("round_teacher.")}
        if teacher:
            self._set_round_teacher(teacher)

    def sampling_steps(self) -> int:
        """DDIM steps of the stage the student is trained in: round k's own N while it trains and at its end."""
        return self.plan.steps_after(self.stage)

    def guidance_scale(self) -> float:
        """diffusers guidance_scale to sample the student with: its w-embedding's scale, or 1 (guidance built in)."""
        return float(self.config.validation_guidance_scale) if self.w_conditioned else 1.0  # type: ignore[arg-type]

    def scheduler(self) -> Any:
        from diffusers import DDIMScheduler

        from distill_diffusion.trainers.methods.progressive.plan import export_scheduler_config

        return DDIMScheduler.from_config(export_scheduler_config(self.components.scheduler.config, self.config.prediction_type))

    def validation_pipeline(self) -> Any:
        from distill_diffusion.models.export import build_pipeline

        return build_pipeline(self.components, unet=self.unet, scheduler=self.scheduler())

    def validation_call_kwargs(self) -> dict[str, Any]:
        return {"guidance_scale": self.guidance_scale(), "num_inference_steps": self.sampling_steps()}

    def export(self, output_dir: Path) -> None:
        """The teacher family's stock pipeline folder (``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``): the
        student UNet (with its w-embedding ``time_cond_proj_dim``, which both pipelines feed ``guidance_scale − 1``) and a
        trailing ``DDIMScheduler`` at its prediction type."""
        from distill_diffusion.trainers.methods.progressive.card import write_card

        self.validation_pipeline().save_pretrained(output_dir, safe_serialization=True)
        write_card(self, output_dir)
