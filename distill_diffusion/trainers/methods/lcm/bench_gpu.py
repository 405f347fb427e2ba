"""SD 1.5-sized LCM-LoRA training benchmark on a CUDA GPU: images/s and peak memory of the engine's step.

The step is latent consistency distillation (Luo et al., "Latent Consistency Models", arXiv:2310.04378,
Alg. 1) in LoRA mode (Luo et al., "LCM-LoRA", arXiv:2311.05556): one UNet whose frozen base is the teacher
(batched cond+uncond forward and DDIM step), one target forward and one student forward+backward through
the LoRA, then AdamW on the LoRA weights, all through :class:`~distill_diffusion.trainers.engine.loop.Engine`.
The UNet is SD 1.5's architecture (about 860M parameters) built from its config with random weights, on
pre-encoded latents and text embeddings (as with the latent cache, so the VAE is not in the step). Speed and
memory depend on shapes and dtypes, not on weight values, so nothing needs to be downloaded. Reported:
training images/s (batch / median step time, CUDA synchronised), median step seconds, and the peak CUDA
memory allocated over warm-up and timed steps.
"""

from __future__ import annotations

import json
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch

from distill_diffusion.bench.engine import latent_engine, median_seconds
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
NO_GPU = ("the SD 1.5 LCM-LoRA benchmark needs a CUDA GPU; run it on a GPU machine "
          "(the CPU benchmark is `distill-diffusion bench lcm`)")


def _text_encoder(hidden: int, tokenizer: Any) -> Any:
    """A 1-layer random CLIP text encoder of width ``hidden`` (it only encodes the empty prompt, once)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden, projection_dim=hidden,
        num_hidden_layers=1, num_attention_heads=hidden // 64 if hidden % 64 == 0 else 1,
        max_position_embeddings=tokenizer.model_max_length, hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
    ))


def _components(unet_config: dict[str, Any], dtype: torch.dtype, device: torch.device) -> Any:
    """Frozen random SD components in ``dtype`` on ``device``; no VAE (the step reads cached latents)."""
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from distill_diffusion.models.loading import SDComponents, detect_family
    from distill_diffusion.toy.tiny import SD15_SCHEDULER_CONFIG
    from distill_diffusion.toy.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(unet_config)
        text_encoder = _text_encoder(unet.config.cross_attention_dim, tokenizer)
    for module in (unet, text_encoder):
        # plain nn.Module.to: diffusers' override warns about fp32-only modules even when there are none
        torch.nn.Module.to(module, dtype=dtype).requires_grad_(False).eval()
    return SDComponents(
        unet=unet, vae=None, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=DDIMScheduler(**SD15_SCHEDULER_CONFIG, prediction_type="epsilon"),
        family=detect_family({}, dict(unet.config)), prediction_type="epsilon", source="random weights",
    )


def build_lora_engine(tmp: Path, batch_size: int, resolution: int, mixed_precision: str, gradient_checkpointing: bool,
                      lora_rank: int, unet_config: dict[str, Any], device: torch.device) -> tuple[Any, Any]:
    """The engine running LCM-LoRA (SD defaults, alpha = rank) over random latent batches, and its data."""
    from distill_diffusion.trainers.engine.build import weight_dtype

    def make_components(actual: torch.device) -> Any:
        require(actual.type == device.type, f"accelerate runs this process on {actual}, not {device}; pass device={actual.type!r}")
        return _components(unet_config, weight_dtype(mixed_precision), actual)

    train = {"mixed_precision": mixed_precision, "gradient_checkpointing": gradient_checkpointing}
    return latent_engine(tmp, "lcm", batch_size, {"train": train, "method": {"lora_rank": lora_rank, "lora_alpha": lora_rank}},
                         make_components, latent_size=resolution // 8, n_batches=8)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _check_args(device: str | None, batch_size: int, resolution: int, steps: int, mixed_precision: str,
                lora_rank: int, config: dict[str, Any]) -> torch.device:
    """Every argument check, before anything is built; returns the device to run on."""
    if device is None and not torch.cuda.is_available():
        raise UserError(NO_GPU)
    dev = torch.device(device or "cuda")
    require(dev.type != "cuda" or torch.cuda.is_available(), NO_GPU)
    require(mixed_precision in ("no", "fp16", "bf16"), f"mixed_precision={mixed_precision!r}; use one of no, fp16, bf16")
    require(mixed_precision != "fp16" or dev.type == "cuda", "mixed_precision fp16 needs a CUDA GPU; use bf16 or no")
    require(batch_size >= 1 and steps >= 1 and lora_rank >= 1, "batch_size, steps and lora_rank must be >= 1")
    factor = 8 * 2 ** (len(config["block_out_channels"]) - 1)
    require(resolution % factor == 0, f"resolution={resolution} must be a multiple of {factor} (VAE x8, UNet downsampling)")
    return dev


def _time_steps(engine: Any, dev: torch.device, steps: int) -> tuple[float, float | None]:
    """Median seconds of an engine step (CUDA synchronised) and the peak CUDA memory in GiB (None on CPU)."""
    from distill_diffusion.trainers.engine.data_loop import batch_stream

    stream = batch_stream(engine.accelerator, engine.dataloader)
    cuda = dev.type == "cuda"

    def step() -> None:
        engine.state.batches_seen += 1
        engine.step([next(stream)])
        if cuda:
            torch.cuda.synchronize(dev)

    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    seconds = median_seconds(step, steps)
    return seconds, (torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else None)


def _parameter_counts(unet: Any) -> dict[str, int]:
    trainable = [(n, p) for n, p in unet.named_parameters() if p.requires_grad]
    return {
        "unet_parameters": sum(p.numel() for n, p in unet.named_parameters() if "lora_" not in n),
        "trainable_parameters": sum(p.numel() for _, p in trainable),
        "trainable_lora_parameters": sum(p.numel() for n, p in trainable if "lora_" in n),
    }


def run_sd15_lora_benchmark(batch_size: int = 8, resolution: int = 512, steps: int = 20, mixed_precision: str = "bf16",
                            gradient_checkpointing: bool = False, lora_rank: int = 64,
                            output: str | Path = "benchmarks/results/lcm_gpu_sd15.json",
                            unet_config: dict[str, Any] | None = None, device: str | None = None) -> dict:
    """Time ``steps`` engine LCM-LoRA steps after 3 warm-up steps; print a table, write JSON + markdown.

    ``device=None`` needs CUDA (a one-line :class:`UserError` otherwise, before anything is built);
    ``device="cpu"`` (with a tiny ``unet_config``) runs it on a CPU-only machine, as the tests do.
    """
    import diffusers

    config = dict(unet_config or SD15_UNET_CONFIG)
    dev = _check_args(device, batch_size, resolution, steps, mixed_precision, lora_rank, config)
    with tempfile.TemporaryDirectory() as tmp:
        engine, _ = build_lora_engine(Path(tmp), batch_size, resolution, mixed_precision, gradient_checkpointing,
                                      lora_rank, config, dev)
        seconds, peak = _time_steps(engine, dev, steps)
    method = engine.method.config
    result = {
        "benchmark": "LCM-LoRA training step, SD 1.5 UNet architecture (random weights)" if unet_config is None
                     else "LCM-LoRA training step, custom UNet config (random weights)",
        "device": _device_name(dev), "torch": torch.__version__, "diffusers": diffusers.__version__,
        "images_per_second": batch_size / seconds, "median_step_seconds": seconds, "peak_memory_gib": peak,
        "settings": {
            "batch_size": batch_size, "resolution": resolution, "latent_size": resolution // 8, "steps_timed": steps,
            "warmup_steps": 3, "mixed_precision": mixed_precision, "gradient_checkpointing": gradient_checkpointing,
            "lora_rank": method.lora_rank, "lora_alpha": method.lora_alpha, "lora_target_modules": method.lora_target_modules,
            "w_range": [method.w_min, method.w_max], "num_ddim_timesteps": method.num_ddim_timesteps,
            **_parameter_counts(engine.method.unet),
        },
    }
    _write(result, Path(output))
    return result


def _write(result: dict, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    s = result["settings"]
    peak = "n/a" if result["peak_memory_gib"] is None else f"{result['peak_memory_gib']:.2f}"
    lines = [
        "| device | batch | resolution | precision | grad. ckpt | LoRA rank | images/s | step ms | peak memory GiB |",
        "|---" * 9 + "|",
        f"| {result['device']} | {s['batch_size']} | {s['resolution']}² | {s['mixed_precision']} | "
        f"{'yes' if s['gradient_checkpointing'] else 'no'} | {s['lora_rank']} | **{result['images_per_second']:.2f}** | "
        f"{result['median_step_seconds'] * 1e3:.1f} | {peak} |",
        "",
        f"{result['benchmark']}; {s['unet_parameters'] / 1e6:.1f}M frozen UNet parameters, {s['trainable_parameters'] / 1e6:.2f}M "
        f"trainable (LoRA, alpha {s['lora_alpha']}). Median of {s['steps_timed']} engine steps after {s['warmup_steps']} warm-up steps; "
        f"w ∈ [{s['w_range'][0]}, {s['w_range'][1]}]; torch {result['torch']}, diffusers {result['diffusers']}.",
    ]
    table = "\n".join(lines)
    output.with_suffix(".md").write_text(table + "\n")
    print(table)
