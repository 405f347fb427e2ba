"""`train bksdm` on the tiny pipeline: the loss terms, hooks that never outlive a forward, an export a plain diffusers
script loads, an LCM-LoRA trained on that export (small and fast together), `inspect-student`, and the benchmarks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel

from distill_diffusion.cli import main
from distill_diffusion.config import ModelConfig
from distill_diffusion.errors import UserError
from distill_diffusion.models.conditioning import pooled_text_width
from distill_diffusion.models.loading import load_teacher
from distill_diffusion.toy.tiny import tiny_unet_config
from distill_diffusion.trainers.methods.base import StepContext
from distill_diffusion.trainers.methods.bksdm import BKSDM, BKSDMConfig

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def method(teacher: Path, **options: object) -> BKSDM:
    components = load_teacher(ModelConfig(pretrained_model_name_or_path=str(teacher), local_files_only=True))
    m = BKSDM(components, BKSDMConfig(**options))
    m.models = {"unet": m.unet}
    return m


def batch(n: int = 2, teacher: Path | None = None) -> dict[str, torch.Tensor]:
    """A cached-latents batch for the teacher's UNet (the tiny SD one by default; SDXL: with pooled text and time ids)."""
    unet = json.loads((teacher / "unet" / "config.json").read_text()) if teacher else {"cross_attention_dim": 64}
    g = torch.Generator().manual_seed(0)
    out = {"latents": torch.randn(n, 4, 8, 8, generator=g), "prompt_embeds": torch.randn(n, 77, unet["cross_attention_dim"], generator=g)}
    if unet.get("addition_embed_type") == "text_time":
        out |= {"text_embeds": torch.randn(n, pooled_text_width(unet), generator=g), "time_ids": torch.tensor([[32, 32, 0, 0, 32, 32]] * n)}
    return out


def ctx(m: BKSDM) -> StepContext:
    return StepContext(0, modules=m.models)


def hooks(module: torch.nn.Module) -> int:
    return sum(len(x._forward_hooks) + len(x._forward_pre_hooks) for x in module.modules())


@pytest.mark.parametrize("targets", ["stages", "self_attention"])
def test_the_loss_is_task_plus_weighted_output_and_feature_kd(family_pipeline_dir: Path, targets: str) -> None:
    m = method(family_pipeline_dir, lambda_out=2.0, lambda_feat=0.5, feature_targets=targets)
    assert all(p.student.endswith(".attn1") for p in m.pairs) == (targets == "self_attention")
    torch.manual_seed(0)
    out = m.compute_loss("unet", batch(teacher=family_pipeline_dir), ctx(m))
    logs = out.logs
    assert logs["loss_feat_kd"] > 0 and logs["loss_out_kd"] > 0
    assert float(out.loss.detach()) == pytest.approx(logs["loss_task"] + 2.0 * logs["loss_out_kd"] + 0.5 * logs["loss_feat_kd"], rel=1e-5)
    out.loss.backward()
    assert all(p.grad is None for p in m.teacher.parameters())  # the teacher is frozen
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.unet.parameters())


def test_without_kd_the_loss_is_the_plain_fine_tune_loss(family_pipeline_dir: Path) -> None:
    m = method(family_pipeline_dir, lambda_out=0.0, lambda_feat=0.0)
    assert m.pairs == []  # no feature pairs, no hooks
    calls = []
    handle = m.teacher.register_forward_hook(lambda *_: calls.append(1))
    torch.manual_seed(0)
    loss = m.compute_loss("unet", batch(teacher=family_pipeline_dir), ctx(m)).loss
    handle.remove()
    assert calls == []  # and no teacher forward
    torch.manual_seed(0)
    x0, c, eps, t, z_t = m.noised_batch(batch(teacher=family_pipeline_dir))
    expected = m.task_loss(m.unet(z_t, t, **c.unet_kwargs()).sample.float(), x0, eps, t)
    torch.testing.assert_close(loss, expected)


def test_hooks_live_only_inside_a_forward_and_the_export_loads_without_them(tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    m = method(tiny_pipeline_dir, variant="tiny", feature_loss="normalized")
    m.compute_loss("unet", batch(), ctx(m)).loss.backward()
    m.export(tmp_path / "out")
    assert hooks(m.unet) == 0 and hooks(m.teacher) == 0
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "out", safety_checker=None)
    assert sum(p.numel() for p in pipe.unet.parameters()) == m.parameter_counts()[1] < m.parameter_counts()[0]
    assert pipe.unet.config.block_out_channels == [32, 48] and pipe.unet.config.mid_block_type is None
    card = (tmp_path / "out" / "README.md").read_text()
    assert "variant tiny" in card and "up_blocks.0 ↔ up_blocks.1" in card and "teacher tensors unused" in card


def bksdm_argv(teacher: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "bksdm", "--config", "tiny/bksdm", "--pretrained_model_name_or_path", str(teacher), "--train_data_dir", str(data),
            "--output_dir", str(out), "--max_train_steps", "2", "--train_batch_size", "2", "--progress_bar", "false",
            "--checkpointing_steps", "100", *extra]


@pytest.fixture(scope="module")
def student(tiny_pipeline_dir: Path, toy_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bksdm") / "small"
    assert main(bksdm_argv(tiny_pipeline_dir, toy_data_dir, out)) == 0
    return out


#: Loads and samples a pipeline folder (and optionally a LoRA on it) with stock diffusers only.
PLAIN_SCRIPT = """
import json, sys
import numpy as np, torch
from diffusers import LCMScheduler, StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained(sys.argv[1], safety_checker=None)
steps = 25
if len(sys.argv) > 2:
    pipe.load_lora_weights(sys.argv[2])
    pipe.scheduler, steps = LCMScheduler.from_config(pipe.scheduler.config), 2
image = pipe("a red circle", num_inference_steps=steps, guidance_scale=1.0, output_type="np",
             generator=torch.Generator().manual_seed(0)).images
print(json.dumps({"finite": bool(np.isfinite(image).all()), "parameters": sum(p.numel() for p in pipe.unet.parameters()),
                  "layers_per_block": pipe.unet.config.layers_per_block, "mid": pipe.unet.config.mid_block_type}))
"""


def plain(*args: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", PLAIN_SCRIPT, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.e2e
def test_the_student_export_loads_in_a_plain_diffusers_script(student: Path, tiny_pipeline_dir: Path) -> None:
    got = plain(student)
    assert got["finite"] and got["layers_per_block"] == 1 and got["mid"] is None
    teacher = json.loads((tiny_pipeline_dir / "unet" / "config.json").read_text())
    assert teacher["layers_per_block"] == 2 and got["parameters"] < 0.65 * 1_408_644


@pytest.mark.e2e
def test_an_lcm_lora_trains_on_the_student_and_loads_on_it(student: Path, toy_data_dir: Path, tmp_path: Path) -> None:
    """Small and fast together: `train lcm` with the BK-SDM export as its model (the composition of EdgeFusion, arXiv:2404.11925: BK-SDM-Tiny with LCM)."""
    out = tmp_path / "lcm"
    assert main(["train", "lcm", "--config", "tiny/lcm_lora", "--pretrained_model_name_or_path", str(student), "--train_data_dir",
                 str(toy_data_dir), "--output_dir", str(out), "--max_train_steps", "2", "--train_batch_size", "2",
                 "--progress_bar", "false", "--validation_steps", "0", "--checkpointing_steps", "100"]) == 0
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    assert plain(student, out)["finite"]


def test_inspect_student_reports_sizes_block_map_and_pairs(tiny_pipeline_dir: Path, tmp_path: Path, capsys) -> None:
    report = tmp_path / "r.json"
    assert main(["inspect-student", "--model", str(tiny_pipeline_dir), "--variant", "tiny", "--output", str(report)]) == 0
    printed = capsys.readouterr().out
    data = json.loads(report.read_text())
    assert data["parameters"] == {"teacher": 1_408_644, "student": 566_500}
    assert data["block_map"]["up_blocks.0.resnets.1"] == "up_blocks.1.resnets.2" and "mid_block.resnets.0" in data["teacher_blocks_removed"]
    assert data["gmacs"]["student"]["conv_linear"] < data["gmacs"]["teacher"]["conv_linear"]
    assert "up_blocks.0.resnets.1 ← up_blocks.1.resnets.2" in printed and "59.8% fewer parameters" in printed


@pytest.mark.parametrize(("extra", "fragment"), [
    (["--variant", "huge"], "invalid choice: 'huge'"),
    (["--latent_size", "3"], "--latent_size 3 must be a positive multiple of 4"),
    (["--latent_size", "0"], "--latent_size 0 must be a positive multiple of 4"),
    (["--latent_size", "-8"], "--latent_size -8 must be a positive multiple of 4"),
    (["--student_config", "/nonexistent/config.json"], "no such file"),
    (["--output", "/proc/x/r.json"], "cannot write in /proc"),
])
def test_inspect_student_bad_input_is_one_line(extra: list[str], fragment: str, tiny_pipeline_dir: Path, capsys) -> None:
    assert main(["inspect-student", "--model", str(tiny_pipeline_dir), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err


def test_inspect_student_of_a_missing_model_is_one_line(capsys) -> None:
    assert main(["inspect-student", "--model", "/nonexistent/model"]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_cpu_benchmark_times_the_step_against_its_passes(tmp_path: Path) -> None:
    from distill_diffusion.trainers.methods.bksdm.bench_speed import ENGINE_KEY, run_bksdm_benchmark

    result = run_bksdm_benchmark(steps=2, batch_sizes=(2,), output=tmp_path / "speed.json")
    row = result["training"][0]
    assert set(row["seconds"]) == {"teacher forward", "student forward+backward", ENGINE_KEY} and row["ratio"] > 0
    assert "step / sum" in (tmp_path / "speed.md").read_text()


def test_gpu_benchmark_runs_on_a_tiny_unet(tmp_path: Path) -> None:
    from distill_diffusion.trainers.methods.bksdm.bench_gpu import run_sd14_bksdm_benchmark

    result = run_sd14_bksdm_benchmark(batch_size=2, resolution=32, steps=2, mixed_precision="no", output=tmp_path / "gpu.json",
                                      unet_config=tiny_unet_config(), device=DEVICE)
    s = result["settings"]
    assert result["images_per_second"] > 0 and set(result["sampling_step_ms"]) == {"teacher", "student"}
    assert s["student_parameters"] < s["teacher_parameters"] and "student step ms" in (tmp_path / "gpu.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without a GPU")
def test_gpu_benchmark_without_a_gpu_is_one_line() -> None:
    from distill_diffusion.trainers.methods.bksdm.bench_gpu import run_sd14_bksdm_benchmark

    with pytest.raises(UserError, match="needs a CUDA GPU"):
        run_sd14_bksdm_benchmark()


def test_the_toy_benchmark_sizes_and_latency_table(tiny_pipeline_dir: Path, student: Path) -> None:
    from distill_diffusion.trainers.methods.bksdm.bench_toy import size_and_latency, size_table

    rows = size_and_latency({"teacher": tiny_pipeline_dir, "bksdm-small": student})
    assert rows[0]["fewer_parameters"] == 0 and rows[1]["fewer_parameters"] == pytest.approx(1 - 802_900 / 1_408_644)
    assert all(r["step_ms_1_image"] > 0 for r in rows) and "| bksdm-small | 802,900 | 43% |" in "\n".join(size_table(rows))


def test_help_lists_the_inherited_task_loss_options_with_their_help(capsys) -> None:
    assert main(["train", "bksdm", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--method.snr_gamma (default: None)  Min-SNR-γ loss weighting" in out and "--method.variant (default: 'small'" in out


#: Loads and samples an SDXL pipeline folder with stock diffusers only (no import of this package).
PLAIN_XL_SCRIPT = """
import json, sys
import numpy as np, torch
from diffusers import StableDiffusionXLPipeline
pipe = StableDiffusionXLPipeline.from_pretrained(sys.argv[1])
image = pipe("a red circle", num_inference_steps=3, guidance_scale=3.0, height=32, width=32, output_type="np",
             generator=torch.Generator().manual_seed(0)).images
print(json.dumps({"finite": bool(np.isfinite(image).all()), "parameters": sum(p.numel() for p in pipe.unet.parameters()),
                  "layers_per_block": pipe.unet.config.layers_per_block, "mid": pipe.unet.config.mid_block_type,
                  "class": type(pipe).__name__, "addition_embed_type": pipe.unet.config.addition_embed_type}))
"""


@pytest.mark.e2e
def test_an_sdxl_student_trains_from_the_toy_xl_config_and_loads_in_stock_sdxl(tiny_sdxl_pipeline_dir: Path, toy_data_dir: Path,
                                                                                 tmp_path: Path) -> None:
    """`train bksdm --config tiny/bksdm_xl` for two steps on a tiny SDXL teacher (KOALA's self-attention features); the
    export is a StableDiffusionXLPipeline folder a plain diffusers script loads and samples."""
    out = tmp_path / "xl"
    argv = bksdm_argv(tiny_sdxl_pipeline_dir, toy_data_dir, out, "--method.feature_targets", "self_attention")
    assert main([a if a != "tiny/bksdm" else "tiny/bksdm_xl" for a in argv]) == 0
    done = subprocess.run([sys.executable, "-c", PLAIN_XL_SCRIPT, str(out)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    teacher = UNet2DConditionModel.from_pretrained(tiny_sdxl_pipeline_dir / "unet")
    assert got["finite"] and got["class"] == "StableDiffusionXLPipeline" and got["addition_embed_type"] == "text_time"
    assert got["layers_per_block"] == 1 and got["mid"] is None and got["parameters"] < sum(p.numel() for p in teacher.parameters())
    card = (out / "README.md").read_text()
    assert "StableDiffusionXLPipeline.from_pretrained" in card and ".attn1 ↔" in card and "lcm_lora_sdxl" in card


def test_inspect_student_of_an_sdxl_teacher_counts_with_its_added_conditions(tiny_sdxl_pipeline_dir: Path, tmp_path: Path, capsys) -> None:
    report = tmp_path / "r.json"
    assert main(["inspect-student", "--model", str(tiny_sdxl_pipeline_dir), "--variant", "small", "--feature_targets", "self_attention",
                 "--output", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["parameters"]["student"] < data["parameters"]["teacher"]
    assert 0 < data["gmacs"]["student"]["conv_linear"] < data["gmacs"]["teacher"]["conv_linear"]
    assert "mid_block.attentions.0" in data["teacher_blocks_removed"] and all(".attn1 ↔ " in p for p in data["feature_pairs"])
    assert "fewer parameters" in capsys.readouterr().out


def test_a_koala_variant_on_the_toy_xl_teacher_is_one_line(tiny_sdxl_pipeline_dir: Path, capsys) -> None:
    assert main(["inspect-student", "--model", str(tiny_sdxl_pipeline_dir), "--variant", "koala_700m"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a teacher with more there (SDXL base has 10); this teacher UNet has 1: use small" in err[0], err
