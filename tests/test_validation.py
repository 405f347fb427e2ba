"""Validation images during training: fixed prompts and seeds, the method's own call options, files written."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_lcm_math import components

from distill_diffusion.config import TrainConfig
from distill_diffusion.trainers.engine.validation import run_validation
from distill_diffusion.trainers.methods.base import MethodBase
from distill_diffusion.trainers.methods.lcm import LCM, LCMConfig


class _RecordingPipeline:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        pass

    def __call__(self, prompt: str, **kwargs: Any) -> Any:
        seed = kwargs.pop("generator").initial_seed()
        self.calls.append({"prompt": prompt, "seed": seed, **kwargs})
        return SimpleNamespace(images=[Image.fromarray(np.full((8, 8, 3), seed % 251, dtype=np.uint8))])


class _Method(MethodBase):
    def __init__(self, pipeline: Any, call_kwargs: dict[str, Any]) -> None:
        self.pipeline, self.call_kwargs = pipeline, call_kwargs

    def validation_pipeline(self) -> Any:
        return self.pipeline

    def validation_call_kwargs(self) -> dict[str, Any]:
        return self.call_kwargs


def _cfg(tmp_path: Path, **kw: Any) -> TrainConfig:
    return TrainConfig(output_dir=str(tmp_path), seed=3, validation_prompts=["a red circle", "a blue star"], **kw)


def test_prompts_seeds_and_the_methods_call_options_reach_the_pipeline(tmp_path: Path) -> None:
    pipe = _RecordingPipeline()
    cfg = _cfg(tmp_path, num_validation_images=2, validation_inference_steps=4)
    paths = run_validation(_Method(pipe, {"guidance_scale": 1.5}), cfg, SimpleNamespace(trackers=[]), step=7)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "validation/step-7/000-0.png", "validation/step-7/000-1.png", "validation/step-7/001-0.png", "validation/step-7/001-1.png",
    ]
    assert all(p.is_file() for p in paths)
    assert [(c["prompt"], c["seed"]) for c in pipe.calls] == [("a red circle", 3), ("a red circle", 4), ("a blue star", 1003), ("a blue star", 1004)]
    assert all(c["guidance_scale"] == 1.5 and c["num_inference_steps"] == 4 for c in pipe.calls)
    grid = np.asarray(Image.open(tmp_path / "validation" / "step-7" / "grid.png"))  # a row per prompt, a column per image
    assert grid.shape == (16, 16, 3)
    assert [int(grid[r, c, 0]) for r, c in ((0, 0), (0, 8), (8, 0), (8, 8))] == [3, 4, 1003 % 251, 1004 % 251]


def test_a_method_without_a_pipeline_writes_nothing(tmp_path: Path) -> None:
    assert run_validation(MethodBase(), _cfg(tmp_path), SimpleNamespace(trackers=[]), step=1) == []
    assert not (tmp_path / "validation").exists()


@pytest.mark.parametrize(("lora", "guidance"), [(True, 1.0), (False, 8.5)])
def test_lcm_validates_with_its_guidance_in_a_stock_pipeline(tmp_path: Path, lora: bool, guidance: float) -> None:
    method = LCM(components(), LCMConfig(lora=lora, lora_rank=4, lora_alpha=4, num_ddim_timesteps=10))
    assert method.validation_call_kwargs() == {"guidance_scale": guidance}
    assert type(method.validation_pipeline().scheduler).__name__ == "LCMScheduler"
    paths = run_validation(method, _cfg(tmp_path, validation_inference_steps=2), SimpleNamespace(trackers=[]), step=2)
    assert len(paths) == 2 and Image.open(paths[0]).size == (32, 32)
