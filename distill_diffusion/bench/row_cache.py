"""Reusing benchmark rows: a row measured once with the same model, sampler, steps, guidance, prompts, seeds, real set
and feature network is not generated again.

Every generated folder of :func:`~distill_diffusion.bench.quality.run_quality_benchmark` keeps its row beside its
images (``row.json``, with the key it was measured under), so an interrupted benchmark resumes where it stopped and a
rerun with one new student only generates that student. A reference file (``[{"key", "row"}, ...]``, e.g. the teacher
rows the toy world ships, :data:`~distill_diffusion.toy.shipped.REFERENCE_ROWS`) supplies rows measured elsewhere
under the same key. Keys fingerprint files up to 64 MiB (LoRAs, the toy's models) by their whole contents, larger ones
(a 3.4 GB UNet) by size, modification time and their first and last MiB, so a checkpoint is keyed in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ROW_FILE = "row.json"
_EDGE = 1 << 20
_WHOLE = 64 << 20
#: Files that define a model folder's outputs (weights and configs); logs, cards and images do not.
_MODEL_SUFFIXES = (".safetensors", ".json", ".txt", ".model")


def file_fingerprint(path: Path) -> str:
    """SHA-256 of a file's contents up to 64 MiB; above, of its size, modification time and first and last MiB."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        if size <= _WHOLE:
            h.update(f.read())
            return h.hexdigest()
        h.update(f"{path.stat().st_mtime_ns}".encode() + f.read(_EDGE))
        f.seek(size - _EDGE)
        h.update(f.read(_EDGE))
    return h.hexdigest()


def fingerprint(path: str | Path | None, suffixes: Iterable[str] = _MODEL_SUFFIXES) -> str | None:
    """A model or LoRA folder's (or file's) fingerprint: its weight and config files' names and
    :func:`file_fingerprint`; a hub id (no such local path) is its own fingerprint; None stays None."""
    if path is None:
        return None
    root = Path(path).expanduser()
    if not root.exists():
        return str(path)
    if root.is_file():
        return file_fingerprint(root)
    h = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in tuple(suffixes)):
        rel = file.relative_to(root)
        if (
            rel.parts[0].startswith(("checkpoint-", "validation", "logs", "latent_cache"))
            or rel.name == ROW_FILE
        ):
            continue
        h.update(f"{rel.as_posix()}:{file_fingerprint(file)};".encode())
    return h.hexdigest()


def folder_listing_fingerprint(path: str | Path | None) -> str | None:
    """A real-image folder's fingerprint: its files' names and sizes (cheap for tens of thousands of images)."""
    if path is None:
        return None
    root = Path(path).expanduser()
    h = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{file.relative_to(root).as_posix()}:{file.stat().st_size};".encode())
    return h.hexdigest()


def row_key(fields: Mapping[str, Any]) -> str:
    """The key of a row: SHA-256 of its defining fields as canonical JSON."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def cached_row(folder: Path, key: str) -> dict[str, Any] | None:
    """The row kept in ``folder`` when it was measured under ``key`` (None otherwise, or when unreadable)."""
    try:
        saved = json.loads((folder / ROW_FILE).read_text())
    except (OSError, ValueError):
        return None
    return (
        saved["row"]
        if isinstance(saved, dict) and saved.get("key") == key and isinstance(saved.get("row"), dict)
        else None
    )


def save_row(folder: Path, key: str, row: Mapping[str, Any]) -> None:
    """Keep ``row`` beside its images, with its key (written last, so a half-scored folder is never reused)."""
    tmp = folder / (ROW_FILE + ".tmp")
    tmp.write_text(json.dumps({"key": key, "row": dict(row)}, indent=2, default=str))
    tmp.replace(folder / ROW_FILE)


def load_reference_rows(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """key → row of a reference file (``[{"key", "row"}, ...]``); no file, no rows."""
    if path is None or not Path(path).is_file():
        return {}
    return {entry["key"]: entry["row"] for entry in json.loads(Path(path).read_text())}


def collect_rows(output_dir: str | Path, pipelines: Iterable[str]) -> list[dict[str, Any]]:
    """The kept rows of ``pipelines`` under a benchmark's ``output_dir`` as a reference file's entries."""
    entries = []
    for name in pipelines:
        for file in sorted((Path(output_dir) / "images" / name).glob(f"*/{ROW_FILE}")):
            entries.append(json.loads(file.read_text()))
    return entries


class RowStore:
    """Finds a benchmark's reusable rows: kept beside their images, or in the reference rows.

    ``common``: the fields every row's key shares (prompts, seeds, real set, feature network, dtype, device type, ...).
    """

    def __init__(
        self, common: Mapping[str, Any], reference: Mapping[str, dict[str, Any]] | None = None
    ) -> None:
        self.common = dict(common)
        self.reference = dict(reference or {})
        self._fingerprints: dict[str | None, str | None] = {}
        self.reused: list[str] = []

    def _fingerprint(self, path: str | None) -> str | None:
        if path not in self._fingerprints:
            self._fingerprints[path] = fingerprint(path)
        return self._fingerprints[path]

    def key(self, model: str, lora: str | None, sampler: str | None, steps: int, guidance: float) -> str:
        """The key of one (pipeline, steps, guidance) row."""
        return row_key(
            {
                **self.common,
                "model": self._fingerprint(model),
                "lora": self._fingerprint(lora),
                "sampler": sampler,
                "steps": steps,
                "guidance_scale": guidance,
            }
        )

    def find(self, folder: Path, key: str, label: str) -> dict[str, Any] | None:
        """The row measured under ``key``: the one kept in ``folder``, else the reference's (noted in :attr:`reused`)."""
        row = cached_row(folder, key)
        source = "kept" if row is not None else "reference"
        row = row if row is not None else self.reference.get(key)
        if row is not None:
            self.reused.append(f"{label} ({source})")
        return row


def benchmark_store(s: Any, prompts: list[str], evaluator: Any, device: str) -> RowStore:
    """The rows a benchmark with settings ``s`` (``BenchmarkSettings``) may reuse, keyed by everything that makes two
    measurements the same besides the pipeline itself."""
    from distill_diffusion.bench.quality import parse_dtype

    common = {
        "prompts": hashlib.sha256("\n".join(prompts).encode()).hexdigest(), "seed": s.seed, "num_images": len(prompts),
        "real": folder_listing_fingerprint(s.real_dir), "feature": evaluator.metadata() if evaluator is not None else None,
        "clip": s.clip_model or ("injected" if s.clip else None), "scorer": getattr(s.prompt_scorer, "__name__", None),
        "dtype": str(parse_dtype(s.dtype)), "device": device.split(":")[0], "kid": s.kid, "tag": s.cache_tag,
    }  # fmt: skip
    return RowStore(common, load_reference_rows(s.reference_rows))
