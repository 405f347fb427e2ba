"""Config building and the CLI's user-error contract: one line naming problem and fix, exit code 2."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from distill_diffusion.cli import main
from distill_diffusion.config import (
    CONFIGS_DIR,
    PhaseConfig,
    RunConfig,
    TrainConfig,
    build_run_config,
    config_names,
    load_config,
    parse_overrides,
)
from distill_diffusion.errors import UserError, require
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


def test_corrupt_dataset_is_user_error(capsys: pytest.CaptureFixture[str], tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "x"}\n{not json\n')
    code, _, err = run_cli(capsys, "train", "finetune", "--pretrained_model_name_or_path", str(tiny_pipeline_dir),
                           "--train_data_dir", str(data), "--output_dir", str(tmp_path / "out"))
    assert_user_error(code, err, "metadata.jsonl")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# The configuration layer: Literal choices, nested sections, help, phases, check_config, shipped configs


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ([("lr_scheduler", "warp")], "train.lr_scheduler='warp' is not valid; use one of: constant, constant_with_warmup, linear"),
        ([("report_to", "mlflow")], "use one of: none, tensorboard, wandb, all"),
        ([("data.source", "parquet")], "use one of: imagefolder, hf, webdataset"),
        ([("optimizer", "sgd")], "use one of: adamw"),
    ],
)
def test_literal_fields_list_their_values(overrides: list[tuple[str, str]], needle: str) -> None:
    with pytest.raises(UserError) as info:
        build_run_config("finetune", FineTuneConfig, {}, overrides)
    assert needle in str(info.value)


def test_literal_fields_are_checked_when_built_directly() -> None:
    from distill_diffusion.trainers.methods.lcm import LCMConfig

    with pytest.raises(UserError, match="method.export_dtype='int8' is not valid; use one of: fp16, bf16, fp32"):
        LCMConfig(export_dtype="int8")  # type: ignore[arg-type]


def test_literal_converter_matches_numbers_and_optional() -> None:
    from typing import Literal

    from distill_diffusion.config_types import convert

    assert convert("x", "2", Literal[1, 2]) == 2
    assert convert("x", "none", Literal["a", "b"] | None) is None
    with pytest.raises(UserError, match="use one of: 1, 2"):
        convert("x", "3", Literal[1, 2])


@dataclass
class Inner:
    #: Size of the inner thing.
    size: int = 2
    kind: Literal["a", "b"] = "a"


@dataclass
class NestedConfig:
    #: An option group.
    inner: Inner = field(default_factory=Inner)
    scale: float = 1.0


def test_nested_dataclass_fields_from_yaml_and_dotted_overrides() -> None:
    run = build_run_config("fake", NestedConfig, {"method": {"inner": {"size": 5}}}, [("method.inner.kind", "b")])
    assert run.method_config.inner == Inner(size=5, kind="b")
    with pytest.raises(UserError, match="unknown method.inner option"):
        build_run_config("fake", NestedConfig, {}, [("method.inner.colour", "red")])
    with pytest.raises(UserError, match="method.inner.kind='c' is not valid; use one of: a, b"):
        build_run_config("fake", NestedConfig, {}, [("method.inner.kind", "c")])
    with pytest.raises(UserError, match="method.inner=3 must be a mapping"):
        build_run_config("fake", NestedConfig, {"method": {"inner": 3}})


def test_help_shows_field_help_choices_and_phases(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "train", "lcm", "--help")
    assert code == 0
    line = next(ln for ln in out.splitlines() if "--train.mixed_precision" in ln)
    assert "(default: 'no'; one of: no, fp16, bf16)" in line and "Autocast dtype" in line
    assert any("--method.num_ddim_timesteps (default: 50)  N of the skipping-step DDIM solver" in ln for ln in out.splitlines())
    assert "--phases.unet.learning_rate (default: None)" in out


def test_help_expands_nested_fields() -> None:
    from distill_diffusion.cli import method_help

    class Fake:
        config_class = NestedConfig
        phase_names = ("generator", "discriminator")

    text = method_help("fake", Fake)
    assert "--method.inner.size (default: 2)  Size of the inner thing." in text
    assert "--phases.discriminator.adam_beta1" in text and "--phases.generator.learning_rate" in text


class TwoPhase:
    """A method class as the engine sees it before building: config class, phase names, cross-section check."""

    config_class = FineTuneConfig
    phase_names = ("generator", "discriminator")
    checked: list = []

    @classmethod
    def check_config(cls, run: RunConfig) -> None:
        cls.checked.append(run)
        if "discriminator" in run.phases:
            require(run.train.train_batch_size >= 2, "a discriminator needs train.train_batch_size >= 2; pass 2 or more")


def test_phases_section_from_yaml_and_overrides(tmp_path: Path) -> None:
    config = {"phases": {"discriminator": {"learning_rate": 2e-4, "adam_beta1": 0.0}}}
    run = build_run_config("gan", TwoPhase, config, [("phases.generator.max_grad_norm", "0.5"), ("learning_rate", "1e-5")])
    assert run.phases["discriminator"] == PhaseConfig(learning_rate=2e-4, adam_beta1=0.0)
    assert run.phases["generator"].max_grad_norm == 0.5
    assert run.train.learning_rate == pytest.approx(1e-5)  # a bare name stays the train section's
    again = build_run_config("gan", TwoPhase, load_config(run.save(tmp_path / "config.yaml")))
    assert again.to_dict() == run.to_dict() and again.to_dict()["phases"]["discriminator"]["adam_beta1"] == 0.0


@pytest.mark.parametrize(
    ("config", "overrides", "needle"),
    [
        ({}, [("phases.critic.learning_rate", "1")], "unknown phase(s) critic in the phases section; this method's phases: generator, discriminator"),
        ({"phases": {"gen": {}}}, [], "unknown phase(s) gen"),
        ({}, [("phases.generator.lr", "1")], "unknown phases.generator option(s) lr; valid ones: adam_beta1"),
        ({}, [("phases.generator.adam_beta2", "1.5")], "phases.adam_beta2=1.5 must be in [0, 1)"),
        ({}, [("phases.generator.learning_rate", "0")], "phases.learning_rate=0.0 must be > 0"),
        ({}, [("phases.generator", "1")], "write --phases.PHASE.OPTION VALUE"),
        ({"phases": [1]}, [], "config section 'phases' holds [1], not a mapping"),
    ],
)
def test_bad_phases_are_user_errors(config: dict, overrides: list[tuple[str, str]], needle: str) -> None:
    with pytest.raises(UserError) as info:
        build_run_config("gan", TwoPhase, config, overrides)
    assert needle in str(info.value)


def test_phase_names_default_to_unet_for_a_config_class() -> None:
    assert build_run_config("finetune", FineTuneConfig, {}, [("phases.unet.learning_rate", "1e-5")]).phases["unet"].learning_rate == 1e-5
    with pytest.raises(UserError, match="this method's phases: unet"):
        build_run_config("finetune", FineTuneConfig, {}, [("phases.discriminator.learning_rate", "1")])


def test_check_config_hook_is_called_with_the_built_run() -> None:
    TwoPhase.checked.clear()
    run = build_run_config("gan", TwoPhase, {}, [("train_batch_size", "4")])
    assert TwoPhase.checked == [run]
    with pytest.raises(UserError, match="a discriminator needs train.train_batch_size >= 2"):
        build_run_config("gan", TwoPhase, {"phases": {"discriminator": {}}}, [("train_batch_size", "1")])


def test_registered_methods_build_from_their_class() -> None:
    from distill_diffusion.trainers.methods.registry import get_method_class

    for name, config in (("finetune", "tiny/finetune"), ("lcm", "tiny/lcm_lora")):
        run = build_run_config(name, get_method_class(name), load_config(config))
        assert isinstance(run.method_config, get_method_class(name).config_class)


def test_configs_ship_in_the_package_and_load_by_name(tmp_path: Path) -> None:
    import distill_diffusion

    assert {"finetune_sd15", "lcm_full_sd15", "lcm_lora_sd15", "progressive_sd15", "bksdm_small_sd14", "tiny/finetune", "tiny/lcm_lora",
            "tiny/progressive", "tiny/bksdm", "ladd_sd15", "ladd_sdxl", "dmd2_sd15", "dmd2_sdxl", "tiny/dmd2"} <= set(config_names())
    assert CONFIGS_DIR == Path(distill_diffusion.__file__).resolve().parent / "configs"
    assert load_config("tiny/lcm_lora")["method"]["num_ddim_timesteps"] == 50
    assert load_config(CONFIGS_DIR / "tiny" / "lcm_lora.yaml") == load_config("tiny/lcm_lora")
    from distill_diffusion.trainers.methods.registry import METHODS, get_method_class

    for name in config_names():  # every shipped config names its method and builds for it
        config = load_config(name)
        assert config["method_name"] in METHODS, name
        build_run_config(config["method_name"], get_method_class(config["method_name"]), config)


def test_unknown_config_lists_the_shipped_ones(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "train", "lcm", "--config", "tiny/lcm")
    assert_user_error(code, err, "--config tiny/lcm", "tiny/lcm_lora", "lcm_lora_sd15", "pass a YAML file")


def test_config_name_through_the_cli_reaches_the_engine(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """``--config tiny/finetune`` loads the config; the run then stops at the (missing) teacher, before writing."""
    code, _, err = run_cli(capsys, "train", "finetune", "--config", "tiny/finetune", "--pretrained_model_name_or_path",
                           str(tmp_path / "missing"), "--output_dir", str(tmp_path / "out"))
    assert_user_error(code, err, str(tmp_path / "missing"))


def test_a_config_names_its_method_and_a_users_file_may_leave_it_out(tmp_path: Path) -> None:
    from distill_diffusion.trainers.methods.registry import get_method_class

    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  seed: 3\n")  # no method_name: fits any method
    assert build_run_config("finetune", FineTuneConfig, load_config(path)).train.seed == 3
    saved = build_run_config("lcm", get_method_class("lcm"), load_config("tiny/lcm_lora")).save(tmp_path / "config.yaml")
    with pytest.raises(UserError, match=r"for method 'lcm' \(method_name: lcm\), not 'finetune'.*finetune_sd15, tiny/finetune"):
        build_run_config("finetune", FineTuneConfig, load_config(saved))
    with pytest.raises(UserError, match="or pass a config with method_name: gan$"):
        build_run_config("gan", FineTuneConfig, {"method_name": "finetune"})


def test_saved_lcm_config_reloads(tmp_path: Path) -> None:
    from distill_diffusion.trainers.methods.registry import get_method_class

    lcm = get_method_class("lcm")
    run = build_run_config("lcm", lcm, load_config("tiny/lcm_lora"), [("phases.unet.learning_rate", "1e-4"), ("loss_type", "l2")])
    again = build_run_config("lcm", lcm, load_config(str(run.save(tmp_path / "config.yaml"))))
    assert again.to_dict() == run.to_dict()
    assert again.method_config.loss_type == "l2" and again.phases["unet"].learning_rate == 1e-4
