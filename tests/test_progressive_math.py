"""Progressive distillation's invariants on tiny in-memory components (Salimans & Ho Alg. 2; Meng et al. stage 1).

- a perfect student (one that outputs x̃) reproduces the teacher's two DDIM steps with one, at every step i, for
  eps- and v-prediction teachers, checked against stock ``DDIMScheduler`` stepping;
- the grid each round trains on is the one the exported ``DDIMScheduler`` visits;
- the guidance stage's target is the teacher's classifier-free guidance;
- a student in another parameterisation than the teacher (eps → v) is not the teacher when copied, and the
  conversion stage's target is the teacher's x̂, so round 1 starts from a student equal to its teacher;
- the stage hand-over (EMA → student → next round's teacher) and its resume state.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from diffusers import DDIMScheduler
from family_batches import POOLED_WIDTH, TEXT_WIDTH

from distill_diffusion.core import NoiseSchedule, append_dims
from distill_diffusion.models.conditioning import Conditioning, as_conditioning
from distill_diffusion.models.denoiser import Denoiser
from distill_diffusion.models.loading import SDComponents
from distill_diffusion.toy.tiny import SD15_SCHEDULER_CONFIG, build_tiny_components
from distill_diffusion.trainers.methods.base import Phase, StepContext
from distill_diffusion.trainers.methods.progressive import Progressive, ProgressiveConfig
from distill_diffusion.trainers.methods.progressive.plan import (
    RoundPlan,
    ddim_sample,
    export_scheduler_config,
    round_grid,
)


@functools.cache
def _tiny(prediction_type: str, family: str = "sd1") -> dict:
    return build_tiny_components(prediction_type=prediction_type, family=family)


def components(prediction_type: str = "epsilon", family: str = "sd1") -> SDComponents:
    """Tiny in-memory components; SDXL's as its base model's pipeline has them (force_zeros_for_empty_prompt)."""
    parts = copy.deepcopy(_tiny(prediction_type, family))
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if name in parts:
            parts[name].requires_grad_(False)
    return SDComponents(family=family, prediction_type=prediction_type, source="tiny", **parts,
                        force_zeros_for_empty_prompt=family == "sdxl")


def method(teacher_type: str = "epsilon", family: str = "sd1", **options) -> Progressive:
    options = {"start_steps": 8, "target_steps": 4, "guidance": "none", "steps_per_round": [1], **options}
    if options["guidance"] == "distill":  # every stage has its count, as check_config leaves a run's config
        options.setdefault("guidance_steps", 1)
    config = ProgressiveConfig(**options)
    return Progressive(components(teacher_type, family), config)


def inputs(batch: int, seed: int = 0, family: str = "sd1") -> tuple[torch.Tensor, torch.Tensor | Conditioning]:
    """Latents and their conditioning (SDXL: with pooled text and time ids)."""
    gen = torch.Generator().manual_seed(seed)
    z, c = torch.randn(batch, 4, 8, 8, generator=gen), torch.randn(batch, 77, TEXT_WIDTH[family], generator=gen)
    if family == "sd1":
        return z, c
    return z, Conditioning(c, torch.randn(batch, POOLED_WIDTH, generator=gen), torch.tensor([[32, 32, 0, 0, 32, 32]] * batch))


def scheduler(prediction_type: str, steps: int) -> DDIMScheduler:
    sched = DDIMScheduler.from_config(export_scheduler_config(SD15_SCHEDULER_CONFIG, prediction_type))
    sched.set_timesteps(steps)
    return sched


@pytest.mark.parametrize("teacher_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("student_type", ["v_prediction", "sample"])
def test_a_perfect_student_reproduces_two_teacher_steps_at_every_step(teacher_type: str, student_type: str) -> None:
    m = method(teacher_type, prediction_type=student_type)
    n = m.plan.student_steps[0]  # 4 student steps, the teacher's 8 (1000/8 = 125: DDIM's own grid has the midpoints)
    teacher, student = scheduler(teacher_type, 2 * n), scheduler(student_type, n)
    schedule = NoiseSchedule.from_scheduler_config(SD15_SCHEDULER_CONFIG)
    for i in range(n):
        z, c = inputs(2, seed=i)
        t = int(student.timesteps[i])
        # the teacher, two stock DDIM steps from t (its raw UNet output, no project code)
        z_tpp = z
        for k in (2 * i, 2 * i + 1):
            tk = teacher.timesteps[k]
            z_tpp = teacher.step(m.teacher_unet(z_tpp, tk, encoder_hidden_states=c).sample, tk, z_tpp).prev_sample
        x_tilde = m.x_tilde(z, torch.full((2,), i), c, torch.zeros(2), stage=m.plan.first_round_stage)
        # a perfect student outputs x̃ in its own parameterisation; one stock DDIM step from t
        alpha, sigma = (append_dims(v, 4) for v in (schedule.alpha(torch.tensor([t])), schedule.sigma(torch.tensor([t]))))
        eps = (z - alpha * x_tilde) / sigma
        output = alpha * eps - sigma * x_tilde if student_type == "v_prediction" else x_tilde
        one_step = student.step(output, t, z).prev_sample
        torch.testing.assert_close(one_step, z_tpp, rtol=1e-4, atol=1e-4)
    assert int(student.timesteps[-1]) - 1000 // n < 0  # the last i lands on the clean end (t'' = 0)


def test_at_the_clean_end_the_target_is_the_teachers_x0_after_two_steps() -> None:
    m = method("v_prediction", start_steps=2, target_steps=1)
    z, c = inputs(2)
    x_tilde = m.x_tilde(z, torch.zeros(2, dtype=torch.long), c, torch.zeros(2), stage=0)
    teacher = scheduler("v_prediction", 2)
    for tk in teacher.timesteps:
        z = teacher.step(m.teacher_unet(z, tk, encoder_hidden_states=c).sample, tk, z).prev_sample
    torch.testing.assert_close(x_tilde, z, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("start", [64, 128])
def test_every_round_trains_on_the_grid_the_exported_scheduler_visits(start: int) -> None:
    config = ProgressiveConfig(start_steps=start, target_steps=1)
    schedule = NoiseSchedule.from_scheduler_config(SD15_SCHEDULER_CONFIG)
    x0, eps = inputs(1)[0], inputs(1, seed=1)[0]
    for n in [start >> (r + 1) for r in range(config.num_rounds)]:
        grid, sched = round_grid(1000, n), scheduler("sample", n)
        assert grid.pairs[:, 0].tolist() == sched.timesteps.tolist()
        for t, s in grid.pairs.tolist():
            z_t = schedule.add_noise(x0, eps, torch.tensor([t]))
            landed = sched.step(x0, t, z_t).prev_sample  # an x0 output: DDIM lands on alpha_s x0 + sigma_s eps
            torch.testing.assert_close(landed, schedule.add_noise(x0, eps, torch.tensor([s])), rtol=1e-4, atol=1e-5)
        assert bool(((grid.pairs[:, 1] < grid.midpoints) & (grid.midpoints < grid.pairs[:, 0])).all())


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_the_guidance_stage_target_is_the_teachers_cfg_output_at_fixed_w(family: str) -> None:
    m = method("epsilon", family, guidance="distill", guidance_scale_min=3.0, guidance_scale_max=3.0)
    assert m.plan.round_index(0) is None  # stage 0 is the guidance stage
    torch.manual_seed(0)
    x0, c = inputs(3, family=family)
    w = m.sample_w(3, x0.device)
    torch.manual_seed(1)
    z_t, t, target = m.guidance_target(x0, c, w)
    # diffusers' CFG on the raw eps outputs at guidance_scale 3, converted to x0 by the DDIM scheduler's formula; SDXL's
    # unconditional branch is zero embeddings with the conditional branch's time ids (force_zeros_for_empty_prompt)
    uncond = m.uncond(as_conditioning(c))
    if family == "sdxl":
        assert not uncond.encoder_hidden_states.any() and torch.equal(uncond.time_ids, c.time_ids)
    eps_c = m.teacher_unet(z_t, t, **as_conditioning(c).unet_kwargs()).sample
    eps_u = m.teacher_unet(z_t, t, **uncond.unet_kwargs()).sample
    eps = eps_u + 3.0 * (eps_c - eps_u)
    abar = append_dims(torch.as_tensor(DDIMScheduler.from_config(SD15_SCHEDULER_CONFIG).alphas_cumprod)[t], 4)
    torch.testing.assert_close(target, (z_t - (1 - abar).sqrt() * eps) / abar.sqrt(), rtol=1e-4, atol=1e-4)


def test_w_is_drawn_bit_for_bit_as_when_the_options_were_w_min_and_w_max() -> None:
    """guidance_scale 2-8 is the former w ∈ [1, 7]: the draws recorded with w_min 1, w_max 7 (seed 7); fixed at 2 is w = 1."""
    m = method("epsilon", guidance="distill", guidance_scale_min=2.0, guidance_scale_max=8.0)
    torch.manual_seed(7)
    recorded = [4.209535121917725, 2.192819118499756, 4.955270290374756, 4.941341400146484, 2.39656925201416, 3.550368309020996]
    assert torch.equal(m.sample_w(6, torch.device("cpu")), torch.tensor(recorded))
    assert torch.equal(method("epsilon", guidance="fixed", guidance_scale_min=2.0).sample_w(2, torch.device("cpu")), torch.ones(2))


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_the_w_student_starts_equal_to_the_teacher_at_every_w(family: str) -> None:
    """The w-embedding (``time_cond_proj_dim``) also builds on SDXL's UNet, whose pooled-text and time-id embedding
    (``addition_embed_type="text_time"``) is added beside it."""
    m = method("v_prediction", family, guidance="distill")
    assert m.unet.config.time_cond_proj_dim == m.config.time_cond_proj_dim
    z, c = inputs(2, family=family)
    kwargs = as_conditioning(c).unet_kwargs()
    t = torch.tensor([999, 500])
    base = m.teacher_unet(z, t, **kwargs).sample
    for w in (0.0, 3.0):
        out = m.unet(z, t, **kwargs, **m.w_condition(torch.full((2,), w))).sample
        torch.testing.assert_close(out, base, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # once trained, w reaches the output
        m.unet.time_embedding.cond_proj.weight.normal_()
    outs = [m.unet(z, t, **kwargs, **m.w_condition(torch.full((2,), w))).sample for w in (0.0, 3.0)]
    assert not torch.allclose(*outs)


class TeacherAsV(torch.nn.Module):
    """A v-student equal to the first round's teacher: its x̂ and ε̂ written as v = α·ε̂ − σ·x̂ (UNet call signature)."""

    def __init__(self, m: Progressive, w: torch.Tensor) -> None:
        super().__init__()
        self.m, self.w, self.dtype_probe = m, w, torch.nn.Parameter(torch.zeros(1))

    def forward(self, z, t, encoder_hidden_states, return_dict=False, **_):
        x0, eps = self.m.first_teacher(z, t, encoder_hidden_states, self.w)
        alpha, sigma = (append_dims(f(t), 4) for f in (self.m.schedule.alpha, self.m.schedule.sigma))
        return (alpha * eps - sigma * x0,)


def relative_gap(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).detach().norm() / ref.norm())


@pytest.mark.parametrize("guidance", ["fixed", "none"])
def test_an_eps_teacher_copied_into_a_v_student_is_not_the_teacher_so_a_conversion_stage_regresses_it_on_the_teachers_x0(
        guidance: str) -> None:
    m = method("epsilon", guidance=guidance, guidance_scale_min=2.0, guidance_scale_max=2.0)
    assert [s.name for s in m.stages()] == ["convert", "round-1-4-steps"] and m.plan.round_index(0) is None
    x0, c = inputs(4)
    w = m.sample_w(4, x0.device)
    # the copy's x̂ = α·z − σ·ε̂ against the teacher's (z − σ·ε̂)/α: far apart at high noise (measured)
    gaps = {}
    for t in (999, 499, 100):
        tt = torch.full((4,), t)
        z_t = m.schedule.add_noise(x0, torch.randn_like(x0), tt)
        gaps[t] = relative_gap(m.student_denoiser()(z_t, tt, c).x0, m.first_teacher(z_t, tt, c, w)[0])
    assert gaps[999] > 0.9 and gaps[499] > 0.5 and gaps[100] > 0.01, gaps
    # the conversion stage's loss: the copy's is large, a student equal to the teacher (as v) scores 0
    batch = {"latents": x0, "prompt_embeds": c}
    torch.manual_seed(0)
    copy_loss = m.compute_loss("unet", batch, StepContext(step=0, stage=0, modules=m.models)).loss
    torch.manual_seed(0)
    equal_loss = m.compute_loss("unet", batch, StepContext(step=0, stage=0, modules={"unet": TeacherAsV(m, w)})).loss
    assert copy_loss > 1e-2 and equal_loss < 1e-6 * copy_loss, (copy_loss, equal_loss)


def test_after_the_conversion_stage_round_1_starts_from_its_student_and_keeps_the_original_teacher() -> None:
    m = method("epsilon", guidance="fixed", guidance_scale_min=2.0)
    params = m.trainable_parameters(Phase("unet", "unet"))
    ema = [p + 0.01 * torch.randn_like(p) for p in params]
    m.on_stage_end(0, {"unet": ema})
    assert all(torch.equal(p, e) for p, e in zip(params, ema)) and m.round_teacher is None and m.sampling_steps() == 8
    # round 1's targets are those of a plan without the conversion stage: two steps of the original guided teacher
    plain = method("epsilon", guidance="fixed", guidance_scale_min=2.0, convert_steps=0)
    assert [s.name for s in plain.stages()] == ["round-1-4-steps"]
    z, c = inputs(2)
    i, w = torch.tensor([0, 3]), torch.ones(2)
    torch.testing.assert_close(m.x_tilde(z, i, c, w, stage=1), plain.x_tilde(z, i, c, w, stage=0))
    m.on_stage_end(1, {})
    assert m.round_teacher is not None and m.sampling_steps() == 4


@pytest.mark.parametrize(("teacher_type", "guidance", "first"), [("v_prediction", "fixed", "round-1-4-steps"),
                                                                  ("epsilon", "distill", "guidance")])
def test_no_conversion_stage_where_the_copy_is_the_teacher_or_a_guidance_stage_regresses_it(teacher_type: str, guidance: str,
                                                                                            first: str) -> None:
    m = method(teacher_type, guidance=guidance)
    assert [s.name for s in m.stages()][0] == first and "convert" not in [s.name for s in m.stages()]
    if teacher_type == "v_prediction":  # the same parameterisation: the copy is the teacher, exactly
        z, c = inputs(2)
        t = torch.tensor([999, 499])
        teacher = Denoiser(m.teacher_unet, m.schedule, "v_prediction")(z, t, c).x0
        torch.testing.assert_close(m.student_denoiser()(z, t, c).x0, teacher, rtol=0, atol=0)


def test_the_stage_end_hands_the_ema_to_the_student_and_the_next_teacher_and_resumes() -> None:
    m = method("v_prediction", start_steps=8, target_steps=2)
    params = m.trainable_parameters(Phase("unet", "unet"))
    ema = [torch.randn_like(p) for p in params]
    m.on_stage_end(0, {"unet": ema})
    assert all(torch.equal(p, e) for p, e in zip(params, ema)) and m.stage == 0
    teacher = dict(m.round_teacher.state_dict())
    assert all(torch.equal(teacher[k], v) for k, v in m.unet.state_dict().items())
    fresh = method("v_prediction", start_steps=8, target_steps=2)
    fresh.load_state_dict(m.state_dict())
    assert fresh.stage == 0 and all(torch.equal(v, teacher[k]) for k, v in fresh.round_teacher.state_dict().items())
    assert fresh.sampling_steps() == 4 and fresh.validation_call_kwargs()["num_inference_steps"] == 4


def test_the_project_sampler_and_stock_ddim_agree_on_a_w_student(tmp_path) -> None:
    from diffusers import StableDiffusionPipeline

    m = method("epsilon", guidance="distill", validation_guidance_scale=3.0)
    with torch.no_grad():
        for p in m.unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    m.on_stage_end(0, {})
    m.export(tmp_path)
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path, safety_checker=None)
    assert pipe.scheduler.config.prediction_type == "v_prediction" and pipe.unet.config.time_cond_proj_dim == 256
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    stock = pipe("a red circle", num_inference_steps=8, guidance_scale=3.0, latents=latents.clone(), output_type="latent").images
    c = pipe.encode_prompt("a red circle", "cpu", 1, False)[0]
    ours = ddim_sample(m.student_denoiser(), latents, round_grid(1000, 8).pairs, c, **m.w_condition(torch.tensor([2.0])))
    torch.testing.assert_close(ours, stock, rtol=1e-4, atol=1e-4)


def test_the_round_plan_takes_train_steps_for_stages_without_a_count_and_refuses_a_stage_with_none() -> None:
    config = ProgressiveConfig(start_steps=8, target_steps=2, guidance="distill")
    plan = RoundPlan(config, 1000, "epsilon", default_steps=5)
    assert [(s.name, s.steps) for s in plan.stages()] == [("guidance", 5), ("round-1-4-steps", 5), ("round-2-2-steps", 5)]
    with pytest.raises(ValueError, match="no step count"):
        RoundPlan(config, 1000, "epsilon").stages()
    given = ProgressiveConfig(start_steps=8, target_steps=2, guidance="distill", guidance_steps=3, steps_per_round=[7, 9])
    assert [s.steps for s in RoundPlan(given, 1000, "epsilon").stages()] == [3, 7, 9]
