"""Config building and the CLI's user-error contract: one line naming problem and fix, exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from distill_diffusion.cli import main
from distill_diffusion.config import TrainConfig, build_run_config, parse_overrides
from distill_diffusion.errors import UserError
from distill_diffusion.trainers.methods.finetune import FineTuneConfig


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_overrides_dotted_bare_and_flags() -> None:
    pairs = parse_overrides(["--train.learning_rate", "3e-4", "--mixed_precision=bf16", "--gradient_checkpointing", "--seed", "7"])
    run = build_run_config("finetune", FineTuneConfig, {"train": {"max_train_steps": 5}}, pairs)
    assert run.train.learning_rate == pytest.approx(3e-4)
    assert run.train.mixed_precision == "bf16"
    assert run.train.gradient_checkpointing is True
    assert run.train.seed == 7 and run.train.max_train_steps == 5


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    import yaml

    run = build_run_config("finetune", FineTuneConfig, {}, [("snr_gamma", "5"), ("data.resolution", "64")])
    path = run.save(tmp_path / "config.yaml")
    again = build_run_config("finetune", FineTuneConfig, yaml.safe_load(path.read_text()))
    assert again.to_dict() == run.to_dict()
    assert again.method_config.snr_gamma == 5.0


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ([("train.mixed_precision", "fp8")], "use one of: no, fp16, bf16"),
        ([("train.learning_rate", "-1")], "train.learning_rate"),
        ([("train.max_train_steps", "ten")], "not a number"),
        ([("data.resolution", "30")], "multiple of 8"),
        ([("no_such_option", "1")], "unknown option --no_such_option"),
        ([("train.no_such", "1")], "unknown train option(s) no_such"),
        ([("bogus.x", "1")], "unknown section 'bogus'"),
        ([("method.snr_gamma", "0")], "snr_gamma must be > 0"),
    ],
)
def test_bad_values_are_user_errors(overrides: list[tuple[str, str]], needle: str) -> None:
    with pytest.raises(UserError, match=None) as info:
        build_run_config("finetune", FineTuneConfig, {}, overrides)
    assert needle in str(info.value)


def test_train_config_validates_on_construction() -> None:
    with pytest.raises(UserError, match="lr_scheduler"):
        TrainConfig(lr_scheduler="warp")


def test_unknown_method(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "train", "no_such_method")
    assert_user_error(code, err, "unknown method 'no_such_method'", "finetune")


def test_missing_config_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "train", "finetune", "--config", str(tmp_path / "nope.yaml"))
    assert_user_error(code, err, "does not exist", "--config")


def test_malformed_yaml(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    code, _, err = run_cli(capsys, "train", "finetune", "--config", str(bad))
    assert_user_error(code, err, "not valid YAML")


def test_bad_value_from_cli(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "train", "finetune", "--mixed_precision", "fp8")
    assert_user_error(code, err, "mixed_precision", "use one of")


def test_missing_teacher_path(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "train", "finetune", "--pretrained_model_name_or_path", str(tmp_path / "missing"),
                           "--train_data_dir", str(tmp_path), "--output_dir", str(tmp_path / "out"))
    assert_user_error(code, err, str(tmp_path / "missing"))
    assert not (tmp_path / "out").exists()  # nothing written for a run that cannot start


def test_no_teacher_given(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "train", "finetune", "--output_dir", str(tmp_path / "out"))
    assert_user_error(code, err, "--pretrained_model_name_or_path")


def test_missing_dataset_folder(capsys: pytest.CaptureFixture[str], tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "train", "finetune", "--pretrained_model_name_or_path", str(tiny_pipeline_dir),
                           "--train_data_dir", str(tmp_path / "nodata"), "--output_dir", str(tmp_path / "out"))
    assert_user_error(code, err, str(tmp_path / "nodata"))
    assert not (tmp_path / "out").exists()


def test_resume_from_missing_checkpoint(capsys: pytest.CaptureFixture[str], tiny_pipeline_dir: Path, toy_data_dir: Path, tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "train", "finetune", "--pretrained_model_name_or_path", str(tiny_pipeline_dir),
                           "--train_data_dir", str(toy_data_dir), "--output_dir", str(tmp_path / "out"),
                           "--resume_from_checkpoint", "checkpoint-77")
    assert_user_error(code, err, "checkpoint-77", "latest")


def test_fp16_without_gpu(capsys: pytest.CaptureFixture[str], tiny_pipeline_dir: Path, toy_data_dir: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("machine has a GPU")
    code, _, err = run_cli(capsys, "train", "finetune", "--pretrained_model_name_or_path", str(tiny_pipeline_dir),
                           "--train_data_dir", str(toy_data_dir), "--mixed_precision", "fp16")
    assert_user_error(code, err, "fp16 needs a CUDA GPU")


def test_argparse_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "frobnicate")
    assert_user_error(code, err, "invalid choice")


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["train", "finetune", "--help"], ["toy", "--help"], ["toy", "init", "--help"], ["bench", "--help"], ["quickstart", "--help"], ["generate", "--help"], ["eval", "--help"]])
def test_help_at_every_level(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own --help
        code = exc.code
    out, _ = capsys.readouterr()
    assert code == 0
    assert "usage" in out.lower()
    if argv[:2] == ["train", "finetune"]:
        assert "--train.learning_rate" in out and "--method.snr_gamma" in out


def test_console_script_exit_code(tmp_path: Path) -> None:
    """The installed entry point itself (not just main()) exits 2 with one line."""
    proc = subprocess.run([sys.executable, "-m", "distill_diffusion.cli", "train", "nope"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown method" in proc.stderr


def test_sdxl_teacher_is_refused_before_loading(capsys: pytest.CaptureFixture[str], tiny_pipeline_dir: Path, toy_data_dir: Path, tmp_path: Path) -> None:
    import json
    import shutil

    xl = tmp_path / "xl"
    shutil.copytree(tiny_pipeline_dir, xl)
    index = json.loads((xl / "model_index.json").read_text())
    index["text_encoder_2"] = ["transformers", "CLIPTextModelWithProjection"]
    (xl / "model_index.json").write_text(json.dumps(index))
    code, _, err = run_cli(capsys, "train", "finetune", "--pretrained_model_name_or_path", str(xl),
                           "--train_data_dir", str(toy_data_dir), "--output_dir", str(tmp_path / "out"))
    assert_user_error(code, err, "SDXL teachers are not supported yet")
    assert not (tmp_path / "out").exists()


def test_corrupt_dataset_is_user_error(capsys: pytest.CaptureFixture[str], tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "x"}\n{not json\n')
    code, _, err = run_cli(capsys, "train", "finetune", "--pretrained_model_name_or_path", str(tiny_pipeline_dir),
                           "--train_data_dir", str(data), "--output_dir", str(tmp_path / "out"))
    assert_user_error(code, err, "metadata.jsonl")
    assert not (tmp_path / "out").exists()
