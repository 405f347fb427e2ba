"""Options of latent consistency distillation (defaults: Luo et al., arXiv:2310.04378 and arXiv:2311.05556, and the
diffusers LCM scripts; docs/lcm.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from distill_diffusion.config_types import RenamedOption, check_choices
from distill_diffusion.errors import require
from distill_diffusion.models.lora import LoRAOptions
from distill_diffusion.models.teacher import GUIDANCE_RANGE_RENAMES, check_guidance_range


@dataclass
class LCMConfig(LoRAOptions):
    """Options of latent consistency distillation (defaults: the LCM/LCM-LoRA papers' and diffusers scripts' values).

    ``lora``: LCM-LoRA (one UNet: frozen base = teacher, LoRA = student); false trains a full LCM student that takes the
    guidance scale as an input (a guidance embedding, arXiv:2310.04378 Sec. 4.2).
    """

    renamed_options: ClassVar[dict[str, RenamedOption]] = GUIDANCE_RANGE_RENAMES

    #: Dropout on the LoRA input; applies to the target pass too (the same module in train mode, as the reference).
    lora_dropout: float = 0.0
    #: N of the skipping-step DDIM solver; k = num_train_timesteps // N (1000/50 → k = 20).
    num_ddim_timesteps: int = 50
    #: DDIM sub-steps the teacher takes from t_{n+k} to t_n (1 = the reference LCD solver). More sub-steps make
    #: each hop more accurate (a coarse grid, few hops, a fine ODE solve) at one teacher forward per sub-step.
    solver_substeps: int = 1
    #: Lowest teacher guidance_scale the student is distilled for (diffusers convention; 1 = no guidance): each sample
    #: draws one uniformly from [guidance_scale_min, guidance_scale_max], 6 to 16 as in the diffusers LCM scripts.
    guidance_scale_min: float = 6.0
    #: Highest teacher guidance_scale the student is distilled for.
    guidance_scale_max: float = 16.0
    #: huber: sqrt((a−b)² + c²) − c with c = huber_c; l2: mean squared error. Both in fp32.
    loss_type: Literal["huber", "l2"] = "huber"
    huber_c: float = 0.001
    #: s in c_skip = σ_d²/((s·t)² + σ_d²), c_out = s·t/sqrt((s·t)² + σ_d²); written to the exported LCMScheduler.
    timestep_scaling: float = 10.0
    #: μ of the target network θ⁻ ← μ·θ⁻ + (1−μ)·θ. None: LoRA uses the student itself under no_grad
    #: (the LCM-LoRA reference), the full model 0.95 (the LCM reference). A value with LoRA keeps an EMA LoRA.
    target_ema_decay: float | None = None
    #: Full model only: size of the guidance embedding's projection added to the student (time_cond_proj_dim).
    time_cond_proj_dim: int = 256
    #: Unconditional input of the teacher's CFG. None follows the checkpoint, as its pipeline samples: zero prompt and
    #: pooled embeddings where it sets ``force_zeros_for_empty_prompt`` (SDXL base), else the empty prompt's encoding
    #: (SD 1.x/2.x). empty_prompt / zeros force one (zeros: what the diffusers SD LCM scripts use).
    uncond_embedding: Literal["empty_prompt", "zeros"] | None = None
    #: dtype of the exported LoRA files (fp16 = the size of the published LCM-LoRA adapters).
    export_dtype: Literal["fp16", "bf16", "fp32"] = "fp16"
    #: diffusers guidance scale for validation images and the model card; None: 1.0 (LoRA), 8.5 (full).
    validation_guidance_scale: float | None = None

    def __post_init__(self) -> None:
        check_choices(self, "method")
        super().__post_init__()
        require(0.0 <= self.lora_dropout < 1.0, f"method.lora_dropout={self.lora_dropout} must be in [0, 1); pass e.g. 0.0")
        require(self.num_ddim_timesteps >= 1, f"method.num_ddim_timesteps={self.num_ddim_timesteps} must be >= 1; the reference uses 50")
        require(self.solver_substeps >= 1, f"method.solver_substeps={self.solver_substeps} must be >= 1; 1 is the reference solver")
        check_guidance_range(self.guidance_scale_min, self.guidance_scale_max)
        require(self.huber_c > 0, f"method.huber_c={self.huber_c} must be > 0; the reference uses 0.001")
        require(self.timestep_scaling > 0, f"method.timestep_scaling={self.timestep_scaling} must be > 0; LCMScheduler uses 10")
        if self.target_ema_decay is None and not self.lora:
            self.target_ema_decay = 0.95
        require(self.target_ema_decay is None or 0.0 <= self.target_ema_decay < 1.0, f"method.target_ema_decay={self.target_ema_decay} must be in [0, 1); pass e.g. 0.95")
        require(self.time_cond_proj_dim >= 4, f"method.time_cond_proj_dim={self.time_cond_proj_dim} must be >= 4; the reference uses 256")
        if self.validation_guidance_scale is None:
            self.validation_guidance_scale = 1.0 if self.lora else 8.5
        require(self.validation_guidance_scale >= 0, f"method.validation_guidance_scale={self.validation_guidance_scale} must be >= 0; pass e.g. 1.0")
