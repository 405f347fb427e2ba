"""The toy attribute classifier: caption parsing, prompt accuracy (known answers), tiny training, save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distill_diffusion.errors import UserError
from distill_diffusion.eval.prompt_accuracy import attribute_accuracy
from distill_diffusion.toy.classifier import (
    HEADS,
    ToyClassifier,
    accuracy_fields,
    build_toy_classifier,
    heldout_accuracy,
    labelled_images,
    load_toy_classifier,
    parse_caption,
    prompt_accuracy,
    save_toy_classifier,
    toy_prompt_scorer,
    train_toy_classifier,
    world_labels,
)
from distill_diffusion.toy.world import iter_examples, toy_prompts


def test_parse_caption_recovers_what_every_world_caption_names() -> None:
    for ex in iter_examples(300, seed=5):
        expected = {"shape": ex.shape, "colour": ex.colour, "background": ex.background if ex.mention_background else None}
        assert parse_caption(ex.caption) == expected
    assert all(parse_caption(p)["shape"] is not None for p in toy_prompts(50))
    # "white" is both a colour and a background: position decides
    assert parse_caption("a white star on a white background") == {"shape": "star", "colour": "white", "background": "white"}
    assert parse_caption("a photo of a cat") == dict.fromkeys(HEADS)


def test_attribute_accuracy_counts_only_named_attributes() -> None:
    named = [{"shape": "star", "colour": "red", "background": None},
             {"shape": "ring", "colour": "blue", "background": "gray"},
             {"shape": None, "colour": None, "background": None}]  # fmt: skip
    seen = {"shape": ["star", "circle", "ring"], "colour": ["red", "blue", "red"], "background": ["black", "black", "gray"]}
    assert attribute_accuracy(named, seen, HEADS) == {"shape": 0.5, "colour": 1.0, "background": 0.0}
    assert attribute_accuracy(named[2:], seen, HEADS) == dict.fromkeys(HEADS)


class _Oracle(ToyClassifier):
    """Sees in image i the attributes listed at ``answers[i]`` (pixel [0, 0, 0] holds i)."""

    def __init__(self, answers: list[dict[str, str]]):
        super().__init__(world_labels())
        self.answers = answers

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        idx = images[:, 0, 0, 0].long().tolist()
        return {h: torch.stack([torch.eye(len(self.labels[h]))[self.labels[h].index(self.answers[i][h])] for i in idx])
                for h in HEADS}  # fmt: skip


def test_prompt_accuracy_known_answer_with_a_fake_classifier() -> None:
    answers = [{"shape": "star", "colour": "red", "background": "gray"},
               {"shape": "ring", "colour": "green", "background": "black"},
               {"shape": "cross", "colour": "blue", "background": "white"},
               {"shape": "square", "colour": "cyan", "background": "black"}]  # fmt: skip
    prompts = ["a red star on a gray background", "a green circle", "a yellow cross on a black background", "a cyan square"]
    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(4, dtype=torch.uint8)
    acc = prompt_accuracy(_Oracle(answers), images, prompts)
    assert acc == {"shape": 0.75, "colour": 0.75, "background": 0.5}
    assert toy_prompt_scorer(_Oracle(answers))(images, prompts) == {"acc_shape": 0.75, "acc_colour": 0.75, "acc_background": 0.5}
    assert accuracy_fields({"shape": None}) == {"acc_shape": None}
    with pytest.raises(UserError, match="one prompt per image"):
        prompt_accuracy(_Oracle(answers), images, prompts[:3])


@pytest.fixture(scope="module")
def tiny() -> ToyClassifier:
    images, targets = labelled_images(256, seed=0)
    model = build_toy_classifier(seed=0)
    train_toy_classifier(model, images, targets, steps=40, batch_size=32, learning_rate=1e-2, seed=0)
    return model


def test_tiny_training_is_well_above_chance_and_deterministic(tiny: ToyClassifier) -> None:
    images, targets = labelled_images(200, seed=3)
    acc = heldout_accuracy(tiny, images, targets)
    # chance: 1/6 shape, 1/8 colour, 1/3 background; colour and background are easy even after 40 steps
    assert acc["colour"] > 0.5 and acc["background"] > 0.8 and acc["shape"] > 0.17, acc
    again = build_toy_classifier(seed=0)
    train_toy_classifier(again, *labelled_images(256, seed=0), steps=40, batch_size=32, learning_rate=1e-2, seed=0)
    for (name, a), b in zip(tiny.state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_save_load_round_trip_without_pickles(tiny: ToyClassifier, tmp_path: Path) -> None:
    out = save_toy_classifier(tiny, tmp_path / "classifier", info={"steps": 40})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_toy_classifier(out)
    images, _ = labelled_images(16, seed=9)
    with torch.no_grad():
        for head, logits in tiny.eval()(images).items():
            torch.testing.assert_close(loaded(images)[head], logits)
    assert loaded.labels == world_labels()
    with pytest.raises(UserError, match="no toy classifier"):
        load_toy_classifier(tmp_path / "missing")
