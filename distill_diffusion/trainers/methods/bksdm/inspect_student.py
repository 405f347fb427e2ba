"""``distill-diffusion inspect-student``: what a BK-SDM variant removes from a teacher, before any weights load.

From the teacher's configs alone (a local folder or a hub id: small JSON files): parameter counts and MACs of the
teacher's and the student's UNets (built on the meta device, counted with ``torch.utils.flop_counter``), the block
map the student is initialised by, the teacher blocks left out, and the feature pairs. MACs are given as Kim et al.,
arXiv:2305.15798, Table 1 count them (convolutions and linear layers: SD 1.4's UNet 339G at 512²) and with the
attention-score matmuls added. SDXL UNets are called with their pooled text and time ids (zeros: only shapes count).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

#: The names of ``architecture.VARIANTS`` (kept here so that ``--help`` imports no torch; a test checks they agree).
VARIANT_NAMES = ("base", "small", "tiny", "koala_1b", "koala_700m")
HELP = "parameters, MACs and block map of a BK-SDM student of a teacher (configs only, no weights)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="teacher: a diffusers folder or hub id")
    p.add_argument("--variant", choices=VARIANT_NAMES, default="small",
                   help="BK-SDM base/small/tiny (SD 1.x/2.x; base and small also SDXL) or KOALA's koala_1b/koala_700m (SDXL)")
    p.add_argument("--feature_targets", choices=("stages", "self_attention"), default="stages",
                   help="which feature pairs to list: stage outputs (BK-SDM) or self-attentions (KOALA)")
    p.add_argument("--student_config", default=None, help="a UNet config.json of your own student (instead of --variant)")
    p.add_argument("--latent_size", type=int, default=None, help="latent side for MACs (default: the UNet's sample_size, 64 for SD 1.x)")
    p.add_argument("--revision", default=None)
    p.add_argument("--local_files_only", action="store_true", help="never download (hub ids resolve from the local cache)")
    p.add_argument("--output", default=None, help="also write the report as JSON")


def macs(unet: Any, latent_size: int) -> dict[str, float]:
    """Multiply-accumulates of one UNet call (batch 1, 77 text tokens; SDXL's pooled text and time ids too) on the
    meta device, in G."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from distill_diffusion.models.conditioning import placeholder

    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        c = placeholder(unet.config)
        unet(torch.zeros(1, unet.config.in_channels, latent_size, latent_size), torch.tensor([1]), **c.unet_kwargs())
    ops = {str(k): v / 2e9 for k, v in counter.get_flop_counts()["Global"].items()}
    attention = sum(v for k, v in ops.items() if "bmm" in k or "scaled_dot_product" in k)
    total = sum(ops.values())
    return {"conv_linear": total - attention, "total": total}


def inspect_student(model: str, variant: str = "small", student_config: str | None = None, latent_size: int | None = None,
                    revision: str | None = None, local_files_only: bool = False, feature_targets: str = "stages") -> dict[str, Any]:
    """The report as a dict (see the module docstring)."""
    from distill_diffusion.config import ModelConfig
    from distill_diffusion.errors import require
    from distill_diffusion.models.loading import read_teacher_configs
    from distill_diffusion.trainers.methods.bksdm import architecture as arch
    from distill_diffusion.trainers.methods.bksdm.config import BKSDMConfig
    from distill_diffusion.trainers.methods.bksdm.method import plan

    configs = read_teacher_configs(ModelConfig(pretrained_model_name_or_path=model, revision=revision, local_files_only=local_files_only))
    require(configs is not None, f"{model}: a single-file checkpoint has no readable UNet config; pass its diffusers folder or hub id")
    config = BKSDMConfig(variant=variant, student_config=student_config, feature_targets=feature_targets)
    student_cfg, mapping, pairs = plan(configs.unet, config)
    teacher, student = arch.meta_unet(configs.unet, "teacher"), arch.meta_unet(student_cfg, "student")
    size = int(configs.unet.get("sample_size") or 64) if latent_size is None else latent_size
    require(size >= 1 and size % 2 ** (len(teacher.down_blocks) - 1) == 0,
            f"--latent_size {size} must be a positive multiple of {2 ** (len(teacher.down_blocks) - 1)} (the UNet's downsampling)")
    used = set(mapping.values())
    return {
        "teacher": model, "student": student_config or variant, "latent_size": size,
        "parameters": {"teacher": sum(p.numel() for p in teacher.parameters()), "student": sum(p.numel() for p in student.parameters())},
        "gmacs": {"teacher": macs(teacher, size), "student": macs(student, size)},
        "block_map": arch.block_map(mapping),
        "teacher_blocks_removed": arch.removed_blocks([k for k in teacher.state_dict() if k not in used], used),
        "feature_pairs": [str(p) for p in pairs],
    }


def report_lines(report: dict[str, Any]) -> list[str]:
    """The report as printed: sizes, the block map (copied blocks whose name changes), the removed blocks."""
    p, g = report["parameters"], report["gmacs"]
    lines = [f"teacher {report['teacher']}  →  student {report['student']}  (MACs at latent {report['latent_size']}², batch 1)", "",
             "| UNet | parameters | GMACs (conv + linear) | GMACs (with attention matmuls) |", "|---|---|---|---|"]
    for who in ("teacher", "student"):
        lines.append(f"| {who} | {p[who]:,} | {g[who]['conv_linear']:.1f} | {g[who]['total']:.1f} |")
    lines += ["", f"student: {100 * (1 - p['student'] / p['teacher']):.1f}% fewer parameters, "
              f"{100 * (1 - g['student']['conv_linear'] / g['teacher']['conv_linear']):.1f}% fewer conv + linear MACs", "",
              "block map (student ← teacher), blocks whose name changes:"]
    moved = {s: t for s, t in report["block_map"].items() if s != t}
    lines += [f"  {s} ← {t}" for s, t in moved.items()] or ["  (none: every kept block keeps its name)"]
    lines += ["teacher blocks left out:", *[f"  {b}" for b in report["teacher_blocks_removed"]], "feature pairs:",
              *[f"  {x}" for x in report["feature_pairs"]]]
    return lines


def run(args: argparse.Namespace) -> int:
    from distill_diffusion.paths import check_output_file

    if args.output:
        check_output_file(args.output, "--output")
    report = inspect_student(args.model, args.variant, args.student_config, args.latent_size, args.revision, args.local_files_only,
                             args.feature_targets)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))
    print("\n".join(report_lines(report)))
    return 0
