"""Guidance-sweep curves and the "at equal FID" summary on made-up rows: interpolation, outside range, acc_* fields."""

from __future__ import annotations

import pytest
from PIL import Image

from distill_diffusion.eval.curves import (
    OUTSIDE,
    equal_fid_markdown,
    equal_fid_summary,
    guidance_curves,
    interpolate,
    metric_fields,
    write_curve_plots,
)


def _row(pipeline: str, steps: int, g: float, fid: float, clip: float, **extra: float) -> dict:
    return {"pipeline": pipeline, "steps": steps, "guidance_scale": g, "fid": fid, "clip_score": clip, **extra}


# The teacher at 50 steps: FID falls then rises with guidance, CLIP rises; at 4 steps it is only a distraction.
TEACHER = [
    _row("teacher", 50, 1.0, 20.0, 25.0, acc_shape=0.4),
    _row("teacher", 50, 3.0, 10.0, 29.0, acc_shape=0.8),
    _row("teacher", 50, 7.0, 14.0, 31.0, acc_shape=0.9),
    _row("teacher", 4, 1.0, 90.0, 10.0, acc_shape=0.1),
    _row("teacher", 4, 3.0, 80.0, 12.0, acc_shape=0.2),
]


def test_interpolate_is_linear_between_the_first_spanning_segment():
    points = [(20.0, 25.0), (10.0, 29.0), (14.0, 31.0)]
    assert interpolate(points, 15.0) == pytest.approx(27.0)  # halfway between FID 20 and 10
    assert interpolate(points, 12.0) == pytest.approx(28.2)  # spanned by both segments: the first (lower g) wins
    assert interpolate(points, 20.0) == 25.0 and interpolate(points, 14.0) == pytest.approx(27.4)
    assert interpolate(points, 9.9) is None and interpolate(points, 25.0) is None
    assert interpolate([(5.0, 1.0)], 5.0) is None  # one point is no curve
    assert interpolate([(5.0, 1.0), (5.0, 2.0)], 5.0) == 1.0  # flat FID: no division by zero


def test_equal_fid_summary_reads_the_teachers_largest_step_count():
    rows = [*TEACHER, _row("lcm", 4, 1.0, 15.0, 26.0, acc_shape=0.5), _row("lcm", 2, 1.0, 40.0, 20.0)]
    summary = equal_fid_summary(rows)
    assert [(e["pipeline"], e["steps"]) for e in summary] == [("lcm", 4), ("lcm", 2)]
    near, far = summary
    assert near["teacher_steps"] == 50 and near["teacher_guidance"] == pytest.approx(2.0)
    assert near["clip_score"] == 26.0 and near["teacher_clip_score"] == pytest.approx(27.0)
    assert near["acc_shape"] == 0.5 and near["teacher_acc_shape"] == pytest.approx(0.6) and near["note"] == ""
    assert far["teacher_clip_score"] is None and far["note"] == f"{OUTSIDE} (FID 10.00–20.00)"
    assert far["acc_shape"] is None  # the student row lacks the field: reported as missing, not invented
    md = equal_fid_markdown(summary)
    assert "## At equal FID (teacher at 50 steps" in md and "acc_shape (teacher)" in md
    assert "| lcm | 4 | 1.0 | 15.00 | 2.00 | 26.00 | 27.00 | 0.50 | 0.60 |  |" in md and OUTSIDE in md


def test_no_summary_without_a_teacher_sweep():
    single = [_row("teacher", 50, 7.5, 10.0, 30.0), _row("lcm", 4, 1.0, 12.0, 29.0)]
    assert equal_fid_summary(single) == [] and equal_fid_markdown([]) == ""
    assert equal_fid_summary([*TEACHER, _row("lcm", 4, 1.0, 15.0, 26.0)], teacher="nobody") == []


def test_metric_fields_are_clip_then_numeric_acc_fields():
    rows = [_row("a", 1, 1.0, 1.0, 2.0, acc_shape=0.5), {**_row("a", 1, 2.0, 1.0, 2.0), "acc_colour": 1, "acc_note": "x",
                                                        "acc_flag": True}]  # fmt: skip
    assert metric_fields(rows) == ["clip_score", "acc_shape", "acc_colour"]
    assert metric_fields([{"pipeline": "a", "clip_score": None}]) == []
    assert list(guidance_curves(TEACHER)) == [("teacher", 50), ("teacher", 4)]
    assert [r["guidance_scale"] for r in guidance_curves(TEACHER[::-1])[("teacher", 50)]] == [1.0, 3.0, 7.0]


def test_curve_plots_are_written_per_metric(tmp_path):
    meta = {"feature": "tiny", "num_images": 4, "resize": "none", "device": "cpu", "dtype": "float32"}
    files = write_curve_plots(TEACHER, meta, tmp_path)
    assert sorted(files) == ["fid_vs_acc_shape", "fid_vs_clip"]
    with Image.open(files["fid_vs_clip"]) as im:
        assert im.width > 300
    assert write_curve_plots([_row("teacher", 50, 7.5, 10.0, 30.0)], meta, tmp_path / "none") == {}
