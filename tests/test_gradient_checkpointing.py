"""``--gradient_checkpointing`` changes memory, never the maths: every registered method, LoRA and full where it has
both, on the tiny UNet. Each phase's loss and the gradients of its trainable weights equal the run without
checkpointing, also where one UNet runs in two roles (a LoRA student whose frozen base is the teacher, LADD's
discriminator backbone) and its blocks are recomputed in backward after the adapter-off context has ended."""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
import torch.utils.checkpoint
from diffusers import UNet2DConditionModel
from family_batches import latent_batch
from test_methods_contract import TINY_CONFIGS

from distill_diffusion.config import build_run_config, load_config, parse_overrides
from distill_diffusion.models.checkpointing import enable_checkpointing, recomputing
from distill_diffusion.models.loading import load_teacher
from distill_diffusion.models.lora import DEFAULT_TARGET_MODULES, adapters_disabled, attach_lora, tuner_layers
from distill_diffusion.toy.tiny import tiny_unet_config
from distill_diffusion.trainers.engine.build import build_method, enable_gradient_checkpointing
from distill_diffusion.trainers.methods.base import StepContext
from distill_diffusion.trainers.methods.registry import METHODS, get_method_class

#: Methods that do not train SDXL teachers yet.
NOT_SDXL = {"bksdm"}


def cases(family: str = "sd1") -> list[tuple[str, bool | None]]:
    """(method, lora) for every registered method (of the family): both students where its options have ``lora``, else None."""
    out = []
    for name in sorted(set(METHODS) - (NOT_SDXL if family == "sdxl" else set())):
        fields = {f.name for f in dataclasses.fields(get_method_class(name).config_class)}
        out += [(name, True), (name, False)] if "lora" in fields else [(name, None)]
    return out


def build(name: str, lora: bool | None, teacher: Path, checkpointing: bool, dinov2: Path | None = None):
    """The method as the engine builds it from its tiny config (same seed: same LoRA and heads init)."""
    args = ["--pretrained_model_name_or_path", str(teacher), "--train_batch_size", "2"]
    args += ["--method.lora", str(lora).lower()] if lora is not None else []
    args += ["--method.feature_network", str(dinov2 or teacher.parent / "dinov2")] if name == "add" else []
    cls = get_method_class(name)
    run = build_run_config(name, cls, load_config(TINY_CONFIGS[name]), parse_overrides(args))
    torch.manual_seed(0)
    method = build_method(cls, run, load_teacher(run.model))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a student that differs from its teacher, as mid-training (a new LoRA's B is 0)
        for phase in method.phases():
            for p in method.trainable_parameters(phase):
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    if checkpointing:
        enable_gradient_checkpointing(method)
    return method


def run_phases(method) -> dict[str, tuple[torch.Tensor, list[torch.Tensor | None]]]:
    """Each phase once, in order, as the engine runs it: only that phase's weights require grad, the same noise."""
    phases, store, out = method.phases(), {}, {}
    params = {p.name: method.trainable_parameters(p) for p in phases}
    for phase in phases:
        for name, ps in params.items():
            for p in ps:
                p.requires_grad_(name == phase.name)
                p.grad = None
        torch.manual_seed(1)
        loss = method.compute_loss(phase.name, latent_batch(2, 0, method.components.family), StepContext(0, store=store, modules=method.models)).loss
        loss.backward()
        out[phase.name] = (loss.detach(), [None if p.grad is None else p.grad.clone() for p in params[phase.name]])
    for p in (p for ps in params.values() for p in ps):
        p.requires_grad_(True)
    return out


@pytest.mark.parametrize(("name", "lora"), cases(), ids=lambda v: str(v))
def test_checkpointing_gives_the_same_loss_and_gradients(name: str, lora: bool | None, tiny_pipeline_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    check_same_maths(name, lora, tiny_pipeline_dir, None, monkeypatch)


@pytest.mark.parametrize(("name", "lora"), cases("sdxl"), ids=lambda v: str(v))
def test_checkpointing_gives_the_same_loss_and_gradients_on_sdxl(name: str, lora: bool | None, tiny_sdxl_pipeline_dir: Path,
                                                                 toy_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check_same_maths(name, lora, tiny_sdxl_pipeline_dir, toy_dir / "dinov2", monkeypatch)


def check_same_maths(name: str, lora: bool | None, teacher: Path, dinov2: Path | None, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = run_phases(build(name, lora, teacher, checkpointing=False, dinov2=dinov2))
    calls = []
    original = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k))
    method = build(name, lora, teacher, checkpointing=True, dinov2=dinov2)
    checkpointed = run_phases(method)
    assert calls, "no block was checkpointed: the comparison would be vacuous"
    assert plain.keys() == checkpointed.keys()
    for phase, (loss, grads) in plain.items():
        loss_ckpt, grads_ckpt = checkpointed[phase]
        torch.testing.assert_close(loss_ckpt, loss, msg=f"{phase} loss")
        assert any(g is not None and g.abs().sum() > 0 for g in grads), f"{phase}: no gradient at all"
        for i, (g, g_ckpt) in enumerate(zip(grads, grads_ckpt, strict=True)):
            assert (g is None) == (g_ckpt is None), f"{phase}: parameter {i}"
            if g is not None:
                torch.testing.assert_close(g_ckpt, g, msg=f"{phase}: gradient of parameter {i}")


def lora_unet() -> torch.nn.Module:
    """The tiny UNet with a LoRA whose B is not 0, so adapters on and off compute different functions."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(tiny_unet_config()).train()
    params = attach_lora(unet, 4, 4, 0.0, DEFAULT_TARGET_MODULES)
    with torch.no_grad():
        for p in params:
            p.add_(0.1 * torch.randn_like(p))
    return unet


def input_and_lora_grads(unet: torch.nn.Module, mode: str) -> list[torch.Tensor]:
    """Gradients of the input and of the LoRA weights of one forward run in ``mode`` (the LoRA as student, the frozen base
    as teacher, the LoRA at half scale) followed by one as student, as a LoRA method's step chains them."""
    g = torch.Generator().manual_seed(0)
    z, c = torch.randn(2, 4, 8, 8, generator=g).requires_grad_(True), torch.randn(2, 5, 64, generator=g)
    t = torch.tensor([10, 800])
    kwargs = {"cross_attention_kwargs": {"scale": 0.5}} if mode == "half scale" else {}
    with adapters_disabled(tuner_layers(unet)) if mode == "teacher" else nullcontext():
        first = unet(z, t, encoder_hidden_states=c, **kwargs).sample
    unet(first, t, encoder_hidden_states=c).sample.square().mean().backward()
    return [z.grad, *(p.grad for p in unet.parameters() if p.requires_grad)]


@pytest.mark.parametrize("mode", ["student", "teacher", "half scale"])
def test_a_block_is_recomputed_in_the_mode_it_ran_in(mode: str) -> None:
    plain = input_and_lora_grads(lora_unet(), mode)
    unet = lora_unet()
    enable_checkpointing(unet)
    for got, want in zip(input_and_lora_grads(unet, mode), plain, strict=True):
        torch.testing.assert_close(got, want)
    if mode == "student":
        return
    # diffusers' own checkpointing recomputes as the student: torch refuses (teacher) or the gradients are wrong (scale)
    stock = lora_unet()
    stock.enable_gradient_checkpointing()
    try:
        wrong = input_and_lora_grads(stock, mode)
    except torch.utils.checkpoint.CheckpointError:
        assert mode == "teacher"
    else:
        assert not all(torch.allclose(a, b) for a, b in zip(wrong, plain)), "the comparison would be vacuous"


def test_hooks_on_stages_record_once_and_a_recomputed_block_knows_it_is_one() -> None:
    """Stage outputs (LADD's taps, BK-SDM's feature pairs) are not inside a checkpointed block: recorded once, as without
    checkpointing. A hook on a checkpointed block that stays registered through backward may fire again (a pre-hook
    does; torch stops a recomputation once it has the saved tensors, before the forward hooks), under recomputing()."""
    unet = lora_unet()
    enable_checkpointing(unet)
    stage, block = [], []
    unet.get_submodule("down_blocks.0").register_forward_hook(lambda _m, _a, out: stage.append(out[0].detach()))
    unet.get_submodule("down_blocks.0.resnets.0").register_forward_pre_hook(lambda _m, a: block.append((recomputing(), a[0].detach())))
    input_and_lora_grads(unet, "teacher")
    assert len(stage) == 2 and not recomputing()  # two forwards (teacher, then student), none in backward
    assert [r for r, _ in block] == [False, False, True, True]  # backward recomputes the student's block first
    torch.testing.assert_close(block[3][1], block[0][1])
    torch.testing.assert_close(block[2][1], block[1][1])


def test_a_lora_attached_after_checkpointing_ran_is_recomputed_in_its_mode() -> None:
    """The per-block lists of mode switches are refreshed when peft injects its layers (and not on every forward: the
    mid block's slice of its resnets registers modules each time)."""
    from distill_diffusion.models import checkpointing

    reference = lora_unet()
    plain = input_and_lora_grads(reference, "teacher")
    unet = UNet2DConditionModel.from_config(tiny_unet_config()).train()
    enable_checkpointing(unet)
    unet(torch.randn(1, 4, 8, 8), 10, encoder_hidden_states=torch.randn(1, 5, 64)).sample.sum().backward()
    generation = checkpointing._generation[0]
    unet(torch.randn(1, 4, 8, 8), 10, encoder_hidden_states=torch.randn(1, 5, 64)).sample.sum().backward()
    assert checkpointing._generation[0] == generation
    attach_lora(unet, 4, 4, 0.0, DEFAULT_TARGET_MODULES)
    unet.load_state_dict(reference.state_dict())
    unet.zero_grad(set_to_none=True)
    for got, want in zip(input_and_lora_grads(unet, "teacher"), plain, strict=True):
        torch.testing.assert_close(got, want)


def checkpointed_blocks(monkeypatch: pytest.MonkeyPatch) -> list[torch.nn.Module]:
    """Every block torch's checkpoint runs from now on (the module whose ``__call__`` it was given)."""
    blocks, original = [], torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda fn, *a, **k: blocks.append(getattr(fn, "__self__", None)) or original(fn, *a, **k))
    return blocks


def test_add_checkpoints_the_vae_decode_of_its_samples(tiny_pipeline_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ADD's loss is on decoded images: under --gradient_checkpointing the decoder's mid block and every up block are
    checkpointed too (the same maths: the matrix above); without the flag nothing of the VAE is."""
    for checkpointing in (False, True):
        method = build("add", True, tiny_pipeline_dir, checkpointing=checkpointing)
        blocks = checkpointed_blocks(monkeypatch)
        run_phases(method)
        decoder = method.components.vae.decoder
        wanted, seen = {id(decoder.mid_block), *map(id, decoder.up_blocks)}, {id(b) for b in blocks}
        assert wanted <= seen if checkpointing else not wanted & seen


def test_the_fp32_working_copy_of_an_upcast_vae_is_checkpointed_too(tiny_pipeline_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An fp16 VAE under force_upcast decodes through an fp32 copy made at its first use (latent caching, validation):
    a copy made before checkpointing was enabled is made again, so the decode with gradients is checkpointed."""
    from diffusers import AutoencoderKL

    from distill_diffusion.models.encode import checkpoint_decoder, decode_latents

    vae = AutoencoderKL.from_pretrained(tiny_pipeline_dir / "vae", force_upcast=True).requires_grad_(False)
    vae.half()
    latents = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        decode_latents(vae, latents)  # the copy, made before the flag
    checkpoint_decoder(vae)
    blocks = checkpointed_blocks(monkeypatch)
    latents.requires_grad_(True)
    decode_latents(vae, latents, clamp=False).sum().backward()
    assert {"UNetMidBlock2D", "UpDecoderBlock2D"} <= {type(b).__name__ for b in blocks}
    assert latents.grad is not None and torch.isfinite(latents.grad).all()
