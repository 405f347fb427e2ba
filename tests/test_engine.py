"""Engine invariants on a tiny regression "method": accumulation, resume, checkpoints, non-finite losses, LR."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from distill_diffusion.config import build_run_config
from distill_diffusion.trainers.engine import checkpoints as ckpt
from distill_diffusion.trainers.engine.build import make_accelerator
from distill_diffusion.trainers.engine.data_loop import build_dataloader
from distill_diffusion.trainers.engine.loop import Engine, NonFiniteLossError
from distill_diffusion.trainers.methods.base import LossOutput, MethodBase, Phase, StepContext


@dataclass
class FakeConfig:
    noise: float = 0.1
    nan_after: int = -1  # return NaN from this step on (−1: never)


class Points(Dataset):
    """y = 3x − 1 with fixed inputs."""

    def __init__(self, n: int = 32):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.x[i], "y": 3 * self.x[i].sum(0, keepdim=True) - 1}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


class FakeMethod(MethodBase):
    paper = "test"
    config_class = FakeConfig

    def __init__(self, config: FakeConfig):
        torch.manual_seed(0)
        self.config = config
        self.net = nn.Linear(4, 1)
        self.models = {"net": self.net}
        self.exported: list[Path] = []

    def phases(self) -> list[Phase]:
        return [Phase("net", "net")]

    def compute_loss(self, phase: str, batch: dict[str, Any], ctx: StepContext) -> LossOutput:
        if 0 <= self.config.nan_after <= ctx.step:
            return LossOutput(torch.tensor(float("nan"), requires_grad=True))
        # random input noise exercises the RNG state a resume must restore
        x = batch["x"] + self.config.noise * torch.randn_like(batch["x"])
        loss = ((self.models["net"](x) - batch["y"]) ** 2).mean()
        return LossOutput(loss, {"mean_y": float(batch["y"].mean())})

    def export(self, output_dir: Path) -> None:
        torch.save({}, output_dir / "marker.pt")
        (output_dir / "model_index.json").write_text("{}")


def make_engine(tmp_path: Path, method: FakeMethod | None = None, **train: Any) -> Engine:
    train = {"output_dir": str(tmp_path / "out"), "train_batch_size": 4, "max_train_steps": 6,
             "learning_rate": 0.05, "checkpointing_steps": 1000, "progress_bar": False, "seed": 0,
             "adam_weight_decay": 0.0, **train}
    run = build_run_config("fake", FakeConfig, {"train": train})
    method = method or FakeMethod(FakeConfig())
    loader = build_dataloader(Points(), run.train.train_batch_size, 0, collate, run.train.seed)
    return Engine(run, make_accelerator(run.train), method, loader)


def losses_of(engine: Engine) -> list[float]:
    seen: list[float] = []
    original = engine.step

    def record(micro: list[dict[str, Any]]) -> dict[str, float] | None:
        logs = original(micro)
        if logs is not None:
            seen.append(logs["net/loss"])
        return logs

    engine.step = record  # type: ignore[method-assign]
    engine.train()
    return seen


def test_loss_decreases(tmp_path: Path) -> None:
    losses = losses_of(make_engine(tmp_path, max_train_steps=40, learning_rate=0.3))
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.2 * sum(losses[:5]) / 5


def test_accumulation_matches_larger_batch(tmp_path: Path) -> None:
    """2 micro-batches of B give the same update as one batch of 2B (same samples, mean loss)."""
    a = make_engine(tmp_path / "a", FakeMethod(FakeConfig(noise=0.0)), train_batch_size=2, gradient_accumulation_steps=2, max_train_steps=3)
    b = make_engine(tmp_path / "b", FakeMethod(FakeConfig(noise=0.0)), train_batch_size=4, gradient_accumulation_steps=1, max_train_steps=3)
    a.train()
    b.train()
    for pa, pb in zip(a.method.net.parameters(), b.method.net.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    assert a.state.batches_seen == 6 and b.state.batches_seen == 3


def test_resume_gives_same_next_losses_and_weights(tmp_path: Path) -> None:
    full = make_engine(tmp_path / "full", max_train_steps=7)
    full_losses = losses_of(full)

    first = make_engine(tmp_path / "split", max_train_steps=7, checkpointing_steps=3)
    first_losses = losses_of(first)  # runs to 7, checkpoints at 3 and 6
    assert first_losses == pytest.approx(full_losses)
    resumed = make_engine(tmp_path / "split", max_train_steps=7, checkpointing_steps=3)
    resumed.resume(tmp_path / "split" / "out" / "checkpoint-3")
    assert resumed.state.global_step == 3
    tail = losses_of(resumed)
    assert tail == pytest.approx(full_losses[3:], rel=1e-6)
    for pa, pb in zip(resumed.method.net.parameters(), full.method.net.parameters()):
        torch.testing.assert_close(pa, pb)
    assert resumed.lr_schedulers["net"].last_epoch == full.lr_schedulers["net"].last_epoch


def test_resume_restores_ema(tmp_path: Path) -> None:
    full = make_engine(tmp_path / "full", max_train_steps=4, use_ema=True, ema_decay=0.5)
    full.train()
    part = make_engine(tmp_path / "part", max_train_steps=4, use_ema=True, ema_decay=0.5, checkpointing_steps=2)
    part.train()
    again = make_engine(tmp_path / "part", max_train_steps=4, use_ema=True, ema_decay=0.5, checkpointing_steps=2)
    again.resume(tmp_path / "part" / "out" / "checkpoint-2")
    again.train()
    for sa, sb in zip(again.emas["net"].shadow_params, full.emas["net"].shadow_params):
        torch.testing.assert_close(sa, sb)


def test_interrupted_checkpoint_is_never_latest(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, max_train_steps=4, checkpointing_steps=2)
    engine.train()
    out = tmp_path / "out"
    # a save killed mid-write: the temporary folder exists, and a renamed folder lacks its state file
    (out / ".tmp-checkpoint-9").mkdir()
    (out / ".tmp-checkpoint-9" / "model.safetensors").write_bytes(b"partial")
    (out / "checkpoint-8").mkdir()
    assert ckpt.resolve_resume("latest", out) == out / "checkpoint-4"
    assert ckpt.read_state(out / "checkpoint-4")["train"]["global_step"] == 4


def test_checkpoints_total_limit_prunes_oldest(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, max_train_steps=8, checkpointing_steps=2, checkpoints_total_limit=2)
    engine.train()
    names = sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith("checkpoint-"))
    assert names == ["checkpoint-6", "checkpoint-8"]


def test_resume_latest_without_checkpoints_starts_fresh(tmp_path: Path) -> None:
    assert ckpt.resolve_resume("latest", tmp_path / "nothing") is None


def test_resume_from_missing_checkpoint_is_user_error(tmp_path: Path) -> None:
    from distill_diffusion.errors import UserError

    with pytest.raises(UserError, match="no complete checkpoint"):
        ckpt.resolve_resume("checkpoint-5", tmp_path)


def test_nonfinite_losses_are_skipped_then_stop(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, FakeMethod(FakeConfig(nan_after=2)), max_train_steps=10, max_nonfinite_steps=3)
    with pytest.raises(NonFiniteLossError, match="non-finite 3 steps in a row"):
        engine.train()
    assert engine.state.global_step == 2
    assert engine.state.nonfinite_total == 3


def test_lr_schedule_counts_optimizer_steps(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, max_train_steps=10, lr_scheduler="linear", lr_warmup_steps=4, gradient_accumulation_steps=2)
    engine.train()
    # linear decay reaches 0 exactly at max_train_steps optimizer steps, however many micro-batches
    assert engine.lr_schedulers["net"].get_last_lr()[0] == pytest.approx(0.0)
    assert engine.lr_schedulers["net"].last_epoch == 10


def test_export_is_atomic_and_complete(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, max_train_steps=1)
    engine.train()
    engine.export()
    out = tmp_path / "out"
    assert (out / "model_index.json").is_file() and (out / "marker.pt").is_file()
    assert not (out / ".tmp-export").exists()


def test_checkpoint_state_is_json_and_weights_are_safetensors(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, max_train_steps=2, checkpointing_steps=2, use_ema=True)
    engine.train()
    folder = tmp_path / "out" / "checkpoint-2"
    state = json.loads((folder / ckpt.STATE_FILE).read_text())
    assert state["train"]["global_step"] == 2
    assert (folder / "ema_net.safetensors").is_file()
    assert list(folder.glob("*.safetensors"))
    assert not list(folder.glob("custom_checkpoint_*"))  # nothing pickled by us


def test_the_rollback_copy_of_an_optimizer_state_equals_a_deepcopy_and_is_independent() -> None:
    import copy

    from distill_diffusion.trainers.engine.phase_step import clone_optimizer_state

    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    sum(p.square().sum() for p in params).backward()
    optimizer.step()
    state = optimizer.state_dict()
    fast, slow = clone_optimizer_state(state), copy.deepcopy(state)
    assert fast["param_groups"] == slow["param_groups"] and fast["state"].keys() == slow["state"].keys()
    for k in slow["state"]:
        for name, value in slow["state"][k].items():
            assert torch.equal(fast["state"][k][name], value)
    optimizer.step()  # the live state moves on; the copy does not
    assert not torch.equal(fast["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    optimizer.load_state_dict(fast)
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], slow["state"][0]["exp_avg"])
