"""load_pipeline: stock diffusers pipelines with a sampler's scheduler, LoRA loading/fusing, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import (
    LatentConsistencyModelPipeline,
    LCMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, get_peft_model_state_dict

from distill_diffusion.cli import main
from distill_diffusion.errors import UserError
from distill_diffusion.pipelines import load_pipeline


def save_random_lora(pipeline_dir: Path, out: Path) -> Path:
    """A rank-4 LoRA with non-zero B (peft initialises B to 0, which would change nothing), diffusers format."""
    pipe = StableDiffusionPipeline.from_pretrained(pipeline_dir)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    gen = torch.Generator().manual_seed(0)
    for name, param in pipe.unet.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=gen) * 0.5
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=layers)
    return out


@pytest.fixture(scope="module")
def lora_dir(tiny_pipeline_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_lora(tiny_pipeline_dir, tmp_path_factory.mktemp("lora"))


def sample(pipe, steps: int = 2, guidance: float = 1.0) -> torch.Tensor:
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    out = pipe(["a red circle", "a blue star"], num_inference_steps=steps, guidance_scale=guidance,
               generator=gens, output_type="pt")  # fmt: skip
    return out.images


def test_lcm_sampler_returns_stock_pipeline_with_lcm_scheduler(tiny_pipeline_dir):
    pipe = load_pipeline(str(tiny_pipeline_dir), sampler="lcm")
    assert type(pipe) is StableDiffusionPipeline and isinstance(pipe.scheduler, LCMScheduler)
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert sample(pipe).shape == (2, 3, 32, 32)


def test_lora_changes_images_and_fused_equals_unfused(tiny_pipeline_dir, lora_dir):
    base = sample(load_pipeline(str(tiny_pipeline_dir), sampler="lcm"))
    fused_pipe = load_pipeline(str(tiny_pipeline_dir), lora=str(lora_dir), sampler="lcm")
    assert not any("lora" in name for name, _ in fused_pipe.unet.named_modules())  # fused, adapters dropped
    fused = sample(fused_pipe)
    unfused = sample(load_pipeline(str(tiny_pipeline_dir), lora=str(lora_dir / "pytorch_lora_weights.safetensors"),
                                   sampler="lcm", fuse_lora=False))  # fmt: skip
    assert (fused - base).abs().max() > 1e-2
    assert torch.allclose(fused, unfused, atol=1e-4)


def test_scheduler_config_beside_the_lora_sets_the_trained_lcm_fields(tiny_pipeline_dir, lora_dir, tmp_path):
    folder = tmp_path / "lora"
    folder.mkdir()
    (folder / "pytorch_lora_weights.safetensors").write_bytes((lora_dir / "pytorch_lora_weights.safetensors").read_bytes())
    LCMScheduler(original_inference_steps=20, timestep_scaling=5.0, beta_schedule="linear").save_pretrained(folder)
    lcm = load_pipeline(str(tiny_pipeline_dir), lora=str(folder), sampler="lcm").scheduler
    assert lcm.config.original_inference_steps == 20 and lcm.config.timestep_scaling == 5.0
    assert lcm.config.beta_schedule == "scaled_linear"  # the base model's schedule, not the file's
    lcm.set_timesteps(4)
    assert lcm.timesteps.tolist() == [999, 749, 499, 249]  # the N = 20 grid {49, 99, ..., 999}
    ddim = load_pipeline(str(tiny_pipeline_dir), lora=str(folder), sampler="ddim").scheduler
    assert "original_inference_steps" not in ddim.config  # another sampler's scheduler ignores it
    (folder / "scheduler_config.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_pipeline(str(tiny_pipeline_dir), lora=str(folder), sampler="lcm")


def test_lcm_full_student_gets_the_lcm_pipeline_and_w_embedding(tiny_pipeline_dir, tmp_path):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    config = {**pipe.unet.config, "time_cond_proj_dim": 32}
    torch.manual_seed(0)
    pipe.unet = UNet2DConditionModel.from_config(config)
    pipe.save_pretrained(tmp_path / "student")
    student = load_pipeline(str(tmp_path / "student"), sampler="lcm-full")
    assert isinstance(student, LatentConsistencyModelPipeline) and isinstance(student.scheduler, LCMScheduler)
    # guidance enters through the w-embedding (w = g - 1), with no CFG pass: different g, different images
    assert (sample(student, 1, 2.0) - sample(student, 1, 8.0)).abs().max() > 1e-4
    with pytest.raises(UserError, match="time_cond_proj_dim"):
        load_pipeline(str(tiny_pipeline_dir), sampler="lcm-full")


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda root, lora: (str(root), None), "not a diffusers pipeline"),
        (lambda root, lora: (str(lora), None), "holds LoRA weights"),
        (lambda root, lora: (str(root / "missing"), None), "no such file"),
    ],
)
def test_a_path_that_is_not_a_pipeline_is_a_user_error(tmp_path, lora_dir, make, needle):
    model, lora = make(tmp_path, lora_dir)
    with pytest.raises(UserError, match=needle):
        load_pipeline(model, lora)


def test_bad_lora_paths_are_user_errors(tiny_pipeline_dir, tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_pipeline(str(tiny_pipeline_dir), lora=str(tmp_path / "nope"))
    (tmp_path / "peft").mkdir()
    (tmp_path / "peft" / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="raw peft adapter"):
        load_pipeline(str(tiny_pipeline_dir), lora=str(tmp_path / "peft"))
    (tmp_path / "x.ckpt").write_bytes(b"")
    with pytest.raises(UserError, match="only .safetensors"):
        load_pipeline(str(tiny_pipeline_dir), lora=str(tmp_path / "x.ckpt"))


def test_a_lora_of_another_base_fails_without_the_loaders_per_layer_log(tiny_pipeline_dir, tmp_path, monkeypatch):
    """Past the check before loading (which a hub model skips), diffusers' log of every size mismatch is silenced: the
    one error line is all the user sees."""
    import logging

    from test_bad_inputs_generate import save_lora_of_another_base

    monkeypatch.setattr("distill_diffusion.pipelines.loader.check_lora_fits", lambda *args: None, raising=False)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("diffusers").addHandler(handler)
    try:
        with pytest.raises(UserError, match="cannot load LoRA .* check it was trained on this base model"):
            load_pipeline(str(tiny_pipeline_dir), lora=str(save_lora_of_another_base(tmp_path / "lora")))
    finally:
        logging.getLogger("diffusers").removeHandler(handler)
    assert [r.getMessage()[:80] for r in records if r.levelno >= logging.WARNING] == []


def test_cli_generate_not_a_pipeline_exits_2(tmp_path, capsys):
    code = main(["generate", "--model", str(tmp_path), "--prompt", "a red circle", "--output_dir", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a diffusers pipeline" in err[0]
    assert not (tmp_path / "o").exists()
