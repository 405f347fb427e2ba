"""Fake methods that prove the engine's contract before real methods rely on it (docs/adding_a_method.md).

``FakeGAN``: two phases, a generator and a discriminator with its own optimizer settings, two discriminator
updates per step, the discriminator reading the generator's samples from the step's store. ``FakeStaged``:
three stages whose end copies the EMA weights into a "teacher" the method keeps as its state, as progressive
distillation does between rounds. Neither touches engine code: they only implement :class:`MethodBase`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from distill_diffusion.trainers.methods.base import (
    LossOutput,
    MethodBase,
    OptimizerSettings,
    Phase,
    Stage,
    StepContext,
)


class Numbered(Dataset):
    """Items ``{"x": 4 numbers, "id": i}``; ids show which micro-batch a phase saw."""

    def __init__(self, n: int = 64):
        self.x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.x[i], "id": torch.tensor(i)}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


@dataclass
class FakeGANConfig:
    nan_disc_at: int = -1  # the discriminator's loss is NaN at this step (its second repeat)


class FakeGAN(MethodBase):
    paper = "test: a two-phase GAN"
    config_class = FakeGANConfig
    phase_names = ("generator", "discriminator")

    def __init__(self, config: FakeGANConfig):
        torch.manual_seed(0)
        self.config = config
        self.models = {"gen": nn.Linear(4, 4), "disc": nn.Linear(4, 1)}
        self.seen: list[tuple[str, int, int, list[int]]] = []  # (phase, step, repeat, ids)

    def phases(self) -> list[Phase]:
        return [
            Phase("generator", ("gen",)),
            Phase("discriminator", ("disc",), optimizer=OptimizerSettings(lr_scale=2.0, betas=(0.0, 0.99), weight_decay=0.0),
                  repeats=2, ema=False, gradient_checkpointing=False),
        ]

    def compute_loss(self, phase: str, batch: dict[str, Any], ctx: StepContext) -> LossOutput:
        self.seen.append((phase, ctx.step, ctx.repeat, batch["id"].tolist()))
        if phase == "generator":
            fake = ctx.module("gen")(batch["x"])
            ctx.store["fake"] = fake.detach()
            # the generator's loss goes through the discriminator: its gradients must stay on the generator
            return LossOutput(-ctx.module("disc")(fake).mean())
        real, fake = ctx.module("disc")(batch["x"]), ctx.module("disc")(ctx.store["fake"])
        loss = torch.relu(1 - real).mean() + torch.relu(1 + fake).mean()
        if ctx.step == self.config.nan_disc_at and ctx.repeat == 1:
            loss = loss * float("nan")
        return LossOutput(loss)

    def export(self, output_dir: Path) -> None:
        torch.save({}, output_dir / "unused.pt")


@dataclass
class FakeStagedConfig:
    steps: tuple[int, ...] = (3, 4, 2)


class FakeStaged(MethodBase):
    paper = "test: three stages"
    config_class = FakeStagedConfig

    def __init__(self, config: FakeStagedConfig):
        torch.manual_seed(0)
        self.config = config
        self.net = nn.Linear(4, 1)
        self.models = {"net": self.net}
        self.teacher = [p.detach().clone() for p in self.net.parameters()]
        self.stage_ends: list[tuple[int, int]] = []  # (stage, number of EMA tensors handed over)

    def phases(self) -> list[Phase]:
        return [Phase("net", ("net",))]

    def stages(self) -> list[Stage]:
        return [Stage(f"round-{i}", n) for i, n in enumerate(self.config.steps)]

    def compute_loss(self, phase: str, batch: dict[str, Any], ctx: StepContext) -> LossOutput:
        with torch.no_grad():
            target = nn.functional.linear(batch["x"], self.teacher[0], self.teacher[1]) + 1.0
        noise = 0.1 * torch.randn_like(batch["x"])  # RNG a resume must restore
        return LossOutput(((ctx.module("net")(batch["x"] + noise) - target) ** 2).mean())

    def on_stage_end(self, stage: int, ema: dict[str, list[torch.Tensor]]) -> None:
        """The student's EMA becomes the next stage's teacher (progressive distillation's hand-over)."""
        self.stage_ends.append((stage, len(ema.get("net", []))))
        source = ema.get("net") or [p.detach() for p in self.net.parameters()]
        self.teacher = [t.detach().clone() for t in source]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"teacher.{i}": t for i, t in enumerate(self.teacher)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.teacher = [state[f"teacher.{i}"].clone() for i in range(len(self.teacher))]

    def export(self, output_dir: Path) -> None:
        torch.save({}, output_dir / "unused.pt")
