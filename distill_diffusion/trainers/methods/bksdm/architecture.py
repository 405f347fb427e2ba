"""BK-SDM student architectures as data: config edits of the teacher's UNet, a name map for the weights, feature pairs.

Kim et al., "BK-SDM: A Lightweight, Fast, and Cheap Version of Stable Diffusion", arXiv:2305.15798, §3.1 (block
removal) and §3.2 (initialisation from the teacher). The students are plain ``UNet2DConditionModel`` configs:

- ``base``: one resnet/attention pair per down stage (``layers_per_block=1``); up stages keep their first and last
  pair, which keeps the skip channels consistent; the mid block stays.
- ``small``: base without the mid block (``mid_block_type=None``).
- ``tiny``: small without the innermost stage (SD: ``block_out_channels`` [320, 640, 1280]; the last kept down
  stage loses its downsampler) — student up stage i is the teacher's up stage i + 1.
- ``koala_1b`` / ``koala_700m``: Lee et al., "KOALA", arXiv:2312.04005, for SDXL: base / small with the
  transformer depth of the innermost stage (and of the mid block, which diffusers builds at that depth) cut from
  SDXL's 10 to 6 / 5. On SDXL base's config: 1,161,184,324 / 782,822,724 UNet parameters (the paper's 1,161M / 782M).

Nothing is deleted from a built teacher: :func:`weight_map` names, for every student tensor, the teacher tensor it
starts from (``up_blocks.i.resnets.1 ← resnets.2`` for a two-layer teacher; a cut transformer keeps the teacher's
first layers, ``transformer_blocks.j ← transformer_blocks.j``), computed from the two configs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from distill_diffusion.errors import UserError, require


@dataclass(frozen=True)
class Variant:
    """A block-removal recipe: the edits of the teacher's config that make the student."""

    paper: str
    keep_mid_block: bool
    drop_innermost_stage: bool = False
    #: Transformer layers kept in the innermost stage and the mid block (None: the teacher's).
    innermost_transformer_layers: int | None = None


VARIANTS: dict[str, Variant] = {
    "base": Variant("Kim et al., BK-SDM, arXiv:2305.15798, §3.1", keep_mid_block=True),
    "small": Variant("Kim et al., BK-SDM, arXiv:2305.15798, §3.1", keep_mid_block=False),
    "tiny": Variant("Kim et al., BK-SDM, arXiv:2305.15798, §3.1", keep_mid_block=False, drop_innermost_stage=True),
    "koala_1b": Variant("Lee et al., KOALA, arXiv:2312.04005", keep_mid_block=True, innermost_transformer_layers=6),
    "koala_700m": Variant("Lee et al., KOALA, arXiv:2312.04005", keep_mid_block=False, innermost_transformer_layers=5),
}
#: Config fields diffusers reads per down stage (a list there); the tiny variant drops the innermost entry.
_PER_STAGE = ("attention_head_dim", "num_attention_heads", "transformer_layers_per_block", "only_cross_attention",
              "cross_attention_dim", "layers_per_block")


def _stage_count(config: dict[str, Any]) -> int:
    return len(config["down_block_types"])


def _layers(config: dict[str, Any]) -> int:
    """The config's ``layers_per_block`` as one number (BK-SDM's edits assume one value for every stage)."""
    value = config.get("layers_per_block", 2)
    if isinstance(value, (list, tuple)):
        require(len(set(value)) == 1, f"the teacher UNet has layers_per_block={list(value)}, different per stage; BK-SDM variants "
                "need one value (pass --method.student_config with your own student config)")
        value = value[0]
    return int(value)


def student_config(teacher: dict[str, Any], variant: str) -> dict[str, Any]:
    """The teacher's UNet config with ``variant``'s blocks removed (a new dict; private ``_`` keys dropped)."""
    require(variant in VARIANTS, f"unknown BK-SDM variant {variant!r}; choose one of: {', '.join(VARIANTS)} (or pass --method.student_config)")
    recipe = VARIANTS[variant]
    config = {k: v for k, v in teacher.items() if not k.startswith("_")}
    layers, stages = _layers(teacher), _stage_count(teacher)
    require(len(teacher.get("up_block_types", ())) == stages, "the teacher UNet has different numbers of down and up stages; "
            "BK-SDM variants need a symmetric UNet")
    require(layers >= 2, f"the teacher UNet already has layers_per_block={layers}: the BK-SDM {variant} variant removes resnet/attention "
            "pairs from stages with two or more; pass --method.student_config with your own smaller config")
    if not recipe.keep_mid_block:
        config["mid_block_type"] = None
    if recipe.innermost_transformer_layers is not None:
        _cut_innermost_depth(config, teacher, variant, recipe.innermost_transformer_layers)
    if recipe.drop_innermost_stage:
        _drop_innermost_stage(config, teacher)
    config["layers_per_block"] = 1
    return config


def transformer_depths(config: dict[str, Any]) -> list[int]:
    """Transformer layers per down stage (0 where a stage has no attention), as diffusers reads the config."""
    stages = _stage_count(config)
    value = config.get("transformer_layers_per_block", 1)
    depths = list(value) if isinstance(value, (list, tuple)) else [value] * stages
    require(all(isinstance(d, int) for d in depths), f"the teacher UNet has per-layer transformer depths {value}; BK-SDM variants "
            "need one depth per stage (pass --method.student_config with your own student config)")
    return [d if "CrossAttn" in kind else 0 for d, kind in zip(depths, config["down_block_types"])]


def _cut_innermost_depth(config: dict[str, Any], teacher: dict[str, Any], variant: str, keep: int) -> None:
    """KOALA's transformer-depth cut (arXiv:2312.04005): the innermost stage's transformers (and the mid block's, which
    diffusers builds at the innermost depth) keep ``keep`` layers. The name map starts them from the teacher's first
    ``keep`` layers, so the cut stack initially computes exactly the teacher's first layers (our choice of which)."""
    depths = transformer_depths(teacher)
    require(teacher.get("reverse_transformer_layers_per_block") is None, f"the BK-SDM {variant} variant cuts one transformer depth "
            "per stage; this teacher UNet sets reverse_transformer_layers_per_block (pass --method.student_config)")
    require(depths[-1] > keep, f"the BK-SDM {variant} variant keeps {keep} transformer layers in the innermost stage and needs a "
            f"teacher with more there (SDXL base has 10); this teacher UNet has {depths[-1]}: use "
            f"{'base' if VARIANTS[variant].keep_mid_block else 'small'} (the same blocks without the depth cut)")
    value = config.get("transformer_layers_per_block", 1)
    per_stage = list(value) if isinstance(value, (list, tuple)) else [value] * _stage_count(teacher)
    config["transformer_layers_per_block"] = [*per_stage[:-1], keep]


def _drop_innermost_stage(config: dict[str, Any], teacher: dict[str, Any]) -> None:
    """BK-SDM-Tiny: the innermost stage goes; student up stage i becomes the teacher's up stage i + 1."""
    channels, stages = list(teacher["block_out_channels"]), _stage_count(teacher)
    require(stages >= 3, f"the teacher UNet has {stages} stages; the tiny variant removes the innermost one and needs at least 3; use small")
    require(channels[-1] == channels[-2], f"the teacher's innermost stage has {channels[-1]} channels and the one before it {channels[-2]}: "
            "the tiny variant keeps the teacher's up stages after the innermost, which needs them equal (as SD's 1280, 1280); use small")
    config["block_out_channels"] = channels[:-1]
    config["down_block_types"] = list(teacher["down_block_types"])[:-1]
    config["up_block_types"] = list(teacher["up_block_types"])[1:]
    for key in _PER_STAGE:
        if isinstance(config.get(key), (list, tuple)):
            config[key] = list(config[key])[:-1]
    if isinstance(config.get("reverse_transformer_layers_per_block"), (list, tuple)):
        config["reverse_transformer_layers_per_block"] = list(config["reverse_transformer_layers_per_block"])[1:]


def meta_unet(config: dict[str, Any], what: str) -> Any:
    """``UNet2DConditionModel`` of ``config`` on the meta device (no memory); a config diffusers refuses is a UserError."""
    from diffusers import UNet2DConditionModel

    try:
        with torch.device("meta"):
            return UNet2DConditionModel.from_config(config)
    except Exception as exc:  # diffusers raises ValueError, TypeError or KeyError for configs it cannot build
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UserError(f"the {what} UNet config does not build a UNet2DConditionModel ({exc.__class__.__name__}: {first}); fix it") from None


_LAYER = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$")
_SAMPLER = re.compile(r"^up_blocks\.(\d+)\.(upsamplers\..+)$")


def weight_map(teacher_config: dict[str, Any], student_config_: dict[str, Any]) -> dict[str, str]:
    """Student state-dict key → the teacher key it is initialised from (BK-SDM §3.2), for every student tensor.

    Down stage i, layer k ← the teacher's down stage i, layer k; up stage i ← the teacher's up stage i + shift
    (shift = stages removed from the inside), its layers k < last ← k and its last layer ← the teacher's last
    (which keeps the skip connection from the stage before); everything else (conv_in, time embedding, mid block,
    samplers, conv_out) by the same name. Raises :class:`UserError` for a student tensor with no teacher tensor of
    its name and shape.
    """
    return weight_map_of(meta_unet(teacher_config, "teacher"), meta_unet(student_config_, "student"))


def weight_map_of(teacher: Any, student: Any) -> dict[str, str]:
    """:func:`weight_map` of two built UNets (meta-device ones are enough: only names and shapes are read)."""
    shift = _stage_count(teacher.config) - _stage_count(student.config)
    t_last, s_last = _layers(teacher.config), _layers(student.config)  # up stages have layers_per_block + 1 layers
    t_shapes = {k: v.shape for k, v in teacher.state_dict().items()}
    mapping, bad = {}, []
    for key, value in student.state_dict().items():
        source = _source_key(key, shift, s_last, t_last)
        if t_shapes.get(source) != value.shape:
            bad.append(f"{key} {tuple(value.shape)} ← {source} {tuple(t_shapes[source]) if source in t_shapes else 'missing'}")
        mapping[key] = source
    if bad:
        raise UserError(f"the student UNet cannot be initialised from the teacher: {len(bad)} tensors have no teacher tensor of their "
                        f"name and shape (e.g. {bad[0]}); use a variant of this teacher or a student config built from its config")
    return mapping


def _source_key(key: str, shift: int, student_last: int, teacher_last: int) -> str:
    layer = _LAYER.match(key)
    if layer:
        kind, stage, sub, k, rest = layer.group(1), int(layer.group(2)), layer.group(3), int(layer.group(4)), layer.group(5)
        if kind == "up_blocks":
            stage += shift
            k = teacher_last if k == student_last else k
        return f"{kind}.{stage}.{sub}.{k}.{rest}"
    sampler = _SAMPLER.match(key)
    if sampler:
        return f"up_blocks.{int(sampler.group(1)) + shift}.{sampler.group(2)}"
    return key


def block_map(mapping: dict[str, str]) -> dict[str, str]:
    """The weight map at module level (``up_blocks.1.resnets.1 ← up_blocks.1.resnets.2``), for reports."""
    blocks: dict[str, str] = {}
    for student_key, teacher_key in mapping.items():
        s, t = module_of(student_key), module_of(teacher_key)
        blocks.setdefault(s, t)
    return blocks


def module_of(key: str) -> str:
    """The block a tensor belongs to: a stage's resnet or attention, or one transformer layer of an attention (so a
    transformer whose depth was cut reports its removed layers, ``down_blocks.2.attentions.0.transformer_blocks.7``)."""
    parts = key.split(".")
    if "transformer_blocks" in parts:
        return ".".join(parts[:parts.index("transformer_blocks") + 2])
    depth = 4 if parts[0] in ("down_blocks", "up_blocks") else 3 if parts[0] == "mid_block" else 1
    return ".".join(parts[:depth])


def removed_blocks(unused: Any, used: Any) -> list[str]:
    """The teacher blocks the student left out, from the unused and used teacher tensor names: a whole resnet or
    attention where none of it is used, single transformer layers where an attention lost only some (a depth cut)."""
    kept_prefixes = {".".join(k.split(".")[:4 if k.startswith(("down_blocks", "up_blocks")) else 3]) for k in used}
    blocks = set()
    for key in unused:
        block = module_of(key)
        if ".transformer_blocks." in block and block.split(".transformer_blocks.")[0] not in kept_prefixes:
            block = block.split(".transformer_blocks.")[0]
        blocks.add(block)
    return sorted(blocks)


@dataclass(frozen=True)
class InitReport:
    """Which teacher tensors initialised the student, and which were left out (the removed blocks)."""

    mapping: dict[str, str]
    unused: tuple[str, ...]

    @property
    def used(self) -> int:
        return len(set(self.mapping.values()))

    def summary(self) -> str:
        removed = removed_blocks(self.unused, self.mapping.values())
        return (f"{len(self.mapping)} student tensors from {self.used} teacher tensors; {len(self.unused)} teacher tensors unused "
                f"({', '.join(removed[:6])}{' ...' if len(removed) > 6 else ''})")


@torch.no_grad()
def init_from_teacher(student: Any, teacher_state: dict[str, torch.Tensor], mapping: dict[str, str]) -> InitReport:
    """Copy ``teacher_state[mapping[k]]`` into every student tensor ``k`` (every one gets a tensor; checked)."""
    own = student.state_dict()
    missing = sorted(set(own) - set(mapping))
    require(not missing, f"no teacher tensor for student tensors {missing[:3]}; the weight map must cover the student")
    student.load_state_dict({k: teacher_state[source] for k, source in mapping.items()}, strict=True)
    unused = tuple(sorted(set(teacher_state) - set(mapping.values())))
    return InitReport(mapping=mapping, unused=unused)
