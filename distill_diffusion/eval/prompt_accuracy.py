"""Prompt faithfulness as attribute accuracy: does each image show the attributes its prompt names?

Generic over what the attributes are: a caller (the toy world's classifier, ``toy.classifier``) supplies,
per image, the attributes the prompt names (``None`` where it names none) and the ones a classifier sees.
Only named attributes count, so a prompt that says nothing about the background is no evidence either way.

A :data:`PromptScorer` is what ``bench quality`` calls on each generated set: uint8 images and their
prompts in, named metrics out (one result column each).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

#: ``scorer(images_uint8 [N,3,H,W], prompts) -> {metric name: value or None}``.
PromptScorer = Callable[[torch.Tensor, Sequence[str]], dict[str, float | None]]


def attribute_accuracy(
    named: Sequence[Mapping[str, str | None]], seen: Mapping[str, Sequence[str]], heads: Sequence[str]
) -> dict[str, float | None]:
    """Per head, the fraction of images whose seen value equals the named one, over images that name it.

    ``named[i][head]`` is what prompt ``i`` asks for (``None``: not named, not counted); ``seen[head][i]`` is
    what the classifier found in image ``i``. A head no prompt names has accuracy ``None``.
    """
    result: dict[str, float | None] = {}
    for head in heads:
        pairs = [(want[head], seen[head][i]) for i, want in enumerate(named) if want.get(head) is not None]
        result[head] = sum(w == s for w, s in pairs) / len(pairs) if pairs else None
    return result
