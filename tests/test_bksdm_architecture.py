"""BK-SDM students as data (Kim et al., arXiv:2305.15798): exact SD 1.4 parameter counts and MACs, the weight map,
initialisation that reproduces the teacher block by block, feature pairs and their hooks, refused layouts."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from distill_diffusion.bench.gpu import SD15_UNET_CONFIG
from distill_diffusion.errors import UserError
from distill_diffusion.toy.tiny import tiny_unet_config
from distill_diffusion.trainers.methods.bksdm import architecture as arch
from distill_diffusion.trainers.methods.bksdm import features as feat
from distill_diffusion.trainers.methods.bksdm.inspect_student import macs

#: The BK-SDM paper's variants (KOALA's, for SDXL teachers: tests/test_bksdm_sdxl.py).
BKSDM_VARIANTS = ("base", "small", "tiny")
#: Kim et al., arXiv:2305.15798, Table 1: UNet parameters of SD 1.4 and its three students.
PAPER_PARAMETERS = {"teacher": 859_520_964, "base": 579_384_964, "small": 482_346_884, "tiny": 323_384_964}
#: Table 1's MACs at 512² (convolutions and linear layers), G.
PAPER_GMACS = {"teacher": 339, "base": 224, "small": 218, "tiny": 205}


def count(unet: torch.nn.Module) -> int:
    return sum(p.numel() for p in unet.parameters())


@pytest.mark.parametrize("variant", BKSDM_VARIANTS)
def test_sd14_students_have_the_papers_exact_parameter_counts_and_macs(variant: str) -> None:
    teacher = arch.meta_unet(SD15_UNET_CONFIG, "teacher")
    student = arch.meta_unet(arch.student_config(SD15_UNET_CONFIG, variant), "student")
    assert count(teacher) == PAPER_PARAMETERS["teacher"]
    assert count(student) == PAPER_PARAMETERS[variant]
    assert round(macs(student, 64)["conv_linear"]) == PAPER_GMACS[variant]
    assert round(macs(teacher, 64)["conv_linear"]) == PAPER_GMACS["teacher"]


@pytest.mark.parametrize("variant", BKSDM_VARIANTS)
def test_the_weight_map_covers_every_student_tensor_and_leaves_out_exactly_the_removed_blocks(variant: str) -> None:
    student_cfg = arch.student_config(SD15_UNET_CONFIG, variant)
    mapping = arch.weight_map(SD15_UNET_CONFIG, student_cfg)
    student_keys = set(arch.meta_unet(student_cfg, "s").state_dict())
    teacher_keys = set(arch.meta_unet(SD15_UNET_CONFIG, "t").state_dict())
    assert set(mapping) == student_keys and set(mapping.values()) <= teacher_keys
    assert len(set(mapping.values())) == len(mapping)  # no teacher tensor used twice
    removed = set(arch.removed_blocks(teacher_keys - set(mapping.values()), set(mapping.values())))
    layer_1 = {f"down_blocks.{i}.{kind}.1" for i in range(3) for kind in ("resnets", "attentions")} | {"down_blocks.3.resnets.1"}
    layer_1 |= {f"up_blocks.{i}.{kind}.1" for i in range(1, 4) for kind in ("resnets", "attentions")} | {"up_blocks.0.resnets.1"}
    mid = {"mid_block.resnets.0", "mid_block.resnets.1", "mid_block.attentions.0"}
    innermost = {"down_blocks.3.resnets.0", "down_blocks.2.downsamplers.0", "up_blocks.0.resnets.0", "up_blocks.0.resnets.2",
                 "up_blocks.0.upsamplers.0"}
    expected = {"base": layer_1, "small": layer_1 | mid, "tiny": layer_1 | mid | innermost}[variant]
    assert removed == expected


def test_up_stages_keep_their_last_layer_and_tiny_shifts_the_up_stages() -> None:
    base = arch.weight_map(SD15_UNET_CONFIG, arch.student_config(SD15_UNET_CONFIG, "base"))
    assert base["up_blocks.1.resnets.1.conv1.weight"] == "up_blocks.1.resnets.2.conv1.weight"
    assert base["up_blocks.1.attentions.1.proj_in.weight"] == "up_blocks.1.attentions.2.proj_in.weight"
    assert base["down_blocks.1.resnets.0.conv1.weight"] == "down_blocks.1.resnets.0.conv1.weight"
    tiny = arch.weight_map(SD15_UNET_CONFIG, arch.student_config(SD15_UNET_CONFIG, "tiny"))
    assert tiny["up_blocks.0.resnets.0.conv1.weight"] == "up_blocks.1.resnets.0.conv1.weight"
    assert tiny["up_blocks.0.resnets.1.conv1.weight"] == "up_blocks.1.resnets.2.conv1.weight"
    assert tiny["up_blocks.0.upsamplers.0.conv.weight"] == "up_blocks.1.upsamplers.0.conv.weight"
    assert tiny["up_blocks.2.attentions.1.proj_out.weight"] == "up_blocks.3.attentions.2.proj_out.weight"


def sd2_like_config() -> dict:
    """SD 2.x's per-stage list fields on the toy UNet (head dims per stage, linear projections)."""
    return {**tiny_unet_config(), "attention_head_dim": [2, 4, 4], "use_linear_projection": True,
            "transformer_layers_per_block": [1, 1, 1]}


@pytest.mark.parametrize("config", [tiny_unet_config(), sd2_like_config()], ids=["sd1-like", "sd2-like"])
@pytest.mark.parametrize("variant", BKSDM_VARIANTS)
def test_a_student_initialised_from_the_teacher_reproduces_every_copied_block(variant: str, config: dict) -> None:
    """Each copied module, called on the inputs its teacher module received in a teacher forward, gives the same output."""
    torch.manual_seed(0)
    teacher = UNet2DConditionModel.from_config(config).eval()
    with torch.no_grad():
        for p in teacher.parameters():  # random, non-trivial weights (diffusers zero-initialises some output layers)
            p.add_(0.05 * torch.randn_like(p))
    student_cfg = arch.student_config(config, variant)
    student = UNet2DConditionModel.from_config(student_cfg).eval()
    mapping = arch.weight_map(config, student_cfg)
    report = arch.init_from_teacher(student, teacher.state_dict(), mapping)
    assert report.used == len(mapping) and report.unused
    blocks = arch.block_map(mapping)
    seen: dict[str, tuple] = {}

    def keep(name: str):
        def hook(_m, args, kwargs, output):
            seen[name] = (args, kwargs, output)
        return hook

    handles = [teacher.get_submodule(t).register_forward_hook(keep(t), with_kwargs=True) for t in set(blocks.values())]
    with torch.no_grad():
        teacher(torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), encoder_hidden_states=torch.randn(2, 5, config["cross_attention_dim"]))
    for h in handles:
        h.remove()
    checked = 0
    for s_name, t_name in blocks.items():
        if t_name not in seen:  # e.g. a teacher downsampler the student's stage does not have
            continue
        args, kwargs, expected = seen[t_name]
        with torch.no_grad():
            got = student.get_submodule(s_name)(*args, **kwargs)
        got, expected = (x[0] if isinstance(x, tuple) else getattr(x, "sample", x) for x in (got, expected))
        torch.testing.assert_close(got, expected, msg=f"{s_name} ← {t_name}")
        checked += 1
    assert checked == len(blocks)


def test_the_tiny_students_last_down_stage_is_compared_before_its_teachers_downsampler() -> None:
    config = tiny_unet_config()
    teacher, student = (arch.meta_unet(c, "x") for c in (config, arch.student_config(config, "tiny")))
    pairs = feat.stage_pairs(teacher, student)
    assert [str(p) for p in pairs] == ["down_blocks.0 ↔ down_blocks.0", "down_blocks.1 ↔ down_blocks.1 (before its downsampler)",
                                       "up_blocks.0 ↔ up_blocks.1", "up_blocks.1 ↔ up_blocks.2"]
    feat.check_pair_shapes(teacher, student, pairs, 4)


def test_feature_capture_records_the_declared_tensors_and_removes_its_hooks() -> None:
    config = tiny_unet_config()
    unet = UNet2DConditionModel.from_config(config)
    outputs = {"down_blocks.0": "hidden", "down_blocks.1": "pre_downsample", "up_blocks.2": "hidden"}
    with feat.FeatureCapture(unet, outputs) as features:
        out = unet(torch.randn(1, 4, 8, 8), torch.tensor([5]), encoder_hidden_states=torch.randn(1, 3, 64)).sample
        assert sum(len(m._forward_hooks) for m in unet.modules()) == 3
    assert sum(len(m._forward_hooks) for m in unet.modules()) == 0
    assert features["down_blocks.0"].shape == (1, 32, 4, 4)  # after down_blocks.0's downsampler
    assert features["down_blocks.1"].shape == (1, 48, 4, 4)  # before down_blocks.1's downsampler
    torch.testing.assert_close(features["up_blocks.2"].shape, out.shape[:1] + (32, 8, 8))


def test_mismatched_feature_pairs_fail_at_start_up_with_both_shapes() -> None:
    config = tiny_unet_config()
    teacher, student = (arch.meta_unet(c, "x") for c in (config, arch.student_config(config, "small")))
    pairs = feat.parse_pairs(["down_blocks.0=down_blocks.1"], teacher, student)
    with pytest.raises(UserError, match=r"down_blocks.0 ↔ down_blocks.1: the student's output is \(1, 32, 2, 2\) and the teacher's \(1, 48, 1, 1\)"):
        feat.check_pair_shapes(teacher, student, pairs, 4)
    with pytest.raises(UserError, match="has no module 'up_blocks.7'; stages are"):
        feat.parse_pairs(["up_blocks.7=up_blocks.0"], teacher, student)


@pytest.mark.parametrize(("change", "variant", "message"), [
    ({"layers_per_block": 1}, "small", "already has layers_per_block=1"),
    ({"layers_per_block": [2, 1, 2]}, "base", "different per stage"),
    ({"block_out_channels": (32, 48, 64)}, "tiny", "needs them equal"),
    ({"block_out_channels": (32, 48), "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
      "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D")}, "tiny", "needs at least 3"),
    ({}, "huge", "unknown BK-SDM variant 'huge'; choose one of: base, small, tiny"),
])
def test_layouts_a_variant_cannot_apply_to_are_refused(change: dict, variant: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        arch.student_config({**tiny_unet_config(), **change}, variant)


def test_a_student_config_the_teacher_cannot_initialise_is_refused() -> None:
    wider = {**arch.student_config(tiny_unet_config(), "small"), "block_out_channels": (32, 64, 64)}
    with pytest.raises(UserError, match="cannot be initialised from the teacher"):
        arch.weight_map(tiny_unet_config(), wider)
