"""Training runs of the toy method benchmarks: a shipped tiny config pointed at a toy teacher, resumable, timed.

``bench methods``, ``bench progressive-toy`` and ``bench bksdm-toy`` train the config a user would (only
paths, resuming and the options a benchmark compares change) on the SD teacher or, with ``--sdxl``, the toy SDXL
teacher (:class:`~distill_diffusion.toy.paths.ToyTeacher`), and record each stage's wall-clock seconds beside the run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from distill_diffusion.toy.paths import ToyTeacher


def load_toy_teacher(args: Any) -> tuple[ToyTeacher, Path, Path]:
    """The toy teacher of :func:`add_toy_run_options`' ``--sdxl`` (its world built or reused, the XL teacher too) and
    the results and run folders: the ones given, or the defaults (``_xl`` for the SDXL teacher)."""
    from distill_diffusion.toy.build import ensure_toy_world
    from distill_diffusion.toy.build_xl import ensure_toy_xl_teacher

    world = (ensure_toy_xl_teacher if args.sdxl else ensure_toy_world)(cache_dir=args.cache_dir)
    teacher = ToyTeacher(world, args.sdxl)
    output_dir, run_dir = args.toy_folders
    return (teacher, Path(args.output_dir) if args.output_dir else teacher.folder(output_dir),
            Path(args.run_dir) if args.run_dir else teacher.folder(run_dir))


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


def toy_run_config(method: str, config_name: str, teacher: ToyTeacher, run_dir: Path, method_options: dict[str, Any] | None = None) -> Any:
    """The :class:`RunConfig` of the SD config ``config_name`` (or its SDXL variant, :meth:`ToyTeacher.config`) on
    ``teacher``, writing (and resuming) ``run_dir``; ``method_options`` override the config's method section."""
    from distill_diffusion.config import build_run_config, load_config
    from distill_diffusion.trainers.methods.registry import get_method_class

    config = load_config(teacher.config(config_name))
    config["model"]["pretrained_model_name_or_path"] = str(teacher.path)
    config["data"]["train_data_dir"] = str(teacher.data)
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


def train_lcm_lora_timed(model: Path, teacher: ToyTeacher, out: Path, lcm_steps: int | None) -> float:
    """The quickstart's toy LCM-LoRA recipe (``tiny/lcm_lora``, or ``tiny/lcm_lora_xl`` for the SDXL teacher) on
    ``model`` (the teacher or a student of it), resumable; returns its training seconds."""
    from types import SimpleNamespace

    from distill_diffusion.quickstart import LCM_CONFIG, distil_lcm_lora

    out.mkdir(parents=True, exist_ok=True)
    timer = StageTimer([SimpleNamespace(name="train", steps=10**9)], out / "stage_seconds.json")
    distil_lcm_lora(Path(model), teacher.data, out, lcm_steps, callbacks=[timer], config_name=teacher.config(LCM_CONFIG))
    return sum(timer.seconds.values())
