"""Tests for teacher loading (distill_diffusion.models.loading): sources, family, prediction type, freezing."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers_sd import save_ldm_single_file
from safetensors.torch import save_file

from distill_diffusion.config import ModelConfig
from distill_diffusion.errors import UserError
from distill_diffusion.models.loading import load_teacher
from distill_diffusion.models.sources import check_model_source, detect_family
from distill_diffusion.toy.tiny import save_tiny_pipeline


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    return {p: save_tiny_pipeline(root / p, prediction_type=p) for p in ("epsilon", "v_prediction")}


def _cfg(path, **kw) -> ModelConfig:
    return ModelConfig(pretrained_model_name_or_path=str(path), local_files_only=True, **kw)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_load_from_folder_reads_family_and_prediction_type(pipes, prediction_type):
    teacher = load_teacher(_cfg(pipes[prediction_type]))
    assert teacher.family == "sd1"
    assert teacher.prediction_type == prediction_type
    assert teacher.source == str(pipes[prediction_type])
    expected = teacher.scheduler.alphas_cumprod.double()
    assert torch.allclose(teacher.schedule.alphas_cumprod, expected)
    assert teacher.schedule is teacher.schedule
    assert teacher.tokenizer.model_max_length == 77


def test_teacher_is_frozen_in_eval_mode_and_weight_dtype(pipes):
    teacher = load_teacher(_cfg(pipes["epsilon"]), weight_dtype=torch.bfloat16, device="cpu")
    for module in (teacher.unet, teacher.vae, teacher.text_encoder):
        assert not module.training
        assert all(not p.requires_grad for p in module.parameters())
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}


def test_single_file_gives_the_same_weights(pipes, tmp_path):
    path = save_ldm_single_file(pipes["v_prediction"], tmp_path / "tiny.safetensors")
    cfg = _cfg(path, original_config=str(pipes["v_prediction"]))
    assert check_model_source(cfg) == "single_file"
    single = load_teacher(cfg)
    folder = load_teacher(_cfg(pipes["v_prediction"]))
    assert single.family == "sd1" and single.prediction_type == "v_prediction"
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(folder, name).state_dict(), getattr(single, name).state_dict()
        assert a.keys() == b.keys(), name
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert not any(p.requires_grad for p in single.unet.parameters())


def test_source_kinds(pipes):
    assert check_model_source(_cfg(pipes["epsilon"])) == "diffusers_dir"
    assert check_model_source(_cfg("someone/some-model")) == "hub"


def _expect(cfg, *words):
    with pytest.raises(UserError) as info:
        load_teacher(cfg)
    message = str(info.value)
    assert "\n" not in message and ";" in message  # one line: problem; fix
    for word in words:
        assert word in message, message


def test_bad_sources_are_user_errors(tmp_path, pipes):
    _expect(_cfg(""), "empty")
    _expect(_cfg(tmp_path / "missing"), "no such file or folder")
    _expect(_cfg("./relative/missing.safetensors"), "no such file or folder")
    (tmp_path / "empty").mkdir()
    _expect(_cfg(tmp_path / "empty"), "model_index.json")
    _expect(_cfg(pipes["epsilon"] / "unet"), "single model")
    _expect(_cfg("not a valid id!"), "neither an existing path nor a hub id")


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks`")
def test_uncached_hub_id_offline_is_a_user_error():
    _expect(_cfg("no-such-owner/no-such-model-xyz"), "cannot load model", "local_files_only")


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin"])
def test_pickle_files_are_refused(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"not loaded")
    _expect(_cfg(path), "pickle", "safetensors")


def test_single_file_problems(tmp_path, pipes):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    _expect(_cfg(bad, original_config=str(pipes["epsilon"])), "not a readable safetensors")
    unet_only = tmp_path / "unet.safetensors"
    save_file({"conv_in.weight": torch.zeros(1)}, str(unet_only))
    _expect(_cfg(unet_only, original_config=str(pipes["epsilon"])), "model.diffusion_model")
    good = save_ldm_single_file(pipes["epsilon"], tmp_path / "m.safetensors")
    _expect(_cfg(good), "original_config")
    _expect(_cfg(good, original_config=str(tmp_path / "nope")), "no such folder")
    sdxl = tmp_path / "xl.safetensors"
    save_file({"conditioner.embedders.1.model.positional_embedding": torch.zeros(1),
               "model.diffusion_model.x": torch.zeros(1)}, str(sdxl))
    _expect(_cfg(sdxl, original_config=str(pipes["epsilon"])), "SDXL")
    (tmp_path / "weights.onnx").write_bytes(b"x")
    _expect(_cfg(tmp_path / "weights.onnx"), "unknown weights format")


@pytest.mark.parametrize("edit", ["text_encoder_2", "text_time", "cross_2048"])
def test_sdxl_like_folders_without_the_second_encoder_are_refused(tmp_path, pipes, edit):
    folder = shutil.copytree(pipes["epsilon"], tmp_path / "xl")
    index_path, unet_path = folder / "model_index.json", folder / "unet" / "config.json"
    index, unet = json.loads(index_path.read_text()), json.loads(unet_path.read_text())
    if edit == "text_encoder_2":
        index["text_encoder_2"] = ["transformers", "CLIPTextModelWithProjection"]
    elif edit == "text_time":
        unet["addition_embed_type"] = "text_time"
    else:
        unet["cross_attention_dim"] = 2048
    index_path.write_text(json.dumps(index))
    unet_path.write_text(json.dumps(unet))
    _expect(_cfg(folder), "no text_encoder_2/ subfolder")  # read as SDXL, which needs both encoders


def test_missing_component_folder(tmp_path, pipes):
    folder = shutil.copytree(pipes["epsilon"], tmp_path / "p")
    shutil.rmtree(folder / "vae")
    _expect(_cfg(folder), "no vae/ subfolder")


def test_detect_family_rule():
    sd_index = {"unet": ["diffusers", "UNet2DConditionModel"]}
    assert detect_family(sd_index, {"cross_attention_dim": 768}) == "sd1"
    assert detect_family(sd_index, {"cross_attention_dim": 64}) == "sd1"
    assert detect_family(sd_index, {"cross_attention_dim": 1024}) == "sd2"
    assert detect_family(sd_index, {"cross_attention_dim": 2048}) == "sdxl"
    assert detect_family(sd_index, {"cross_attention_dim": 1280, "addition_embed_type": "text_time"}) == "sdxl"
    assert detect_family({"text_encoder_2": ["transformers", "X"]}, {"cross_attention_dim": 768}) == "sdxl"
    assert detect_family({"text_encoder_2": [None, None]}, {"cross_attention_dim": 768}) == "sd1"
