"""Has DMD2's fake score learnt the generator's distribution? (``fake_score_check.json``)

The denoising loss (ε MSE) of the fake score and of the teacher (the real score's UNet, adapters off) on the 1-step
generator's samples and, for scale, on real latents, in five bands of t, one batch of the run's own data. A fake score
that tracks the generator (DMD2 §4.2) denoises its samples better than the teacher does, and real latents worse.

    python fake_score_check.py RUN_DIR checkpoint-400

RUN_DIR: a finished ``train dmd2`` run in one-base LoRA mode (its ``config.yaml``, the checkpoint and ``latent_cache``);
it is copied into a temporary folder, so the run is left as it was.
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from distill_diffusion.config import build_run_config
from distill_diffusion.models.batch import latents_and_embeddings
from distill_diffusion.models.lora import adapters_disabled
from distill_diffusion.trainers.engine.build import build_engine
from distill_diffusion.trainers.methods.registry import get_method_class

BANDS = ((20, 200), (200, 400), (400, 600), (600, 800), (800, 980))


def load(src: Path, checkpoint: str, work: Path):
    """The run's engine resumed at ``checkpoint``, built in ``work``."""
    shutil.copytree(src / checkpoint, work / checkpoint)
    shutil.copytree(src / "latent_cache", work / "latent_cache")
    raw = yaml.safe_load((src / "config.yaml").read_text())
    raw["train"].update(output_dir=str(work), resume_from_checkpoint=str(work / checkpoint))
    raw["data"]["cache_dir"] = str(work / "latent_cache")
    return build_engine(build_run_config("dmd2", get_method_class("dmd2"), raw))


def losses(m, data: torch.Tensor, c) -> dict[str, dict[str, float]]:
    """Fake-score and teacher ε MSE on ``data`` noised in each band (same t and noise for both)."""
    out = {}
    for lo, hi in BANDS:
        t = torch.randint(lo, hi, (data.shape[0],), generator=torch.Generator().manual_seed(lo))
        eps = torch.randn(data.shape, generator=torch.Generator().manual_seed(hi))
        z = m.schedule.add_noise(data, eps, t)
        with m.fake_mode():
            fake = ((m.denoiser(m.fake_unet)(z, t, c).model_output - eps) ** 2).mean().item()
        with adapters_disabled(m.layers):
            teacher = ((m.denoiser(m.teacher_unet)(z, t, c).model_output - eps) ** 2).mean().item()
        out[f"t{lo}-{hi}"] = {"fake": round(fake, 4), "teacher": round(teacher, 4), "fake/teacher": round(fake / teacher, 3)}
    return out


def main() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        m = (engine := load(Path(sys.argv[1]), sys.argv[2], Path(tmp))).method
        x0, c = latents_and_embeddings(next(iter(engine.dataloader)), m.components)
        first = torch.full((x0.shape[0],), m.config.student_timesteps[0])
        samples = m.denoiser(m.unet)(torch.randn_like(x0), first, c).x0  # the 1-step generator's training weights
        print(json.dumps({"generator_samples": losses(m, samples, c), "real_latents": losses(m, x0, c)}, indent=1))


if __name__ == "__main__":
    main()
