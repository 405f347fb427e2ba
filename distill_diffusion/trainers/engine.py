"""The one training loop every method runs through (accumulation, autocast, clipping, EMA, checkpoints).

The engine does not know which method it runs: it asks the method for its phases and losses
(:mod:`distill_diffusion.trainers.base`) and owns everything else. Gradient accumulation is explicit:
one optimizer step consumes ``gradient_accumulation_steps`` micro-batches, gradients are synchronised
only on the last one (``no_sync``), and ``global_step`` counts optimizer steps on every process.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DistributedType
from accelerate.logging import get_logger
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from distill_diffusion.config import RunConfig
from distill_diffusion.errors import UserError
from distill_diffusion.trainers import checkpointing as ckpt
from distill_diffusion.trainers.base import DistillationMethod, Phase
from distill_diffusion.trainers.data_loop import batch_stream
from distill_diffusion.trainers.ema import ema_weights, load_ema, save_ema
from distill_diffusion.trainers.optim import build_lr_scheduler, build_optimizer, effective_learning_rate

logger = get_logger(__name__)


class NonFiniteLossError(UserError):
    """Too many non-finite losses in a row: the run has diverged."""


@dataclass
class TrainState:
    """Counters saved with every checkpoint (JSON)."""

    global_step: int = 0
    batches_seen: int = 0
    nonfinite_total: int = 0
    nonfinite_in_a_row: int = 0
    stage: int = 0


class Engine:
    """Runs ``method`` under ``accelerator`` with the ``run.train`` settings.

    Build it with :func:`distill_diffusion.trainers.runner.build_engine` (which loads models and data),
    or directly in tests with already-built objects.
    """

    def __init__(self, run: RunConfig, accelerator: Accelerator, method: DistillationMethod, dataloader: Any):
        self.run, self.cfg, self.accelerator, self.method = run, run.train, accelerator, method
        self.output_dir = Path(self.cfg.output_dir)
        self.state = TrainState()
        self.phases: list[Phase] = method.phases()
        modules = {p.module for p in self.phases}
        lr = effective_learning_rate(self.cfg, accelerator.num_processes)
        self.optimizers = {p.name: build_optimizer(method.trainable_parameters(p), lr * p.lr_scale, self.cfg) for p in self.phases}
        names = sorted(modules)
        prepared = accelerator.prepare(*[method.models[n] for n in names], *self.optimizers.values(), dataloader)
        for name, module in zip(names, prepared[: len(names)]):
            method.models[name] = module
        self.optimizers = dict(zip(self.optimizers, prepared[len(names) : -1]))
        self.dataloader = prepared[-1]
        ckpt.register_trainable_only_hooks(accelerator)
        self.lr_schedulers = {n: build_lr_scheduler(o, self.cfg) for n, o in self.optimizers.items()}
        # listed once: walking a UNet's parameters every step costs milliseconds
        self.params = {p.name: method.trainable_parameters(p) for p in self.phases}
        self.emas = self._build_emas() if self.cfg.use_ema else {}

    def _build_emas(self) -> dict[str, EMAModel]:
        return {
            p.name: EMAModel(self.params[p.name], decay=self.cfg.ema_decay)
            for p in self.phases
            if p.ema
        }

    # ------------------------------------------------------------------ checkpoints

    def save(self) -> Path:
        """Atomic checkpoint of models, optimizers, RNG (accelerate), EMA, LR schedules and counters."""

        def write(folder: Path) -> None:
            self.accelerator.save_state(str(folder))
            if self.accelerator.is_main_process:
                for name, ema in self.emas.items():
                    save_ema(ema, folder, name)
                _save_method_state(self.method, folder)

        state = {"train": asdict(self.state), "lr_schedulers": {n: _jsonable(s.state_dict()) for n, s in self.lr_schedulers.items()}}
        return ckpt.save_checkpoint(
            self.output_dir,
            self.state.global_step,
            write,
            state,
            self.cfg.checkpoints_total_limit,
            is_main=self.accelerator.is_main_process,
            barrier=self.accelerator.wait_for_everyone,
        )

    def resume(self, folder: Path) -> None:
        """Restore everything :meth:`save` wrote; the next step is the one an uninterrupted run takes."""
        self.accelerator.load_state(str(folder))
        saved = ckpt.read_state(folder)
        self.state = TrainState(**saved["train"])
        for name, sched_state in saved["lr_schedulers"].items():
            self.lr_schedulers[name].load_state_dict(sched_state)
        for name, ema in self.emas.items():
            load_ema(ema, folder, name)
        _load_method_state(self.method, folder)
        logger.info(f"resumed from {folder} at step {self.state.global_step}")

    # ------------------------------------------------------------------ the loop

    def train(self) -> TrainState:
        """Run until ``max_train_steps`` optimizer steps; returns the final counters."""
        cfg, acc = self.cfg, self.accelerator
        stream = batch_stream(acc, self.dataloader, start=self.state.batches_seen)
        bar = tqdm(
            total=cfg.max_train_steps,
            initial=self.state.global_step,
            desc="train",
            disable=not (acc.is_local_main_process and cfg.progress_bar),
        )
        while self.state.global_step < cfg.max_train_steps:
            micro = [next(stream) for _ in range(cfg.gradient_accumulation_steps)]
            self.state.batches_seen += len(micro)
            logs = self.step(micro)
            if logs is None:
                continue
            self.state.global_step += 1
            self._after_step(logs, bar)
        bar.close()
        return self.state

    def step(self, micro: list[dict[str, Any]]) -> dict[str, float] | None:
        """One optimizer step for every phase; ``None`` if a loss was non-finite (step skipped)."""
        logs: dict[str, float] = {}
        for phase in self.phases:
            for _ in range(phase.repeats):
                phase_logs = self._phase_step(phase, micro)
                if phase_logs is None:
                    return self._skip()
                logs.update(phase_logs)
        self.state.nonfinite_in_a_row = 0
        return logs

    def _phase_step(self, phase: Phase, micro: list[dict[str, Any]]) -> dict[str, float] | None:
        acc, module = self.accelerator, self.method.models[phase.module]
        optimizer = self.optimizers[phase.name]
        logs: dict[str, float] = {}
        for i, batch in enumerate(micro):
            sync = i == len(micro) - 1
            with nullcontext() if sync else acc.no_sync(module):
                with acc.autocast():
                    out = self.method.compute_loss(phase.name, batch, self.state.global_step)
                loss = out.loss.float() / len(micro)
                if not self._all_finite(loss):
                    optimizer.zero_grad(set_to_none=True)
                    return None
                acc.backward(loss)
            for key, value in {f"{phase.name}/loss": out.loss.detach().item(), **out.logs}.items():
                logs[key] = logs.get(key, 0.0) + float(value) / len(micro)
        if self.cfg.max_grad_norm > 0:
            logs[f"{phase.name}/grad_norm"] = self._clip(self.params[phase.name])
        optimizer.step()
        self.lr_schedulers[phase.name].step()
        optimizer.zero_grad(set_to_none=True)
        logs[f"{phase.name}/lr"] = self.lr_schedulers[phase.name].get_last_lr()[0]
        return logs

    def _clip(self, params: list[torch.nn.Parameter]) -> float:
        """Clip to ``max_grad_norm``; returns the norm before clipping (nan where the backend hides it).

        Plain DDP / single device: unscale (fp16) then torch's clip, which is 2-3× cheaper than
        accelerate's DTensor-aware path on small models. FSDP and DeepSpeed go through accelerate,
        which knows how to clip sharded gradients.
        """
        acc = self.accelerator
        if acc.distributed_type in (DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU):
            acc.unscale_gradients()
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
        else:
            norm = acc.clip_grad_norm_(params, self.cfg.max_grad_norm)
        return float(norm) if norm is not None else float("nan")

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Every process must agree, or DDP would hang waiting for the skipped all-reduce."""
        flag = torch.isfinite(loss.detach()).all().float().reshape(1)
        return bool(self.accelerator.gather(flag).min().item() > 0)

    def _skip(self) -> None:
        self.state.nonfinite_total += 1
        self.state.nonfinite_in_a_row += 1
        logger.warning(f"non-finite loss at step {self.state.global_step}: step skipped ({self.state.nonfinite_total} so far)")
        if self.state.nonfinite_in_a_row >= self.cfg.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"loss was non-finite {self.state.nonfinite_in_a_row} steps in a row at step {self.state.global_step}; "
                "lower --learning_rate, use --mixed_precision bf16 or resume from an earlier checkpoint"
            )
        return None

    def _after_step(self, logs: dict[str, float], bar: tqdm) -> None:
        step = self.state.global_step
        for phase in self.phases:
            if phase.name in self.emas:
                self.emas[phase.name].step(self.params[phase.name])
        self.method.on_step_end(step)
        self._maybe_end_stage(step)
        logs["nonfinite_total"] = float(self.state.nonfinite_total)
        self.accelerator.log(logs, step=step)
        bar.update(1)
        bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in logs.items() if k.endswith(("loss", "lr"))}, refresh=False)
        if step % self.cfg.checkpointing_steps == 0:
            self.save()
        if self.cfg.validation_steps and step % self.cfg.validation_steps == 0:
            self.validate()

    def _maybe_end_stage(self, step: int) -> None:
        """Stage hook (e.g. progressive distillation: student → teacher, fresh optimizer)."""
        per_stage = getattr(self.method, "steps_per_stage", None)
        if not per_stage or step % per_stage:
            return
        if self.method.on_stage_end(self.state.stage):
            for name, optimizer in self.optimizers.items():
                optimizer.state.clear()
                self.lr_schedulers[name] = build_lr_scheduler(optimizer, self.cfg)
        self.state.stage += 1

    # ------------------------------------------------------------------ validation and export

    def ema_context(self) -> Any:
        """Swap EMA weights in (first EMA phase) for validation and export."""
        for phase in self.phases:
            if phase.name in self.emas:
                return ema_weights(self.emas[phase.name], self.params[phase.name])
        return nullcontext()

    def validate(self) -> None:
        from distill_diffusion.trainers.validation import run_validation

        if self.accelerator.is_main_process and self.cfg.validation_prompts:
            with self.ema_context():
                run_validation(self.method, self.cfg, self.accelerator, self.state.global_step)

    def export(self) -> Path:
        """Write the method's artefact into ``output_dir`` (via a temporary folder; main process only)."""
        from distill_diffusion.trainers.exporting import atomic_export

        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            with self.ema_context():
                atomic_export(self.method.export, self.output_dir)
        self.accelerator.wait_for_everyone()
        return self.output_dir


METHOD_STATE = "method_state.safetensors"


def _save_method_state(method: Any, folder: Path) -> None:
    """The method's own tensors (``MethodBase.state_dict``, e.g. an LCM target network), as safetensors."""
    state = method.state_dict() if hasattr(method, "state_dict") else {}
    if state:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(folder / METHOD_STATE))


def _load_method_state(method: Any, folder: Path) -> None:
    path = folder / METHOD_STATE
    if path.is_file() and hasattr(method, "load_state_dict"):
        method.load_state_dict(load_file(str(path)))


def _jsonable(value: Any) -> Any:
    """LR-scheduler state is numbers, lists and None (its lambdas are not part of ``state_dict``)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value
