"""Known-answer tests for core.timesteps: LCD skipping-step grid and diffusers' inference spacings."""

import pytest
import torch
from diffusers import DDIMScheduler

from distill_diffusion.core import previous_on_grid, skipping_step_grid, spaced_timesteps
from distill_diffusion.errors import UserError


def test_skipping_step_grid_1000_50():
    grid = skipping_step_grid(1000, 50)
    assert grid.dtype == torch.long
    assert grid.tolist() == list(range(19, 1000, 20))
    assert skipping_step_grid(1000, 4).tolist() == [249, 499, 749, 999]


def test_previous_on_grid_clamps():
    t = torch.tensor([19, 39, 999, 5])
    assert previous_on_grid(t, 20).tolist() == [0, 19, 979, 0]


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7, 25, 50, 1000])
def test_spaced_timesteps_equal_ddim_set_timesteps(spacing, steps):
    ref = DDIMScheduler(num_train_timesteps=1000, steps_offset=1, timestep_spacing=spacing)
    ref.set_timesteps(steps)
    ours = spaced_timesteps(1000, steps, spacing, steps_offset=1)
    assert ours.dtype == torch.long
    assert ours.tolist() == ref.timesteps.tolist()


def test_known_grids():
    assert spaced_timesteps(1000, 4, "trailing").tolist() == [999, 749, 499, 249]
    assert spaced_timesteps(1000, 4, "leading", steps_offset=1).tolist() == [751, 501, 251, 1]
    assert spaced_timesteps(1000, 4, "linspace").tolist() == [999, 666, 333, 0]


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError, match="spacing"):
        spaced_timesteps(1000, 4, "uniform")
    with pytest.raises(UserError):
        spaced_timesteps(1000, 0)
    with pytest.raises(UserError):
        skipping_step_grid(1000, 2000)
