"""The one training loop every method runs through (accumulation, autocast, clipping, EMA, checkpoints).

The engine does not know which method it runs: it asks the method for its phases and losses
(:mod:`distill_diffusion.trainers.methods.base`) and owns everything else. Gradient accumulation is explicit:
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

from distill_diffusion import threads
from distill_diffusion.config import RunConfig
from distill_diffusion.errors import UserError, require
from distill_diffusion.trainers.engine import checkpoints as ckpt
from distill_diffusion.trainers.engine.data_loop import batch_stream
from distill_diffusion.trainers.engine.ema import ema_weights, load_ema, save_ema
from distill_diffusion.trainers.engine.optim import (
    build_lr_scheduler,
    build_optimizer,
    effective_learning_rate,
)
from distill_diffusion.trainers.methods.base import DistillationMethod, Phase

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
    #: fp16 steps the GradScaler skipped (gradient overflow): normal while it finds its scale, not divergence.
    overflow_total: int = 0
    overflow_in_a_row: int = 0


#: The GradScaler halves its scale on every overflow; 64 halvings take the default 2**16 below 2**-48, where no
#: fp16 gradient is representable any more, so that many in a row means the run cannot recover.
MAX_OVERFLOWS_IN_A_ROW = 64


class _Skipped(Exception):
    """A phase's optimizer step did not happen: non-finite loss or gradients, or a GradScaler overflow."""

    def __init__(self, overflow: bool):
        self.overflow = overflow


class Engine:
    """Runs ``method`` under ``accelerator`` with the ``run.train`` settings.

    Build it with :func:`distill_diffusion.trainers.engine.build.build_engine` (which loads models and data),
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
        """Atomic checkpoint of models, optimizers, RNG (accelerate), EMA, LR schedules, counters and the run config.

        Refused (the run stops) when a trainable weight, an EMA weight or the method's state is not finite:
        a poisoned checkpoint would become ``latest`` and every resume would start from it.
        """
        self._check_weights_finite()

        def write(folder: Path) -> None:
            self.accelerator.save_state(str(folder))
            if self.accelerator.is_main_process:
                for name, ema in self.emas.items():
                    save_ema(ema, folder, name)
                _save_method_state(self.method, folder)

        state = {
            "train": asdict(self.state),
            "lr_schedulers": {n: _jsonable(s.state_dict()) for n, s in self.lr_schedulers.items()},
            "run": self.run.to_dict(),
            "num_processes": self.accelerator.num_processes,
        }
        return ckpt.save_checkpoint(
            self.output_dir,
            self.state.global_step,
            write,
            state,
            self.cfg.checkpoints_total_limit,
            is_main=self.accelerator.is_main_process,
            barrier=self.accelerator.wait_for_everyone,
        )

    def _check_weights_finite(self) -> None:
        tensors = [p for params in self.params.values() for p in params]
        tensors += [t for ema in self.emas.values() for t in ema.shadow_params]
        tensors += list(_method_state(self.method).values())
        if not self._on_every_process(ckpt.all_finite(tensors)):
            self._diverged(f"trainable weights are not finite (or exploded) after step {self.state.global_step}, so no checkpoint was written")

    def resume(self, folder: Path) -> None:
        """Restore everything :meth:`save` wrote; the next step is the one an uninterrupted run takes.

        A damaged checkpoint (a missing or truncated file) is a :class:`UserError` before anything loads; a
        missing random state of this process (fewer processes wrote it) is a warning: the resume is not exact.
        """
        for warning in ckpt.verify_checkpoint(folder, self.accelerator.process_index):
            logger.warning(warning, main_process_only=False)
        saved = ckpt.read_state(folder)
        try:
            self.accelerator.load_state(str(folder))
            for name, ema in self.emas.items():
                load_ema(ema, folder, name)
            _load_method_state(self.method, folder)
        except UserError:
            raise
        except Exception as exc:  # a file that passed the size check but does not parse
            first = (str(exc).splitlines() or [""])[0][:200]
            raise UserError(f"checkpoint {folder} could not be loaded ({exc.__class__.__name__}: {first}); "
                            f"delete {folder.name} to resume from the one before it, or start fresh") from None
        self.state = TrainState(**saved["train"])
        for name, sched_state in saved["lr_schedulers"].items():
            self.lr_schedulers[name].load_state_dict(sched_state)
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
        on_cpu = acc.device.type == "cpu"
        while self.state.global_step < cfg.max_train_steps:
            if on_cpu:
                threads.tick()  # torch's thread count follows the cores other processes leave free
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
        """One optimizer step for every phase; ``None`` if a phase's update was skipped (nothing advances)."""
        logs: dict[str, float] = {}
        for phase in self.phases:
            for _ in range(phase.repeats):
                try:
                    logs.update(self._phase_step(phase, micro))
                except _Skipped as skipped:
                    return self._skip(skipped.overflow)
        self.state.nonfinite_in_a_row = self.state.overflow_in_a_row = 0
        return logs

    def _phase_step(self, phase: Phase, micro: list[dict[str, Any]]) -> dict[str, float]:
        """Accumulate over ``micro``, check loss and gradients, then step optimizer and LR schedule.

        Raises :class:`_Skipped` (gradients zeroed, optimizer and schedule untouched) when a loss or a gradient
        is not finite on any process, or when the fp16 GradScaler skipped the update.
        """
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
                    raise _Skipped(overflow=False)
                acc.backward(loss)
            for key, value in {f"{phase.name}/loss": out.loss.detach().item(), **out.logs}.items():
                logs[key] = logs.get(key, 0.0) + float(value) / len(micro)
        norm = self._grad_norm(self.params[phase.name], optimizer)
        finite = self._all_finite(norm)
        scaled = acc.scaler is not None
        if finite or scaled:
            # with a GradScaler the step must run even on overflow: scaler.step skips the update and update() lowers the scale
            optimizer.step()
        if not finite or (scaled and optimizer.step_was_skipped):
            optimizer.zero_grad(set_to_none=True)
            raise _Skipped(overflow=scaled)
        self.lr_schedulers[phase.name].step()
        optimizer.zero_grad(set_to_none=True)
        if self.cfg.max_grad_norm > 0:
            logs[f"{phase.name}/grad_norm"] = float(norm)
        logs[f"{phase.name}/lr"] = self.lr_schedulers[phase.name].get_last_lr()[0]
        return logs

    def _grad_norm(self, params: list[torch.nn.Parameter], optimizer: Any) -> torch.Tensor:
        """The total gradient norm before clipping (clipped to ``max_grad_norm`` when > 0); inf/nan if any gradient is."""
        acc = self.accelerator
        limit = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else float("inf")
        if acc.distributed_type in (DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU):
            # unscale (fp16; this phase's optimizer only: a second unscale_ before update() raises) then torch's
            # clip, 2-3× cheaper than accelerate's DTensor-aware path on small models
            acc.unscale_gradients(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(params, limit) if limit < math.inf else _total_norm(params)
        else:
            # FSDP and DeepSpeed: accelerate knows how to reduce sharded gradients (DeepSpeed may hide the norm)
            norm = acc.clip_grad_norm_(params, limit)
        device = params[0].device if params else acc.device
        return norm.detach().float() if isinstance(norm, torch.Tensor) else torch.tensor(0.0 if norm is None else float(norm), device=device)

    def _all_finite(self, value: torch.Tensor) -> bool:
        """Finite on every process: all must agree, or DDP would hang waiting for the skipped all-reduce."""
        return self._on_every_process(torch.isfinite(value.detach()).all())

    def _on_every_process(self, flag: bool | torch.Tensor) -> bool:
        as_tensor = torch.as_tensor(flag, dtype=torch.float32, device=self.accelerator.device).reshape(1)
        return bool(self.accelerator.gather(as_tensor).min().item() > 0)

    def _skip(self, overflow: bool) -> None:
        """Count a skipped step; too many in a row stop the run (the weights that diverged are set aside)."""
        st = self.state
        if overflow:
            st.overflow_total += 1
            st.overflow_in_a_row += 1
            logger.info(f"fp16 gradient overflow at step {st.global_step}: the GradScaler skipped the update and lowered its scale")
            if st.overflow_in_a_row >= MAX_OVERFLOWS_IN_A_ROW:
                self._diverged(f"fp16 gradients overflowed {st.overflow_in_a_row} steps in a row at step {st.global_step}")
            return None
        st.nonfinite_total += 1
        st.nonfinite_in_a_row += 1
        logger.warning(f"non-finite loss or gradient at step {st.global_step}: step skipped ({st.nonfinite_total} so far)")
        if st.nonfinite_in_a_row >= self.cfg.max_nonfinite_steps:
            self._diverged(f"loss or gradients were non-finite {st.nonfinite_in_a_row} steps in a row at step {st.global_step}")
        return None

    def _diverged(self, what: str) -> None:
        """Stop: the checkpoint of the current step (if any) holds the weights that diverged, so set it aside."""
        aside = None
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            aside = ckpt.set_aside_diverged(self.output_dir, self.state.global_step)
        moved = f"; its checkpoint was moved to {aside.name}" if aside else ""
        raise NonFiniteLossError(
            f"{what}{moved}; lower --learning_rate, use --mixed_precision bf16, or resume from an earlier checkpoint"
        )

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
        from distill_diffusion.trainers.engine.validation import run_validation

        if self.accelerator.is_main_process and self.cfg.validation_prompts:
            with self.ema_context():
                run_validation(self.method, self.cfg, self.accelerator, self.state.global_step)

    def export(self) -> Path:
        """Write the method's artefact into ``output_dir`` (via a temporary folder; main process only)."""
        from distill_diffusion.trainers.engine.export import atomic_export

        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            with self.ema_context():
                atomic_export(self.method.export, self.output_dir)
        self.accelerator.wait_for_everyone()
        return self.output_dir


def _total_norm(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """L2 norm over all gradients without touching them (``clip_grad_norm_`` would rescale by 1.0)."""
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([n.float() for n in torch._foreach_norm(grads)]))


METHOD_STATE = "method_state.safetensors"


def _method_state(method: Any) -> dict[str, torch.Tensor]:
    return method.state_dict() if hasattr(method, "state_dict") else {}


def _save_method_state(method: Any, folder: Path) -> None:
    """The method's own tensors (``MethodBase.state_dict``, e.g. an LCM target network), as safetensors."""
    state = _method_state(method)
    if state:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(folder / METHOD_STATE))


def _load_method_state(method: Any, folder: Path) -> None:
    """A method with state resumed from a checkpoint without it would silently restart that state: refuse."""
    path, current = folder / METHOD_STATE, _method_state(method)
    if not current:
        return
    require(path.is_file(), f"checkpoint {folder} has no {METHOD_STATE} (the method's own state, e.g. the LCM target "
                            f"network); resume from a checkpoint written with the same method options, or start fresh")
    method.load_state_dict(load_file(str(path), device=str(next(iter(current.values())).device)))


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
