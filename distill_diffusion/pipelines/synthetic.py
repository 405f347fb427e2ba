"""Teacher-generated latents for adversarial distillation: what ``distill-diffusion prepare-synthetic`` runs.

LADD (Sauer et al., arXiv:2403.12015) trains with synthetic data: the discriminator's "real" latents may be
samples the teacher made once, instead of encoded images. The teacher samples through a stock diffusers pipeline with a
teacher sampler's scheduler (DDIM by default) and ``output_type="latent"``: the VAE never decodes, and what
comes back is the UNet's latent space, already multiplied by ``vae.config.scaling_factor``, the space
``models.encode.encode_images`` gives and the latent cache stores. Text embeddings come from the same
``encode_prompt`` the training cache uses and are handed to the pipeline, so the stored ``prompt_embeds`` are
exactly what conditioned each sample. Sample i takes prompt ``i mod len(prompts)`` and draws its noise from a
CPU generator seeded ``seed + i`` (as ``generate`` does), so it does not depend on the batch it was made in,
on the device, or on an interruption; the folder is written by :mod:`distill_diffusion.data.synthetic`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distill_diffusion.config import MAX_SEED, DataConfig, ModelConfig
from distill_diffusion.errors import require
from distill_diffusion.paths import check_output_dir
from distill_diffusion.pipelines.samplers import check_guidance

#: Samplers a teacher samples with (the plain ones; the distilled students' samplers do not apply).
TEACHER_SAMPLERS = ("ddim", "ddim-trailing", "dpm", "dpm-karras", "unipc")
PRECISIONS = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class SyntheticConfig:
    """One ``prepare-synthetic`` run; checked on construction (one-line errors, before anything loads).

    Prompts come from ``prompts`` (a prompt file) or, when that is None, from the captions of ``data``.
    ``num_samples`` None makes one sample per prompt.
    """

    model: ModelConfig
    output_dir: str
    prompts: str | None = None
    data: DataConfig | None = None
    num_samples: int | None = None
    scheduler: str = "ddim"
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    resolution: int = 512
    seed: int = 0
    batch_size: int = 8
    shard_size: int = 1024
    mixed_precision: str = "no"
    device: str | None = None
    overwrite: bool = False
    progress_bar: bool = True

    def __post_init__(self) -> None:
        require((self.prompts is None) != (self.data is None), "give the prompts as --prompts FILE or as a dataset's "
                "captions (--train_data_dir / --dataset_name), one of them")
        require(self.num_samples is None or self.num_samples >= 1, f"--num_samples {self.num_samples}; pass 1 or more")
        require(self.num_inference_steps >= 1, f"--num_inference_steps {self.num_inference_steps}; pass 1 or more")
        check_guidance(self.guidance_scale)
        require(self.resolution > 0 and self.resolution % 8 == 0, f"--resolution {self.resolution} is not a positive "
                "multiple of 8 (SD's VAE downsamples by 8); pass e.g. 512, or 32 for the toy world")
        for name in ("batch_size", "shard_size"):
            require(getattr(self, name) >= 1, f"--{name} {getattr(self, name)}; pass 1 or more")
        require(0 <= self.seed <= MAX_SEED, f"--seed {self.seed} is out of range; pass a seed in [0, {MAX_SEED}]")
        require(self.scheduler in TEACHER_SAMPLERS, f"--scheduler {self.scheduler!r} is not a teacher sampler; use one "
                f"of {', '.join(TEACHER_SAMPLERS)}")
        require(self.mixed_precision in PRECISIONS, f"--mixed_precision {self.mixed_precision!r}; use one of no, fp16, bf16")


def load_base_prompts(cfg: SyntheticConfig) -> list[str]:
    """The prompt list before cycling: the prompt file's, or the dataset's captions."""
    if cfg.prompts is not None:
        from distill_diffusion.prompts import load_prompts

        return load_prompts(cfg.prompts)
    from distill_diffusion.data.build import dataset_captions

    assert cfg.data is not None  # __post_init__ guarantees one source
    captions = dataset_captions(cfg.data, cfg.seed)
    require(bool(captions), "the dataset has no usable image, so no caption; check the data options")
    return captions


def settings_of(cfg: SyntheticConfig, prompts: list[str]) -> dict[str, Any]:
    """What determines the latents; a folder made with other settings is refused (or replaced with --overwrite).

    The sample count is not part of it: a larger ``num_samples`` extends a finished folder.
    """
    digest = hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:16]
    source = cfg.model.pretrained_model_name_or_path
    local = Path(source).expanduser()
    return {"model": str(local.resolve()) if local.exists() else source, "revision": cfg.model.revision,
            "variant": cfg.model.variant, "original_config": cfg.model.original_config,
            "prompts": f"{len(prompts)} prompts, sha256 {digest}",
            "scheduler": cfg.scheduler, "num_inference_steps": cfg.num_inference_steps,
            "guidance_scale": cfg.guidance_scale, "resolution": cfg.resolution, "seed": cfg.seed,
            "mixed_precision": cfg.mixed_precision, "shard_size": cfg.shard_size}


def _device(cfg: SyntheticConfig) -> str:
    """``--device``, or accelerate's (a GPU when there is one); fp16 only on a GPU, like training."""
    from accelerate import PartialState

    from distill_diffusion.pipelines.loader import check_device

    check_device(cfg.device)
    state = PartialState()
    require(state.num_processes == 1, f"prepare-synthetic runs in one process, not {state.num_processes} (they would "
            "write the same shards); start it without `accelerate launch`, one process per --output_dir")
    device = cfg.device or str(state.device)
    require(cfg.mixed_precision != "fp16" or torch.device(device).type == "cuda",
            f"--mixed_precision fp16 needs a CUDA device (device is {device}); use bf16 or no here")
    return device


def prepare_synthetic(cfg: SyntheticConfig) -> tuple[Path, int]:
    """Make (or finish) the folder of teacher latents; returns it and its sample count.

    Every check that needs no weights runs first: output folder, model source, device, steps, prompts, and
    settings against what the folder already holds. A folder already complete for these settings is returned
    without loading the teacher.
    """
    from distill_diffusion.data.synthetic import check_same_settings, is_complete, write_synthetic_latents
    from distill_diffusion.pipelines.loader import check_pipeline_request

    check_output_dir(cfg.output_dir, "--output_dir")
    device = _device(cfg)
    check_pipeline_request(cfg.model, None, cfg.scheduler, steps=[cfg.num_inference_steps], device=device)
    prompts = load_base_prompts(cfg)
    count = cfg.num_samples or len(prompts)
    captions = [prompts[i % len(prompts)] for i in range(count)]
    settings, out = settings_of(cfg, prompts), Path(cfg.output_dir).expanduser()
    if out.is_dir() and not cfg.overwrite:
        check_same_settings(out, settings)
        if is_complete(out, settings, count):
            return out, count
    pipe = _load_teacher_pipeline(cfg, device)
    sample, encode = _sampler(pipe, cfg)
    write_synthetic_latents(out, captions, sample, encode, settings, batch_size=cfg.batch_size, shard_size=cfg.shard_size,
                            overwrite=cfg.overwrite, progress=cfg.progress_bar,
                            index_extra={"resolution": cfg.resolution, "made_by": "prepare-synthetic"})
    return out, count


def _load_teacher_pipeline(cfg: SyntheticConfig, device: str) -> Any:
    from distill_diffusion.pipelines.loader import load_pipeline

    m = cfg.model
    return load_pipeline(m.pretrained_model_name_or_path, None, cfg.scheduler, device=device,
                         dtype=PRECISIONS[cfg.mixed_precision], local_files_only=m.local_files_only, revision=m.revision,
                         variant=m.variant, original_config=m.original_config)


def _sampler(pipe: Any, cfg: SyntheticConfig) -> tuple[Any, Any]:
    """``(sample_fn, encode_text_fn)`` over ``pipe`` for :func:`~distill_diffusion.data.synthetic.write_synthetic_latents`."""
    from distill_diffusion.models.conditioning import Conditioning
    from distill_diffusion.models.encode import encode_conditioning

    def encode(texts: list[str]) -> Conditioning:
        return encode_conditioning(pipe, texts)

    with torch.no_grad():
        empty = encode([""])

    def sample(c: Conditioning, indices: list[int]) -> torch.Tensor:
        generators = [torch.Generator("cpu").manual_seed(cfg.seed + i) for i in indices]
        uncond = empty.expand(len(indices))
        # SDXL: the pooled embeddings too; the pipeline makes the time ids (original = target size, no crop)
        pooled = {"pooled_prompt_embeds": c.text_embeds, "negative_pooled_prompt_embeds": uncond.text_embeds} if c.has_added else {}
        return pipe(prompt_embeds=c.encoder_hidden_states, negative_prompt_embeds=uncond.encoder_hidden_states, **pooled,
                    height=cfg.resolution, width=cfg.resolution, num_inference_steps=cfg.num_inference_steps,
                    guidance_scale=cfg.guidance_scale, generator=generators, output_type="latent").images

    return sample, encode
