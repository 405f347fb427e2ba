"""The one training loop every method runs through (phases, stages, accumulation, EMA, checkpoints).

The engine does not know which method it runs: it asks the method for its phases, stages and losses
(:mod:`distill_diffusion.trainers.methods.base`) and owns everything else. A step runs every active phase
(:mod:`.phase_step`); gradient accumulation is explicit (``gradient_accumulation_steps`` micro-batches per
phase update, synchronised on the last), and ``global_step`` counts optimizer steps on every process. Stages
(progressive distillation's rounds) each get fresh optimizer state, an LR schedule over the stage and a
restarted EMA; the method sees its EMA weights at each stage's end. What a step updates (weights,
optimizers, LR schedules, EMA, counters) is one :class:`~.step_state.StepState`, which :mod:`.persist` saves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.logging import get_logger
from diffusers.training_utils import EMAModel
from torch import nn
from tqdm.auto import tqdm

from distill_diffusion import threads
from distill_diffusion.config import RunConfig
from distill_diffusion.errors import UserError
from distill_diffusion.trainers.engine import checkpoints as ckpt
from distill_diffusion.trainers.engine import persist, sharding
from distill_diffusion.trainers.engine.data_loop import batch_stream
from distill_diffusion.trainers.engine.ema import ema_weights
from distill_diffusion.trainers.engine.optim import build_lr_scheduler, build_optimizer, phase_optim
from distill_diffusion.trainers.engine.phase_step import Skipped, all_agree, run_phases
from distill_diffusion.trainers.engine.step_state import StepState, TrainState
from distill_diffusion.trainers.methods.base import DistillationMethod, Phase, Stage, StepContext

logger = get_logger(__name__)
#: Called after every optimizer step with the step number and its logs (the toy build records losses this way).
Callback = Callable[[int, dict[str, float]], None]


class NonFiniteLossError(UserError):
    """Too many non-finite losses in a row: the run has diverged."""


#: The GradScaler halves its scale on every overflow; 64 halvings take the default 2**16 below 2**-48, where no
#: fp16 gradient is representable any more, so that many in a row means the run cannot recover.
MAX_OVERFLOWS_IN_A_ROW = 64


class Engine:
    """Runs ``method`` under ``accelerator`` with the ``run.train`` settings.

    Build it with :func:`distill_diffusion.trainers.engine.build.build_engine` (which loads models and data),
    or directly in tests with already-built objects. ``callbacks`` are called after every optimizer step.
    """

    def __init__(self, run: RunConfig, accelerator: Accelerator, method: DistillationMethod, dataloader: Any,
                 callbacks: Sequence[Callback] = (), plain_copy: Callable[[], DistillationMethod] | None = None):
        self.run, self.cfg, self.accelerator, self.method = run, run.train, accelerator, method
        # sharded modules (FSDP2) are exported and validated from an unsharded copy built by ``plain_copy``
        self.plain = sharding.PlainCopy(plain_copy) if plain_copy else None
        self.output_dir, self.callbacks = Path(self.cfg.output_dir), list(callbacks)
        self.phases: list[Phase] = method.phases()
        self.stages: list[Stage] = method.stages() or [Stage("train", self.cfg.max_train_steps)]
        self.total_steps = sum(stage.steps for stage in self.stages)
        # listed once, before wrapping: walking a UNet's parameters every step costs milliseconds
        params = {p.name: method.trainable_parameters(p) for p in self.phases}
        settings = {p.name: phase_optim(p, run, accelerator.num_processes) for p in self.phases}
        optimizers = {p.name: build_optimizer(params[p.name], settings[p.name], self.cfg) for p in self.phases}
        unwrapped = {n: method.models[n] for n in method.models}
        modules, optimizers, self.dataloader = sharding.prepare(accelerator, method.models, self.phases, optimizers, dataloader)
        method.models.update(modules)
        if sharding.is_sharded(accelerator):  # FSDP2 replaced every parameter by a sharded one: list them again
            params = {p.name: method.trainable_parameters(p) for p in self.phases}
        self.step_state = StepState(accelerator, method, unwrapped, list(modules.values()), params, optimizers, settings)
        getattr(method, "on_wrapped", lambda: None)()
        ckpt.register_trainable_only_hooks(accelerator)
        self.step_state.lr_schedulers = self._schedules()
        self.step_state.emas = self._build_emas()
        self._stream: Iterator[dict[str, Any]] | None = None
        self._active: list[Phase] = self.phases  # the phases the last step ran (EMA steps only theirs)

    # the step state's parts under the names tests, benchmarks and callers use
    @property
    def state(self) -> TrainState:
        return self.step_state.counters

    @property
    def optimizers(self) -> dict[str, Any]:
        return self.step_state.optimizers

    @property
    def lr_schedulers(self) -> dict[str, Any]:
        return self.step_state.lr_schedulers

    @property
    def emas(self) -> dict[str, EMAModel]:
        return self.step_state.emas

    @property
    def unwrapped(self) -> dict[str, nn.Module]:
        return self.step_state.unwrapped

    def _schedules(self) -> dict[str, Any]:
        steps = self.stages[min(self.state.stage, len(self.stages) - 1)].steps
        return {n: build_lr_scheduler(o, self.cfg, steps) for n, o in self.optimizers.items()}

    def _build_emas(self) -> dict[str, EMAModel]:
        if not self.cfg.use_ema:
            return {}
        return {p.name: EMAModel(self.step_state.params[p.name], decay=self.cfg.ema_decay) for p in self.phases if p.ema}

    # ------------------------------------------------------------------ checkpoints

    def save(self) -> Path:
        """Atomic checkpoint of models, optimizers, RNG (accelerate), EMA, LR schedules, counters and the run config.

        Refused (the run stops) when a trainable weight, an EMA weight or the method's state is not finite:
        a poisoned checkpoint would become ``latest`` and every resume would start from it.
        """
        if not all_agree(self.accelerator, ckpt.all_finite(persist.weights_to_check(self.step_state))):
            self._diverged(f"trainable weights are not finite (or exploded) after step {self.state.global_step}, so no checkpoint was written")
        return persist.save(self.step_state, self.run, self.output_dir, self.stage_label())

    def resume(self, folder: Path) -> None:
        """Restore everything :meth:`save` wrote; the next step is the one an uninterrupted run takes.

        A damaged checkpoint (a missing or truncated file) is a :class:`UserError` before anything loads; a
        missing random state of this process (fewer processes wrote it) is a warning: the resume is not exact.
        """
        self.state.stage = ckpt.read_state(folder)["train"].get("stage", 0)
        # the schedules of the checkpoint's stage, built BEFORE the optimizer state loads: a new schedule resets
        # each param group's learning rate, which the loaded optimizer state then puts back
        self.step_state.lr_schedulers = self._schedules()
        saved = persist.resume(self.step_state, folder)
        self.step_state.counters = TrainState(**saved["train"])
        if self.state.global_step < self.total_steps:  # a finished one-stage run resumed with more steps reopens its stage
            self.state.stage = min(self.state.stage, len(self.stages) - 1)
        for name, sched_state in saved["lr_schedulers"].items():
            self.lr_schedulers[name].load_state_dict(sched_state)
        logger.info(f"resumed from {folder} at step {self.state.global_step} (stage {self.state.stage})")

    # ------------------------------------------------------------------ the loop

    def train(self) -> TrainState:
        """Run every stage to its end; returns the final counters."""
        cfg, acc = self.cfg, self.accelerator
        self._stream = batch_stream(acc, self.dataloader, start=self.state.batches_seen)
        bar = tqdm(total=self.total_steps, initial=self.state.global_step, desc=self._bar_label(),
                   disable=not (acc.is_local_main_process and cfg.progress_bar))
        on_cpu = acc.device.type == "cpu"
        while self.state.global_step < self.total_steps:
            if on_cpu:
                threads.tick()  # torch's thread count follows the cores other processes leave free
            logs = self.step(self.next_micro())
            if logs is None:
                continue
            self.state.global_step += 1
            self._after_step(logs, bar)
        bar.close()
        return self.state

    def next_micro(self) -> list[dict[str, Any]]:
        """The micro-batches of one phase update (``gradient_accumulation_steps`` of them)."""
        if self._stream is None:
            self._stream = batch_stream(self.accelerator, self.dataloader, start=self.state.batches_seen)
        micro = [next(self._stream) for _ in range(self.cfg.gradient_accumulation_steps)]
        self.state.batches_seen += len(micro)
        return micro

    def step(self, micro: list[dict[str, Any]]) -> dict[str, float] | None:
        """One optimizer step of every active phase; ``None`` if any update was skipped (then nothing changed)."""
        ctx = self._context()
        active = [p for p in self.phases if self.state.global_step % p.every == 0]
        runs = [(p, r) for p in active for r in range(p.repeats)]
        try:
            logs = run_phases(self.step_state, runs, micro, self.next_micro, ctx)
        except Skipped as skipped:  # rolled back: no weight or optimizer state changed
            return self._skip(skipped.overflow)
        for phase in active:
            self.lr_schedulers[phase.name].step()
            self.optimizers[phase.name].zero_grad(set_to_none=True)
            logs[f"{phase.name}/lr"] = self.lr_schedulers[phase.name].get_last_lr()[0]
        self.state.nonfinite_in_a_row = self.state.overflow_in_a_row = 0
        self._active = active
        return logs

    def _context(self) -> StepContext:
        start = sum(stage.steps for stage in self.stages[: self.state.stage])
        return StepContext(step=self.state.global_step, stage=self.state.stage, stage_step=self.state.global_step - start)

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
        for phase in self._active:
            if phase.name in self.emas:
                self.emas[phase.name].step(self.step_state.params[phase.name])
        self.method.on_step_end(self._context())
        logs["nonfinite_total"] = float(self.state.nonfinite_total)
        self.accelerator.log(logs, step=step)
        for callback in self.callbacks:
            callback(step, logs)
        bar.update(1)
        bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in logs.items() if k.endswith(("loss", "lr"))}, refresh=False)
        if self._stage_done():
            self._end_stage()
            bar.set_description(self._bar_label())
        elif step % self.cfg.checkpointing_steps == 0:
            self.save()
        if self.cfg.validation_steps and step % self.cfg.validation_steps == 0:
            self.validate()

    def _stage_done(self) -> bool:
        return self.state.global_step == sum(stage.steps for stage in self.stages[: self.state.stage + 1])

    def _end_stage(self) -> None:
        """Hand the method its EMA weights, export the stage if it asks, start the next stage (fresh optimizer state,
        LR schedule, EMA), checkpoint."""
        ema = {name: [t.detach().clone() for t in e.shadow_params] for name, e in self.emas.items()}
        stage = self.stages[self.state.stage]
        self.method.on_stage_end(self.state.stage, ema)
        if stage.export:
            self.export(self.output_dir / stage.name, ema=False)
        self.state.stage += 1
        if self.state.stage < len(self.stages):
            for optimizer in self.optimizers.values():
                optimizer.state.clear()
            self.step_state.lr_schedulers = self._schedules()
            self.step_state.emas = self._build_emas()
            logger.info(f"stage {self.state.stage} ({self.stages[self.state.stage].name}) starts at step {self.state.global_step}")
        self.save()

    def stage_label(self) -> str:
        """The name of the stage the last step belonged to, for checkpoint names; empty in a one-stage run."""
        if len(self.stages) == 1:
            return ""
        done = 0
        for stage in self.stages:
            done += stage.steps
            if self.state.global_step <= done:
                return stage.name
        return self.stages[-1].name

    def _bar_label(self) -> str:
        if len(self.stages) == 1:
            return "train"
        index = min(self.state.stage, len(self.stages) - 1)
        return f"stage {index + 1}/{len(self.stages)} {self.stages[index].name}"

    # ------------------------------------------------------------------ validation and export

    def ema_context(self) -> Any:
        """Swap EMA weights in (first EMA phase) for validation and export."""
        for phase in self.phases:
            if phase.name in self.emas:
                return ema_weights(self.emas[phase.name], self.step_state.params[phase.name])
        return nullcontext()

    def validate(self) -> None:
        from distill_diffusion.trainers.engine.validation import run_validation

        if not self.cfg.validation_prompts:
            return
        with self._on_main(ema=True) as method:
            if method is not None:
                run_validation(method, self.cfg, self.accelerator, self.state.global_step)

    @contextmanager
    def _on_main(self, ema: bool) -> Iterator[Any]:
        """The method whose weights the main process reads whole (None on the others): the run's own, with its EMA
        weights swapped in when ``ema``; under FSDP2 the unsharded copy, which every process helps to fill."""
        acc = self.accelerator
        if not sharding.is_sharded(acc):
            with self.ema_context() if ema and acc.is_main_process else nullcontext():
                yield self.method if acc.is_main_process else None
            return
        if self.plain is None:
            raise UserError("this engine shards its modules (FSDP) but was built without a plain copy to export them; "
                            "build it with build_engine")
        with self.ema_context() if ema else nullcontext():
            method = self.plain.update(acc, self.method)
        yield method

    def export(self, folder: Path | None = None, ema: bool = True) -> Path:
        """Write the method's artefact into ``folder`` (default ``output_dir``) via a temporary folder, main process only.

        ``ema``: with the EMA weights swapped in. A stage's export passes False: the method has already taken the
        stage's weights (its EMA when kept) in :meth:`~MethodBase.on_stage_end`.
        """
        from distill_diffusion.trainers.engine.export import atomic_export

        folder = self.output_dir if folder is None else folder
        self.accelerator.wait_for_everyone()
        with self._on_main(ema) as method:
            if method is not None:
                atomic_export(method.export, folder)
        self.accelerator.wait_for_everyone()
        return folder
