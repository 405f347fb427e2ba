"""Faults that must not lose or corrupt work: non-finite gradients, exploded weights, divergence, fp16 overflow
skips, a re-save killed half-way, damaged or incomplete checkpoints, EMA on the parameters' device."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from test_engine import FakeConfig, FakeMethod, make_engine

from distill_diffusion.errors import UserError
from distill_diffusion.trainers.engine import checkpoints as ckpt
from distill_diffusion.trainers.engine.loop import NonFiniteLossError
from distill_diffusion.trainers.methods.base import LossOutput, StepContext


class _NaNGrad(torch.autograd.Function):
    """Identity forward (a finite loss), NaN backward: the gradient fault a loss check cannot see."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return torch.full_like(grad, float("nan"))


class FaultyMethod(FakeMethod):
    """FakeMethod whose gradients are NaN once at each listed step (loss stays finite), with a target-like state."""

    def __init__(self, nan_grad_steps: set[int] = frozenset(), nan_loss_after: int = -1):
        super().__init__(FakeConfig(nan_after=nan_loss_after))
        self.nan_grad_steps, self.step_ends = set(nan_grad_steps), []
        self.target = [p.detach().clone() for p in self.net.parameters()]

    def compute_loss(self, phase: str, batch: dict[str, Any], ctx: StepContext) -> LossOutput:
        out = super().compute_loss(phase, batch, ctx)
        if ctx.step not in self.nan_grad_steps:
            return out
        self.nan_grad_steps.discard(ctx.step)  # a transient fault: the retry of this step is clean
        return LossOutput(_NaNGrad.apply(out.loss))

    def on_step_end(self, ctx: StepContext) -> None:
        self.step_ends.append(ctx.step)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"target.{i}": t for i, t in enumerate(self.target)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for i, t in enumerate(self.target):
            t.copy_(state[f"target.{i}"])


def weights(folder: Path) -> list[torch.Tensor]:
    from safetensors.torch import load_file

    return list(load_file(str(folder / "model.safetensors")).values())


def test_nan_gradient_with_finite_loss_is_skipped_and_never_checkpointed(tmp_path: Path) -> None:
    method = FaultyMethod(nan_grad_steps={2})
    engine = make_engine(tmp_path, method, max_train_steps=4, checkpointing_steps=1)
    engine.train()
    assert engine.state.nonfinite_total == 1 and engine.state.global_step == 4
    assert method.step_ends == [1, 2, 3, 4]  # the skipped micro-step advanced nothing
    for folder in ckpt.list_checkpoints(tmp_path / "out"):
        assert all(torch.isfinite(w).all() for w in weights(folder)), folder
    assert all(torch.isfinite(p).all() for p in method.net.parameters())


def test_exploded_weights_are_never_written_as_a_checkpoint(tmp_path: Path) -> None:
    """``--learning_rate 1e30``: Adam's first step makes weights of ~1e30 (finite, but their norm overflows)."""
    engine = make_engine(tmp_path, max_train_steps=5, checkpointing_steps=1, learning_rate=1e30)
    with pytest.raises(NonFiniteLossError, match="not finite"):
        engine.train()
    assert ckpt.resolve_resume("latest", tmp_path / "out") is None


def test_divergence_sets_aside_the_checkpoint_whose_weights_diverged(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, FaultyMethod(nan_loss_after=2), max_train_steps=6, checkpointing_steps=1, max_nonfinite_steps=2)
    with pytest.raises(NonFiniteLossError, match="moved to diverged-checkpoint-2"):
        engine.train()
    out = tmp_path / "out"
    assert (out / "diverged-checkpoint-2").is_dir()
    assert ckpt.resolve_resume("latest", out) == out / "checkpoint-1"


def test_refused_save_when_weights_are_nan(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, max_train_steps=1)
    with torch.no_grad():
        engine.method.net.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="no checkpoint was written"):
        engine.save()
    assert not (tmp_path / "out" / "checkpoint-0").exists()


def test_fp16_overflow_skip_advances_nothing(tmp_path: Path) -> None:
    """A GradScaler-skipped update must not step the LR schedule, global_step, the EMA or the method's target."""
    from accelerate.utils import DistributedType

    method = FaultyMethod(nan_grad_steps={1})
    engine = make_engine(tmp_path, method, max_train_steps=3, use_ema=True, lr_scheduler="linear")
    acc = engine.accelerator
    assert acc.distributed_type == DistributedType.NO
    # accelerate makes no GradScaler on the CPU; torch's CPU GradScaler stands in for the CUDA one
    acc.scaler, acc.native_amp = torch.amp.GradScaler("cpu", init_scale=2.0**4), True
    for opt in engine.optimizers.values():
        opt.__setstate__({**opt.__getstate__(), "scaler": acc.scaler})
    ema = engine.emas["net"]
    engine.train()
    assert engine.state.global_step == 3 and engine.state.overflow_total == 1 and engine.state.nonfinite_total == 0
    assert method.step_ends == [1, 2, 3]
    assert engine.lr_schedulers["net"].last_epoch == 3 and ema.optimization_step == 3
    assert acc.scaler.get_scale() == 2.0**3  # the scaler saw the overflow and halved its scale


def test_resave_killed_between_deleting_and_renaming_keeps_a_complete_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine(tmp_path, max_train_steps=2, checkpointing_steps=2)
    engine.train()
    out = tmp_path / "out"
    good = weights(out / "checkpoint-2")
    real_replace = ckpt.os.replace
    calls: list[tuple[str, str]] = []

    def killed_after_first(src: Any, dst: Any) -> None:
        calls.append((str(src), str(dst)))
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed between moving the old folder aside and renaming the new one in
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", killed_after_first)
    with pytest.raises(KeyboardInterrupt):
        engine.save()  # re-save of step 2
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    latest = ckpt.resolve_resume("latest", out)
    assert latest == out / "checkpoint-2"
    assert ckpt.verify_checkpoint(latest) == []
    assert all(torch.equal(a, b) for a, b in zip(weights(latest), good))


def _checkpoint(tmp_path: Path, **train: Any) -> tuple[Path, FaultyMethod]:
    method = FaultyMethod()
    make_engine(tmp_path, method, max_train_steps=2, checkpointing_steps=2, **train).train()
    return tmp_path / "out" / "checkpoint-2", method


@pytest.mark.parametrize("victim", ["model.safetensors", "optimizer.bin", "method_state.safetensors", "ema_net.safetensors"])
@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_damaged_checkpoint_is_a_user_error_before_loading(tmp_path: Path, victim: str, damage: str) -> None:
    folder, _ = _checkpoint(tmp_path, use_ema=True)
    path = folder / victim
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    engine = make_engine(tmp_path / "again", FaultyMethod(), max_train_steps=4, use_ema=True)
    with pytest.raises(UserError, match=f"is damaged: {victim}"):
        engine.resume(folder)


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]", '{"train": 5}'])
def test_malformed_training_state_is_a_user_error(tmp_path: Path, content: str) -> None:
    folder, _ = _checkpoint(tmp_path)
    (folder / ckpt.STATE_FILE).write_text(content)
    with pytest.raises(UserError, match="training_state.json"):
        make_engine(tmp_path / "again", FaultyMethod(), max_train_steps=4).resume(folder)


def test_checkpoint_without_method_state_is_refused_for_a_method_with_state(tmp_path: Path) -> None:
    """Written before the manifest (no size list): the missing target network must still be noticed."""
    folder, _ = _checkpoint(tmp_path)
    state = json.loads((folder / ckpt.STATE_FILE).read_text())
    del state["files"]
    (folder / ckpt.STATE_FILE).write_text(json.dumps(state))
    (folder / "method_state.safetensors").unlink()
    with pytest.raises(UserError, match="has no method_state.safetensors"):
        make_engine(tmp_path / "again", FaultyMethod(), max_train_steps=4).resume(folder)


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_missing_random_state_warns_that_the_resume_is_not_exact(tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    folder, _ = _checkpoint(tmp_path)
    rng = folder / "random_states_0.pkl"
    rng.unlink() if damage == "missing" else rng.write_bytes(rng.read_bytes()[:10])
    engine = make_engine(tmp_path / "again", FaultyMethod(), max_train_steps=4)
    with caplog.at_level(logging.WARNING):
        engine.resume(folder)
    assert "resume is not exact" in caplog.text and engine.state.global_step == 2


def test_checkpoint_with_nan_weights_is_refused_on_resume(tmp_path: Path) -> None:
    """A poisoned checkpoint written by an older version (no finite check on save) is not resumed from."""
    from safetensors.torch import load_file, save_file

    folder, _ = _checkpoint(tmp_path)
    state = {k: torch.full_like(v, float("nan")) for k, v in load_file(str(folder / "model.safetensors")).items()}
    save_file(state, str(folder / "model.safetensors"))
    meta = json.loads((folder / ckpt.STATE_FILE).read_text())
    meta["files"]["model.safetensors"] = (folder / "model.safetensors").stat().st_size
    (folder / ckpt.STATE_FILE).write_text(json.dumps(meta))
    with pytest.raises(UserError, match="non-finite weights"):
        make_engine(tmp_path / "again", FaultyMethod(), max_train_steps=4).resume(folder)


def test_wrapper_prefixes_are_stripped() -> None:
    assert ckpt.strip_wrapper_prefix("module.conv_in.weight") == "conv_in.weight"
    assert ckpt.strip_wrapper_prefix("module._orig_mod.a.b") == "a.b"
    assert ckpt.strip_wrapper_prefix("modules.x") == "modules.x"


def test_ema_resume_loads_onto_the_parameters_device_cpu(tmp_path: Path) -> None:
    folder, _ = _checkpoint(tmp_path, use_ema=True)
    engine = make_engine(tmp_path / "again", FaultyMethod(), max_train_steps=4, use_ema=True)
    engine.resume(folder)
    engine.train()
    assert engine.state.global_step == 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ema_resume_on_cuda_keeps_shadow_weights_on_the_gpu(tmp_path: Path) -> None:
    """``load_file`` returns CPU tensors; the shadow weights must land on the parameters' device before ``ema.step``."""
    folder, _ = _checkpoint(tmp_path, use_ema=True)
    method = FaultyMethod()
    method.net.cuda()
    method.target = [t.cuda() for t in method.target]
    engine = make_engine(tmp_path / "again", method, max_train_steps=4, use_ema=True)
    engine.resume(folder)
    assert all(t.device.type == "cuda" for t in engine.emas["net"].shadow_params)
    engine.train()  # the first ema.step after resume mixed CPU and CUDA tensors before the fix
    assert engine.state.global_step == 4


def test_stale_old_and_tmp_folders_are_pruned(tmp_path: Path) -> None:
    folder, _ = _checkpoint(tmp_path)
    out = folder.parent
    shutil.copytree(folder, out / ".old-checkpoint-1")
    (out / ".tmp-checkpoint-3").mkdir()
    ckpt.prune(out, None)
    assert not (out / ".old-checkpoint-1").exists() and not (out / ".tmp-checkpoint-3").exists()
