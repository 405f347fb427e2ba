"""Backward simulation: a multi-step student's later timesteps trained on the inputs its own sampler feeds them.

Yin et al., "Improved Distribution Matching Distillation for Fast Image Synthesis" (DMD2), arXiv:2405.14867, §4.5:
a few-step generator trained on noised *real* images at its later timesteps meets, at inference, noised versions of its
*own* earlier samples, whose errors it never learnt to correct (the training/inference mismatch of multi-step
generators). Instead, the input at the k-th timestep of the sampler's schedule is made by running the current
generator itself, without gradients, from pure noise through the k earlier timesteps exactly as the sampler does.

Here the sampler is the adversarial student's (ADD, arXiv:2311.17042, §3.1; LADD, arXiv:2403.12015, §3):
``LCMScheduler`` on the full training grid (``original_inference_steps`` = T), whose N steps visit the trailing
timesteps t_0 = T − 1 > t_1 > ... (999, 749, 499, 249 for N = 4); each step denoises to
x̂ = c_out(t)·x̂0(z_t) + c_skip(t)·z_t (its consistency boundary scalings) and re-noises x̂ to the next timestep with
fresh noise, z_{t_{k+1}} = α_{t_{k+1}}·x̂ + σ_{t_{k+1}}·ε.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from distill_diffusion.core.schedule import NoiseSchedule
from distill_diffusion.core.timesteps import TRAINED_TIMESTEPS, visited_timesteps
from distill_diffusion.errors import require
from distill_diffusion.models import sharded
from distill_diffusion.models.conditioning import Conditioning
from distill_diffusion.models.denoiser import Denoiser


def student_sampler(scheduler_config: Mapping[str, Any], trained_timesteps: list[int] | None = None) -> Any:
    """The student's sampler: ``LCMScheduler`` from the teacher's scheduler config on the full training grid, so N
    steps visit the trailing timesteps; ``trained_timesteps`` (the student's) go on its config for
    :func:`~distill_diffusion.pipelines.samplers.check_steps`, which then refuses step counts that leave them."""
    from diffusers import LCMScheduler

    T = int(scheduler_config.get("num_train_timesteps", 1000))
    scheduler = LCMScheduler.from_config(dict(scheduler_config), original_inference_steps=T)
    if trained_timesteps:
        scheduler.register_to_config(**{TRAINED_TIMESTEPS: [int(t) for t in trained_timesteps]})
    return scheduler


def check_backward_simulation(timesteps: list[int], scheduler_config: Mapping[str, Any]) -> None:
    """Backward simulation runs the student's own ``len(timesteps)``-step sampler, so the student's timesteps must be that
    sampler's schedule: starting at T − 1 (where the sampler starts from pure noise), on its trailing grid."""
    T = int(scheduler_config.get("num_train_timesteps", 1000))
    require(timesteps[0] == T - 1, f"method.backward_simulation runs the student's sampler from pure noise at t = {T - 1}, but "
            f"method.student_timesteps starts at {timesteps[0]}; start it at {T - 1} or pass --method.backward_simulation false")
    grid = visited_timesteps(student_sampler(scheduler_config), len(timesteps))
    require(grid == list(timesteps), f"method.backward_simulation feeds each student timestep what the {len(timesteps)}-step "
            f"sampler (LCMScheduler on the trailing grid) feeds it, and that sampler visits {grid}, not "
            f"method.student_timesteps={list(timesteps)}; pass --method.student_timesteps {','.join(map(str, grid or []))} "
            "or --method.backward_simulation false")


class BackwardSimulation:
    """``simulation(unet, z_t, t, c)``: ``z_t`` with every row whose timestep is the k-th (k ≥ 1) of ``timesteps``
    replaced by the sampler's input there, made by ``unet`` (the current student) from fresh pure noise through the k
    earlier steps, without gradients. Rows at the first timestep keep their input."""

    def __init__(self, scheduler: Any, schedule: NoiseSchedule, prediction_type: str, timesteps: list[int]) -> None:
        self.scheduler, self.schedule, self.prediction_type = scheduler, schedule, prediction_type
        self.timesteps = [int(t) for t in timesteps]

    def stages(self, t: Tensor) -> Tensor:
        """Each row's k: the index of its timestep in the sampler's schedule."""
        table = torch.tensor(self.timesteps, device=t.device)
        return (t[:, None] == table[None, :]).long().argmax(dim=1)

    def denoised(self, unet: Any, z: Tensor, t: int, c: Conditioning) -> Tensor:
        """One sampler step's x̂ = c_out·x̂0 + c_skip·z_t (LCMScheduler.step, steps 4-6), with its clipping if configured."""
        x0 = Denoiser(unet, self.schedule, self.prediction_type)(z, torch.full((z.shape[0],), t, device=z.device), c).x0
        config = self.scheduler.config
        if config.get("thresholding"):
            x0 = self.scheduler._threshold_sample(x0)
        elif config.get("clip_sample"):
            x0 = x0.clamp(-config["clip_sample_range"], config["clip_sample_range"])
        c_skip, c_out = self.scheduler.get_scalings_for_boundary_condition_discrete(t)
        return c_out * x0 + c_skip * z.float()

    @torch.no_grad()
    def __call__(self, unet: Any, z_t: Tensor, t: Tensor, c: Conditioning, generator: torch.Generator | None = None) -> Tensor:
        stage = self.stages(t)
        out, rows = z_t.clone(), (stage >= 1).nonzero().flatten()
        # sharded (FSDP2) every process runs all len(timesteps) − 1 passes, on a placeholder row where none of its rows
        # goes on: each pass gathers the student's weights, a collective every process must join
        passes = len(self.timesteps) - 1 if sharded.is_dtensor(next(unet.parameters())) else int(stage.max())
        # the sampler's start: pure noise at t_0; then, stage by stage, only the rows that go on further
        z = torch.randn(z_t[rows].shape, generator=generator, device=z_t.device, dtype=torch.float32)
        for k in range(1, passes + 1):
            if rows.numel() == 0:
                self.denoised(unet, torch.zeros_like(z_t[:1], dtype=torch.float32), self.timesteps[k - 1], c[:1])
                continue
            x = self.denoised(unet, z, self.timesteps[k - 1], c[rows])
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            z = self.schedule.add_noise(x, noise, torch.full((x.shape[0],), self.timesteps[k], device=x.device))
            done = stage[rows] == k
            out[rows[done]] = z[done].to(out.dtype)
            rows, z = rows[~done], z[~done]
        return out
