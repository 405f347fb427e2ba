"""Bars every distilled student meets on the toy world, whatever its method: more steps never worse than fewer, and at
each step count no worse than the teacher's best training-free sampler at that count.

The training-free samplers are the teacher under DDIM with leading and trailing spacing (Song et al., arXiv:2010.02502;
trailing: Lin et al., arXiv:2305.08891, Table 2), DPM-Solver++ (2M) with Karras sigmas (Lu et al., arXiv:2211.01095;
Karras et al., arXiv:2206.00364) and UniPC (Zhao et al., arXiv:2302.04867), all at the student's guidance scale. A
student that loses to one of them at equal steps bought nothing with its training at that count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: The teacher's training-free samplers: pipeline name in the results → sampler.
TRAINING_FREE = {"teacher-ddim": "ddim", "teacher-trailing": "ddim-trailing", "teacher-dpm": "dpm-karras", "teacher-unipc": "unipc"}


def training_free_specs(teacher: str, guidance_scale: float, steps: Sequence[int]) -> list[Any]:
    """One ``PipelineSpec`` per training-free sampler of the teacher, at ``steps`` and ``guidance_scale``."""
    from distill_diffusion.bench.specs import PipelineSpec

    return [PipelineSpec(name, teacher, sampler=sampler, guidance_scale=guidance_scale, steps=tuple(steps))
            for name, sampler in TRAINING_FREE.items()]


def best_training_free(rows: Sequence[Mapping[str, Any]], steps: int) -> Mapping[str, Any] | None:
    """The training-free teacher row with the lowest FID at ``steps`` (None when none was scored)."""
    candidates = [r for r in rows if r["pipeline"] in TRAINING_FREE and r["steps"] == steps and r.get("fid") is not None]
    return min(candidates, key=lambda r: r["fid"], default=None)


def step_bar_lines(rows: Sequence[Mapping[str, Any]], students: Mapping[str, Sequence[str]]) -> list[str]:
    """A markdown table of both bars for each student; ``students`` maps a student's name to the result pipelines that
    hold its rows (one for a student sampled at several counts, one per round for progressive distillation)."""
    lines = ["| student | steps | FID | FID at fewer steps (best) | never worse with more steps | best training-free teacher "
             "| its FID | no worse than it |", "|---|---|---|---|---|---|---|---|"]
    for student, pipelines in students.items():
        own = sorted((r for r in rows if r["pipeline"] in pipelines and r.get("fid") is not None), key=lambda r: r["steps"])
        for i, row in enumerate(own):
            fewer = min((r["fid"] for r in own[:i]), default=None)
            monotone = "-" if fewer is None else ("yes" if row["fid"] <= fewer else "no")
            best = best_training_free(rows, row["steps"])
            beats = "-" if best is None else ("yes" if row["fid"] <= best["fid"] else "no")
            lines.append(f"| {student} | {row['steps']} | {row['fid']:.3f} | {_number(fewer)} | {monotone} | "
                         f"{best['pipeline'] if best else '-'} | {_number(best['fid'] if best else None)} | {beats} |")
    return lines


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
