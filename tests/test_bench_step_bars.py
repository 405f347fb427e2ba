"""The step bars every student meets (more steps never worse; no worse than the teacher's best training-free sampler)
and the training-free samplers they compare against."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distill_diffusion.bench.step_bars import (
    TRAINING_FREE,
    best_training_free,
    step_bar_lines,
    training_free_specs,
)


def row(pipeline: str, steps: int, fid: float) -> dict:
    return {"pipeline": pipeline, "steps": steps, "fid": fid}


ROWS = [row("teacher-ddim", 1, 60.0), row("teacher-trailing", 1, 3.5), row("teacher-dpm", 1, 9.0), row("teacher-unipc", 1, 8.0),
        row("teacher-ddim", 4, 1.5), row("teacher-trailing", 4, 0.6), row("teacher-dpm", 4, 0.55), row("teacher-unipc", 4, 0.7),
        row("ladd", 1, 0.7), row("ladd", 4, 0.9), row("round-1", 4, 0.5), row("round-2", 1, 0.8)]


def test_best_training_free_takes_the_lowest_fid_at_equal_steps():
    assert best_training_free(ROWS, 1)["pipeline"] == "teacher-trailing"
    assert best_training_free(ROWS, 4)["pipeline"] == "teacher-dpm"
    assert best_training_free(ROWS, 2) is None


def test_step_bar_lines_flag_a_student_worse_with_more_steps_and_behind_the_teacher():
    lines = step_bar_lines(ROWS, {"ladd": ["ladd"], "progressive": ["round-1", "round-2"]})
    ladd_1, ladd_4, prog_1, prog_4 = lines[2:]
    assert ladd_1.startswith("| ladd | 1 | 0.700 | - | - | teacher-trailing | 3.500 | yes |")
    # 4 steps (0.9) worse than 1 (0.7), and worse than DPM-Solver++ at 4 (0.55)
    assert ladd_4.startswith("| ladd | 4 | 0.900 | 0.700 | no | teacher-dpm | 0.550 | no |")
    # one student per round, read as one curve ordered by steps
    assert prog_1.startswith("| progressive | 1 | 0.800 | - |") and prog_4.startswith("| progressive | 4 | 0.500 | 0.800 | yes |")


def test_training_free_specs_cover_every_sampler():
    specs = training_free_specs("teacher", 2.0, (1, 2, 4))
    assert [s.name for s in specs] == list(TRAINING_FREE) and {s.sampler for s in specs} == set(TRAINING_FREE.values())
    assert all(s.steps == (1, 2, 4) and s.guidance_scale == 2.0 for s in specs)


@pytest.mark.parametrize("sampler", ["dpm-karras", "unipc"])
def test_training_free_samplers_sample_the_tiny_teacher_at_few_steps(tiny_pipeline_dir: Path, sampler: str):
    from distill_diffusion.pipelines import get_sampler, load_pipeline

    pipe = load_pipeline(str(tiny_pipeline_dir), sampler=sampler)
    for steps in (1, 2, 4):
        out = pipe("a red circle", output_type="pt", generator=torch.Generator().manual_seed(0),
                   **get_sampler(sampler).call_kwargs(steps=steps, guidance_scale=2.0)).images
        assert torch.isfinite(out).all()
