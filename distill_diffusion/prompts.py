"""Prompt sets for evaluation, validation and synthetic data: plain text files, JSON lists, JSON Lines and COCO captions files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill_diffusion.errors import UserError, require

_TEXT_KEYS = ("caption", "prompt", "text")


def _from_coco(data: dict[str, Any], path: Path, one_per_image: bool) -> list[str]:
    """COCO captions JSON: ``{"annotations": [{"image_id": ..., "caption": ...}, ...]}``.

    COCO has ~5 captions per image; FID protocols use one caption per image, so by default the first
    caption of each image is kept, in file order.
    """
    annotations = data["annotations"]
    require(isinstance(annotations, list), f"{path}: \"annotations\" must be a list of {{\"caption\", \"image_id\"}} objects")
    prompts: list[str] = []
    seen: set[Any] = set()
    for number, ann in enumerate(annotations, start=1):
        require(isinstance(ann, dict) and "caption" in ann, f"{path}: annotation {number} has no \"caption\"; "
                "fix the file or pass a text file with one prompt per line")
        image_id = ann.get("image_id", number)
        if one_per_image and image_id in seen:
            continue
        seen.add(image_id)
        prompts.append(str(ann["caption"]).strip())
    return prompts


def _from_list(items: list[Any], path: Path) -> list[str]:
    """A JSON list of strings, or of objects holding a caption/prompt/text key."""
    prompts = []
    for number, item in enumerate(items, start=1):
        if isinstance(item, dict):
            key = next((k for k in _TEXT_KEYS if k in item), None)
            require(key is not None, f"{path}: entry {number} has none of the keys {', '.join(_TEXT_KEYS)}; "
                    "use a list of strings")
            item = item[key]
        require(isinstance(item, str), f"{path}: entry {number} is not a string; use a JSON list of prompt strings")
        prompts.append(item.strip())
    return prompts


def _from_json(path: Path, one_per_image: bool) -> list[str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); fix it or use a .txt file "
                        "with one prompt per line") from None
    if isinstance(data, dict) and "annotations" in data:
        return _from_coco(data, path, one_per_image)
    if isinstance(data, list):
        return _from_list(data, path)
    raise UserError(f"{path}: expected a JSON list of prompts or a COCO captions file with \"annotations\"; "
                    "convert it, or use a .txt file with one prompt per line")


def _from_jsonl(lines: list[str], path: Path) -> list[str]:
    """JSON Lines: one string, or one object with a caption/prompt/text key (e.g. an imagefolder's metadata.jsonl), a line."""
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} line {number} is not valid JSON ({exc.msg}); fix it or use a .txt file "
                            "with one prompt per line") from None
    return _from_list(items, path)


def load_prompts(path: str | Path, one_per_image: bool = True) -> list[str]:
    """Read prompts from ``path``.

    * ``.json``: a list of strings (or of objects with caption/prompt/text), or COCO captions
      (``{"annotations": [{"caption", "image_id"}]}``; first caption per image unless ``one_per_image=False``).
    * ``.jsonl``: one JSON string or object with a caption/prompt/text key per line.
    * anything else: UTF-8 text, one prompt per line, blank lines skipped, surrounding spaces stripped.

    A missing file, or one with no prompt, raises :class:`UserError`.
    """
    path = Path(path).expanduser()
    require(path.is_file(), f"prompt file {path} does not exist; pass a .txt file (one prompt per line) or a COCO captions .json")
    if path.suffix.lower() == ".json":
        prompts = _from_json(path, one_per_image)
    else:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise UserError(f"prompt file {path} is not UTF-8 text; save it as UTF-8 with one prompt per line") from None
        prompts = _from_jsonl(lines, path) if path.suffix.lower() == ".jsonl" else [line.strip() for line in lines]
    prompts = [p for p in prompts if p]
    require(bool(prompts), f"prompt file {path} holds no prompt; write one prompt per line")
    return prompts
