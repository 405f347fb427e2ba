"""BK-SDM feature distillation: which outputs are paired, capturing them with forward hooks, and the loss.

Kim et al., arXiv:2305.15798, §3.3, eq. 3: L_FeatKD = Σ_l E‖f_l^T(z_t, y, t) − f_l^S(z_t, y, t)‖², with f_l the
outputs of every down and up stage (not the mid block). Lee et al., KOALA, arXiv:2312.04005, found the
self-attention outputs the best features to distil on SDXL: :func:`self_attention_pairs` pairs every student
self-attention with the teacher one it was initialised from. Both models are probed with the UNet's whole
conditioning (SDXL's pooled text and time ids too). Hooks go on the *unwrapped* modules (the reference code
hooked through DDP's wrapper and crashed under several processes) and live only for one forward
(:class:`FeatureCapture` is a context manager), so no exported or checkpointed model ever carries one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from distill_diffusion.errors import UserError, require
from distill_diffusion.models.conditioning import placeholder


@dataclass(frozen=True)
class FeaturePair:
    """Student module output ↔ teacher module output. ``teacher_output``: ``hidden`` (the stage's output) or
    ``pre_downsample`` (a down stage's last layer, before its downsampler: the pair of a student stage that lost it)."""

    student: str
    teacher: str
    teacher_output: Literal["hidden", "pre_downsample"] = "hidden"

    def __str__(self) -> str:
        suffix = " (before its downsampler)" if self.teacher_output == "pre_downsample" else ""
        return f"{self.student} ↔ {self.teacher}{suffix}"


def stage_pairs(teacher: nn.Module, student: nn.Module) -> list[FeaturePair]:
    """Every down and up stage of the student with the teacher stage it was initialised from (§3.3's map).

    Down stage i ↔ teacher down stage i; up stage i ↔ teacher up stage i + shift (shift = stages removed from the
    inside). A student down stage without the downsampler its teacher stage has is compared before that downsampler.
    """
    shift = len(teacher.up_blocks) - len(student.up_blocks)
    pairs = []
    for i, block in enumerate(student.down_blocks):
        lost = block.downsamplers is None and teacher.down_blocks[i].downsamplers is not None
        pairs.append(FeaturePair(f"down_blocks.{i}", f"down_blocks.{i}", "pre_downsample" if lost else "hidden"))
    pairs += [FeaturePair(f"up_blocks.{i}", f"up_blocks.{i + shift}") for i in range(len(student.up_blocks))]
    return pairs


def self_attention_pairs(mapping: dict[str, str]) -> list[FeaturePair]:
    """Every student self-attention (``...transformer_blocks.j.attn1``) with the teacher self-attention its weights
    come from (KOALA's feature target, arXiv:2312.04005), read off the weight map: same width, same resolution."""
    pairs = []
    for student_key, teacher_key in mapping.items():
        if student_key.endswith(".attn1.to_q.weight"):
            pairs.append(FeaturePair(student_key.removesuffix(".to_q.weight"), teacher_key.removesuffix(".to_q.weight")))
    require(pairs, "method.feature_targets self_attention: the student UNet has no self-attention layers; use stages")
    return pairs


def parse_pairs(specs: list[str], teacher: nn.Module, student: nn.Module) -> list[FeaturePair]:
    """``"student_module=teacher_module"`` strings (e.g. ``down_blocks.2=down_blocks.2``) as pairs; a student down
    stage without the downsampler of its teacher stage is compared before that downsampler, as in :func:`stage_pairs`."""
    pairs = []
    for spec in specs:
        s, sep, t = spec.partition("=")
        require(sep == "=" and s and t, f"method.feature_pairs entry {spec!r} is not a pair; write student_module=teacher_module, e.g. up_blocks.0=up_blocks.1")
        s_module, t_module = _get(student, s, "student"), _get(teacher, t, "teacher")
        lost = getattr(s_module, "downsamplers", 0) is None and getattr(t_module, "downsamplers", None) is not None
        pairs.append(FeaturePair(s, t, "pre_downsample" if lost else "hidden"))
    return pairs


def _get(model: nn.Module, name: str, which: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        stages = [f"down_blocks.{i}" for i in range(len(model.down_blocks))] + [f"up_blocks.{i}" for i in range(len(model.up_blocks))]
        raise UserError(f"method.feature_pairs: the {which} UNet has no module {name!r}; stages are {', '.join(stages)}") from None


def _select(output: Any, which: str) -> Tensor:
    """A stage's output tensor: down stages return (hidden, residuals); up stages a tensor."""
    if which == "pre_downsample":
        return output[1][-2]  # residuals = (each layer's output ..., the downsampled output)
    return output[0] if isinstance(output, tuple) else output


class FeatureCapture:
    """``with FeatureCapture(unet, {"name": "hidden", ...}) as feats: unet(...)`` fills ``feats[name]``; hooks removed on exit."""

    def __init__(self, model: nn.Module, outputs: dict[str, str]) -> None:
        self.model, self.outputs = model, outputs
        self.features: dict[str, Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> dict[str, Tensor]:
        for name, which in self.outputs.items():
            def hook(_module: nn.Module, _args: Any, output: Any, name: str = name, which: str = which) -> None:
                self.features[name] = _select(output, which)
            self._handles.append(self.model.get_submodule(name).register_forward_hook(hook))
        return self.features

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def describe(pairs: list[FeaturePair], most: int = 6) -> str:
    """The pairs in one line for logs and model cards (the first and last few when there are many, e.g. self-attentions)."""
    if len(pairs) <= most:
        return "; ".join(map(str, pairs)) or "none"
    return f"{len(pairs)} pairs: {'; '.join(map(str, pairs[:2]))}; ...; {'; '.join(map(str, pairs[-2:]))}"


def student_outputs(pairs: list[FeaturePair]) -> dict[str, str]:
    return {p.student: "hidden" for p in pairs}


def teacher_outputs(pairs: list[FeaturePair]) -> dict[str, str]:
    return {p.teacher: p.teacher_output for p in pairs}


def check_pair_shapes(teacher: nn.Module, student: nn.Module, pairs: list[FeaturePair], sample_size: int) -> None:
    """Run both UNets once on the meta device (no memory, no compute) and compare each pair's shapes: a clear error
    at start-up instead of a broadcast error, or a silently broadcast loss, at the first step."""
    shapes = []
    for model, outputs in ((student, student_outputs(pairs)), (teacher, teacher_outputs(pairs))):
        with torch.device("meta"), FeatureCapture(model, outputs) as feats:
            c = placeholder(model.config, tokens=2)
            model(torch.zeros(1, model.config.in_channels, sample_size, sample_size), torch.tensor([1]), **c.unet_kwargs())
        shapes.append({k: tuple(v.shape) for k, v in feats.items()})
    for pair in pairs:
        s, t = shapes[0][pair.student], shapes[1][pair.teacher]
        require(s == t, f"feature pair {pair}: the student's output is {s} and the teacher's {t}; pair stages of equal shape "
                "(method.feature_pairs) or pass --method.lambda_feat 0")


def feature_loss(student: dict[str, Tensor], teacher: dict[str, Tensor], pairs: list[FeaturePair], normalized: bool) -> Tensor:
    """Σ over pairs of MSE(f_S, f_T) in fp32 (eq. 3); ``normalized`` divides each by the teacher feature's mean square,
    so each stage counts alike whatever its scale (an option: the paper's weights were never tuned)."""
    total = torch.zeros((), device=next(iter(student.values())).device)
    for pair in pairs:
        f_s, f_t = student[pair.student].float(), teacher[pair.teacher].detach().float()
        term = torch.nn.functional.mse_loss(f_s, f_t)
        total = total + (term / f_t.square().mean().clamp_min(1e-8) if normalized else term)
    return total
