"""Optional latent cache: VAE latents and text embeddings computed once, stored as safetensors shards.

Layout of ``cache_dir``: ``latents-00000.safetensors`` … (tensors ``latents`` [n, C, h, w] and
``prompt_embeds`` [n, L, D]; for SDXL also the pooled ``text_embeds`` [n, P]; for image data the ``original_size`` and
``crop_top_left`` [n, 2] SDXL's micro-conditioning is built from), ``empty_prompt.safetensors`` (``prompt_embeds``
[L, D], and ``text_embeds`` [P] for SDXL, used for caption dropout) and ``index.json`` (version, fingerprint, shard sizes, captions, the pixel resolution), written
last. Every file is written to a temporary name and renamed, so an interrupted build never looks complete.
A cache whose fingerprint (data config + model + seed) differs from the requested one is stale and rebuilt, and so is
one with a missing or damaged file (:func:`shard_problems`).
``distill-diffusion prepare-synthetic`` writes teacher-generated latents in this same layout with these
writers (:mod:`distill_diffusion.data.synthetic`), read back by the same :class:`CachedLatentDataset`.

Crop and flip are drawn once, at cache time (epoch 0), and the VAE posterior is sampled once, as in the
diffusers scripts that cache latents. Caption dropout stays per item: :class:`CachedLatentDataset` swaps
in the cached empty-prompt embedding with probability ``proportion_empty_prompts``.
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

from distill_diffusion.config import DataConfig
from distill_diffusion.data.collate import collate_examples
from distill_diffusion.data.imagefolder import subsample
from distill_diffusion.data.transforms import drop_caption, item_rng
from distill_diffusion.errors import UserError, require

CACHE_VERSION = 1
INDEX_NAME = "index.json"
EMPTY_NAME = "empty_prompt.safetensors"
#: DataConfig fields that do not change what is cached (dropout is applied when reading).
_NOT_CACHED = {"proportion_empty_prompts", "max_bad_fraction", "dataloader_num_workers", "cache_latents", "cache_dir",
               "latents_dir"}


def _data_files(cfg: DataConfig) -> list[Path]:
    """Local files whose size/mtime stand for the data's content (cheap to stat, unlike hashing images)."""
    if cfg.source == "imagefolder" and cfg.train_data_dir:
        root = Path(cfg.train_data_dir).expanduser()
        return [root / "metadata.jsonl", root / cfg.dataset_split / "metadata.jsonl"]
    if cfg.source == "hf" and cfg.dataset_name and Path(cfg.dataset_name).expanduser().is_dir():
        return sorted(Path(cfg.dataset_name).expanduser().rglob("*.arrow"))
    if cfg.source == "webdataset" and cfg.shards:
        from distill_diffusion.data.wds import expand_shards

        return [Path(u) for u in expand_shards(cfg.shards) if "://" not in u and not u.startswith("pipe:")]
    return []


def data_fingerprint(cfg: DataConfig, model_key: str, seed: int | None = 0, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What determines the cached tensors: data fields, the data files' size/mtime, the model and the seed."""
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_CACHED}
    stats = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in _data_files(cfg) if p.is_file()]
    files = hashlib.sha256(json.dumps(stats).encode()).hexdigest()
    return {"data": fields, "files": files, "model": model_key, "seed": seed, "extra": dict(extra or {})}


def fingerprint_digest(fingerprint: Mapping[str, Any]) -> str:
    """Stable hash of a JSON-able fingerprint."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()


def atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write safetensors to a temporary name, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".tmp-{path.name}")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def atomic_write_text(text: str, path: Path) -> None:
    """Write a text file under a temporary name, then rename."""
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def shard_name(number: int) -> str:
    """File name of shard ``number`` (``latents-00000.safetensors``)."""
    return f"latents-{number:05d}.safetensors"


def write_index(cache_dir: Path, fingerprint: Mapping[str, Any], shards: list[dict[str, Any]], captions: list[str],
                **extra: Any) -> None:
    """Write ``index.json`` (last: its presence marks the folder complete). ``extra`` adds fields, e.g. the resolution."""
    index = {"version": CACHE_VERSION, "fingerprint": fingerprint_digest(fingerprint), "num_items": len(captions),
             "shards": shards, "captions": captions, "fingerprint_data": dict(fingerprint), **extra}
    atomic_write_text(json.dumps(index, default=str), cache_dir / INDEX_NAME)


def read_index(cache_dir: str | Path) -> dict[str, Any] | None:
    """The cache index, or None when absent, unreadable or from another cache version."""
    path = Path(cache_dir) / INDEX_NAME
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return index if isinstance(index, dict) and index.get("version") == CACHE_VERSION else None


def is_cache_valid(cache_dir: str | Path, fingerprint: Mapping[str, Any]) -> bool:
    """True when ``cache_dir`` holds a complete cache built for ``fingerprint``."""
    index = read_index(cache_dir)
    return index is not None and index.get("fingerprint") == fingerprint_digest(fingerprint) and index_complete(cache_dir, index)


def index_complete(cache_dir: str | Path, index: Mapping[str, Any]) -> bool:
    """Every shard ``index`` lists, and the empty-prompt embedding, is in ``cache_dir``, whole and as the index says."""
    return not shard_problems(cache_dir, index)


def shard_problems(cache_dir: str | Path, index: Mapping[str, Any]) -> list[str]:
    """What is wrong with the files ``index`` lists, first problem first (empty when nothing is): a file missing or
    damaged (cut short, not safetensors), a shard holding another number of latents than the index says, or captions
    the shards do not cover. Reads the safetensors headers only."""
    root = Path(cache_dir)
    try:
        listed = [(str(s["file"]), int(s["count"])) for s in index["shards"]]
        captions = len(index["captions"])
    except (KeyError, TypeError, ValueError):
        return [f"{INDEX_NAME} is malformed (no shards or captions list)"]
    problems = []
    for name, count in [*listed, (EMPTY_NAME, 1)]:
        rows = stored_rows(root / name)
        if rows is None:
            problems.append(f"{name} is {'damaged (cut short, or not a latent shard)' if (root / name).is_file() else 'missing'}")
        elif rows != count:
            problems.append(f"{name} holds {rows} latents, {INDEX_NAME} says {count}")
    total = sum(count for _, count in listed)
    if not problems and total != captions:
        problems.append(f"{INDEX_NAME} lists {captions} captions but its shards hold {total} latents")
    return problems


def stored_rows(path: Path) -> int | None:
    """Items in a shard (``latents`` and ``prompt_embeds`` of equal length) or the empty-prompt file (1), read from the
    header; None when the file is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            rows = {key: handle.get_slice(key).get_shape() for key in handle.keys()}
    except Exception:  # safetensors raises its own error type for a cut-short or foreign file
        return None
    if path.name == EMPTY_NAME:
        return 1 if "prompt_embeds" in rows else None
    latents, embeds = rows.get("latents") or [None], rows.get("prompt_embeds") or [None]
    return latents[0] if latents[0] is not None and latents[0] == embeds[0] else None


def clear_cache_files(cache_dir: Path) -> None:
    """Remove our own files only (the folder may be shared with other things)."""
    for path in cache_dir.iterdir():
        name = path.name.removeprefix(".tmp-")
        if path.is_file() and (name in (INDEX_NAME, EMPTY_NAME) or (name.startswith("latents-") and name.endswith(".safetensors"))):
            path.unlink()


def _without_dropout(dataset: Dataset) -> Dataset:
    """A shallow copy with caption dropout off and epoch 0: the cache keeps real captions."""
    dataset = copy.copy(dataset)
    if hasattr(dataset, "proportion_empty_prompts"):
        dataset.proportion_empty_prompts = 0.0
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(0)
    return dataset


def build_latent_cache(
    dataset: Dataset,
    encode_images_fn: Callable[[torch.Tensor], torch.Tensor],
    encode_text_fn: Callable[[list[str]], Any],
    cache_dir: str | Path,
    batch_size: int = 16,
    fingerprint: Mapping[str, Any] | None = None,
    num_workers: int = 0,
    shard_size: int = 1024,
    empty_prompt: str = "",
) -> Path:
    """Encode every item of ``dataset`` once and write the cache (skipped when a valid one exists).

    ``encode_images_fn(pixel_values [B,3,R,R] in [-1,1]) -> latents [B,C,h,w]`` (scaled, e.g.
    ``models.encode.encode_images``); ``encode_text_fn(list[str]) -> [B, L, D]`` or a Conditioning (its
    ``prompt_embeds`` and ``text_embeds`` are stored; time ids come from the stored geometry). Both run under
    ``torch.no_grad``. Call it on the main process only, then build :class:`CachedLatentDataset` everywhere.
    """
    cache_dir = Path(cache_dir).expanduser()
    fingerprint = dict(fingerprint or {"dataset": type(dataset).__name__})
    if is_cache_valid(cache_dir, fingerprint):
        return cache_dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    clear_cache_files(cache_dir)
    loader = DataLoader(_without_dropout(dataset), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_examples)
    shards: list[dict[str, Any]] = []
    captions: list[str] = []
    pending: dict[str, list[torch.Tensor]] = {"latents": [], "prompt_embeds": []}
    resolution = None
    with torch.no_grad():
        for batch in loader:
            pending["latents"].append(encode_images_fn(batch["pixel_values"]).cpu())
            for key, value in {**text_parts(encode_text_fn(batch["text"])), **geometry(batch)}.items():
                pending.setdefault(key, []).append(value.cpu())
            captions.extend(batch["text"])
            resolution = int(batch["pixel_values"].shape[-1])
            if sum(len(t) for t in pending["latents"]) >= shard_size:
                flush_shard(pending, cache_dir, shards)
        flush_shard(pending, cache_dir, shards)
        require(bool(captions), f"latent cache {cache_dir}: the dataset yielded no item; check the data settings")
        save_empty_prompt(encode_text_fn, cache_dir, empty_prompt)
    write_index(cache_dir, fingerprint, shards, captions, resolution=resolution)
    return cache_dir


def text_parts(encoded: Any) -> dict[str, torch.Tensor]:
    """What is stored of an encoded prompt batch: ``prompt_embeds``, and a Conditioning's ``text_embeds`` (SDXL)."""
    if isinstance(encoded, torch.Tensor):
        return {"prompt_embeds": encoded}
    return {k: v for k, v in encoded.tensors().items() if k != "time_ids"}


#: Per-image preprocessing records stored beside the latents (SDXL's micro-conditioning is built from them).
GEOMETRY_KEYS = ("original_size", "crop_top_left")


def geometry(batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The batch's original sizes and crop offsets, where its source records them."""
    return {k: batch[k] for k in GEOMETRY_KEYS if k in batch}


def save_empty_prompt(encode_text_fn: Callable[[list[str]], Any], cache_dir: Path, empty_prompt: str = "") -> None:
    """``empty_prompt.safetensors``: the embeddings swapped in for caption dropout (``prompt_embeds`` [L, D], and
    ``text_embeds`` [P] for SDXL)."""
    with torch.no_grad():
        parts = text_parts(encode_text_fn([empty_prompt]))
        atomic_save({k: v[0].cpu() for k, v in parts.items()}, cache_dir / EMPTY_NAME)


def flush_shard(pending: dict[str, list[torch.Tensor]], cache_dir: Path, shards: list[dict[str, Any]],
                metadata: dict[str, str] | None = None) -> None:
    """Write the pending batches as shard ``len(shards)``, record it in ``shards`` and empty ``pending``."""
    if not pending["latents"]:
        return
    tensors = {k: torch.cat(v) for k, v in pending.items() if v}
    name = shard_name(len(shards))
    atomic_save(tensors, cache_dir / name, metadata)
    shards.append({"file": name, "count": len(tensors["latents"])})
    for value in pending.values():
        value.clear()


class CachedLatentDataset(Dataset):
    """Map-style dataset over a latent cache: items ``{"latents", "prompt_embeds", "text"}``, and ``text_embeds``,
    ``original_size`` and ``crop_top_left`` where the cache has them (SDXL; caches of SD teachers have no ``text_embeds``).

    Shards are memory-mapped (safetensors ``safe_open``) per process, so DataLoader workers share pages.
    Caption dropout: with probability ``proportion_empty_prompts`` (drawn from ``item_rng(seed, epoch,
    index)``) the item gets the cached empty-prompt embedding and ``text=""``. ``max_train_samples`` keeps a
    seeded random subset, as the image sources do.
    """

    def __init__(self, cache_dir: str | Path, proportion_empty_prompts: float = 0.0, seed: int = 0,
                 max_train_samples: int | None = None) -> None:
        self.cache_dir = Path(cache_dir).expanduser()
        index = read_index(self.cache_dir)
        if index is None:
            raise UserError(f"no latent cache in {self.cache_dir}; build it first (data.cache_latents=true) or fix data.cache_dir")
        self.captions: list[str] = index["captions"]
        #: Pixel resolution the latents were made at (None in caches written before it was recorded).
        self.resolution: int | None = index.get("resolution")
        self.indices = subsample(len(self.captions), max_train_samples, int(seed or 0))
        self.shards: list[dict[str, Any]] = index["shards"]
        self._ends = _cumulative([s["count"] for s in self.shards])
        self.proportion_empty_prompts, self.seed, self.epoch = proportion_empty_prompts, int(seed or 0), 0
        self._handles: dict[str, Any] = {}
        empty = self._open(EMPTY_NAME)
        self.empty_parts = {k: empty.get_tensor(k) for k in ("prompt_embeds", "text_embeds") if k in empty.keys()}

    @property
    def empty_embeds(self) -> torch.Tensor:
        """The empty prompt's ``prompt_embeds`` [L, D] (caption dropout)."""
        return self.empty_parts["prompt_embeds"]

    def _open(self, name: str) -> Any:
        if name not in self._handles:
            path = self.cache_dir / name
            require(path.is_file(), f"latent cache {self.cache_dir} is incomplete ({name} missing); delete the folder to rebuild it")
            self._handles[name] = safe_open(str(path), framework="pt")
        return self._handles[name]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}  # mmap handles do not pickle; each worker reopens
        return state

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose caption-dropout draws are used."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        item = self.indices[index]
        shard = bisect.bisect_right(self._ends, item)
        offset = item - (self._ends[shard - 1] if shard else 0)
        handle = self._open(self.shards[shard]["file"])
        caption = self.captions[item]
        text = drop_caption(caption, self.proportion_empty_prompts, item_rng(self.seed, self.epoch, index))
        dropped = bool(caption) and not text
        item, stored = {"latents": handle.get_slice("latents")[offset], "text": text}, set(handle.keys())
        for key in ("prompt_embeds", "text_embeds", *GEOMETRY_KEYS):
            if key in self.empty_parts and dropped:
                item[key] = self.empty_parts[key]
            elif key in stored:
                item[key] = handle.get_slice(key)[offset]
        return item


def _cumulative(counts: Sequence[int]) -> list[int]:
    ends, total = [], 0
    for count in counts:
        total += count
        ends.append(total)
    return ends


def prepare_latent_cache(
    cfg: DataConfig,
    dataset: Dataset,
    encode_images_fn: Callable[[torch.Tensor], torch.Tensor],
    encode_text_fn: Callable[[list[str]], Any],
    model_key: str,
    seed: int | None = 0,
    batch_size: int = 16,
) -> CachedLatentDataset:
    """``data.cache_latents``: build (or reuse) the cache in ``data.cache_dir`` and return the cached dataset."""
    require(bool(cfg.cache_dir), "data.cache_latents is on but data.cache_dir is empty; set data.cache_dir to a folder")
    fingerprint = data_fingerprint(cfg, model_key, seed)
    build_latent_cache(dataset, encode_images_fn, encode_text_fn, cfg.cache_dir, batch_size=batch_size,
                       fingerprint=fingerprint, num_workers=cfg.dataloader_num_workers)
    return CachedLatentDataset(cfg.cache_dir, cfg.proportion_empty_prompts, seed or 0)
