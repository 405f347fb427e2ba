"""Latent Consistency Distillation: LCM-LoRA (default, one UNet) and full LCM students (w-conditioned, EMA target).

Luo et al., "Latent Consistency Models: Synthesizing High-Resolution Images with Few-Step Inference",
arXiv:2310.04378, Alg. 1 (LCD) with the skipping-step DDIM solver (Sec. 4.3) and the consistency function
``f(z, t) = c_skip(t) z + c_out(t) x0_hat(z, t)`` (Sec. 3/4.1); Luo et al., "LCM-LoRA: A Universal
Stable-Diffusion Acceleration Module", arXiv:2311.05556. Mistakes of the diffusers reference scripts avoided here:
two fp32 UNets, v outputs read as eps, unloadable LoRA exports. Defaults and outputs: docs/lcm.md.

Guidance convention: ``w`` is the LCM-paper weight, ``(1 + w) cond − w uncond``; diffusers' guidance
scale is ``g = w + 1`` (``core.guidance``). Users give the range as diffusers scales (``guidance_scale_min``,
``guidance_scale_max``); :func:`~distill_diffusion.core.sample_lcm_w` draws w from it.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from distill_diffusion.config import RunConfig, TrainConfig
from distill_diffusion.core import (
    consistency_function,
    guidance_embedding,
    previous_on_grid,
    sample_lcm_w,
    skipping_step_grid,
)
from distill_diffusion.core.losses import l2, pseudo_huber
from distill_diffusion.errors import require
from distill_diffusion.models import sharded
from distill_diffusion.models.batch import latents_and_embeddings
from distill_diffusion.models.conditioning import Conditioning
from distill_diffusion.models.denoiser import Denoiser
from distill_diffusion.models.export import (
    CardSampling,
    build_lcm_pipeline,
    pipeline_class_name,
    write_model_card,
)
from distill_diffusion.models.loading import SDComponents, TeacherConfigs
from distill_diffusion.models.lora import (
    EXPORT_DTYPES,
    adapters_disabled,
    attach_lora,
    check_target_modules,
    save_lora,
    tuner_layers,
)
from distill_diffusion.models.students import build_w_student
from distill_diffusion.models.teacher import UncondEmbedding, guided_ddim_step
from distill_diffusion.trainers.methods.base import LossOutput, MethodBase, Phase, StepContext
from distill_diffusion.trainers.methods.lcm.config import LCMConfig

#: The kohya-ss copy of an LCM-LoRA export (ComfyUI/A1111), under the name the published adapters use.
KOHYA_FILE = "lcm_lora_kohya.safetensors"


def check_teacher(components: SDComponents, config: LCMConfig) -> None:
    """Teachers LCD cannot use, refused before anything is built (one-line :class:`UserError`)."""
    check_solver_grid(components.schedule.num_train_timesteps, config)
    if not config.lora:
        check_proj_dim(components.unet.config.get("time_cond_proj_dim"), config)


def check_solver_grid(num_train_timesteps: int, config: LCMConfig) -> None:
    """N <= T, and at most k = T // N sub-steps per hop (more would repeat timesteps: zero-length DDIM steps)."""
    steps, n = num_train_timesteps, config.num_ddim_timesteps
    require(steps >= n, f"the teacher's scheduler has {steps} training timesteps, fewer than method.num_ddim_timesteps="
            f"{n}; pass --method.num_ddim_timesteps {steps} or less")
    k = steps // n
    require(config.solver_substeps <= k, f"method.solver_substeps={config.solver_substeps} is more than the k={k} timesteps "
            f"of one solver hop (T={steps} // N={n}); pass --method.solver_substeps {k} or less")


def check_proj_dim(have: int | None, config: LCMConfig) -> None:
    """A teacher that already has a guidance embedding must keep its size (its weights are loaded into the student)."""
    require(have in (None, config.time_cond_proj_dim),
            f"the teacher UNet already has time_cond_proj_dim={have}; pass --method.time_cond_proj_dim {have}")


def check_validation_steps(train: TrainConfig, config: LCMConfig) -> None:
    """LCMScheduler samples at most N steps (its original_inference_steps); more fails at the first validation."""
    if train.validation_steps and train.validation_prompts:
        require(train.validation_inference_steps <= config.num_ddim_timesteps,
                f"train.validation_inference_steps={train.validation_inference_steps} is more than LCMScheduler allows with "
                f"method.num_ddim_timesteps={config.num_ddim_timesteps}; pass --validation_inference_steps 4 "
                "(LCM samples in 2-8 steps)")


class LCM(MethodBase):
    """Latent consistency distillation of a Stable Diffusion 1.x/2.x or SDXL teacher (LoRA or full student).

    Family-blind: SDXL's pooled text and micro-conditioning ride in the :class:`Conditioning` every pass takes (teacher,
    target and student see the same time ids, as in diffusers' SDXL LCM scripts), and a full student's w-embedding
    (``timestep_cond``) is one more UNet keyword argument on both families."""

    paper: ClassVar[str] = "Luo et al., Latent Consistency Models, arXiv:2310.04378, Alg. 1; LCM-LoRA, arXiv:2311.05556"
    config_class: ClassVar[type] = LCMConfig
    resume_fields: ClassVar[tuple[str, ...]] = (
        "lora", "lora_rank", "lora_alpha", "lora_target_modules", "time_cond_proj_dim", "target_ema_decay",
    )

    @classmethod
    def check_before_loading(cls, run: RunConfig, teacher: TeacherConfigs | None) -> None:
        """Validation steps, the solver grid and the LoRA targets (on a meta-device UNet), before any weights load."""
        config = run.method_config
        check_validation_steps(run.train, config)
        if teacher is None:
            return
        check_solver_grid(teacher.num_train_timesteps, config)
        if config.lora:
            check_target_modules(teacher.meta_unet(), config.lora_target_modules)
        else:
            check_proj_dim(teacher.unet.get("time_cond_proj_dim"), config)

    def __init__(self, components: SDComponents, config: LCMConfig):
        check_teacher(components, config)
        self.components, self.config = components, config
        self.schedule = components.schedule
        self.k = self.schedule.num_train_timesteps // config.num_ddim_timesteps
        self.grid = skipping_step_grid(self.schedule.num_train_timesteps, config.num_ddim_timesteps)
        self.decay = config.target_ema_decay
        self.uncond = UncondEmbedding(components, config.uncond_embedding)
        if config.lora:
            self._init_lora()
        else:
            self._init_full()
        self.unet.train()
        self.models = {"unet": self.unet}

    def _init_lora(self) -> None:
        """ONE UNet: base frozen in the weight dtype (teacher = adapters off), LoRA in fp32 (student)."""
        cfg = self.config
        self.unet = self.teacher_unet = self.target_unet = self.components.unet
        self.online = attach_lora(self.unet, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
        self.layers = tuner_layers(self.unet)
        # EMA LoRA target: shadow copies swapped into the LoRA weights for the target pass.
        self.shadow = [p.detach().clone() for p in self.online] if self.decay is not None else []

    def _init_full(self) -> None:
        """Frozen teacher (weight dtype), fp32 w-conditioned student, fp32 EMA target (decay 0.95)."""
        self.teacher_unet = self.components.unet
        self.unet = build_w_student(self.components, self.config.time_cond_proj_dim)
        self.target_unet = copy.deepcopy(self.unet).requires_grad_(False).eval()
        self.online = list(self.unet.parameters())
        self.shadow = list(self.target_unet.parameters())
        self.layers = []

    def phases(self) -> list[Phase]:
        return [Phase("unet", "unet")]

    # ------------------------------------------------------------------ the algorithm

    def compute_loss(self, phase: str, batch: dict[str, Any], ctx: StepContext) -> LossOutput:
        # 1. Sample (x, c) from the data: latents x0 = E(image)·scaling and text embeddings c.
        x0, c = latents_and_embeddings(batch, self.components)
        # 2. n ~ U{0..N−1} on the skipping-step grid: t_{n+k} = grid[n], t_n = t_{n+k} − k (≥ 0); w ~ U[w_min, w_max].
        t_nk, t_n, w = self.sample_timesteps_and_w(x0.shape[0], x0.device)
        # 3. x_{t_{n+k}} = alpha·x0 + sigma·eps (the forward process at t_{n+k}).
        z = self.schedule.add_noise(x0, torch.randn_like(x0), t_nk)
        w_cond = self.w_condition(w)
        with torch.no_grad():
            # 4. Teacher ODE step with CFG: x̂_{t_n} = DDIM(x_{t_{n+k}} → t_n) of (1+w)·Φ(c) − w·Φ(∅), one batched forward.
            x_prev = self.teacher_step(z, t_nk, t_n, c, w)
            # 5. Target f_θ⁻(x̂_{t_n}, w, c, t_n) from the target network (stop-gradient).
            with self._target_weights():
                target = self.consistency(Denoiser(self.target_unet, self.schedule, self.components.prediction_type), x_prev, t_n, c, **w_cond)
        # 6. Online f_θ(x_{t_{n+k}}, w, c, t_{n+k}) through the engine-prepared (DDP) module, with gradients.
        student = Denoiser(self.models["unet"], self.schedule, self.components.prediction_type)
        pred = self.consistency(student, z, t_nk, c, **w_cond)
        # 7. L = d(f_θ, f_θ⁻) in fp32. (8. θ ← θ − η∇L: the engine. 9. θ⁻ ← μθ⁻ + (1−μ)θ: on_step_end.)
        return LossOutput(self.distance(pred, target))

    def sample_timesteps_and_w(self, batch_size: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """``(t_{n+k}, t_n, w)`` per sample, as the reference: n ~ U{0..N−1}, w ~ U[w_min, w_max] (w = guidance_scale − 1)."""
        n = torch.randint(0, self.config.num_ddim_timesteps, (batch_size,), device=device)
        t_nk = self.grid.to(device)[n]
        w = sample_lcm_w(batch_size, self.config.guidance_scale_min, self.config.guidance_scale_max, device)
        return t_nk, previous_on_grid(t_nk, self.k), w

    def w_condition(self, w: Tensor) -> dict[str, Tensor]:
        """Full student: ``timestep_cond`` = sinusoidal embedding of w·1000; LoRA students take no w."""
        if self.config.lora:
            return {}
        return {"timestep_cond": guidance_embedding(w, self.config.time_cond_proj_dim)}

    def teacher_step(self, z: Tensor, t: Tensor, s: Tensor, c: Conditioning, w: Tensor) -> Tensor:
        """The frozen teacher's guided DDIM solve t → s in ``solver_substeps`` equal steps (LoRA: adapters off)."""
        teacher = Denoiser(self.teacher_unet, self.schedule, self.components.prediction_type)
        m, uncond = self.config.solver_substeps, self.uncond_like(c)
        with adapters_disabled(self.layers) if self.layers else nullcontext():
            for i in range(m):
                # integer timesteps t_i = t − ⌊i(t−s)/m⌋, ending exactly at s
                t_i, s_i = t - (t - s) * i // m, t - (t - s) * (i + 1) // m
                z = guided_ddim_step(teacher, z, t_i, s_i, c, uncond, w)
        return z

    def consistency(self, denoiser: Denoiser, z: Tensor, t: Tensor, c: Conditioning, **unet_kwargs: Any) -> Tensor:
        """``f(z, t) = c_skip(t)·z + c_out(t)·x0_hat(z, t)``; exactly z at t = 0 (c_skip = 1, c_out = 0)."""
        return consistency_function(denoiser(z, t, c, **unet_kwargs).x0, z, t, self.config.timestep_scaling)

    def distance(self, pred: Tensor, target: Tensor) -> Tensor:
        """Pseudo-Huber ``sqrt((a−b)² + c²) − c`` or L2, mean over elements, in fp32."""
        if self.config.loss_type == "l2":
            return l2(pred, target)
        return pseudo_huber(pred, target, self.config.huber_c)

    def uncond_like(self, c: Conditioning) -> Conditioning:
        """The teacher's unconditional embedding, expanded to ``c``'s batch (empty prompt encoded once)."""
        return self.uncond(c)

    @contextmanager
    def _target_weights(self) -> Any:
        """LoRA with an EMA target: swap the EMA LoRA weights in for the target pass (the base is shared).

        Sharded (FSDP2): shard by shard, and the UNet's gathered weights are freed around the swap, so the target pass
        gathers the EMA weights and the backward gathers the online ones again."""
        if not (self.config.lora and self.shadow):
            yield
            return
        online = [sharded.local(p.data) for p in self.online]
        backup = [p.clone() for p in online]
        regather = [self.unet] if sharded.is_dtensor(self.online[0]) else []
        sharded.reshard(regather)
        torch._foreach_copy_(online, [sharded.local(t) for t in self.shadow])
        try:
            yield
        finally:
            torch._foreach_copy_(online, backup)
            sharded.reshard(regather)

    def on_wrapped(self) -> None:
        """Sharded (FSDP2): follow the student's new parameters. A LoRA target is sharded like them (it equals them
        here: nothing has trained, and a resume loads it afterwards); a full target stays whole on every process."""
        online = [p for p in self.unet.parameters() if p.requires_grad] if self.config.lora else list(self.unet.parameters())
        if all(a is b for a, b in zip(online, self.online, strict=True)):
            return
        self.online = online
        if self.config.lora and self.shadow:
            self.shadow = [p.detach().clone() for p in online]

    @torch.no_grad()
    def on_step_end(self, ctx: StepContext) -> None:
        """θ⁻ ← μ·θ⁻ + (1−μ)·θ after each optimizer step (Alg. 1, last line); plain EMA, no warm-up. A whole target of a
        sharded student follows its gathered weights."""
        if self.shadow:
            # shard by shard when both are sharded (DTensor has no _foreach_lerp_); a whole target takes whole weights
            online = [sharded.local(p.detach()) if sharded.is_dtensor(t) else sharded.full(p.detach())
                      for p, t in zip(self.online, self.shadow)]
            torch._foreach_lerp_([sharded.local(t) for t in self.shadow], online, 1.0 - float(self.decay))

    # ------------------------------------------------------------------ resume, validation, export

    def state_dict(self) -> dict[str, Tensor]:
        """The target network θ⁻ (engine saves it as safetensors with every checkpoint)."""
        return {f"target.{i}": t for i, t in enumerate(self.shadow)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        require(len(state) == len(self.shadow), f"checkpoint holds {len(state)} target tensors, this run {len(self.shadow)}; resume with the same method options")
        with torch.no_grad():
            for i, t in enumerate(self.shadow):
                t.copy_(state[f"target.{i}"])

    def scheduler(self) -> Any:
        """diffusers' LCMScheduler on the teacher's schedule, on the grid and scaling trained with."""
        from diffusers import LCMScheduler

        return LCMScheduler.from_config(
            self.components.scheduler.config,
            original_inference_steps=self.config.num_ddim_timesteps,
            timestep_scaling=self.config.timestep_scaling,
        )

    def validation_pipeline(self) -> Any:
        from distill_diffusion.models.export import build_pipeline

        return build_pipeline(self.components, unet=self.unet, scheduler=self.scheduler())

    def validation_call_kwargs(self) -> dict[str, Any]:
        """LoRA students sample with guidance off (1.0) by default, full ones at 8.5 through their guidance embedding."""
        return {"guidance_scale": float(self.config.validation_guidance_scale)}  # type: ignore[arg-type]

    def export(self, output_dir: Path) -> None:
        """LoRA: ``pytorch_lora_weights.safetensors`` + kohya copy + ``scheduler_config.json``. Full: a pipeline folder
        (:func:`~distill_diffusion.models.export.build_lcm_pipeline`; its ``unet/`` is the online student) and
        ``unet_target/``, the EMA target network."""
        if self.config.lora:
            save_lora(self.unet, output_dir, EXPORT_DTYPES[self.config.export_dtype], self.components.family, KOHYA_FILE)
            # the LCMScheduler trained with (N, s): LCMScheduler.from_pretrained(folder) and load_pipeline use it
            self.scheduler().save_pretrained(output_dir)
        else:
            build_lcm_pipeline(self.components, self.unet, self.scheduler()).save_pretrained(output_dir, safe_serialization=True)
            # the EMA target θ⁻ beside the online student, as diffusers' LCM script saves it (``unet_target/``)
            self.target_unet.save_pretrained(output_dir / "unet_target", safe_serialization=True)
        _write_card(self.components, self.config, output_dir, self.paper)


def _scheduler_args(cfg: LCMConfig) -> str:
    """LCMScheduler overrides a user must pass when training differed from its defaults (N = 50, s = 10)."""
    args = "" if cfg.num_ddim_timesteps == 50 else f", original_inference_steps={cfg.num_ddim_timesteps}"
    return args + ("" if cfg.timestep_scaling == 10.0 else f", timestep_scaling={cfg.timestep_scaling}")


def _write_card(components: SDComponents, cfg: LCMConfig, folder: Path, paper: str) -> None:
    """README.md: base model, method, inference steps and guidance, and how to load with stock diffusers."""
    g = cfg.validation_guidance_scale
    pipe = pipeline_class_name(components)
    full_pipe = pipe if pipe != "StableDiffusionPipeline" else "LatentConsistencyModelPipeline"
    if cfg.lora:
        usage = f"""
from diffusers import LCMScheduler, {pipe}

pipe = {pipe}.from_pretrained("{components.source}")
pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config{_scheduler_args(cfg)})
pipe.load_lora_weights("path/to/this/folder")  # pytorch_lora_weights.safetensors
image = pipe("a prompt", num_inference_steps=4, guidance_scale={g}).images[0]
"""
        what = (f"LoRA rank {cfg.lora_rank}, alpha {cfg.lora_alpha} on {', '.join(cfg.lora_target_modules)}. "
                f"ComfyUI/A1111: `lcm_lora_kohya.safetensors` (kohya-ss keys).")
        guidance = f"guidance_scale {g} (1.0 = off; up to about 2)"
    else:
        usage = f"""
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("path/to/this/folder")  # {full_pipe} + LCMScheduler
image = pipe("a prompt", num_inference_steps=4, guidance_scale={g}).images[0]
"""
        what = (f"Full UNet with a guidance embedding (time_cond_proj_dim {cfg.time_cond_proj_dim}); `unet/` (the online student) "
                f"loads with UNet2DConditionModel; `unet_target/` is the EMA target network (decay {cfg.target_ema_decay}), "
                f"`UNet2DConditionModel.from_pretrained(folder, subfolder=\"unet_target\")`.")
        guidance = f"guidance_scale {g} (the student takes the guidance scale as an input; no CFG pass)"
    extra = f"""
- Inference: LCMScheduler, 2–8 steps (4 recommended), {guidance}.
- Distillation: skipping-step DDIM solver N = {cfg.num_ddim_timesteps} ({cfg.solver_substeps} DDIM sub-step(s) per hop), teacher
  guidance_scale in [{cfg.guidance_scale_min}, {cfg.guidance_scale_max}], {cfg.loss_type} loss, target EMA {cfg.target_ema_decay}.
- {what}
"""
    sampling = CardSampling("lcm" if cfg.lora else "lcm-full", 4, g)  # type: ignore[arg-type]
    write_model_card(folder, base_model=components.source, method="lcm" + ("-lora" if cfg.lora else ""), paper=paper, usage=usage,
                     sampling=sampling, extra=extra)
