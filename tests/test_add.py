"""ADD (Sauer et al., arXiv:2311.17042): the DINOv2 discriminator on decoded images, gradient isolation per phase,
losses that go down where they must, the image condition, and a run through the CLI whose LoRA samples in 1 step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_ladd import batch, ctx, optimise

from distill_diffusion.cli import main
from distill_diffusion.config import ModelConfig
from distill_diffusion.models.batch import latents_and_embeddings
from distill_diffusion.models.loading import load_extra_model, load_teacher
from distill_diffusion.trainers.methods.add import ADD, ADDConfig
from distill_diffusion.trainers.methods.add.features import default_layers


def method(teacher: Path, dinov2: Path, **options: object) -> ADD:
    cfg = ModelConfig(pretrained_model_name_or_path=str(teacher), local_files_only=True)
    config = ADDConfig(**{"feature_network": str(dinov2), "feature_resolution": 32, "lora_rank": 4, "lora_alpha": 4, "head_width": 8,
                          **options})
    network = load_extra_model(ADD.extra_models(config)["feature_network"], cfg)
    return ADD(load_teacher(cfg), config, extra_models={"feature_network": network})


@pytest.fixture(scope="module")
def dinov2(toy_dir: Path) -> Path:
    return toy_dir / "dinov2"


def test_default_blocks_are_four_evenly_spaced_ending_at_the_last() -> None:
    assert default_layers(12) == [3, 6, 9, 12] and default_layers(4) == [1, 2, 3, 4] and default_layers(2) == [1, 2]


def test_the_heads_read_the_vits_patch_tokens_of_the_chosen_blocks(tiny_pipeline_dir: Path, dinov2: Path) -> None:
    m = method(tiny_pipeline_dir, dinov2, feature_layers=[2, 4])
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        tokens, cls = m.vit(images)
        out = m.vit.model(pixel_values=((images + 1) / 2 - m.vit.mean) / m.vit.std, output_hidden_states=True)
    assert list(tokens) == ["block2", "block4"] and tokens["block2"].shape == (2, 64, 64)  # [B, hidden, (32/4)² patches]
    torch.testing.assert_close(tokens["block4"], out.hidden_states[4][:, 1:].transpose(1, 2))
    torch.testing.assert_close(cls, out.pooler_output)


def test_generator_gradients_reach_only_the_student_and_discriminator_gradients_only_the_heads(family_pipeline_dir: Path, dinov2: Path) -> None:
    m = method(family_pipeline_dir, dinov2, distill_weight=0.5, r1_gamma=1.0)
    family = m.components.family
    lora = [p for p in m.unet.parameters() if p.requires_grad]
    frozen = [*m.components.vae.parameters(), *m.vit.model.parameters()]
    before = [p.detach().clone() for p in frozen]
    store: dict = {}
    m.heads.requires_grad_(False)
    m.compute_loss("generator", batch(family=family), ctx(m, store)).loss.backward()
    assert all(p.grad is not None for p in lora) and any(p.grad.abs().sum() > 0 for p in lora)
    assert all(p.grad is None for p in [*m.heads.parameters(), *frozen])
    for p in lora:
        p.grad = None
    m.heads.requires_grad_(True)
    out = m.compute_loss("discriminator", batch(seed=1, family=family), ctx(m, store))
    out.loss.backward()
    assert all(p.grad is None for p in lora) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.heads.parameters())
    assert {"d_real", "d_fake", "d_loss", "r1"} <= out.logs.keys() and out.logs["r1"] > 0
    assert all(torch.equal(p, b) for p, b in zip(frozen, before, strict=True)) and all(p.grad is None for p in frozen)


def test_real_samples_are_conditioned_on_their_own_image_and_fakes_on_their_source(tiny_pipeline_dir: Path, dinov2: Path) -> None:
    m = method(tiny_pipeline_dir, dinov2)
    x0, c = batch(2)["latents"], batch(2)["prompt_embeds"]
    fake, source_x0 = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        source = m.source_condition(source_x0)
        _, cond = m.features(torch.cat([x0, fake]), torch.cat([c, c]), source, own_rows=2)
        own = m.vit(m.images(x0))[1]
    text = c.shape[-1]
    torch.testing.assert_close(cond[:2, text:], own)
    torch.testing.assert_close(cond[2:, text:], source)
    torch.testing.assert_close(cond[:2, :text], c.mean(1))
    assert method(tiny_pipeline_dir, dinov2, image_conditioning=False).source_condition(x0) is None


def test_on_sdxl_the_heads_text_condition_is_the_pooled_embedding(tiny_sdxl_pipeline_dir: Path, dinov2: Path) -> None:
    """SDXL has a pooled text embedding (text_encoder_2's projection): the heads read it, not a mean of the tokens."""
    m = method(tiny_sdxl_pipeline_dir, dinov2)
    x0, c = latents_and_embeddings(batch(2, family="sdxl"), m.components)
    with torch.no_grad():
        _, cond = m.features(x0, c, None, own_rows=2)
    pooled = c.text_embeds.shape[-1]
    torch.testing.assert_close(cond[:, :pooled], c.text_embeds.float())
    assert cond.shape[-1] == pooled + m.vit.width  # [pooled text, CLS of the real image]


def test_with_the_discriminator_frozen_the_generators_adversarial_loss_goes_down(tiny_pipeline_dir: Path, dinov2: Path) -> None:
    m = method(tiny_pipeline_dir, dinov2, distill_weight=0.0)
    m.heads.requires_grad_(False)
    losses = optimise(m, "generator", [p for p in m.unet.parameters() if p.requires_grad], 15)
    assert losses[-1] < losses[0] - 0.01, losses


def test_without_the_adversarial_term_add_is_score_distillation_and_its_loss_goes_down(tiny_pipeline_dir: Path, dinov2: Path,
                                                                                      monkeypatch) -> None:
    import distill_diffusion.trainers.methods.adversarial.method as adversarial

    target = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(5))  # a fixed teacher x̂0 (see test_ladd)
    monkeypatch.setattr(adversarial, "guided_prediction", lambda *a, **k: (target, None))
    m = method(tiny_pipeline_dir, dinov2, adv_weight=0.0, distill_weight=2.5)
    out = m.compute_loss("generator", batch(), ctx(m))
    assert 2.5 * out.logs["g_distill"] == pytest.approx(float(out.loss.detach()))
    losses = optimise(m, "generator", [p for p in m.unet.parameters() if p.requires_grad], 15, lr=3e-2)
    assert losses[-1] < 0.9 * losses[0], losses


PLAIN_SCRIPT = r"""
import sys
import numpy as np
from diffusers import LCMScheduler, StableDiffusionPipeline
teacher, lora = sys.argv[1:3]
pipe = StableDiffusionPipeline.from_pretrained(teacher, safety_checker=None)
pipe.scheduler = LCMScheduler.from_pretrained(lora)
pipe.load_lora_weights(lora)
pipe.scheduler.set_timesteps(1)
image = pipe("a red circle", num_inference_steps=1, guidance_scale=1.0, output_type="np").images
print("timesteps", pipe.scheduler.timesteps.tolist())
print("shape", list(image.shape), "finite", bool(np.isfinite(image).all()))
print("imported_package", "distill_diffusion" in sys.modules)
"""


@pytest.mark.e2e
def test_train_add_through_the_cli_writes_grids_resumes_and_its_lora_samples_in_one_step(tiny_pipeline_dir: Path, toy_data_dir: Path,
                                                                                         dinov2: Path, tmp_path: Path) -> None:
    out = tmp_path / "add"
    args = ["train", "add", "--config", "tiny/add", "--pretrained_model_name_or_path", str(tiny_pipeline_dir),
            "--train_data_dir", str(toy_data_dir), "--output_dir", str(out), "--method.feature_network", str(dinov2),
            "--train_batch_size", "2", "--progress_bar", "false", "--validation_steps", "1", "--checkpointing_steps", "1",
            "--lr_scheduler", "constant"]
    assert main([*args, "--max_train_steps", "1"]) == 0
    assert main([*args, "--max_train_steps", "2", "--resume_from_checkpoint", "latest"]) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) and list((out / "validation").rglob("*.png"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", PLAIN_SCRIPT, str(tiny_pipeline_dir), str(out)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "timesteps [999]" in proc.stdout and "shape [1, 32, 32, 3] finite True" in proc.stdout
    assert "imported_package False" in proc.stdout
    assert "ADD" in (out / "README.md").read_text()


def test_the_speed_benchmark_times_a_cycle_against_its_passes(tmp_path: Path) -> None:
    from distill_diffusion.trainers.methods.add.bench_speed import ENGINE_KEY, run_add_benchmark

    result = run_add_benchmark(steps=2, batch_sizes=(2,), output=tmp_path / "speed.json")
    row = result["training"][0]
    assert ENGINE_KEY in row["seconds"] and len(row["seconds"]) == 6 and row["ratio"] > 0
    assert "step / sum" in (tmp_path / "speed.md").read_text()
