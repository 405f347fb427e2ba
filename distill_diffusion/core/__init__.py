"""Pure diffusion math on torch tensors: schedule, parameterisations, solvers, guidance, timestep grids."""

from distill_diffusion.core.guidance import (
    cfg,
    cfg_lcm,
    guidance_embedding,
    guidance_scale_to_lcm_w,
    lcm_w_to_guidance_scale,
    sample_lcm_w,
)
from distill_diffusion.core.parameterization import (
    PREDICTION_TYPES,
    SIGMA_DATA,
    consistency_function,
    consistency_scalings,
    from_x0_eps,
    to_x0_eps,
    x0_error_scale,
)
from distill_diffusion.core.schedule import NoiseSchedule, append_dims
from distill_diffusion.core.solvers import ddim_step, progressive_target_x0
from distill_diffusion.core.timesteps import (
    SPACINGS,
    previous_on_grid,
    skipping_step_grid,
    spaced_timesteps,
)

__all__ = [
    "PREDICTION_TYPES",
    "SIGMA_DATA",
    "SPACINGS",
    "NoiseSchedule",
    "append_dims",
    "cfg",
    "cfg_lcm",
    "consistency_function",
    "consistency_scalings",
    "ddim_step",
    "from_x0_eps",
    "guidance_embedding",
    "guidance_scale_to_lcm_w",
    "lcm_w_to_guidance_scale",
    "previous_on_grid",
    "progressive_target_x0",
    "sample_lcm_w",
    "skipping_step_grid",
    "spaced_timesteps",
    "to_x0_eps",
    "x0_error_scale",
]
