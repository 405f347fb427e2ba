"""Extra models a method declares (a discriminator's feature network): loaded by the teacher's loading rules."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from distill_diffusion.config import ModelConfig, build_run_config
from distill_diffusion.errors import UserError
from distill_diffusion.models.loading import ExtraModel, load_extra_model
from distill_diffusion.trainers.engine.build import build_method
from distill_diffusion.trainers.methods.base import MethodBase


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    folder = tmp_path_factory.mktemp("dinov2")
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=28, patch_size=14)
    torch.manual_seed(0)
    Dinov2Model(config).save_pretrained(folder, safe_serialization=True)
    return folder


def offline() -> ModelConfig:
    return ModelConfig("unused", local_files_only=True)


def test_loads_frozen_in_the_weight_dtype(tiny_dinov2: Path) -> None:
    model = load_extra_model(ExtraModel("transformers:Dinov2Model", str(tiny_dinov2)), offline(), torch.bfloat16)
    assert type(model).__name__ == "Dinov2Model" and not model.training
    assert all(not p.requires_grad and p.dtype == torch.bfloat16 for p in model.parameters())


@pytest.mark.parametrize(("kind", "fragment"), [
    ("Dinov2Model", "is not 'transformers:<Class>'"),
    ("torch:Linear", "is not 'transformers:<Class>'"),
    ("transformers:NoSuchModel", "transformers has no NoSuchModel"),
])
def test_bad_kind_is_a_user_error(tiny_dinov2: Path, kind: str, fragment: str) -> None:
    with pytest.raises(UserError, match=fragment):
        load_extra_model(ExtraModel(kind, str(tiny_dinov2)), offline())


def test_missing_folder_file_and_offline_hub_id_are_user_errors(tmp_path: Path) -> None:
    (tmp_path / "file.safetensors").write_bytes(b"x")
    for source, fragment in [(str(tmp_path / "nope"), "no such folder"), (str(tmp_path / "file.safetensors"), "is a file"),
                             ("facebook/dinov2-small", "cannot load Dinov2Model"), ("", "no source")]:
        with pytest.raises(UserError, match=fragment):
            load_extra_model(ExtraModel("transformers:Dinov2Model", source), offline())


def test_pickle_weights_are_refused_not_unpickled(tiny_dinov2: Path, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(tiny_dinov2 / "config.json", pickled / "config.json")
    torch.save(load_file(str(tiny_dinov2 / "model.safetensors")), pickled / "pytorch_model.bin")
    with pytest.raises(UserError, match="cannot load Dinov2Model"):
        load_extra_model(ExtraModel("transformers:Dinov2Model", str(pickled)), offline())


@pytest.mark.parametrize(("field", "value"), [("patch_size", 0), ("num_hidden_layers", "four")])
def test_a_config_that_cannot_build_the_model_is_a_user_error(tiny_dinov2: Path, tmp_path: Path, field: str, value: object) -> None:
    """What a hub model's config.json could hold (a local folder is refused before loading, by the method's check)."""
    import json
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_dinov2, bad)
    (bad / "config.json").write_text(json.dumps({**json.loads((bad / "config.json").read_text()), field: value}))
    with pytest.raises(UserError, match="cannot load Dinov2Model"):
        load_extra_model(ExtraModel("transformers:Dinov2Model", str(bad)), offline())


@dataclass
class WithFeaturesConfig:
    features: str = ""


class WithFeatures(MethodBase):
    config_class = WithFeaturesConfig

    @classmethod
    def extra_models(cls, config: WithFeaturesConfig) -> dict[str, ExtraModel]:
        return {"features": ExtraModel("transformers:Dinov2Model", config.features)}

    def __init__(self, components: object, config: WithFeaturesConfig, extra_models: dict | None = None):
        self.components, self.config, self.extra = components, config, extra_models


def test_the_builder_hands_declared_models_to_the_method(tiny_dinov2: Path) -> None:
    run = build_run_config("with-features", WithFeaturesConfig, {"model": {"local_files_only": True},
                                                                   "method": {"features": str(tiny_dinov2)}})
    method = build_method(WithFeatures, run, components="teacher parts")
    assert set(method.extra) == {"features"} and type(method.extra["features"]).__name__ == "Dinov2Model"
