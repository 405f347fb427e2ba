"""Tests for load_prompts: text files, JSON lists, COCO captions, and the errors for bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill_diffusion.data import load_prompts
from distill_diffusion.errors import UserError


def test_text_file_skips_blank_lines_and_strips(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("a red cube\n\n  a blue ball  \r\n\t\nlast line without newline", encoding="utf-8")
    assert load_prompts(path) == ["a red cube", "a blue ball", "last line without newline"]


def test_text_file_keeps_unicode_and_order(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("z\ny\nun chat sur un toit — 猫\n", encoding="utf-8")
    assert load_prompts(str(path)) == ["z", "y", "un chat sur un toit — 猫"]


def test_coco_captions_first_per_image_or_all(tmp_path: Path) -> None:
    annotations = [
        {"image_id": 1, "id": 10, "caption": "a dog"},
        {"image_id": 2, "id": 11, "caption": " a cat "},
        {"image_id": 1, "id": 12, "caption": "a brown dog"},
    ]
    path = tmp_path / "captions_val2014.json"
    path.write_text(json.dumps({"images": [], "annotations": annotations}))
    assert load_prompts(path) == ["a dog", "a cat"]
    assert load_prompts(path, one_per_image=False) == ["a dog", "a cat", "a brown dog"]


def test_json_list_of_strings_and_objects(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(["one", "", "two"]))
    assert load_prompts(path) == ["one", "two"]
    path.write_text(json.dumps([{"prompt": "one"}, {"caption": "two"}, {"text": "three"}]))
    assert load_prompts(path) == ["one", "two", "three"]


@pytest.mark.parametrize(
    ("name", "content", "pattern"),
    [
        ("empty.txt", "", "holds no prompt"),
        ("blank.txt", "\n  \n\n", "holds no prompt"),
        ("empty.json", "[]", "holds no prompt"),
        ("bad.json", "[\"a\",", "is not valid JSON"),
        ("dict.json", json.dumps({"prompts": ["a"]}), "expected a JSON list of prompts or a COCO captions"),
        ("nums.json", json.dumps([1, 2]), "entry 1 is not a string"),
        ("objs.json", json.dumps([{"name": "a"}]), "entry 1 has none of the keys"),
        ("coco.json", json.dumps({"annotations": [{"image_id": 1}]}), "annotation 1 has no \"caption\""),
    ],
)
def test_bad_prompt_files(tmp_path: Path, name: str, content: str, pattern: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserError, match=pattern) as exc:
        load_prompts(path)
    assert "\n" not in str(exc.value)


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_prompts(tmp_path / "missing.txt")
    path = tmp_path / "binary.txt"
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UserError, match="not UTF-8"):
        load_prompts(path)


def test_jsonl_lines_of_objects_or_strings(tmp_path: Path) -> None:
    """An imagefolder's metadata.jsonl works as a prompt file: its "text" field is the prompt."""
    path = tmp_path / "metadata.jsonl"
    path.write_text('{"file_name": "0.png", "text": " a red circle "}\n\n"a blue square"\n{"prompt": "a star"}\n')
    assert load_prompts(path) == ["a red circle", "a blue square", "a star"]


def test_jsonl_bad_line_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"text": "a"}\n{not json\n')
    with pytest.raises(UserError, match="line 2 is not valid JSON"):
        load_prompts(path)
    path.write_text('{"file_name": "0.png"}\n')
    with pytest.raises(UserError, match="entry 1 has none of the keys"):
        load_prompts(path)
