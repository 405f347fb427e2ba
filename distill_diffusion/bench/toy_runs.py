"""Training runs of the toy method benchmarks: a shipped tiny config pointed at the toy world, resumable, timed.

``bench progressive-toy`` and ``bench bksdm-toy`` train the config a user would (only paths, resuming and the
options a benchmark compares change) and record each stage's wall-clock seconds beside the run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class StageTimer:
    """An engine callback adding each step's wall-clock seconds to its stage, saved after every step."""

    def __init__(self, stages: list[Any], path: Path) -> None:
        self.ends = [sum(s.steps for s in stages[: i + 1]) for i in range(len(stages))]
        self.names = [s.name for s in stages]
        self.path = path
        self.seconds: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}
        self.last = time.perf_counter()

    def __call__(self, step: int, logs: dict[str, float]) -> None:
        now = time.perf_counter()
        name = self.names[next(i for i, end in enumerate(self.ends) if step <= end)]
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self.last, 1)
        self.last = now
        self.path.write_text(json.dumps(self.seconds, indent=2))


def toy_run_config(method: str, config_name: str, world: Any, run_dir: Path, method_options: dict[str, Any] | None = None) -> Any:
    """The :class:`RunConfig` of ``config_name`` on ``world``, writing (and resuming) ``run_dir``; ``method_options``
    override the config's method section."""
    from distill_diffusion.config import build_run_config, load_config
    from distill_diffusion.trainers.methods.registry import get_method_class

    config = load_config(config_name)
    config["model"]["pretrained_model_name_or_path"] = str(world.teacher)
    config["data"]["train_data_dir"] = str(world.data)
    config["train"].update(output_dir=str(run_dir), resume_from_checkpoint="latest")
    config["method"] = {**config.get("method", {}), **(method_options or {})}
    return build_run_config(method, get_method_class(method), config)


def train_timed(run: Any, stages: list[Any], run_dir: Path, done_file: str = "model_index.json") -> dict[str, float]:
    """Train ``run`` unless its export (``done_file``) is already there; returns the seconds of each stage
    (``stage_seconds.json``)."""
    from distill_diffusion.trainers.engine.build import train

    timer = StageTimer(stages, run_dir / "stage_seconds.json")
    if not (run_dir / done_file).is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        train(run, callbacks=[timer])
    return timer.seconds


def train_lcm_lora_timed(model: Path, data: Path, out: Path, lcm_steps: int | None) -> float:
    """The quickstart's toy LCM-LoRA recipe (``tiny/lcm_lora``) on ``model``, resumable; returns its training seconds."""
    from types import SimpleNamespace

    from distill_diffusion.quickstart import distil_lcm_lora

    out.mkdir(parents=True, exist_ok=True)
    timer = StageTimer([SimpleNamespace(name="train", steps=10**9)], out / "stage_seconds.json")
    distil_lcm_lora(Path(model), data, out, lcm_steps, callbacks=[timer])
    return sum(timer.seconds.values())
