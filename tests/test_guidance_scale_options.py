"""The guidance a student is distilled for is given as diffusers' guidance_scale (LCM, progressive; docs/methods.md).

- every shipped config hands the math the LCM weight w = guidance_scale − 1 that its former w_min/w_max gave, exactly, in
  float64 and float32;
- configs, saved runs (config.yaml) and command lines with the former names are read once as guidance_scale = w + 1,
  with one warning line per name; both names at once is a one-line error;
- ``train lcm --help`` and ``train progressive --help`` speak guidance_scale, never a w range.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from distill_diffusion.cli import main
from distill_diffusion.config import build_run_config, load_config
from distill_diffusion.core import guidance_scale_to_lcm_w, sample_lcm_w
from distill_diffusion.errors import UserError
from distill_diffusion.trainers.methods.lcm import LCM, LCMConfig
from distill_diffusion.trainers.methods.progressive import Progressive, ProgressiveConfig

#: The LCM weight w in user-facing text (a range or a value).
W_IN_TEXT = re.compile(r"\bw_(min|max)\b|\bw\s*(=|∈|in\b|~)")

#: Each shipped config's former (w_min, w_max); tiny/progressive gave only w_min (its w_max was the default 4).
FORMER_W = {
    "lcm_lora_sd15": (LCM, 5.0, 15.0),
    "lcm_full_sd15": (LCM, 5.0, 15.0),
    "progressive_sd15": (Progressive, 1.0, 7.0),
    "tiny/lcm_lora": (LCM, 1.0, 1.0),
    "tiny/progressive": (Progressive, 1.0, 4.0),
}


@pytest.mark.parametrize("name", FORMER_W)
def test_every_shipped_config_gives_the_math_its_former_w_exactly(name: str) -> None:
    method_cls, *former = FORMER_W[name]
    config = build_run_config(method_cls.__name__.lower(), method_cls, load_config(name)).method_config
    scales = (config.guidance_scale_min, config.guidance_scale_max)
    assert [guidance_scale_to_lcm_w(g) for g in scales] == former  # float64, as the configs hold them
    for g, w in zip(scales, former):
        assert torch.equal(guidance_scale_to_lcm_w(torch.tensor(g, dtype=torch.float32)), torch.tensor(w, dtype=torch.float32))
    torch.manual_seed(3)
    new = sample_lcm_w(64, *scales, "cpu")
    torch.manual_seed(3)  # the former draw from w_min, w_max, bit for bit
    assert torch.equal(new, torch.rand(64) * (former[1] - former[0]) + former[0])


@pytest.mark.parametrize("config_cls", [LCMConfig, ProgressiveConfig])
def test_former_names_in_a_config_are_read_once_as_guidance_scale(capsys, config_cls: type) -> None:
    run = build_run_config("m", config_cls, {"method": {"w_min": 3.0, "w_max": 7.5}})
    assert (run.method_config.guidance_scale_min, run.method_config.guidance_scale_max) == (4.0, 8.5)
    assert capsys.readouterr().err.splitlines() == [
        "warning: method.w_min is deprecated; read as method.guidance_scale_min 4.0 (guidance_scale = w + 1); "
        "write guidance_scale_min: 4.0 instead",
        "warning: method.w_max is deprecated; read as method.guidance_scale_max 8.5 (guidance_scale = w + 1); "
        "write guidance_scale_max: 8.5 instead",
    ]
    assert run.to_dict() == build_run_config("m", config_cls, {"method": {"guidance_scale_min": 4, "guidance_scale_max": 8.5}}).to_dict()


def test_a_saved_config_yaml_with_the_former_names_reloads_as_the_same_run(capsys, tmp_path: Path) -> None:
    """What a resume reads: an older run's config.yaml (``--config run/config.yaml``)."""
    run = build_run_config("lcm", LCM, load_config("tiny/lcm_lora"), [("loss_type", "l2")])
    saved = run.to_dict()
    method = {k: v for k, v in saved["method"].items() if not k.startswith("guidance_scale_m")}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**saved, "method": {**method, "w_min": 1.0, "w_max": 1.0}}, sort_keys=False))
    again = build_run_config("lcm", LCM, load_config(path))
    assert again.to_dict() == saved
    assert len(capsys.readouterr().err.splitlines()) == 2


def test_former_names_on_the_command_line_and_a_new_name_over_a_former_one(capsys) -> None:
    run = build_run_config("lcm", LCM, {}, [("method.w_max", "3"), ("w_min", "1")])
    assert (run.method_config.guidance_scale_min, run.method_config.guidance_scale_max) == (2.0, 4.0)
    run = build_run_config("lcm", LCM, {"method": {"w_min": 1.0, "w_max": 9.0}}, [("guidance_scale_min", "4")])
    assert (run.method_config.guidance_scale_min, run.method_config.guidance_scale_max) == (4.0, 10.0)
    assert capsys.readouterr().err.count("is deprecated") == 4


@pytest.mark.parametrize(("config", "overrides"), [
    ({"method": {"w_min": 1.0, "guidance_scale_min": 2.0}}, []),
    ({}, [("method.w_max", "4"), ("guidance_scale_max", "5")]),
])
def test_a_former_and_a_new_name_together_are_one_error_before_any_warning(capsys, config: dict, overrides: list) -> None:
    with pytest.raises(UserError, match=r"method\.w_m.. and method\.guidance_scale_m.. are both given \(guidance_scale = w \+ 1\); "
                                        r"keep only method\.guidance_scale_m..$"):
        build_run_config("progressive", Progressive, config, overrides)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("method", ["lcm", "progressive"])
def test_help_speaks_guidance_scale_and_no_w_range(capsys, method: str) -> None:
    try:
        code = main(["train", method, "--help"])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr().out
    assert code == 0
    assert "--method.guidance_scale_min" in out and "--method.guidance_scale_max" in out
    assert not W_IN_TEXT.search(out), W_IN_TEXT.search(out)
