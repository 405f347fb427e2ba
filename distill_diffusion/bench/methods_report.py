"""The report of ``bench methods``: one table of every student beside the teacher's best training-free sampler, the
FID-vs-steps plot (a line per student), the FID-vs-accuracy plot (the teacher's guidance curve at 50 steps, every student
against it) and one grid (rows: the teacher and each student; columns: steps).

A student's row says its FID over the best training-free sampler's at the same step count (DDIM leading or trailing,
DPM-Solver++ 2M Karras, UniPC; :mod:`~distill_diffusion.bench.step_bars`): below 1 the training bought something at
that count, above 1 the user is better off with the teacher and a good sampler.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from distill_diffusion.bench.step_bars import TRAINING_FREE, best_training_free, step_bar_lines

Row = Mapping[str, Any]
#: The teacher's 50-step row: the reference every toy result is read against (README, docs).
REFERENCE_STEPS = 50
ACCURACY = "acc_shape"
TILE = 2  # a grid cell shows TILE × TILE images (the same prompts and seeds in every cell)


def student_rows(rows: Sequence[Row], info: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each student's rows, relabelled with the student's name (a progressive student's rounds join one line)."""
    owner = {p: name for name, i in info.items() for p in i["pipelines"]}
    return [{**r, "pipeline": owner[r["pipeline"]]} for r in rows if r["pipeline"] in owner]


def teacher_rows(rows: Sequence[Row], guidance: float) -> list[Row]:
    """The teacher's rows at the benchmark's guidance (the sweep's other scales only go to the accuracy plot)."""
    return [r for r in rows if (r["pipeline"] in TRAINING_FREE or r["pipeline"] == "teacher") and r["guidance_scale"] == guidance]


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def table_lines(rows: Sequence[Row], info: Mapping[str, Mapping[str, Any]], guidance: float) -> list[str]:
    """The one table: a line per (row, steps), teacher first, with the best training-free FID at the same count."""
    header = ("| method | row | sampler | steps | FID | best training-free (FID) | × it | CLIP | shape | colour | background "
              "| s / image | training min | trainable params |")  # fmt: skip
    lines = [header, "|" + "---|" * 14]
    for r in sorted(teacher_rows(rows, guidance), key=lambda r: (r["pipeline"] != "teacher", r["pipeline"], r["steps"])):
        lines.append(_line("teacher", r, rows, None))
    owner = {p: name for name, i in info.items() for p in i["pipelines"]}
    for r in (r for r in rows if r["pipeline"] in owner):
        lines.append(_line(info[owner[r["pipeline"]]]["method"], r, rows, info[owner[r["pipeline"]]]))
    return lines


def _line(method: str, r: Row, rows: Sequence[Row], student: Mapping[str, Any] | None) -> str:
    best = best_training_free(rows, r["steps"])
    ratio = r["fid"] / best["fid"] if best and r.get("fid") is not None and best["fid"] else None
    best_cell = f"{best['pipeline']} ({best['fid']:.2f})" if best else "–"
    params = f"{student['trainable_parameters'] / 1e6:.2f} M" if student else "–"
    minutes = _fmt(student["training_minutes"], ".1f") if student else "–"
    return (f"| {method} | {r['pipeline']} | {r['sampler']} | {r['steps']} | {_fmt(r.get('fid'), '.3f')} | {best_cell} | "
            f"{_fmt(ratio, '.2f')} | {_fmt(r.get('clip_score'), '.1f')} | {_fmt(r.get('acc_shape'), '.3f')} | "
            f"{_fmt(r.get('acc_colour'), '.3f')} | {_fmt(r.get('acc_background'), '.3f')} | {_fmt(r.get('seconds_per_image'), '.4f')} | "
            f"{minutes} | {params} |")  # fmt: skip


def bar_lines(rows: Sequence[Row], info: Mapping[str, Mapping[str, Any]], students: Mapping[str, Any], guidance: float) -> list[str]:
    """The toy bars table: each student's FID and CLIP at the steps of its ``bars`` (a
    :class:`~distill_diffusion.trainers.methods.registry.ToyStudent`'s) against the teacher's at 50 steps; at its
    ``best_at`` counts its FID must also beat every other student's."""
    teacher = next((r for r in rows if r["pipeline"] == "teacher" and r["steps"] == REFERENCE_STEPS and r["guidance_scale"] == guidance), None)
    if teacher is None:
        return []
    lines = ["| student | steps | FID | FID / teacher | bar | CLIP / teacher | bar | met |", "|---|---|---|---|---|---|---|---|"]
    mine = student_rows(rows, info)
    for name, student in students.items():
        for steps, fid_bar, clip_bar in student.bars:
            row = next((r for r in mine if r["pipeline"] == name and r["steps"] == steps and r.get("fid") is not None), None)
            if row is None:
                continue
            fid, clip = row["fid"] / teacher["fid"], row["clip_score"] / teacher["clip_score"]
            met = fid <= fid_bar and (clip_bar is None or clip >= clip_bar)
            if steps in student.best_at:
                met = met and all(row["fid"] < r["fid"] for r in mine if r["steps"] == steps and r["pipeline"] != name and r.get("fid") is not None)
            lines.append(f"| {name} | {steps} | {row['fid']:.3f} | {fid:.2f} | ≤ {fid_bar:g}× | {clip:.2f} | "
                         f"{f'≥ {clip_bar:g}×' if clip_bar else '–'} | {'yes' if met else 'no'} |")
    return lines if len(lines) > 2 else []


def fid_by_steps_lines(rows: Sequence[Row], info: Mapping[str, Mapping[str, Any]], guidance: float, steps: Sequence[int] = (1, 2, 4, 8)) -> list[str]:
    """The short table: FID at each step count, a line per student and one for the best training-free sampler."""
    lines = ["| | " + " | ".join(f"{k} step" + ("s" if k > 1 else "") for k in steps) + " | training min |", "|---|" + "---|" * (len(steps) + 1)]
    best = [best_training_free(rows, k) for k in steps]
    lines.append("| teacher, best training-free sampler | " + " | ".join(f"{b['fid']:.2f} ({b['pipeline'].removeprefix('teacher-')})" if b else "–" for b in best) + " | – |")
    mine = student_rows(rows, info)
    for name, i in info.items():
        cells = [next((f"{r['fid']:.2f}" for r in mine if r["pipeline"] == name and r["steps"] == k and r.get("fid") is not None), "–") for k in steps]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {i['training_minutes']:.1f} |")
    return lines


def plot_fid_vs_steps(rows: Sequence[Row], info: Mapping[str, Mapping[str, Any]], guidance: float, meta: Mapping[str, Any], path: Path) -> Path:
    """FID against steps on log axes: a line per student, the teacher's best training-free sampler at each count (black)
    and its DDIM (grey), the teacher's 50 steps as a dotted line."""
    from distill_diffusion.eval.report import pyplot, save_figure

    fig, ax = pyplot().subplots(figsize=(8, 5))
    steps = sorted({r["steps"] for r in rows if r["steps"] <= 8})
    best = [(k, b["fid"]) for k in steps if (b := best_training_free(rows, k))]
    ax.plot(*zip(*best), "k-s", linewidth=2.5, label="teacher, best training-free sampler")
    ddim = sorted((r["steps"], r["fid"]) for r in rows if r["pipeline"] == "teacher-ddim" and r["steps"] <= 8)
    if ddim:
        ax.plot(*zip(*ddim), color="0.6", marker="s", label="teacher, DDIM")
    reference = [r for r in rows if r["pipeline"] == "teacher" and r["steps"] == REFERENCE_STEPS and r["guidance_scale"] == guidance]
    if reference:
        ax.axhline(reference[0]["fid"], color="k", linestyle=":", label=f"teacher, {REFERENCE_STEPS} steps")
    cmap, mine = pyplot().get_cmap("tab10"), student_rows(rows, info)
    for i, name in enumerate(info):
        points = sorted((r["steps"], r["fid"]) for r in mine if r["pipeline"] == name and r["steps"] <= 8 and r.get("fid") is not None)
        if points:
            ax.plot(*zip(*points), marker="os^vD<>p*h"[i % 10], color=cmap(i % 10), label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(steps)
    ax.set_xticklabels([str(k) for k in steps])
    ax.set_xlabel("sampling steps")
    ax.set_ylabel(f"FID ({meta.get('feature')}, N={meta.get('num_images')}) ↓")
    ax.set_title("FID vs steps: every student and the teacher's best sampler")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, dict(meta), path)


def plot_fid_vs_accuracy(rows: Sequence[Row], info: Mapping[str, Mapping[str, Any]], meta: Mapping[str, Any], path: Path) -> Path | None:
    """FID against shape accuracy: the teacher's 50-step guidance curve, and every student's rows as points marked with
    their step counts (a student left of the curve follows prompts less than the teacher at its FID)."""
    from distill_diffusion.eval.report import pyplot, save_figure

    curve = sorted((r for r in rows if r["pipeline"] == "teacher" and r.get(ACCURACY) is not None), key=lambda r: r["guidance_scale"])
    if not curve:
        return None
    fig, ax = pyplot().subplots(figsize=(7, 5))
    ax.plot([r[ACCURACY] for r in curve], [r["fid"] for r in curve], "k-o", label=f"teacher, {REFERENCE_STEPS} steps, guidance sweep")
    for r in curve:
        ax.annotate(f"g={r['guidance_scale']:g}", (r[ACCURACY], r["fid"]), xytext=(3, 3), textcoords="offset points", fontsize=6)
    mine = student_rows(rows, info)
    cmap = pyplot().get_cmap("tab10")
    for i, name in enumerate(info):
        points = sorted((r for r in mine if r["pipeline"] == name and r.get(ACCURACY) is not None), key=lambda r: r["steps"])
        colour = cmap(i % 10)
        ax.plot([r[ACCURACY] for r in points], [r["fid"] for r in points], marker="os^vD<>p*h"[i % 10], linestyle=":", color=colour, label=name)
        for r in points:
            ax.annotate(str(r["steps"]), (r[ACCURACY], r["fid"]), xytext=(3, -8), textcoords="offset points", fontsize=6, color=colour)
    ax.set_yscale("log")
    ax.set_xlabel("shape accuracy (toy classifier) ↑")
    ax.set_ylabel(f"FID ({meta.get('feature')}, N={meta.get('num_images')}) ↓")
    ax.set_title("FID vs prompt faithfulness (numbers: sampling steps)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, dict(meta), path)


def write_grid(rows: Sequence[Row], info: Mapping[str, Mapping[str, Any]], guidance: float, out: Path, steps: Sequence[int] = (1, 2, 4, 8),
               cell: int = 128) -> Path:  # fmt: skip
    """One grid: a line for the teacher's best training-free sampler at each count and one per student, a column per step
    count; each cell shows the first TILE × TILE images (same prompts and seeds everywhere)."""
    from PIL import Image, ImageDraw

    from distill_diffusion.eval.generate import read_manifest

    lines = [("teacher (best training-free)", [_folder(out, best_training_free(rows, k)) for k in steps])]
    mine = student_rows(rows, info)
    for name in info:
        by_steps = {r["steps"]: r for r in mine if r["pipeline"] == name}
        lines.append((name, [_folder(out, by_steps.get(k), name, info) for k in steps]))
    label, header = 170, 24
    grid = Image.new("RGB", (label + cell * len(steps), header + cell * len(lines)), "white")
    draw = ImageDraw.Draw(grid)
    for c, k in enumerate(steps):
        draw.text((label + c * cell + 4, 6), f"{k} step" + ("s" if k > 1 else ""), fill="black")
    for r, (name, folders) in enumerate(lines):
        draw.text((4, header + r * cell + 4), name, fill="black")
        for c, folder in enumerate(folders):
            if folder is None or not (folder / "manifest.jsonl").is_file():
                continue
            for j, entry in enumerate(read_manifest(folder)[: TILE * TILE]):
                with Image.open(folder / entry["file_name"]) as im:
                    image = im.convert("RGB").resize((cell // TILE, cell // TILE), Image.Resampling.NEAREST)
                grid.paste(image, (label + c * cell + (j % TILE) * (cell // TILE), header + r * cell + (j // TILE) * (cell // TILE)))
    path = out / "grid_methods.png"
    grid.save(path)
    return path


def _folder(out: Path, row: Row | None, name: str | None = None, info: Mapping[str, Any] | None = None) -> Path | None:
    """The images folder of a result row (``bench quality`` layout: ``images/<pipeline>/steps_<k>[_g<G>]``)."""
    if row is None:
        return None
    pipelines = info[name]["pipelines"] if info and name else [row["pipeline"]]
    for pipeline in pipelines:
        for folder in sorted((out / "images" / pipeline).glob(f"steps_{row['steps']:03d}*")):
            return folder
    return None


def write_methods_report(rows: Sequence[Row], info: Mapping[str, Mapping[str, Any]], out: Path, guidance: float,
                         meta: Mapping[str, Any] | None = None, bars: Mapping[str, Any] | None = None) -> dict[str, Path]:  # fmt: skip
    """``methods.md`` (both tables, the step bars and, with ``bars`` (student name → its ``ToyStudent``), the toy quality
    bars), ``fid_vs_steps.png``, ``fid_vs_accuracy.png``, ``grid_methods.png``."""
    import json

    meta = meta or json.loads((out / "results.json").read_text())["meta"]
    reference = next((r for r in rows if r["pipeline"] == "teacher" and r["steps"] == REFERENCE_STEPS and r["guidance_scale"] == guidance), None)
    lines = [f"N = {meta.get('num_images')} images per row, feature {meta.get('feature')}, guidance {guidance:g} for the teacher, seed {meta.get('seed')}."]
    if reference:
        lines.append(f"The teacher at {REFERENCE_STEPS} DDIM steps: FID {reference['fid']:.3f}, CLIP {reference['clip_score']:.1f}, "
                     f"shape accuracy {reference.get('acc_shape', float('nan')):.3f}.")  # fmt: skip
    lines += ["", "## FID at 1-8 steps", "", *fid_by_steps_lines(rows, info, guidance), "", "## Every row", "",
              *table_lines(rows, info, guidance), "", "## Step bars", "",
              *step_bar_lines(rows, {name: i["pipelines"] for name, i in info.items()}), ""]  # fmt: skip
    toy_bars = bar_lines(rows, info, bars or {}, guidance)
    if toy_bars:
        lines += ["## Toy bars", "", f"Against the teacher at {REFERENCE_STEPS} DDIM steps and guidance {guidance:g}.", "", *toy_bars, ""]
    md = out / "methods.md"
    md.write_text("\n".join(lines))
    files = {"methods": md, "markdown": md, "fid_vs_steps": plot_fid_vs_steps(rows, info, guidance, meta, out / "fid_vs_steps.png"),
             "grid_methods": write_grid(rows, info, guidance, out)}  # fmt: skip
    accuracy = plot_fid_vs_accuracy(rows, info, meta, out / "fid_vs_accuracy.png")
    if accuracy is not None:
        files["fid_vs_accuracy"] = accuracy
    return files
