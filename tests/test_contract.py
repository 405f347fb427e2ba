"""The method contract, proven on fake methods (tests/fake_methods.py) that touch no engine code: phases with
their own optimizers, repeats and a shared store; a skipped step that changes nothing; stages with a per-stage
LR schedule, EMA hand-over and an exact resume in the middle of a stage."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from fake_methods import FakeGAN, FakeGANConfig, FakeStaged, FakeStagedConfig, Numbered, collate

from distill_diffusion.config import TrainConfig, build_run_config
from distill_diffusion.trainers.engine.build import make_accelerator
from distill_diffusion.trainers.engine.data_loop import build_dataloader
from distill_diffusion.trainers.engine.loop import Engine
from distill_diffusion.trainers.engine.optim import phase_optim
from distill_diffusion.trainers.methods.base import OptimizerSettings, Phase, Stage


def engine_for(method: Any, tmp_path: Path, **train: Any) -> Engine:
    train = {"output_dir": str(tmp_path / "out"), "train_batch_size": 4, "max_train_steps": 3, "learning_rate": 0.01,
             "checkpointing_steps": 1000, "progress_bar": False, "seed": 0, "adam_weight_decay": 0.0, **train}
    run = build_run_config("fake", type(method.config), {"train": train})
    loader = build_dataloader(Numbered(), run.train.train_batch_size, 0, collate, run.train.seed)
    return Engine(run, make_accelerator(run.train), method, loader)


def spy_on_steps(engine: Engine) -> list[tuple[str, set[str]]]:
    """Record, at each optimizer step, which modules hold gradients."""
    seen: list[tuple[str, set[str]]] = []
    for name, optimizer in engine.optimizers.items():
        original = optimizer.step

        def step(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            holders = {m for m, module in engine.unwrapped.items() if any(p.grad is not None for p in module.parameters())}
            seen.append((_name, holders))
            return _original(*args, **kwargs)

        optimizer.step = step
    return seen


@pytest.mark.filterwarnings("ignore:Seems like .optimizer.step")
def test_each_phase_gradients_reach_only_its_modules(tmp_path: Path) -> None:
    engine = engine_for(FakeGAN(FakeGANConfig()), tmp_path, max_train_steps=2)
    seen = spy_on_steps(engine)
    engine.train()
    assert seen == [("generator", {"gen"}), ("discriminator", {"disc"}), ("discriminator", {"disc"})] * 2
    # every weight is trainable again after the step (checkpoints save by requires_grad)
    assert all(p.requires_grad for module in engine.unwrapped.values() for p in module.parameters())


def test_repeats_take_fresh_micro_batches_and_read_the_generator_store(tmp_path: Path) -> None:
    method = FakeGAN(FakeGANConfig())
    engine = engine_for(method, tmp_path, max_train_steps=1)
    engine.train()
    (g, _, _, g_ids), (d0, _, r0, d0_ids), (d1, _, r1, d1_ids) = method.seen
    assert (g, d0, d1, r0, r1) == ("generator", "discriminator", "discriminator", 0, 1)
    assert g_ids == d0_ids and not set(d0_ids) & set(d1_ids)
    assert engine.state.batches_seen == 2


def test_phase_optimizer_settings(tmp_path: Path) -> None:
    engine = engine_for(FakeGAN(FakeGANConfig()), tmp_path)
    group = engine.optimizers["discriminator"].param_groups[0]
    assert group["betas"] == (0.0, 0.99) and group["weight_decay"] == 0.0 and group["lr"] == pytest.approx(0.02)
    assert engine.optimizers["generator"].param_groups[0]["betas"] == (0.9, 0.999)


def test_run_phase_section_overrides_the_phase_and_the_train_section() -> None:
    phase = Phase("discriminator", ("disc",), optimizer=OptimizerSettings(lr_scale=2.0, betas=(0.0, 0.99)))
    over = SimpleNamespace(learning_rate=1e-3, adam_beta1=0.5, adam_beta2=None, adam_weight_decay=0.1, max_grad_norm=0.0)
    run = SimpleNamespace(train=TrainConfig(learning_rate=1e-4), phases={"discriminator": over})
    got = phase_optim(phase, run, num_processes=1)
    assert got.lr == pytest.approx(2e-3) and got.betas == (0.5, 0.99) and got.weight_decay == 0.1 and got.max_grad_norm == 0.0
    plain = phase_optim(Phase("generator", ("gen",)), run, num_processes=1)
    assert plain.lr == pytest.approx(1e-4) and plain.betas == (0.9, 0.999) and plain.max_grad_norm == 1.0


def test_a_skipped_step_changes_nothing(tmp_path: Path) -> None:
    """The discriminator's second update fails at step 1: the generator's and first discriminator update of that
    step are rolled back, and nothing else advances."""
    method = FakeGAN(FakeGANConfig(nan_disc_at=1))
    engine = engine_for(method, tmp_path, max_train_steps=3, max_nonfinite_steps=1, lr_scheduler="linear")
    micro = engine.next_micro()
    assert engine.step(micro) is not None  # step 0 succeeds
    engine.state.global_step = 1
    before = {n: [p.detach().clone() for p in m.parameters()] for n, m in engine.unwrapped.items()}
    opt_before = {n: o.state_dict()["state"][0]["exp_avg"].clone() for n, o in engine.optimizers.items()}
    lr_before = {n: s.last_epoch for n, s in engine.lr_schedulers.items()}
    with pytest.raises(Exception, match="non-finite"):
        engine.step(engine.next_micro())
    for name, module in engine.unwrapped.items():
        assert all(torch.equal(a, b) for a, b in zip(module.parameters(), before[name])), name
    for name, optimizer in engine.optimizers.items():
        assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], opt_before[name]), name
    assert {n: s.last_epoch for n, s in engine.lr_schedulers.items()} == lr_before
    assert all(p.grad is None for m in engine.unwrapped.values() for p in m.parameters())


def test_every_skips_a_phase_on_other_steps(tmp_path: Path) -> None:
    class Sparse(FakeGAN):
        def phases(self) -> list[Phase]:
            return [Phase("generator", ("gen",)), Phase("discriminator", ("disc",), every=2)]

    method = Sparse(FakeGANConfig())
    engine_for(method, tmp_path, max_train_steps=3).train()
    assert [(phase, step) for phase, step, _, _ in method.seen] == [
        ("generator", 0), ("discriminator", 0), ("generator", 1), ("generator", 2), ("discriminator", 2)]


def staged(tmp_path: Path, **train: Any) -> Engine:
    return engine_for(FakeStaged(FakeStagedConfig()), tmp_path, lr_scheduler="linear", use_ema=True, ema_decay=0.5, **train)


def test_stages_run_in_order_with_a_schedule_each_and_hand_over_the_ema(tmp_path: Path) -> None:
    engine = staged(tmp_path)
    lrs: list[float] = []
    engine.callbacks.append(lambda step, logs: lrs.append(logs["net/lr"]))
    engine.train()
    assert engine.total_steps == 9 and engine.state.global_step == 9 and engine.state.stage == 3
    assert engine.method.stage_ends == [(0, 2), (1, 2), (2, 2)]
    # linear decay over each stage: 0 at each stage's last step, back up at the next stage's first
    assert [round(x, 6) for x in (lrs[2], lrs[6], lrs[8])] == [0.0, 0.0, 0.0] and lrs[3] > 0.0 and lrs[7] > 0.0
    names = sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith("checkpoint-"))
    # every stage end is checkpointed, named by the stage its last step belonged to
    assert names == ["checkpoint-3-round-0", "checkpoint-7-round-1", "checkpoint-9-round-2"]


def test_resume_in_the_middle_of_stage_two_ends_equal_to_an_uninterrupted_run(tmp_path: Path) -> None:
    full = staged(tmp_path / "full")
    full.train()
    part = staged(tmp_path / "part", checkpointing_steps=5)
    part.train()  # checkpoints at 3 (stage end), 5 (inside stage 2), 7, 9
    resumed = staged(tmp_path / "part")
    resumed.resume(tmp_path / "part" / "out" / "checkpoint-5-round-1")
    assert resumed.state.stage == 1 and resumed.state.global_step == 5
    assert resumed.lr_schedulers["net"].last_epoch == 2  # two steps into the 4-step stage
    resumed.train()
    for a, b in zip(resumed.method.net.parameters(), full.method.net.parameters()):
        torch.testing.assert_close(a, b)
    for a, b in zip(resumed.method.teacher, full.method.teacher):
        torch.testing.assert_close(a, b)
    for a, b in zip(resumed.emas["net"].shadow_params, full.emas["net"].shadow_params):
        torch.testing.assert_close(a, b)


class ExportingStaged(FakeStaged):
    """Exports its teacher (the stage's hand-over) at the end of the stages that ask for it."""

    def stages(self) -> list[Stage]:
        return [Stage(s.name, s.steps, export=s.name != "round-1") for s in super().stages()]

    def export(self, output_dir: Path) -> None:
        (output_dir / "teacher.json").write_text(json.dumps([t.tolist() for t in self.teacher]))


def test_a_stage_that_asks_is_exported_at_its_end_with_the_weights_it_handed_over(tmp_path: Path) -> None:
    engine = engine_for(ExportingStaged(FakeStagedConfig()), tmp_path, use_ema=True, ema_decay=0.5)
    exports: dict[str, list] = {}

    def read_exports(step: int, logs: dict[str, float]) -> None:  # the round-0 export, read before round 2 changes it
        if step == 4:
            exports["round-0"] = json.loads((tmp_path / "out" / "round-0" / "teacher.json").read_text())

    engine.callbacks.append(read_exports)
    teacher_after_round_0 = []
    original = engine.method.on_stage_end
    engine.method.on_stage_end = lambda stage, ema: (original(stage, ema), teacher_after_round_0.append([t.tolist() for t in engine.method.teacher]))
    engine.train()
    assert exports["round-0"] == teacher_after_round_0[0]
    assert not (tmp_path / "out" / "round-1").exists() and (tmp_path / "out" / "round-2" / "teacher.json").is_file()
    assert not list((tmp_path / "out" / "round-0").glob(".tmp-*"))


def test_a_diverged_checkpoint_of_a_stage_is_set_aside_by_its_step(tmp_path: Path) -> None:
    from distill_diffusion.trainers.engine import checkpoints as ckpt

    staged(tmp_path).train()
    aside = ckpt.set_aside_diverged(tmp_path / "out", 7)
    assert aside is not None and aside.name == "diverged-checkpoint-7-round-1"
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "out")] == ["checkpoint-3-round-0", "checkpoint-9-round-2"]
    assert ckpt.resolve_resume("latest", tmp_path / "out").name == "checkpoint-9-round-2"
