"""What the SD 1.5- and SDXL-sized GPU training benchmarks share: random SD components, the engine on them, timing, checks.

A method's GPU benchmark (its ``bench_gpu`` module: ``bench lcm-gpu``, ``bench progressive-gpu``, ...) times its engine step on SD 1.5's UNet
architecture (about 860M parameters) built from its config with random weights, on pre-encoded latents and text
embeddings (as with the latent cache, so the VAE is not in the step). Speed and memory depend on shapes and dtypes,
not on weight values, so nothing needs to be downloaded. Imported only when a benchmark runs (it imports torch).
"""

from __future__ import annotations

import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from distill_diffusion.bench.timing import engine_stepper, latent_engine, median_seconds
from distill_diffusion.errors import UserError, require

#: Stable Diffusion 1.5's ``UNet2DConditionModel`` config (859.5M parameters).
SD15_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "center_input_sample": False,
}

#: SDXL base's ``UNet2DConditionModel`` config (Podell et al., arXiv:2307.01952, Tab. 1; the values of
#: stabilityai/stable-diffusion-xl-base-1.0 ``unet/config.json``): 2,567,463,684 parameters.
SDXL_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [320, 640, 1280],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "layers_per_block": 2,
    "transformer_layers_per_block": [1, 2, 10],
    "cross_attention_dim": 2048,
    "attention_head_dim": [5, 10, 20],
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "center_input_sample": False,
}
#: Widths of SDXL's two text encoders (CLIP ViT-L hidden 768; OpenCLIP ViT-bigG hidden and projection 1280): their
#: penultimate hidden states concatenate to the UNet's 2048, the second's projection is the pooled 1280.
SDXL_TEXT_WIDTHS = (768, 1280)


def is_sdxl_config(unet_config: dict[str, Any]) -> bool:
    """A UNet with SDXL's added conditions (pooled text and micro-conditioning time ids)."""
    return unet_config.get("addition_embed_type") == "text_time"


def _text_encoder(hidden: int, tokenizer: Any, projection: int | None = None) -> Any:
    """A 1-layer random CLIP text encoder of width ``hidden`` (it only encodes the empty prompt, once); with
    ``projection`` a ``CLIPTextModelWithProjection`` (SDXL's second encoder)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden, projection_dim=projection or hidden,
        num_hidden_layers=1, num_attention_heads=hidden // 64 if hidden % 64 == 0 else 1,
        max_position_embeddings=tokenizer.model_max_length, hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
    ))


def _scale_only_vae(device: torch.device) -> Any:
    """A VAE with SDXL's four levels (x8) and 8 channels: the batches derive the pixel size of SDXL's time ids from the
    VAE's levels, as diffusers does; it never runs (the step reads cached latents)."""
    from diffusers import AutoencoderKL

    with torch.device(device):
        vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=8)
    return vae.requires_grad_(False).eval()


def _components(unet_config: dict[str, Any], dtype: torch.dtype, device: torch.device) -> Any:
    """Frozen random SD components in ``dtype`` on ``device``; no VAE (the step reads cached latents), or for SDXL a
    stand-in that only gives the x8 scale."""
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from distill_diffusion.models.conditioning import pooled_text_width
    from distill_diffusion.models.loading import SDComponents
    from distill_diffusion.models.sources import detect_family
    from distill_diffusion.toy.tiny import SD15_SCHEDULER_CONFIG
    from distill_diffusion.toy.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    xl = is_sdxl_config(unet_config)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(unet_config)
        if xl:  # SDXL: two encoders whose hidden states concatenate to the UNet's width; the second one pooled
            pooled = pooled_text_width(dict(unet.config))
            text_encoder = _text_encoder(unet.config.cross_attention_dim - pooled, tokenizer)
            text_encoder_2 = _text_encoder(pooled, tokenizer, projection=pooled)
        else:
            text_encoder, text_encoder_2 = _text_encoder(unet.config.cross_attention_dim, tokenizer), None
    for module in (unet, text_encoder, text_encoder_2):
        if module is not None:  # plain nn.Module.to: diffusers' override warns about fp32-only modules even when there are none
            torch.nn.Module.to(module, dtype=dtype).requires_grad_(False).eval()
    return SDComponents(
        unet=unet, vae=_scale_only_vae(device) if xl else None, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=DDIMScheduler(**SD15_SCHEDULER_CONFIG, prediction_type="epsilon"),
        family=detect_family({}, dict(unet.config)), prediction_type="epsilon", source="random weights",
        text_encoder_2=text_encoder_2, tokenizer_2=build_tokenizer() if xl else None, force_zeros_for_empty_prompt=xl,
    )


def sd_engine(tmp: Path, method: str, method_options: dict[str, Any], batch_size: int, resolution: int,
              mixed_precision: str, gradient_checkpointing: bool, unet_config: dict[str, Any], device: torch.device) -> tuple[Any, Any]:
    """The engine running ``method`` on random SD components of ``unet_config`` over random latent batches, and its data."""
    from distill_diffusion.trainers.engine.build import weight_dtype

    def make_components(actual: torch.device) -> Any:
        require(actual.type == device.type, f"accelerate runs this process on {actual}, not {device}; pass device={actual.type!r}")
        return _components(unet_config, weight_dtype(mixed_precision), actual)

    train = {"mixed_precision": mixed_precision, "gradient_checkpointing": gradient_checkpointing}
    return latent_engine(tmp, method, batch_size, {"train": train, "method": method_options}, make_components,
                         latent_size=resolution // 8, n_batches=8)


def check_args(device: str | None, batch_size: int, resolution: int, steps: int, mixed_precision: str,
               config: dict[str, Any], no_gpu: str) -> torch.device:
    """Every argument check, before anything is built; returns the device to run on."""
    if device is None and not torch.cuda.is_available():
        raise UserError(no_gpu)
    dev = torch.device(device or "cuda")
    require(dev.type != "cuda" or torch.cuda.is_available(), no_gpu)
    require(mixed_precision in ("no", "fp16", "bf16"), f"mixed_precision={mixed_precision!r}; use one of no, fp16, bf16")
    require(mixed_precision != "fp16" or dev.type == "cuda", "mixed_precision fp16 needs a CUDA GPU; use bf16 or no")
    require(batch_size >= 1 and steps >= 1, "batch_size and steps must be >= 1")
    factor = 8 * 2 ** (len(config["block_out_channels"]) - 1)
    require(resolution % factor == 0, f"resolution={resolution} must be a multiple of {factor} (VAE x8, UNet downsampling)")
    return dev


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def time_steps(engine: Any, dev: torch.device, steps: int, cycle: int = 1) -> tuple[float, float | None]:
    """Median seconds of an engine step, or of ``cycle`` steps (:func:`~.timing.engine_stepper`), CUDA synchronised,
    and the peak CUDA memory in GiB (None on CPU)."""
    engine_step = engine_stepper(engine, cycle)
    cuda = dev.type == "cuda"

    def step() -> None:
        engine_step()
        if cuda:
            torch.cuda.synchronize(dev)

    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    seconds = median_seconds(step, steps)
    return seconds, (torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else None)


def time_method_step(method: str, options: dict[str, Any], title: str, no_gpu: str, *, batch_size: int, resolution: int, steps: int,
                     mixed_precision: str, gradient_checkpointing: bool, unet_config: dict[str, Any] | None, device: str | None,
                     prepare: Callable[[Any], None] | None = None, architecture: str = "SD 1.5",
                     base_config: dict[str, Any] | None = None, cycle: int = 1) -> tuple[dict[str, Any], Any]:
    """Time ``steps`` engine steps of ``method`` (after 3 warm-ups) on random SD components of ``unet_config`` (SD 1.5's
    when None, or ``base_config``, e.g. :data:`SDXL_UNET_CONFIG`; named ``architecture`` in the title: SD 1.4 shares
    SD 1.5's); ``prepare(engine)`` runs first (e.g. to move past
    a stage). Returns the common result fields and the engine (its method, for the caller's own fields).
    ``cycle`` > 1 times that many steps at a time, as training numbers them (a phase that runs every ``cycle``-th step
    runs once in each); images/s and the step time are then a cycle's mean.
    ``device=None`` needs CUDA: a one-line error otherwise, before anything is built."""
    import diffusers

    config = dict(unet_config or base_config or SD15_UNET_CONFIG)
    dev = check_args(device, batch_size, resolution, steps, mixed_precision, config, no_gpu)
    with tempfile.TemporaryDirectory() as tmp:
        engine, _ = sd_engine(Path(tmp), method, options, batch_size, resolution, mixed_precision, gradient_checkpointing, config, dev)
        if prepare is not None:
            prepare(engine)
        seconds, peak = time_steps(engine, dev, steps, cycle)
        seconds /= cycle
    result = {
        "benchmark": f"{title}, " + (f"{architecture} UNet architecture" if unet_config is None else "custom UNet config") + " (random weights)",
        "device": device_name(dev), "torch": torch.__version__, "diffusers": diffusers.__version__,
        "images_per_second": batch_size / seconds, "median_step_seconds": seconds, "peak_memory_gib": peak,
        "settings": {"batch_size": batch_size, "resolution": resolution, "latent_size": resolution // 8, "steps_timed": steps,
                     "warmup_steps": 3, "mixed_precision": mixed_precision, "gradient_checkpointing": gradient_checkpointing},
    }
    if cycle > 1:
        result["settings"]["steps_per_cycle"] = cycle
    return result, engine


def write_results(result: dict[str, Any], output: Path, extra: dict[str, str], note: str,
                  rows: list[tuple[dict[str, Any], dict[str, str]]] | None = None) -> None:
    """``output`` (JSON) and its ``.md`` table: device, batch, resolution, precision, checkpointing, the ``extra``
    columns (header → value), images/s, step ms and peak memory, then ``note``; the table is printed too.

    ``rows``: several ``(result, extra)`` rows of :func:`time_method_step` results in one table (e.g. two modes of a
    method); ``result`` is then only the JSON written."""
    import json

    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    rows = rows or [(result, extra)]
    first, s = rows[0][0], rows[0][0]["settings"]
    heads = ["device", "batch", "resolution", "precision", "grad. ckpt", *rows[0][1], "images/s", "step ms", "peak memory GiB"]
    lines = ["| " + " | ".join(heads) + " |", "|---" * len(heads) + "|", *("| " + " | ".join(map(str, _cells(*row))) + " |" for row in rows)]
    timed = (f"{s['steps_timed']} cycles of {s['steps_per_cycle']} engine steps after {s['warmup_steps']} warm-up cycles (step ms: a "
             "cycle's mean)" if "steps_per_cycle" in s else f"{s['steps_timed']} engine steps after {s['warmup_steps']} warm-up steps")
    lines += ["", f"{note} Median of {timed}; torch {first['torch']}, diffusers {first['diffusers']}."]
    table = "\n".join(lines)
    output.with_suffix(".md").write_text(table + "\n")
    print(table)


def _cells(result: dict[str, Any], extra: dict[str, str]) -> list[Any]:
    s = result["settings"]
    peak = "n/a" if result["peak_memory_gib"] is None else f"{result['peak_memory_gib']:.2f}"
    return [result["device"], s["batch_size"], f"{s['resolution']}²", s["mixed_precision"], "yes" if s["gradient_checkpointing"] else "no",
            *extra.values(), f"**{result['images_per_second']:.2f}**", f"{result['median_step_seconds'] * 1e3:.1f}", peak]
