"""LCD invariants on tiny in-memory components: boundary condition, scalings, teacher step, CFG, eps/v, gradients."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from diffusers import DDIMScheduler, LCMScheduler
from torch import nn

from distill_diffusion.core import SIGMA_DATA, consistency_scalings, previous_on_grid, skipping_step_grid
from distill_diffusion.models.conditioning import Conditioning, as_conditioning
from distill_diffusion.models.denoiser import Denoiser
from distill_diffusion.models.encode import encode_prompt
from distill_diffusion.models.loading import SDComponents
from distill_diffusion.models.students import build_w_student
from distill_diffusion.models.teacher import guided_ddim_step
from distill_diffusion.toy.tiny import SD15_SCHEDULER_CONFIG, build_tiny_components
from distill_diffusion.trainers.methods.base import StepContext
from distill_diffusion.trainers.methods.lcm import LCM, LCMConfig

FAMILIES = ["sd1", "sdxl"]


@functools.cache
def _tiny(prediction_type: str, family: str = "sd1") -> dict:
    return build_tiny_components(prediction_type=prediction_type, family=family)  # ~1.4 s: built once, copied per test


def components(prediction_type: str = "epsilon", dtype: torch.dtype = torch.float32, family: str = "sd1") -> SDComponents:
    """Tiny in-memory components; SDXL's as its base model's pipeline has them (force_zeros_for_empty_prompt)."""
    parts = copy.deepcopy(_tiny(prediction_type, family))
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if name in parts:
            parts[name].requires_grad_(False).to(dtype)
    return SDComponents(family=family, prediction_type=prediction_type, source="tiny", **parts,
                        force_zeros_for_empty_prompt=family == "sdxl")


def randomise_lora(method: LCM, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in method.online:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def inputs(batch: int = 3, seed: int = 0, family: str = "sd1") -> tuple[torch.Tensor, torch.Tensor | Conditioning]:
    """Latents and a condition: SD a bare text embedding, SDXL a Conditioning (pooled text, per-sample time ids)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, 4, 8, 8, generator=gen)
    if family == "sd1":
        return z, torch.randn(batch, 77, 64, generator=gen)
    time_ids = torch.tensor([[32, 32, 0, 0, 32, 32], [48, 40, 8, 4, 32, 32], [64, 32, 16, 0, 32, 32]] * batch)[:batch]
    return z, Conditioning(torch.randn(batch, 77, 80, generator=gen), torch.randn(batch, 40, generator=gen), time_ids)


def zeros(c: torch.Tensor | Conditioning) -> torch.Tensor | Conditioning:
    return c.zeros_like() if isinstance(c, Conditioning) else torch.zeros_like(c)


@pytest.mark.parametrize("scaling", [10.0, 3.0])
def test_scalings_agree_with_lcm_scheduler_at_every_timestep(scaling: float) -> None:
    cfg = LCMConfig(timestep_scaling=scaling)
    scheduler = LCMScheduler.from_config(SD15_SCHEDULER_CONFIG, timestep_scaling=cfg.timestep_scaling)
    t = torch.arange(1000)
    c_skip, c_out = consistency_scalings(t, SIGMA_DATA, cfg.timestep_scaling)
    ref = torch.tensor([scheduler.get_scalings_for_boundary_condition_discrete(int(i)) for i in t], dtype=torch.float64)
    torch.testing.assert_close(c_skip.double(), ref[:, 0], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(c_out.double(), ref[:, 1], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("lora", [True, False])
def test_boundary_condition_is_exact(lora: bool, family: str) -> None:
    method = LCM(components(family=family), LCMConfig(lora=lora, lora_rank=4))
    if lora:
        randomise_lora(method)
    z, c = inputs(family=family)
    t = torch.zeros(3, dtype=torch.long)
    f = method.consistency(Denoiser(method.unet, method.schedule, "epsilon"), z, t, c, **method.w_condition(torch.full((3,), 4.0)))
    assert torch.equal(f, z)
    assert method.scheduler().config.timestep_scaling == method.config.timestep_scaling


def ddim_reference(unet: nn.Module, scheduler_config, z, t, c, uncond, w: float, num_steps: int = 50) -> torch.Tensor:
    """diffusers DDIMScheduler.step (eta 0, 50 steps → k = 20) on the CFG-combined raw UNet output."""
    scheduler = DDIMScheduler.from_config(scheduler_config, clip_sample=False, set_alpha_to_one=False)
    scheduler.set_timesteps(num_steps)
    out = []
    for i in range(z.shape[0]):
        with torch.no_grad():
            cond = unet(z[i : i + 1], t[i], **as_conditioning(c[i : i + 1]).unet_kwargs()).sample
            unc = unet(z[i : i + 1], t[i], **as_conditioning(uncond[i : i + 1]).unet_kwargs()).sample
        out.append(scheduler.step((1 + w) * cond - w * unc, int(t[i]), z[i : i + 1], eta=0.0).prev_sample)
    return torch.cat(out)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("w", [0.0, 2.5])
def test_teacher_step_equals_ddim_scheduler_and_ignores_the_lora(prediction_type: str, w: float, family: str) -> None:
    """SDXL: the default unconditional input follows force_zeros_for_empty_prompt (zeros, the cond time ids)."""
    parts = components(prediction_type, family=family)
    base = copy.deepcopy(parts.unet)
    method = LCM(parts, LCMConfig(lora_rank=4, uncond_embedding="zeros" if family == "sd1" else None))
    randomise_lora(method)  # the teacher pass must not see it
    z, c = inputs(family=family)
    t = torch.tensor([19, 499, 999])
    with torch.no_grad():
        x_prev = method.teacher_step(z, t, previous_on_grid(t, method.k), c, torch.full((3,), w))
    ref = ddim_reference(base, parts.scheduler.config, z, t, c, zeros(c), w)
    torch.testing.assert_close(x_prev, ref, atol=2e-5, rtol=1e-4)
    assert all(p.requires_grad for p in method.online), "adapters were not re-enabled"


def test_solver_substeps_are_successive_ddim_steps() -> None:
    parts = components()
    base = copy.deepcopy(parts.unet)
    method = LCM(parts, LCMConfig(lora_rank=4, uncond_embedding="zeros", solver_substeps=2))
    z, c = inputs()
    t = torch.tensor([39, 499, 999])
    with torch.no_grad():
        x_prev = method.teacher_step(z, t, previous_on_grid(t, method.k), c, torch.full((3,), 2.0))
    mid = ddim_reference(base, parts.scheduler.config, z, t, c, torch.zeros_like(c), 2.0, num_steps=100)  # t → t − 10
    ref = ddim_reference(base, parts.scheduler.config, mid, t - 10, c, torch.zeros_like(c), 2.0, num_steps=100)
    torch.testing.assert_close(x_prev, ref, atol=2e-5, rtol=1e-4)


def test_w_zero_returns_the_conditional_prediction() -> None:
    from distill_diffusion.core import cfg_lcm

    cond, uncond = torch.randn(2, 4, 8, 8), 1e6 * torch.randn(2, 4, 8, 8)
    assert torch.equal(cfg_lcm(cond, uncond, torch.zeros(2, 1, 1, 1)), cond)
    parts = components()
    teacher = Denoiser(parts.unet, parts.schedule, "epsilon")
    z, c = inputs(2)
    t = torch.tensor([999, 39])
    s = previous_on_grid(t, 20)
    with torch.no_grad():
        guided = guided_ddim_step(teacher, z, t, s, c, torch.randn_like(c), torch.zeros(2))
        out = teacher(z, t, c)
    alpha, sigma = parts.schedule.alpha(s).view(-1, 1, 1, 1), parts.schedule.sigma(s).view(-1, 1, 1, 1)
    torch.testing.assert_close(guided, alpha * out.x0 + sigma * out.eps, atol=1e-5, rtol=1e-5)


class AsV(nn.Module):
    """The same network as an eps UNet, re-expressed as a v-prediction model."""

    def __init__(self, unet: nn.Module, schedule) -> None:
        super().__init__()
        self.unet, self.schedule = unet, schedule

    def forward(self, z, t, encoder_hidden_states, return_dict=False, **kw):
        eps = self.unet(z, t, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
        alpha, sigma = self.schedule.alpha(t).view(-1, 1, 1, 1), self.schedule.sigma(t).view(-1, 1, 1, 1)
        x0 = (z - sigma * eps) / alpha
        return (alpha * eps - sigma * x0,)


def test_eps_and_v_teachers_give_the_same_target() -> None:
    parts = components()
    eps_teacher = Denoiser(parts.unet, parts.schedule, "epsilon")
    v_teacher = Denoiser(AsV(parts.unet, parts.schedule), parts.schedule, "v_prediction")
    z, c = inputs()
    t = torch.tensor([999, 499, 19])
    s, w = previous_on_grid(t, 20), torch.tensor([3.0, 0.5, 8.0])
    with torch.no_grad():
        a = guided_ddim_step(eps_teacher, z, t, s, c, torch.zeros_like(c), w)
        b = guided_ddim_step(v_teacher, z, t, s, c, torch.zeros_like(c), w)
        torch.testing.assert_close(v_teacher(z, t, c).x0, eps_teacher(z, t, c).x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_sampling_follows_the_skipping_step_grid() -> None:
    method = LCM(components(), LCMConfig(lora_rank=2, guidance_scale_min=3.0, guidance_scale_max=5.0))
    t_nk, t_n, w = method.sample_timesteps_and_w(4000, torch.device("cpu"))
    grid = skipping_step_grid(1000, 50)
    assert set(t_nk.tolist()) == set(grid.tolist())
    assert torch.equal(t_n, (t_nk - 20).clamp(min=0)) and int(t_n.min()) == 0
    assert float(w.min()) >= 2.0 and float(w.max()) <= 4.0


def test_w_is_drawn_bit_for_bit_as_when_the_options_were_w_min_and_w_max() -> None:
    """The default guidance_scale 6-16 is the former w ∈ [5, 15]: the draws recorded with w_min 5, w_max 15 (seed 7)."""
    method = LCM(components(), LCMConfig(lora_rank=2))
    torch.manual_seed(7)
    w = method.sample_timesteps_and_w(6, torch.device("cpu"))[2]
    recorded = [7.070860385894775, 11.29736328125, 8.653162002563477, 13.512683868408203, 13.549431800842285, 10.50935173034668]
    assert torch.equal(w, torch.tensor(recorded))


def test_losses() -> None:
    a, b = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    huber = LCM.distance(type("M", (), {"config": LCMConfig()})(), a, b)
    torch.testing.assert_close(huber, (torch.sqrt((a - b) ** 2 + 1e-6) - 1e-3).mean())
    l2 = LCM.distance(type("M", (), {"config": LCMConfig(loss_type="l2")})(), a, b)
    torch.testing.assert_close(l2, ((a - b) ** 2).mean())


def batch(n: int = 2, seed: int = 0, family: str = "sd1") -> dict[str, torch.Tensor]:
    """A cached-latents batch (SDXL: with the pooled embeddings; its time ids are the fixed ones of the resolution)."""
    z, c = inputs(n, seed, family)
    return {"latents": z, **as_conditioning(c).tensors()} if family == "sdxl" else {"latents": z, "prompt_embeds": c}


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_reach_only_lora_and_base_stays_bit_identical(family: str) -> None:
    method = LCM(components(family=family), LCMConfig(lora_rank=4, guidance_scale_min=3.0, guidance_scale_max=3.0))
    unet = method.unet
    base = {k: v.clone() for k, v in unet.state_dict().items() if "lora_" not in k}
    lora = [p.clone() for p in method.online]
    opt = torch.optim.AdamW(method.trainable_parameters(method.phases()[0]), lr=1e-2)
    for step in range(2):
        loss = method.compute_loss("unet", batch(seed=step, family=family), step).loss
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        loss.backward()
        with_grad = {n for n, p in unet.named_parameters() if p.grad is not None}
        assert with_grad and all("lora_" in n for n in with_grad)
        assert len(with_grad) == len(method.online)
        opt.step()
        opt.zero_grad()
        method.on_step_end(StepContext(step))
    after = unet.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())
    assert any(not torch.equal(a, b) for a, b in zip(method.online, lora))


def test_one_unet_base_in_weight_dtype_lora_in_fp32() -> None:
    parts = components(dtype=torch.bfloat16)
    method = LCM(parts, LCMConfig(lora_rank=4))
    assert method.teacher_unet is method.unet is parts.unet and method.models["unet"] is parts.unet
    assert all(p.dtype == torch.float32 for p in method.online)
    assert all(p.dtype == torch.bfloat16 for n, p in method.unet.named_parameters() if "lora_" not in n)
    loss = method.compute_loss("unet", batch(), StepContext(0)).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in method.online)


def test_ema_lora_target_update_swap_and_state() -> None:
    method = LCM(components(), LCMConfig(lora_rank=2, target_ema_decay=0.5))
    randomise_lora(method)
    shadow = [s.clone() for s in method.shadow]
    method.on_step_end(StepContext(1))
    for s, old, p in zip(method.shadow, shadow, method.online):
        torch.testing.assert_close(s, 0.5 * old + 0.5 * p.detach())
    live = [p.detach().clone() for p in method.online]
    with method._target_weights():
        assert all(torch.equal(p, s) for p, s in zip(method.online, method.shadow))
    assert all(torch.equal(p, q) for p, q in zip(method.online, live))
    state = {k: v.clone() for k, v in method.state_dict().items()}
    other = LCM(components(), LCMConfig(lora_rank=2, target_ema_decay=0.5))
    other.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(other.shadow, method.shadow))
    assert LCM(components(), LCMConfig(lora_rank=2)).state_dict() == {}


@pytest.mark.parametrize("family", FAMILIES)
def test_full_student_is_the_teacher_plus_a_w_projection(family: str) -> None:
    parts = components(family=family)
    student = build_w_student(parts, 256)
    assert student.config.time_cond_proj_dim == 256 and student.time_embedding.cond_proj.weight.shape[1] == 256
    teacher_state = parts.unet.state_dict()
    for key, value in student.state_dict().items():
        if key != "time_embedding.cond_proj.weight":
            assert torch.equal(value, teacher_state[key]), key
    method = LCM(parts, LCMConfig(lora=False))
    assert method.config.target_ema_decay == 0.95 and method.unet is not parts.unet
    assert not any(p.requires_grad for p in method.target_unet.parameters())
    loss = method.compute_loss("unet", batch(family=family), StepContext(0)).loss
    loss.backward()
    assert method.unet.time_embedding.cond_proj.weight.grad is not None
    assert all(p.grad is None for p in parts.unet.parameters())


def test_uncond_embedding_is_the_empty_prompt() -> None:
    parts = components()
    method = LCM(parts, LCMConfig(lora_rank=2))
    c = torch.randn(3, 77, 64)
    empty = encode_prompt(parts.tokenizer, parts.text_encoder, [""])
    assert torch.equal(method.uncond_like(c), empty.expand(3, -1, -1))
    assert torch.equal(LCM(components(), LCMConfig(lora_rank=2, uncond_embedding="zeros")).uncond_like(c), torch.zeros_like(c))


def test_uncond_embedding_follows_the_checkpoint_by_default() -> None:
    """The default is what the teacher's own pipeline uses for CFG: the empty prompt (SD, bit for bit the explicit
    option), zeros for a checkpoint with force_zeros_for_empty_prompt (SDXL base), the cond branch's time ids kept."""
    c = torch.randn(3, 77, 64)
    default, explicit = (LCM(components(), LCMConfig(lora_rank=2, uncond_embedding=m)) for m in (None, "empty_prompt"))
    assert torch.equal(default.uncond_like(c), explicit.uncond_like(c))
    _, xc = inputs(family="sdxl")
    uncond = LCM(components(family="sdxl"), LCMConfig(lora_rank=2)).uncond_like(xc)
    assert torch.equal(uncond.encoder_hidden_states, torch.zeros_like(xc.encoder_hidden_states))
    assert torch.equal(uncond.text_embeds, torch.zeros_like(xc.text_embeds)) and torch.equal(uncond.time_ids, xc.time_ids)
    empty = LCM(components(family="sdxl"), LCMConfig(lora_rank=2, uncond_embedding="empty_prompt")).uncond_like(xc)
    assert empty.encoder_hidden_states.abs().sum() > 0 and torch.equal(empty.time_ids, xc.time_ids)


def test_full_student_takes_w_on_both_families() -> None:
    """The guidance embedding reaches the UNet through the same keyword on SD and SDXL: another w, another output."""
    for family in FAMILIES:
        method = LCM(components(family=family), LCMConfig(lora=False))
        with torch.no_grad():
            method.unet.time_embedding.cond_proj.weight.normal_()  # the new projection starts random, but make sure
        z, c = inputs(2, family=family)
        student = Denoiser(method.unet, method.schedule, "epsilon")
        t = torch.tensor([499, 999])
        with torch.no_grad():
            a, b = (method.consistency(student, z, t, c, **method.w_condition(torch.full((2,), w))) for w in (1.0, 7.0))
        assert not torch.allclose(a, b), family


def test_loss_goes_down_on_a_fixed_batch() -> None:
    method = LCM(components(), LCMConfig(lora_rank=4, guidance_scale_min=3.0, guidance_scale_max=3.0, loss_type="l2"))
    opt = torch.optim.AdamW(method.online, lr=1e-3, weight_decay=0.0)
    losses = []
    for step in range(8):
        torch.manual_seed(0)  # the same t, w and noise every step: the loss of one fixed problem
        loss = method.compute_loss("unet", batch(4), step).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0], losses


def test_the_consistency_benchmark_reference_is_successive_guided_ddim_steps() -> None:
    from distill_diffusion.trainers.methods.lcm.bench_consistency import teacher_ode

    parts = components()
    teacher = Denoiser(parts.unet, parts.schedule, "epsilon")
    z, c = inputs(2)
    u, w = torch.randn_like(c), torch.full((2,), 2.0)

    def t(v: int) -> torch.Tensor:
        return torch.full((2,), v)

    with torch.no_grad():
        expected = guided_ddim_step(teacher, guided_ddim_step(teacher, z, t(45), t(25), c, u, w), t(25), t(5), c, u, w)
        expected = guided_ddim_step(teacher, expected, t(5), t(0), c, u, w)  # the last step stops at 0
        torch.testing.assert_close(teacher_ode(teacher, z, 45, c, u, w, ode_step=20), expected)


def test_full_student_starts_from_the_fp32_weights_not_the_half_precision_teacher(tiny_pipeline_dir) -> None:
    """Under bf16 mixed precision the frozen teacher is bf16; the student must not inherit its rounding."""
    from diffusers import UNet2DConditionModel

    from distill_diffusion.config import ModelConfig
    from distill_diffusion.models.loading import load_teacher

    parts = load_teacher(ModelConfig(str(tiny_pipeline_dir), local_files_only=True), torch.bfloat16)
    assert next(parts.unet.parameters()).dtype == torch.bfloat16
    stored = UNet2DConditionModel.from_pretrained(tiny_pipeline_dir, subfolder="unet").state_dict()
    student = build_w_student(parts, 256).state_dict()
    rounded = [k for k, v in stored.items() if not torch.equal(v.to(torch.bfloat16).float(), v)]
    assert rounded, "the tiny teacher's weights must differ from their bf16 rounding for this test to mean anything"
    for key, value in stored.items():
        assert torch.equal(student[key], value), key


def test_teacher_mode_is_the_base_model_and_safe_across_backward() -> None:
    """Adapter on for the student's forward, off for a frozen-backbone forward of its output; one backward."""
    from distill_diffusion.models.lora import adapters_disabled

    parts = components()
    method = LCM(parts, LCMConfig(lora_rank=2))
    unet, layers = method.unet, method.layers
    with torch.no_grad():
        for p in method.online:
            p.add_(0.05 * torch.randn_like(p))  # a non-zero adapter, so the two modes differ
    z = torch.randn(2, unet.config.in_channels, 8, 8)
    t = torch.tensor([500, 700])
    c = torch.randn(2, 77, unet.config.cross_attention_dim)
    student = unet(z, t, encoder_hidden_states=c).sample
    with adapters_disabled(layers):
        scored = unet(student, t, encoder_hidden_states=c).sample
        with torch.no_grad():
            base_out = unet(z, t, encoder_hidden_states=c).sample
    assert not torch.allclose(base_out, student)
    scored.square().mean().backward()
    assert all(p.requires_grad for p in method.online)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.online)
    unet.disable_adapters()  # peft's own switch gives the same base model
    torch.testing.assert_close(unet(z, t, encoder_hidden_states=c).sample, base_out)
