"""A shipped config's training peak-memory estimate without a GPU (``distill-diffusion bench train-memory``).

Estimates the peak GPU memory of one training step of a shipped progressive, BK-SDM, LADD or ADD config (SDXL or SD 1.x)
from meta-device models, term by term (:mod:`distill_diffusion.bench.memory_methods`): the companion of
``bench sdxl-gpu --config``, which measures the SDXL configs' steps on a GPU. Batch, resolution, precision,
checkpointing and EMA are the config's unless given; the architecture is the published one of the config's family
(SDXL base, arXiv:2307.01952; SD 1.x). ``bench lora-memory`` estimates LCM-LoRA's and DMD2's steps. Torch is imported
when it runs (the CLI imports this module to build ``--help``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

HELP = "training peak-memory estimate of a shipped progressive, BK-SDM, LADD or ADD config (SDXL or SD 1.x UNet on the meta device), no GPU needed"
#: The configs it estimates and the published architecture each one trains.
CONFIGS = {"progressive_sdxl": "sdxl", "bksdm_koala_700m_sdxl": "sdxl", "bksdm_koala_1b_sdxl": "sdxl", "ladd_sdxl": "sdxl",
           "add_sdxl": "sdxl", "progressive_sd15": "sd15", "bksdm_small_sd14": "sd15", "ladd_sd15": "sd15", "add_sd15": "sd15"}

#: The parameter counts the table states, by result key.
COUNTS = {"unet_parameters": "teacher UNet", "trainable_parameters": "trained", "head_parameters": "discriminator heads"}
#: Where the other methods' configs are estimated.
OTHERS = "LCM-LoRA's and DMD2's: bench lora-memory"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options (batch, resolution, precision and checkpointing default to the config's)."""
    p.add_argument("--config", default="ladd_sdxl", help=f"the shipped config whose step is estimated: {', '.join(CONFIGS)}")
    p.add_argument("--batch_size", type=int, default=None, help="images per GPU (default: the config's train_batch_size)")
    p.add_argument("--resolution", type=int, default=None, help="default: the config's")
    p.add_argument("--mixed_precision", choices=("bf16", "fp16", "no"), default=None, help="default: the config's")
    p.add_argument("--gradient_checkpointing", action=argparse.BooleanOptionalAction, default=None, help="default: the config's")
    p.add_argument("--card_gib", type=float, default=80.0, help="the card size the estimate is checked against")
    p.add_argument("--output", default=None, help="results JSON (default benchmarks/results/<config>_memory.json; .md beside it)")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    from distill_diffusion.errors import require

    require(args.config in CONFIGS, f"--config {args.config} is not estimated here; use one of {', '.join(CONFIGS)} ({OTHERS})")
    require(args.batch_size is None or args.batch_size >= 1, f"--batch_size {args.batch_size} must be >= 1")
    require(args.resolution is None or (args.resolution >= 64 and args.resolution % 64 == 0),
            f"--resolution {args.resolution} must be a positive multiple of 64 (VAE x8, UNet x8 at most)")
    require(args.card_gib > 0, f"--card_gib {args.card_gib} must be > 0 (the card's memory in GiB, e.g. 80)")
    result = estimate(args.config, args.batch_size, args.resolution, args.mixed_precision, args.gradient_checkpointing, args.card_gib)
    write(result, Path(args.output or f"benchmarks/results/{args.config}_memory.json"))
    return 0


def estimate(config: str, batch_size: int | None = None, resolution: int | None = None, mixed_precision: str | None = None,
             gradient_checkpointing: bool | None = None, card_gib: float = 80.0) -> dict[str, Any]:
    """The estimate of ``config``'s step on its family's published UNet, with the card check."""
    from distill_diffusion.bench.memory import architecture
    from distill_diffusion.bench.memory_methods import estimate_method_training
    from distill_diffusion.config import load_config

    preset = load_config(config)
    train = preset["train"]
    unet_config, resident, fields = architecture(CONFIGS[config])
    result = estimate_method_training(
        preset["method_name"], unet_config, dict(preset["method"]), batch_size=batch_size or int(train["train_batch_size"]),
        resolution=resolution or int(preset["data"]["resolution"]), mixed_precision=mixed_precision or train.get("mixed_precision", "no"),
        gradient_checkpointing=bool(train.get("gradient_checkpointing")) if gradient_checkpointing is None else gradient_checkpointing,
        use_ema=bool(train.get("use_ema")), resident=resident)
    result["settings"]["config"] = config
    return {"benchmark": f"{config} training peak-memory estimate, {fields['architecture']} UNet (meta device)", **fields,
            "card_gib": card_gib, "fits_card": result["peak_with_margin_gib"] <= card_gib, **result}


def write(result: dict[str, Any], output: Path) -> None:
    """JSON and a markdown table beside it (printed too)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    s = result["settings"]
    phases = " + ".join(result["phases_gib"])
    counts = [f"{name} {result[key]:,} parameters" for key, name in COUNTS.items() if key in result]
    checkpointing = "--gradient_checkpointing" if s["gradient_checkpointing"] else "--no-gradient_checkpointing"
    lines = [f"{result['benchmark']}: batch {s['batch_size']} per GPU, {s['resolution']}², {s['mixed_precision']}, "
             f"gradient checkpointing {'on' if s['gradient_checkpointing'] else 'off'}, EMA {'on' if s['use_ema'] else 'off'}.", "",
             "| term | GiB |", "|---|---|", *[f"| {k} | {v:.2f} |" for k, v in result["terms_gib"].items()],
             *[f"| {p}: all its terms | {v:.2f} |" for p, v in result["phases_gib"].items()],
             f"| **peak** (the terms held throughout + the larger of: {phases}) | **{result['peak_gib']:.2f}** |",
             f"| with {s['margin']['fragmentation']:.0%} fragmentation and {s['margin']['context_gib']} GiB CUDA context "
             f"| **{result['peak_with_margin_gib']:.2f}** |", "",
             f"Fits a {result['card_gib']:g} GB card: **{'yes' if result['fits_card'] else 'no'}**. {'; '.join(counts)}. "
             f"torch {result['torch']}, diffusers {result['diffusers']}.", "",
             f"Made by `distill-diffusion bench train-memory --config {s['config']} --batch_size {s['batch_size']} --resolution "
             f"{s['resolution']} --mixed_precision {s['mixed_precision']} {checkpointing}` on the meta device (CPU, no GPU, "
             "seconds); how each term is computed: distill_diffusion/bench/memory_methods.py."]
    table = "\n".join(lines)
    output.with_suffix(".md").write_text(table + "\n")
    print(table)
