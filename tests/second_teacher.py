"""A second teacher for the adversarial students' step-count check, away from the toy world: another architecture (a
two-stage v-prediction UNet) on other data (a class-conditional mixture drawn directly in latent space, so real samples
are exact and free).

:func:`run_step_check` trains the teacher (DDPM, Ho et al. 2020, with caption dropout for classifier-free guidance),
then a LADD student with the ``tiny/ladd`` config's method options, batch, learning rates and EMA (a plain two-phase
loop, not the engine), and returns the Fréchet distance (Heusel et al. 2017) between the student's samples and real
latents at 1, 2 and 4 steps of its own sampler. Sizes: ``run_step_check(root, 1500, 1500)`` is the slow test's (an
estimated 15-20 min on 2 idle CPU cores, most of it the student's steps); ``(root, 1, 1, images=32)`` only checks that it
runs (seconds). ``run_step_check(root, 1500, 1500, backward_simulation=False)`` is the comparison without it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from torch.nn import functional as F

from distill_diffusion.config import ModelConfig, load_config
from distill_diffusion.core.schedule import NoiseSchedule
from distill_diffusion.eval.fid import frechet_distance
from distill_diffusion.models.denoiser import Denoiser
from distill_diffusion.models.encode import encode_prompt
from distill_diffusion.models.loading import load_teacher
from distill_diffusion.toy.tiny import TEXT_HIDDEN, build_tiny_components, save_tiny_pipeline
from distill_diffusion.trainers.methods.base import StepContext
from distill_diffusion.trainers.methods.ladd import LADD, LADDConfig

PROMPTS = ("a red circle", "a blue square", "a green triangle", "a yellow star")
SHAPE = (4, 8, 8)


class MixtureWorld:
    """Class k (prompt k): a smooth pattern m_k times an amplitude a ~ U(0.6, 1.4), plus N(0, 0.15²) per value."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.means = F.interpolate(torch.randn(len(PROMPTS), SHAPE[0], 2, 2, generator=g), size=SHAPE[1:], mode="bilinear")

    def sample(self, labels: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        amplitude = 0.6 + 0.8 * torch.rand(len(labels), 1, 1, 1, generator=g)
        return self.means[labels] * amplitude + 0.15 * torch.randn(len(labels), *SHAPE, generator=g)


def second_unet_config() -> dict[str, Any]:
    """Two stages (the toy's three), one layer per block (its two), 32 / 64 channels (its 32 / 48 / 48), v-prediction (its eps)."""
    return {"sample_size": SHAPE[1], "in_channels": 4, "out_channels": 4, "block_out_channels": (32, 64), "layers_per_block": 1,
            "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"), "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
            "cross_attention_dim": TEXT_HIDDEN, "attention_head_dim": 8, "norm_num_groups": 16}


def train_teacher(root: Path, world: MixtureWorld, steps: int, batch: int = 32, seed: int = 0) -> Path:
    """The second teacher, trained on ``world`` and saved as a pipeline folder (the toy's random VAE and text encoder)."""
    torch.manual_seed(seed)
    parts = build_tiny_components(prediction_type="v_prediction", seed=seed)
    unet = parts["unet"] = UNet2DConditionModel(**second_unet_config()).train()
    schedule = NoiseSchedule.from_scheduler_config(parts["scheduler"].config)
    with torch.no_grad():
        c = encode_prompt(parts["tokenizer"], parts["text_encoder"], [*PROMPTS, ""])
    denoiser, optimizer = Denoiser(unet, schedule, "v_prediction"), torch.optim.Adam(unet.parameters(), lr=1e-3)
    for _ in range(steps):
        labels = torch.randint(len(PROMPTS), (batch,))
        x0, eps, t = world.sample(labels), torch.randn(batch, *SHAPE), torch.randint(0, schedule.num_train_timesteps, (batch,))
        text = c[torch.where(torch.rand(batch) < 0.1, len(PROMPTS), labels)]  # 10% empty prompts: CFG for the distillation term
        out = denoiser(schedule.add_noise(x0, eps, t), t, text)
        loss = F.mse_loss(out.model_output, denoiser.target(x0, eps, t))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    unet.eval()
    return save_tiny_pipeline(root, parts)


def _set_phase(m: LADD, phase: str) -> None:
    for p in m.heads.parameters():
        p.requires_grad_(phase == "discriminator")
    for name, p in m.unet.named_parameters():
        p.requires_grad_(phase == "generator" and "lora_" in name)


def train_student(teacher: Path, world: MixtureWorld, steps: int, **options: Any) -> LADD:
    """LADD on ``teacher`` with ``tiny/ladd``'s method options (``options`` override), batch, learning rates and EMA; the
    student's LoRA holds the EMA weights at the end, as the export would."""
    config = load_config("tiny/ladd")
    m = LADD(load_teacher(ModelConfig(pretrained_model_name_or_path=str(teacher), local_files_only=True)),
             LADDConfig(**{**config["method"], **options}))
    with torch.no_grad():
        c = encode_prompt(m.components.tokenizer, m.components.text_encoder, list(PROMPTS))
    lora = [p for name, p in m.unet.named_parameters() if "lora_" in name]
    ema = [p.detach().clone() for p in lora]
    train, decay = config["train"], config["train"]["ema_decay"]
    opt_g = torch.optim.AdamW(lora, lr=train["learning_rate"], weight_decay=0.0)
    opt_d = torch.optim.Adam(m.heads.parameters(), lr=config["phases"]["discriminator"]["learning_rate"], betas=(0.0, 0.99))
    for step in range(steps):
        labels = torch.randint(len(PROMPTS), (train["train_batch_size"],))
        batch, ctx = {"latents": world.sample(labels), "prompt_embeds": c[labels]}, StepContext(step, modules=m.models)
        for phase, optimizer, params in (("generator", opt_g, lora), ("discriminator", opt_d, list(m.heads.parameters()))):
            _set_phase(m, phase)
            m.compute_loss(phase, batch, ctx).loss.backward()
            torch.nn.utils.clip_grad_norm_(params, train["max_grad_norm"])
            optimizer.step()
            optimizer.zero_grad()
        with torch.no_grad():
            for e, p in zip(ema, lora):
                e.lerp_(p, 1 - decay)
    with torch.no_grad():
        for e, p in zip(ema, lora):
            p.copy_(e)
    return m


@torch.no_grad()
def student_fd(m: LADD, world: MixtureWorld, steps: tuple[int, ...] = (1, 2, 4), images: int = 1024, seed: int = 1) -> dict[int, float]:
    """Fréchet distance, in latent space, of the student's samples at each step count (its own LCMScheduler, the same
    prompts and seeds for every count) against as many real latents."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(images) % len(PROMPTS)
    real = world.sample(labels, g).flatten(1).double()
    c = encode_prompt(m.components.tokenizer, m.components.text_encoder, list(PROMPTS))[labels]
    fds = {}
    for n in steps:
        scheduler, g = copy.deepcopy(m.scheduler()), torch.Generator().manual_seed(seed + 1)
        latents = torch.randn(images, *SHAPE, generator=g)
        scheduler.set_timesteps(n)
        for t in scheduler.timesteps:
            out = m.unet(latents, t, encoder_hidden_states=c).sample
            latents = scheduler.step(out, t, latents, generator=g).prev_sample
        fake = latents.flatten(1).double()
        fds[n] = frechet_distance(real.mean(0), real.T.cov(), fake.mean(0), fake.T.cov())
    return fds


def run_step_check(root: Path, teacher_steps: int, student_steps: int, images: int = 1024, **options: Any) -> dict[int, float]:
    """Teacher, student, and the student's FD at 1, 2 and 4 steps."""
    world = MixtureWorld()
    teacher = train_teacher(root / "teacher", world, teacher_steps)
    torch.manual_seed(0)  # the student's draws as in benchmarks/results/second_teacher/fault9_diag.py
    return student_fd(train_student(teacher, world, student_steps, **options), world, images=images)
