"""LADD (Sauer et al., arXiv:2403.12015): the truncated backbone, the noise levels, gradient isolation per phase,
losses that go down where they must, the export's sampler, and refused settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from family_batches import latent_batch

from distill_diffusion.config import ModelConfig
from distill_diffusion.core.schedule import NoiseSchedule
from distill_diffusion.models.conditioning import Conditioning
from distill_diffusion.models.loading import load_teacher
from distill_diffusion.toy.tiny import SD15_SCHEDULER_CONFIG, tiny_unet_config
from distill_diffusion.toy.tiny_sdxl import tiny_sdxl_unet_config
from distill_diffusion.trainers.methods.adversarial.method import sample_student_timesteps
from distill_diffusion.trainers.methods.base import StepContext
from distill_diffusion.trainers.methods.ladd import LADD, LADDConfig
from distill_diffusion.trainers.methods.ladd import backbone as bb
from distill_diffusion.trainers.methods.ladd.noise import (
    equal_snr_timesteps,
    log_snr_table,
    sample_disc_timesteps,
)


def method(teacher: Path, **options: object) -> LADD:
    components = load_teacher(ModelConfig(pretrained_model_name_or_path=str(teacher), local_files_only=True))
    m = LADD(components, LADDConfig(**{"lora_rank": 4, "lora_alpha": 4, "head_width": 8, **options}))
    return m


def batch(n: int = 4, seed: int = 0, family: str = "sd1") -> dict[str, torch.Tensor]:
    return latent_batch(n, seed, family)


def ctx(m: LADD, store: dict | None = None) -> StepContext:
    return StepContext(0, store=store if store is not None else {}, modules=m.models)


def phase_grads(m: LADD, phase: str) -> None:
    """What the engine does before a phase: only that phase's modules' trainable weights require grad, all zeroed."""
    for p in m.heads.parameters():
        p.requires_grad_(phase == "discriminator")
        p.grad = None
    for p in m.lora_params:
        p.requires_grad_(phase == "generator")
        p.grad = None


@pytest.mark.parametrize("taps", [["down_blocks.0"], ["down_blocks.1", "down_blocks.2"], ["mid_block"], ["down_blocks.0", "mid_block"]])
def test_the_truncated_backbone_gives_the_full_unets_features(taps: list[str]) -> None:
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(tiny_unet_config()).eval()
    z, t, c = torch.randn(2, 4, 8, 8), torch.tensor([10, 800]), torch.randn(2, 5, 64)
    seen = {}
    hooks = [unet.get_submodule(tap).register_forward_hook(lambda _m, _a, out, tap=tap: seen.__setitem__(tap, out[0] if isinstance(out, tuple) else out))
             for tap in taps]
    with torch.no_grad():
        unet(z, t, encoder_hidden_states=c)
        got = bb.unet_features(unet, z, t, c, taps)
    for h in hooks:
        h.remove()
    assert set(got) == set(taps)
    for tap in taps:
        torch.testing.assert_close(got[tap], seen[tap])


@pytest.mark.parametrize("taps", [["down_blocks.0"], ["down_blocks.2"], ["mid_block"]])
def test_the_truncated_sdxl_backbone_adds_the_pooled_text_and_time_ids_as_the_full_unet_does(taps: list[str]) -> None:
    """SDXL's added embedding (pooled text and micro-conditioning, through ``get_aug_embed``) reaches every tapped block,
    the first down block's (no attention) through its resnets' time embedding."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(tiny_sdxl_unet_config()).eval()
    z, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 800])
    c = Conditioning(torch.randn(2, 5, 80), torch.randn(2, 40), torch.tensor([[32, 32, 0, 0, 32, 32], [64, 48, 8, 0, 32, 32]]))
    seen = {}
    hooks = [unet.get_submodule(tap).register_forward_hook(lambda _m, _a, out, tap=tap: seen.__setitem__(tap, out[0] if isinstance(out, tuple) else out))
             for tap in taps]
    with torch.no_grad():
        unet(z, t, **c.unet_kwargs())
        for h in hooks:  # the backbone calls the blocks themselves: their hooks would record it too
            h.remove()
        got = bb.unet_features(unet, z, t, c, taps)
        other = bb.unet_features(unet, z, t, c.with_time_ids(torch.tensor([[32, 32, 0, 0, 32, 32]] * 2)), taps)
    for tap in taps:
        torch.testing.assert_close(got[tap], seen[tap])
        assert not torch.allclose(got[tap][1], other[tap][1])  # the time ids change the features
    assert bb.tap_names(tiny_sdxl_unet_config()) == ["down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block"]


def test_the_discriminators_noise_level_is_high_biased_and_matches_snr() -> None:
    schedule = NoiseSchedule.from_scheduler_config(SD15_SCHEDULER_CONFIG)
    torch.manual_seed(0)
    table = log_snr_table(schedule, torch.device("cpu"))
    t = sample_disc_timesteps(table, 4096, 1.0, 1.0)
    assert t.float().median() > 600 and t.min() >= 0 and t.max() <= 999
    for target in (-4.0, 0.0, 2.0):  # the chosen timestep's log SNR is the nearest in the table
        tau = int(equal_snr_timesteps(table, torch.tensor([target]))[0])
        table = schedule.snr(torch.arange(1000)).log()
        assert abs(float(table[tau]) - target) == pytest.approx(float((table - target).abs().min()))
    drawn = sample_student_timesteps([999, 749, 499, 249], [0.7, 0.1, 0.1, 0.1], 4000, torch.device("cpu"))
    assert abs(float((drawn == 999).float().mean()) - 0.7) < 0.03 and set(drawn.tolist()) == {999, 749, 499, 249}


def test_generator_gradients_reach_only_the_student_and_discriminator_gradients_only_the_heads(family_pipeline_dir: Path) -> None:
    m = method(family_pipeline_dir, distill_weight=0.5)
    family = m.components.family
    m.lora_params = [p for p in m.unet.parameters() if p.requires_grad]
    base = {n: p.detach().clone() for n, p in m.unet.named_parameters() if not p.requires_grad}
    store: dict = {}
    phase_grads(m, "generator")
    m.compute_loss("generator", batch(family=family), ctx(m, store)).loss.backward()
    assert all(p.grad is not None for p in m.lora_params) and any(p.grad.abs().sum() > 0 for p in m.lora_params)
    assert all(p.grad is None for p in m.heads.parameters())
    assert all(p.grad is None for n, p in m.unet.named_parameters() if n in base)
    for p in m.unet.parameters():  # the discriminator phase must not reach the student even if it could
        p.requires_grad_(p.requires_grad or False)
    phase_grads(m, "discriminator")
    for p in m.lora_params:
        p.requires_grad_(True)
    out = m.compute_loss("discriminator", batch(seed=1, family=family), ctx(m, store))
    out.loss.backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in m.lora_params)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.heads.parameters())
    assert {"d_real", "d_fake", "d_loss"} <= out.logs.keys()
    assert all(torch.equal(p, base[n]) for n, p in m.unet.named_parameters() if n in base)  # the backbone is untouched


@pytest.mark.parametrize("pure_noise", [False, True])
def test_the_first_student_timestep_can_start_from_pure_noise_as_the_sampler_does(tiny_pipeline_dir: Path, pure_noise: bool) -> None:
    m = method(tiny_pipeline_dir, first_step_pure_noise=pure_noise)
    x0, t = batch()["latents"] * 3, torch.tensor([999, 749, 999, 249])
    torch.manual_seed(0)
    with_data = m.student_input(x0, t)
    torch.manual_seed(0)
    without = m.student_input(torch.zeros_like(x0), t)
    first = t == 999
    # the first timestep's rows carry no trace of the real latent (the sampler's input is ε ~ N(0, I)) ...
    assert torch.equal(with_data[first], without[first]) == pure_noise
    # ... and the later ones are still α_t·x0 + σ_t·ε, as the re-noised samples of a multi-step sampler are
    assert torch.allclose(with_data[~first] - without[~first], m.schedule.alpha(t[~first]).view(-1, 1, 1, 1) * x0[~first], atol=1e-5)


def optimise(m: LADD, phase: str, params: list, steps: int, lr: float = 3e-3) -> list[float]:
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(steps):
        torch.manual_seed(0)  # the same noise and levels every step: the loss is a function of the weights only
        out = m.compute_loss(phase, batch(), ctx(m))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    return losses


def test_with_the_discriminator_frozen_the_generators_adversarial_loss_goes_down(tiny_pipeline_dir: Path) -> None:
    torch.manual_seed(0)  # the heads' initial weights, hence the loss's level, come from the global generator
    m = method(tiny_pipeline_dir)
    m.heads.requires_grad_(False)
    losses = optimise(m, "generator", [p for p in m.unet.parameters() if p.requires_grad], 15)
    # the same noise every step, so the loss moves only with the weights (a student the gradient missed stays flat);
    # the tiny heads' scores are O(1e-2), their level set by the heads' init: ask for a steady descent, not a fixed drop
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 12 and losses[-1] < losses[0] - 1e-3, losses


def test_without_the_adversarial_term_the_generator_regresses_on_the_teachers_prediction(tiny_pipeline_dir: Path, monkeypatch) -> None:
    """adv_weight 0: the loss is ᾱ_s·‖x̂ − x̂_teacher‖², its gradient reaches the student through x̂ (not the target),
    and it goes down. The teacher's prediction is pinned to a constant (a random teacher's x̂ from a re-noised sample
    is mostly the noise it was given, which no student can match)."""
    import distill_diffusion.trainers.methods.adversarial.method as ladd_method

    target = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    monkeypatch.setattr(ladd_method, "guided_prediction", lambda *a, **k: (target, None))
    m = method(tiny_pipeline_dir, adv_weight=0.0, distill_weight=1.0)
    out = m.compute_loss("generator", batch(), ctx(m))
    assert out.logs["g_distill"] == pytest.approx(float(out.loss.detach()))
    losses = optimise(m, "generator", [p for p in m.unet.parameters() if p.requires_grad], 15, lr=3e-2)
    assert losses[-1] < 0.9 * losses[0], losses


def test_r1_is_logged_and_a_full_student_is_a_separate_copy(tiny_pipeline_dir: Path) -> None:
    m = method(tiny_pipeline_dir, lora=False, r1_gamma=1.0)
    assert m.unet is not m.backbone and not any(p.requires_grad for p in m.backbone.parameters())
    store: dict = {}
    m.compute_loss("generator", batch(), ctx(m, store))
    out = m.compute_loss("discriminator", batch(seed=1), ctx(m, store))
    assert out.logs["r1"] > 0


def test_the_export_samples_the_students_trailing_timesteps_in_stock_diffusers(tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    from diffusers import LCMScheduler, StableDiffusionPipeline

    m = method(tiny_pipeline_dir)
    m.export(tmp_path / "out")
    scheduler = LCMScheduler.from_pretrained(tmp_path / "out")
    for n, expected in ((1, [999]), (2, [999, 499]), (4, [999, 749, 499, 249])):
        scheduler.set_timesteps(n)
        assert scheduler.timesteps.tolist() == expected
    pipe = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir, safety_checker=None)
    pipe.scheduler = scheduler
    pipe.load_lora_weights(tmp_path / "out")
    image = pipe("a red circle", num_inference_steps=1, guidance_scale=1.0, output_type="np").images
    assert image.shape == (1, 32, 32, 3)
    assert "num_inference_steps=1" in (tmp_path / "out" / "README.md").read_text()


def test_the_ladd_sampler_loads_the_lora_with_its_scheduler(tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    from distill_diffusion.pipelines import load_pipeline

    method(tiny_pipeline_dir).export(tmp_path / "out")
    pipe = load_pipeline(str(tiny_pipeline_dir), lora=str(tmp_path / "out"), sampler="ladd", local_files_only=True)
    assert type(pipe.scheduler).__name__ == "LCMScheduler" and pipe.scheduler.config.original_inference_steps == 1000
    pipe.scheduler.set_timesteps(4)
    assert pipe.scheduler.timesteps.tolist() == [999, 749, 499, 249]


def test_the_speed_benchmark_times_a_cycle_against_its_passes(tmp_path: Path) -> None:
    from distill_diffusion.trainers.methods.ladd.bench_speed import ENGINE_KEY, run_ladd_benchmark

    result = run_ladd_benchmark(steps=2, batch_sizes=(2,), output=tmp_path / "speed.json")
    row = result["training"][0]
    assert ENGINE_KEY in row["seconds"] and len(row["seconds"]) == 4 and row["ratio"] > 0
    assert "step / sum" in (tmp_path / "speed.md").read_text()


def test_the_gpu_benchmark_runs_a_cycle_on_a_tiny_unet_and_refuses_a_machine_without_cuda(tmp_path: Path) -> None:
    from distill_diffusion.errors import UserError
    from distill_diffusion.trainers.methods.ladd.bench_gpu import run_sd15_ladd_benchmark

    out = tmp_path / "gpu.json"
    result = run_sd15_ladd_benchmark(batch_size=2, resolution=32, steps=2, mixed_precision="no", output=out,
                                     unet_config=tiny_unet_config(), device="cpu")
    assert result["images_per_second"] > 0 and result["peak_memory_gib"] is None
    assert result["settings"]["lora_parameters"] > 0 and result["settings"]["head_parameters"] > 0
    assert "images/s" in out.with_suffix(".md").read_text()
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="needs a CUDA GPU"):
            run_sd15_ladd_benchmark()


def test_approximate_r1_penalises_the_heads_change_under_input_noise_and_reaches_only_the_heads(tiny_pipeline_dir: Path) -> None:
    m = method(tiny_pipeline_dir, r1_gamma=1.0, r1_approximate_sigma=0.5)
    store: dict = {}
    m.compute_loss("generator", batch(), ctx(m, store))
    lora = [p for p in m.unet.parameters() if p.requires_grad]
    for p in lora:
        p.requires_grad_(False)
    out = m.compute_loss("discriminator", batch(seed=1), ctx(m, store))
    out.loss.backward()
    assert out.logs["r1"] > 0 and out.loss > out.logs["d_loss"]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.heads.parameters()) and all(p.grad is None for p in lora)
