"""Image folder source: images plus ``metadata.jsonl`` lines ``{"file_name": ..., "<caption_column>": ...}``.

This is the `datasets` "imagefolder" layout, read directly with PIL (no Arrow conversion, no cache
files). ``metadata.jsonl`` may sit in the folder itself or in its split subfolder
(``<train_data_dir>/<dataset_split>/metadata.jsonl``). Every file is checked up front, threaded
(:func:`~distill_diffusion.data.transforms.check_image_file`: headers, PNG CRCs, JPEG end markers, so
truncated files are found without decoding every pixel); unreadable files are dropped and counted against
``max_bad_fraction``; decode failures later are counted lazily (see :mod:`distill_diffusion.data.base`).
A caption is a string or a non-empty list of strings (one is drawn per epoch); ``file_name`` is a relative path
inside the folder (absolute paths and ``..`` are refused, so a metadata file cannot pull in other files).
"""

from __future__ import annotations

import json
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from PIL import Image

from distill_diffusion.data.base import BadImageBudget, CaptionedImageDataset
from distill_diffusion.data.transforms import ImageTransform, check_image_file
from distill_diffusion.errors import UserError, require

METADATA_NAME = "metadata.jsonl"


def find_metadata(root: str | Path, split: str = "train") -> Path:
    """Locate ``metadata.jsonl`` in ``root`` or ``root/split``; a missing folder or file is a UserError."""
    root = Path(root).expanduser()
    require(root.is_dir(), f"data.train_data_dir {root}: no such folder; pass a folder holding images and {METADATA_NAME}")
    for candidate in (root / METADATA_NAME, root / split / METADATA_NAME):
        if candidate.is_file():
            return candidate
    hint = " (found metadata.csv: convert it to metadata.jsonl)" if (root / "metadata.csv").exists() else ""
    raise UserError(f"data.train_data_dir {root}: no {METADATA_NAME} in it or in {root / split}{hint}; add one line "
                    '{"file_name": "<image file>", "text": "<caption>"} per image')


def _parse_line(line: str, number: int, path: Path, caption_column: str) -> tuple[str, Any]:
    """One metadata line → (file name, raw caption); every malformation names the line and the fix."""
    where = f"{path} line {number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where} is not valid JSON ({exc.msg}); fix or delete that line") from None
    require(isinstance(record, dict), f"{where} is not a JSON object; write one {{\"file_name\": ..., \"text\": ...}} per line")
    require("file_name" in record, f"{where} has no \"file_name\" key (keys: {', '.join(record) or 'none'}); "
            "name the image file under \"file_name\"")
    if caption_column not in record:
        raise UserError(f"{where} has no {caption_column!r} caption key (keys: {', '.join(record)}); "
                        "set data.caption_column to the caption key")
    _check_caption(record[caption_column], where, caption_column)
    return _check_file_name(record["file_name"], where), record[caption_column]


def _check_file_name(name: Any, where: str) -> str:
    """A relative path that stays inside the dataset folder."""
    require(isinstance(name, str) and name.strip() != "", f"{where}: \"file_name\" is {name!r}, not a file name; "
            "write the image's path relative to the folder as a string")
    parts = PurePosixPath(name.replace("\\", "/"))
    require(not parts.is_absolute() and ".." not in parts.parts and not PureWindowsPath(name).drive,
            f"{where}: \"file_name\" {name!r} points outside the dataset folder; use a path relative to the folder, "
            "without '..' (move or link the image into the folder)")
    return name


def _check_caption(caption: Any, where: str, column: str) -> None:
    """A string, or a non-empty list of strings (one is drawn per epoch, COCO-style)."""
    require(caption != [], f"{where}: caption {column!r} is an empty list, which holds no caption to draw; write a string "
            'such as "a red circle" (or "" for no caption), or a list of one or more strings')
    ok = isinstance(caption, str) or (isinstance(caption, list) and all(isinstance(c, str) for c in caption))
    require(ok, f"{where}: caption {column!r} is {type(caption).__name__} {json.dumps(caption)[:60]}, not text; "
            'write a string (or a list of strings) such as "a red circle", or "" for no caption')


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").split("\n")  # not splitlines(): JSON strings may hold U+2028
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise UserError(f"{path} line {line} is not UTF-8 text; save the file as UTF-8") from None


def read_metadata(path: str | Path, caption_column: str = "text") -> list[tuple[Path, Any]]:
    """Parse ``metadata.jsonl`` into (absolute image path, raw caption); files must exist."""
    path = Path(path)
    records: list[tuple[Path, Any]] = []
    for number, line in enumerate(_read_lines(path), start=1):
        if line.strip():
            name, caption = _parse_line(line, number, path, caption_column)
            records.append((path.parent / name, caption))
    require(bool(records), f"{path} lists no images; add one JSON line per image")
    missing = [(p, i) for i, (p, _) in enumerate(records) if not p.is_file()]
    if missing:
        first, index = missing[0]
        raise UserError(f"{path}: {len(missing)} listed image file(s) do not exist (first: {first}, entry {index + 1}); "
                        "add the files or remove their lines")
    return records


def _check_files(paths: list[Path]) -> list[bool]:
    """:func:`check_image_file` on many files; threads because it is mostly I/O (PIL and zlib release the GIL)."""
    if len(paths) < 256:
        return [check_image_file(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) * 4)) as pool:
        return list(pool.map(check_image_file, paths, chunksize=64))


def subsample(count: int, max_samples: int | None, seed: int) -> list[int]:
    """Indices kept by ``max_train_samples``: a seeded random subset (like diffusers' shuffle+select), in order."""
    if max_samples is None or max_samples >= count:
        return list(range(count))
    return sorted(random.Random(seed).sample(range(count), max_samples))


class ImageFolderDataset(CaptionedImageDataset):
    """Map-style dataset over an image folder with ``metadata.jsonl``."""

    def __init__(
        self,
        root: str | Path,
        transform: ImageTransform,
        caption_column: str = "text",
        split: str = "train",
        proportion_empty_prompts: float = 0.0,
        max_bad_fraction: float = 0.05,
        max_train_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        metadata = find_metadata(root, split)
        records = read_metadata(metadata, caption_column)
        records = [records[i] for i in subsample(len(records), max_train_samples, seed)]
        ok = _check_files([p for p, _ in records])
        self.records = [r for r, good in zip(records, ok) if good]
        self.metadata_path = metadata
        budget = BadImageBudget(len(records), max_bad_fraction, f"image folder {metadata.parent}",
                                initial_bad=len(records) - len(self.records))
        super().__init__(transform, proportion_empty_prompts, budget, seed)

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> tuple[Image.Image, Any]:
        """Open the image file (header only) and return it with its raw caption."""
        path, caption = self.records[index]
        return Image.open(path), caption

    def raw_caption(self, index: int) -> Any:
        return self.records[index][1]
