"""What every student trained on a few trailing timesteps of its own shares (ADD, LADD, DMD2): the sampler that visits
those timesteps, the validation pipeline and the export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill_diffusion.models.lora import EXPORT_DTYPES, save_lora
from distill_diffusion.trainers.methods.adversarial.simulation import student_sampler


class FewStepStudent:
    """A mixin for a method with ``components``, ``config`` (``student_timesteps``, ``student_timestep_probs``, ``lora``,
    ``export_dtype``), the student ``unet``, a ``card_name`` and ``write_card(folder)``."""

    components: Any
    config: Any
    unet: Any
    card_name: str

    def scheduler(self) -> Any:
        """``LCMScheduler`` on the full training grid, so N steps visit the trailing timesteps 999, 749, ... the student
        learnt (``original_inference_steps`` = T), each step a one-step denoise then a re-noise to the next. Its config
        records the timesteps the student was trained at (drawn with probability > 0), so sampling refuses step counts
        that leave them (3 steps visit 666 and 333)."""
        cfg = self.config
        trained = [t for t, p in zip(cfg.student_timesteps, cfg.student_timestep_probs) if p > 0]
        return student_sampler(dict(self.components.scheduler.config), trained)

    def validation_pipeline(self) -> Any:
        from distill_diffusion.models.export import build_pipeline

        return build_pipeline(self.components, unet=self.unet, scheduler=self.scheduler())

    def validation_call_kwargs(self) -> dict[str, Any]:
        return {"guidance_scale": 1.0, "num_inference_steps": 1}

    def write_card(self, folder: Path) -> None:
        raise NotImplementedError

    def export(self, output_dir: Path) -> None:
        """LoRA: ``pytorch_lora_weights.safetensors`` (the student's adapter) + kohya copy + the sampler's
        ``scheduler_config.json``; full: a pipeline folder with that scheduler; then the model card. What else trained
        (discriminator heads, a fake score) lives in the checkpoints, to resume."""
        if self.config.lora:
            save_lora(self.unet, output_dir, EXPORT_DTYPES[self.config.export_dtype], self.components.family,
                      f"{self.card_name}_lora_kohya.safetensors")
            self.scheduler().save_pretrained(output_dir)
        else:
            self.validation_pipeline().save_pretrained(output_dir, safe_serialization=True)
        self.write_card(output_dir)
