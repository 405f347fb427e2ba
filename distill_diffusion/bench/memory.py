"""LoRA-distillation peak-memory estimate without a GPU (``distill-diffusion bench lora-memory``).

Estimates the peak GPU memory of an LCM-LoRA training step (Luo et al., arXiv:2311.05556) on SDXL's UNet
(Podell et al., arXiv:2307.01952) or SD 1.5's from the model built on the meta device: weights, LoRA optimizer state,
resident encoders and the activations with gradient checkpointing, each term in a table; how each is computed is in
:mod:`distill_diffusion.bench.memory_estimate`. The defaults are the settings of diffusers'
``train_lcm_distill_lora_sdxl.py`` at one image per GPU: 1024², bf16, LoRA rank 64 on the LCM-LoRA targets, gradient
checkpointing, cached latents; the question answered is whether that fits a 24 GB card. The GPU benchmark
(``bench sdxl-gpu``) measures the same step's peak. ``--method dmd2`` estimates DMD2's step (arXiv:2405.14867) in its
one-base LoRA mode (one UNet, two adapters) beside its full mode (three UNets), term by term
(:mod:`distill_diffusion.bench.memory_dmd2`). Torch is imported when it runs (the CLI imports this module to build
``--help``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

HELP = "LoRA training peak-memory estimate from a meta-device UNet (SDXL or SD 1.5; LCM-LoRA, or DMD2's two modes), no GPU needed"
FAMILIES = ("sdxl", "sd15")
#: The training step estimated: LCM-LoRA's, or DMD2's in one-base LoRA mode beside full mode (:mod:`.memory_dmd2`).
METHODS = ("lcm-lora", "dmd2")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    p.add_argument("--method", choices=METHODS, default="lcm-lora",
                   help="lcm-lora: LCM-LoRA's step; dmd2: DMD2's, one-base LoRA mode against full mode (three UNets)")
    p.add_argument("--family", choices=FAMILIES, default="sdxl", help="the UNet architecture (published configs)")
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--lora_rank", type=int, default=64)
    p.add_argument("--mixed_precision", choices=("bf16", "fp16", "no"), default="bf16")
    p.add_argument("--gradient_checkpointing", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--card_gib", type=float, default=24.0, help="the card size the estimate is checked against")
    p.add_argument("--output", default=None, help="results JSON (default benchmarks/results/lora_memory_<family>.json, "
                   "dmd2_memory_<family>.json for --method dmd2; .md beside it)")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    from distill_diffusion.errors import require

    require(args.batch_size >= 1 and args.lora_rank >= 1, "batch_size and lora_rank must be >= 1")
    require(args.resolution >= 64 and args.resolution % 64 == 0,
            f"resolution={args.resolution} must be a positive multiple of 64 (VAE x8, UNet x8 at most)")
    require(args.card_gib > 0, f"card_gib={args.card_gib} must be > 0 (the card's memory in GiB, e.g. 24)")
    options = (args.family, args.batch_size, args.resolution, args.lora_rank, args.mixed_precision, args.gradient_checkpointing,
               args.card_gib)
    if args.method == "dmd2":
        write_dmd2(estimate_dmd2(*options), Path(args.output or f"benchmarks/results/dmd2_memory_{args.family}.json"))
    else:
        write(estimate(*options), Path(args.output or f"benchmarks/results/lora_memory_{args.family}.json"))
    return 0


def architecture(family: str) -> tuple[dict[str, Any], dict[str, int], dict[str, Any]]:
    """A published architecture's UNet config, its resident frozen modules (parameter counts) and the result's
    common fields."""
    import diffusers
    import torch

    from distill_diffusion.bench.gpu import SD15_UNET_CONFIG, SDXL_UNET_CONFIG
    from distill_diffusion.bench.memory_estimate import sdxl_resident_parameters

    xl = family == "sdxl"
    # SD 1.5's resident parts: CLIP ViT-L text encoder (123.1M) and its VAE (83.7M), the same configs as SDXL's first
    resident = sdxl_resident_parameters()
    if not xl:
        resident.pop("text_encoder_2")
    fields = {"architecture": "SDXL" if xl else "SD 1.5", "family": family, "torch": torch.__version__, "diffusers": diffusers.__version__}
    return SDXL_UNET_CONFIG if xl else SD15_UNET_CONFIG, resident, fields


def estimate(family: str, batch_size: int, resolution: int, lora_rank: int, mixed_precision: str = "bf16",
             gradient_checkpointing: bool = True, card_gib: float = 24.0) -> dict[str, Any]:
    """The estimate for a published architecture, with the card check."""
    from distill_diffusion.bench.memory_estimate import estimate_lora_training
    from distill_diffusion.models.lora import DEFAULT_TARGET_MODULES

    config, resident, fields = architecture(family)
    result = estimate_lora_training(config, batch_size=batch_size, resolution=resolution,
                                    lora_rank=lora_rank, target_modules=DEFAULT_TARGET_MODULES, mixed_precision=mixed_precision,
                                    gradient_checkpointing=gradient_checkpointing, resident=resident)
    return {
        "benchmark": f"LCM-LoRA training peak-memory estimate, {fields['architecture']} UNet (meta device)", **fields, "card_gib": card_gib,
        "fits_card": result["peak_with_margin_gib"] <= card_gib, **result,
    }


def estimate_dmd2(family: str, batch_size: int, resolution: int, lora_rank: int, mixed_precision: str = "bf16",
                  gradient_checkpointing: bool = True, card_gib: float = 24.0) -> dict[str, Any]:
    """DMD2's two modes on a published architecture (LoRA targets and head width: DMD2's defaults), with the card check."""
    from distill_diffusion.bench.memory_dmd2 import estimate_dmd2_training
    from distill_diffusion.trainers.methods.dmd2 import DMD2Config

    config, resident, fields = architecture(family)
    defaults = DMD2Config()
    result = estimate_dmd2_training(config, batch_size=batch_size, resolution=resolution, lora_rank=lora_rank,
                                    target_modules=defaults.lora_target_modules, head_width=defaults.head_width,
                                    mixed_precision=mixed_precision, gradient_checkpointing=gradient_checkpointing, resident=resident)
    fits = {mode: r["peak_with_margin_gib"] <= card_gib for mode, r in result["modes"].items()}
    return {"benchmark": f"DMD2 training peak-memory estimate, one-base LoRA mode vs full mode, {fields['architecture']} UNet "
            "(meta device)", **fields, "card_gib": card_gib, "fits_card": fits, **result}


def write(result: dict[str, Any], output: Path) -> None:
    """JSON and a markdown table beside it (printed too)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    s = result["settings"]
    lines = [f"{result['benchmark']}: batch {s['batch_size']}, {s['resolution']}², {s['mixed_precision']}, LoRA rank "
             f"{s['lora_rank']}, gradient checkpointing {'on' if s['gradient_checkpointing'] else 'off'}.", "",
             "| term | GiB |", "|---|---|",
             *[f"| {k} | {v:.2f} |" for k, v in result["terms_gib"].items()],
             f"| **peak** (fixed terms + max(teacher transient, student activations + recompute)) | **{result['peak_gib']:.2f}** |",
             f"| with {s['margin']['fragmentation']:.0%} fragmentation and {s['margin']['context_gib']} GiB CUDA context "
             f"| **{result['peak_with_margin_gib']:.2f}** |", "",
             f"Fits a {result['card_gib']:g} GB card: **{'yes' if result['fits_card'] else 'no'}**. "
             f"UNet {result['unet_parameters']:,} parameters, LoRA {result['lora_parameters']:,}; "
             f"{result['checkpoint_units']} checkpointed units; activations without checkpointing "
             f"{result['activations_without_checkpointing_gib']:.2f} GiB. torch {result['torch']}, diffusers {result['diffusers']}."]
    finish(lines, result, output, "", "memory_estimate.py")


def write_dmd2(result: dict[str, Any], output: Path) -> None:
    """JSON and a markdown table of both modes beside it (printed too)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    s, modes = result["settings"], list(result["modes"].values())

    def row(name: str, pick: Any, bold: bool = False) -> str:
        return f"| {name} | " + " | ".join(f"**{pick(m):.2f}**" if bold else f"{pick(m):.2f}" for m in modes) + " |"

    ratio, states = result["one_base_over_full"], result["states_one_base_over_full"]
    margin = f"with {s['margin']['fragmentation']:.0%} fragmentation and {s['margin']['context_gib']} GiB CUDA context"
    lines = [f"{result['benchmark']}: batch {s['batch_size']}, {s['resolution']}², {s['mixed_precision']}, LoRA rank {s['lora_rank']}, "
             f"classifier head width {s['head_width']}, gradient checkpointing {'on' if s['gradient_checkpointing'] else 'off'}.", "",
             "| term | " + " | ".join(f"{m} mode GiB" for m in result["modes"]) + " |", "|---|---|---|",
             *[row(k, lambda m, k=k: m["terms_gib"][k]) for k in modes[0]["terms_gib"]],
             row("weights + AdamW moments + the larger phase's gradients", lambda m: m["weights_gradients_moments_gib"], bold=True),
             *[row(f"{p}: all its terms", lambda m, p=p: m["phases_gib"][p]) for p in modes[0]["phases_gib"]],
             row("**peak** (the terms held throughout + the larger phase)", lambda m: m["peak_gib"], bold=True),
             row(margin, lambda m: m["peak_with_margin_gib"], bold=True), "",
             f"One-base / full: peak **{ratio:.2f}**, weights + gradients + AdamW moments **{states:.2f}** (goal ≤ 0.5: "
             f"**{'yes' if ratio <= 0.5 else 'no'}**). Fits a {result['card_gib']:g} GB card: "
             + ", ".join(f"{m} {'yes' if fits else 'no'}" for m, fits in result["fits_card"].items())
             + f". UNet {result['unet_parameters']:,} parameters, each LoRA adapter {result['lora_parameters_per_adapter']:,}, "
             f"head {result['head_parameters']:,}. torch {result['torch']}, diffusers {result['diffusers']}."]
    finish(lines, result, output, "--method dmd2 ", "memory_dmd2.py")


def finish(lines: list[str], result: dict[str, Any], output: Path, method: str, model: str) -> None:
    """Add the command that made the table, write it beside ``output`` as markdown and print it."""
    s = result["settings"]
    checkpointing = "" if s["gradient_checkpointing"] else " --no-gradient_checkpointing"
    lines += ["", f"Made by `distill-diffusion bench lora-memory {method}--family {result['family']} --resolution {s['resolution']} "
              f"--batch_size {s['batch_size']} --lora_rank {s['lora_rank']} --mixed_precision {s['mixed_precision']}{checkpointing}` "
              f"on the meta device (CPU, no GPU, seconds); how each term is computed: distill_diffusion/bench/{model}."]
    table = "\n".join(lines)
    output.with_suffix(".md").write_text(table + "\n")
    print(table)
