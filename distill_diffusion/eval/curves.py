"""Guidance sweeps in ``bench quality``: FID-vs-CLIP (and FID-vs-``acc_*``) curves and the "at equal FID" summary.

A distilled student can match the teacher's FID at one guidance scale and still follow prompts less
faithfully, so students are compared with the teacher along its curve: for each student row, the teacher's
curve (its largest step count, across its guidance scales) is interpolated at the student's FID, and the
student's CLIP score (and prompt accuracies) is reported next to the teacher's interpolated value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distill_diffusion.eval.report import _fmt, pyplot, save_figure

Row = dict[str, Any]
OUTSIDE = "outside the teacher's range"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def metric_fields(rows: Sequence[Row]) -> list[str]:
    """``clip_score`` (when measured) then every numeric ``acc_*`` field, in first-seen order.

    Fields are found by name, not listed, so prompt-accuracy columns added by other scorers need no edit here.
    """
    names = dict.fromkeys(k for r in rows for k, v in r.items() if k.startswith("acc_") and _number(v))
    return (["clip_score"] if any(_number(r.get("clip_score")) for r in rows) else []) + list(names)


def guidance_curves(rows: Sequence[Row]) -> dict[tuple[str, int], list[Row]]:
    """``(pipeline, steps)`` → its rows in increasing guidance, for those sampled at two or more guidance scales."""
    groups: dict[tuple[str, int], list[Row]] = {}
    for r in rows:
        groups.setdefault((r["pipeline"], r["steps"]), []).append(r)
    return {
        key: sorted(group, key=lambda r: r["guidance_scale"])
        for key, group in groups.items()
        if len({r["guidance_scale"] for r in group}) > 1
    }


def interpolate(points: Sequence[tuple[float, float]], x: float) -> float | None:
    """``y`` at ``x`` along the polyline ``points`` (in guidance order); ``None`` when no segment spans ``x``.

    Linear between the two consecutive points whose x-range holds ``x``. FID is often not monotonic in
    guidance (it falls, then rises), so several segments may span ``x``: the first, in guidance order, wins.
    """
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if min(x0, x1) <= x <= max(x0, x1):
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def _teacher_curve(rows: Sequence[Row], teacher: str) -> list[Row]:
    """The teacher's reference curve: its largest step count sampled at several guidance scales, with FID."""
    curves = {steps: c for (name, steps), c in guidance_curves(rows).items() if name == teacher}
    if not curves:
        return []
    return [r for r in curves[max(curves)] if _number(r.get("fid"))]


def equal_fid_summary(rows: Sequence[Row], teacher: str = "teacher") -> list[Row]:
    """One entry per student row (every pipeline but ``teacher``): its metrics and the teacher's at equal FID.

    Empty unless the teacher swept guidance (two or more scales with FID at its largest step count), so a
    single-guidance benchmark's output is unchanged. ``teacher_<metric>`` is ``None`` and ``note`` says
    :data:`OUTSIDE` when the student's FID lies outside the teacher's curve.
    """
    curve = _teacher_curve(rows, teacher)
    if len(curve) < 2:
        return []
    fids, metrics = [r["fid"] for r in curve], metric_fields(rows)
    out = []
    for r in rows:
        if r["pipeline"] == teacher or not _number(r.get("fid")):
            continue
        entry = {"pipeline": r["pipeline"], "steps": r["steps"], "guidance_scale": r["guidance_scale"], "fid": r["fid"],
                 "teacher_steps": curve[0]["steps"],
                 "teacher_guidance": interpolate(list(zip(fids, [t["guidance_scale"] for t in curve])), r["fid"])}  # fmt: skip
        for m in metrics:
            points = [(t["fid"], t[m]) for t in curve if _number(t.get(m))]
            entry[m], entry[f"teacher_{m}"] = r.get(m), interpolate(points, r["fid"])
        entry["note"] = "" if entry["teacher_guidance"] is not None else f"{OUTSIDE} (FID {min(fids):.2f}–{max(fids):.2f})"
        out.append(entry)
    return out


def equal_fid_markdown(summary: Sequence[Row]) -> str:
    """A markdown section: each student's metrics beside the teacher's at the same FID ("" when empty)."""
    if not summary:
        return ""
    metrics = [k[len("teacher_"):] for k in summary[0] if k.startswith("teacher_") and k not in ("teacher_steps", "teacher_guidance")]
    head = ["pipeline", "steps", "guidance", "FID", "teacher g"] + [f"{m} ({who})" for m in metrics for who in ("student", "teacher")]
    head.append("note")
    lines = [
        "",
        f"## At equal FID (teacher at {summary[0]['teacher_steps']} steps, interpolated linearly between guidance scales)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for e in summary:
        cells = [e["pipeline"], str(e["steps"]), _fmt(e["guidance_scale"], 1), _fmt(e["fid"]), _fmt(e["teacher_guidance"])]
        cells += [_fmt(e[key]) for m in metrics for key in (m, f"teacher_{m}")] + [e["note"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curve(rows: Sequence[Row], meta: dict[str, Any], metric: str, path: str | Path) -> Path | None:
    """PNG: FID against ``metric``, a line per (pipeline, steps) through its guidance scales, each point marked g.

    ``None`` (nothing written) when no pipeline swept guidance with both FID and ``metric`` measured.
    """
    curves = {k: [r for r in c if _number(r.get("fid")) and _number(r.get(metric))] for k, c in guidance_curves(rows).items()}
    curves = {k: c for k, c in curves.items() if len(c) > 1}
    if not curves:
        return None
    fig, ax = pyplot().subplots(figsize=(6.5, 4.5))
    for i, ((name, steps), curve) in enumerate(curves.items()):
        xs, ys = [r[metric] for r in curve], [r["fid"] for r in curve]
        ax.plot(xs, ys, marker="o", color=f"C{i}", label=f"{name}, {steps} step" + ("s" if steps > 1 else ""))
        for r, x, y in zip(curve, xs, ys):
            ax.annotate(f"g={r['guidance_scale']:g}", (x, y), xytext=(3, 3), textcoords="offset points", fontsize=6)
    label = "CLIP score" if metric == "clip_score" else metric
    ax.set_xlabel(f"{label} ↑")
    ax.set_ylabel(f"FID ({meta.get('feature')}, N={meta.get('num_images')}) ↓")
    ax.set_title(f"FID vs {label} across guidance scales")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, meta, path)


def write_curve_plots(rows: Sequence[Row], meta: dict[str, Any], output_dir: str | Path) -> dict[str, Path]:
    """``fid_vs_clip.png`` and ``fid_vs_<acc_field>.png`` into ``output_dir``, for the metrics that have a curve."""
    files = {}
    for m in metric_fields(rows):
        stem = "fid_vs_clip" if m == "clip_score" else f"fid_vs_{m}"
        path = plot_curve(rows, meta, m, Path(output_dir) / f"{stem}.png")
        if path is not None:
            files[stem] = path
    return files
