"""Benchmark reports: CSV and JSON of the rows, a markdown table, and the FID-vs-steps / CLIP-vs-steps plot.

Every file carries the settings that make the numbers comparable (sample count, feature space, resize
policy, device, dtype): FID is biased upward at small N, so numbers are only comparable at equal N.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLUMNS = (
    "pipeline", "model", "lora", "sampler", "scheduler", "steps", "guidance_scale", "fid", "kid_mean", "kid_std",
    "clip_score", "seconds_per_image", "images_per_second", "num_images", "num_real", "feature", "resize",
)  # fmt: skip
#: Step counts above this are reference runs (teacher at 25/50): drawn as horizontal lines, not points.
LINE_MAX_STEPS = 16


def extra_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Fields of the rows beyond :data:`COLUMNS` (e.g. a prompt scorer's ``acc_*``), in first-seen order."""
    return [k for k in dict.fromkeys(k for r in rows for k in r) if k not in COLUMNS]


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """One row per (pipeline, steps), columns :data:`COLUMNS` then :func:`extra_columns` (missing values empty)."""
    path = Path(path)
    names = [*COLUMNS, *extra_columns(rows)]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=names, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in names})
    return path


def write_json(rows: Sequence[dict[str, Any]], meta: dict[str, Any], path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """``{"meta": {...settings...}, "rows": [...], **extra}`` (``extra``: further sections, e.g. ``equal_fid``)."""
    path = Path(path)
    body = {"meta": meta, "rows": list(rows), **(extra or {})}
    path.write_text(json.dumps(body, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f"{value:.{digits}f}" if numeric else str(value)


def markdown_table(rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    """A markdown table (pipeline, sampler, steps, guidance, FID, KID, CLIP, extra columns, s/image, images/s) with a
    settings line."""
    has_kid = any(r.get("kid_mean") is not None for r in rows)
    extra = extra_columns(rows)
    head = ["pipeline", "sampler", "steps", "guidance", "FID"] + (["KID ×1e3"] if has_kid else []) + [
        "CLIP", *extra, "s / image", "images / s"]  # fmt: skip
    real = f"real: {meta.get('num_real')}, feature {meta.get('feature')}" if meta.get("feature") else "no real set: no FID"
    lines = [
        f"N = {meta.get('num_images')} images ({real}), "
        f"resize {meta.get('resize')}, device {meta.get('device')}, dtype {meta.get('dtype')}, seed {meta.get('seed')}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for r in rows:
        kid = r.get("kid_mean")
        cells = [r["pipeline"], r.get("sampler", ""), str(r["steps"]), _fmt(r.get("guidance_scale"), 1), _fmt(r.get("fid"))]
        if has_kid:
            cells.append(_fmt(kid * 1e3 if kid is not None else None))
        cells += [_fmt(r.get("clip_score")), *(_fmt(r.get(k), 3) for k in extra)]
        cells += [_fmt(r.get("seconds_per_image"), 4), _fmt(r.get("images_per_second"), 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _quality_key(rows: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """Plot FID when every row has it; else KID (FID undefined at small N); else latency (no real set)."""
    if rows and all(r.get("fid") is not None for r in rows):
        return "fid", "FID"
    if any(r.get("kid_mean") is not None for r in rows):
        return "kid_mean", "KID"
    return "seconds_per_image", "seconds / image"


def series_names(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Each row's line in a plot against steps: its pipeline, plus ``g=G`` when that pipeline sweeps guidance."""
    scales: dict[str, set] = {}
    for r in rows:
        scales.setdefault(r["pipeline"], set()).add(r.get("guidance_scale"))
    return [r["pipeline"] + (f" g={r.get('guidance_scale'):g}" if len(scales[r["pipeline"]]) > 1 else "") for r in rows]


def _panel(ax: Any, rows: Sequence[dict[str, Any]], key: str, label: str) -> None:
    """One metric vs steps: a line per pipeline for steps ≤ LINE_MAX_STEPS, dashed lines for reference runs."""
    series = series_names(rows)
    names = list(dict.fromkeys(series))
    colours = {n: f"C{i}" for i, n in enumerate(names)}
    ticks = sorted({r["steps"] for r in rows if r["steps"] <= LINE_MAX_STEPS}) or [1]
    for name in names:
        mine = sorted((r for r, s in zip(rows, series) if s == name and r.get(key) is not None), key=lambda r: r["steps"])
        points = [(r["steps"], r[key]) for r in mine if r["steps"] <= LINE_MAX_STEPS]
        if points:
            ax.plot(*zip(*points), marker="o", color=colours[name], label=name)
        for i, r in enumerate(r for r in mine if r["steps"] > LINE_MAX_STEPS):
            ax.axhline(r[key], color=colours[name], linestyle=("--", ":", "-.")[i % 3], linewidth=1,
                       label=f"{name} @ {r['steps']} steps")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.set_xlabel("sampling steps")
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)


def plot_quality(rows: Sequence[dict[str, Any]], meta: dict[str, Any], path: str | Path) -> Path:
    """PNG: FID (or KID) vs steps on a log2 x-axis; a second panel CLIP score vs steps when measured."""
    key, label = _quality_key(rows)
    has_clip = any(r.get("clip_score") is not None for r in rows)
    fig, axes = pyplot().subplots(1, 2 if has_clip else 1, figsize=(11 if has_clip else 6, 4), squeeze=False)
    feature = f"{meta.get('feature')}, " if key != "seconds_per_image" else ""
    _panel(axes[0][0], rows, key, f"{label} ({feature}N={meta.get('num_images')}) ↓")
    axes[0][0].set_title(f"{label} vs steps")
    if has_clip:
        _panel(axes[0][1], rows, "clip_score", "CLIP score ↑")
        axes[0][1].set_title("CLIP score vs steps")
    return save_figure(fig, meta, path)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the headless Agg backend: never open a window, never need a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, meta: dict[str, Any], path: str | Path) -> Path:
    """Caption ``fig`` with the settings that make it comparable (resize, device, dtype), save it, close it."""
    fig.suptitle(f"resize {meta.get('resize')}, {meta.get('device')} {meta.get('dtype')}", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def write_report(rows: Sequence[dict[str, Any]], meta: dict[str, Any], output_dir: str | Path,
                 extra: dict[str, Any] | None = None, appendix: str = "") -> dict[str, Path]:  # fmt: skip
    """All four files into ``output_dir``: ``results.csv``, ``results.json``, ``results.md``, ``fid_vs_steps.png``.

    ``extra`` adds sections to ``results.json`` and ``appendix`` is markdown appended to ``results.md``.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "results.md"
    md.write_text(markdown_table(rows, meta) + appendix, encoding="utf-8")
    return {
        "csv": write_csv(rows, out / "results.csv"),
        "json": write_json(rows, meta, out / "results.json", extra),
        "markdown": md,
        "plot": plot_quality(rows, meta, out / "fid_vs_steps.png"),
    }
