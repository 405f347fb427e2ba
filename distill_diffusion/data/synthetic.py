"""Latent folders made once by a teacher (``distill-diffusion prepare-synthetic``): resumable writing, and the
``latents`` training source that reads them.

LADD (Sauer et al., arXiv:2403.12015) trains with synthetic data: the discriminator's "real" latents may be the
teacher's own samples instead of encoded images. Such a folder has exactly the latent cache's layout
(:mod:`distill_diffusion.data.cache`, written with its writers): ``latents-NNNNN.safetensors`` shards of
``latents`` [n, C, h, w] (the UNet's scaled latent space, as ``encode_images`` stores) and ``prompt_embeds``
[n, L, D], ``empty_prompt.safetensors``, and ``index.json`` with the captions, written last.

Resuming: shard k always holds samples ``[k*S, (k+1)*S)`` and is made in batches that start at its first
sample, and the caller seeds sample i on its own (``seed + i``), so a shard does not depend on whether the
run was interrupted before it. Each shard carries the digest of the settings that made it in its safetensors
metadata; a re-run keeps the shards whose digest and size are right and makes the others. Files made with
other settings are never mixed in: that is a one-line error (or, with ``overwrite``, they are replaced).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from distill_diffusion.data.cache import (
    INDEX_NAME,
    CachedLatentDataset,
    clear_cache_files,
    fingerprint_digest,
    flush_shard,
    index_complete,
    read_index,
    save_empty_prompt,
    shard_name,
    shard_problems,
    text_parts,
    write_index,
)
from distill_diffusion.errors import UserError, require

#: safetensors metadata keys of a shard: the settings digest and the settings themselves (for error messages).
DIGEST_KEY, SETTINGS_KEY = "settings_digest", "settings"
#: ``sample_fn(prompt_embeds [B, L, D], sample indices) -> latents [B, C, h, w]``.
SampleFn = Callable[[torch.Tensor, list[int]], torch.Tensor]


def write_synthetic_latents(
    output_dir: str | Path,
    captions: Sequence[str],
    sample_fn: SampleFn,
    encode_text_fn: Callable[[list[str]], torch.Tensor],
    settings: Mapping[str, Any],
    *,
    batch_size: int = 8,
    shard_size: int = 1024,
    overwrite: bool = False,
    progress: bool = True,
    index_extra: Mapping[str, Any] | None = None,
) -> Path:
    """Make sample i for caption ``captions[i]`` with ``sample_fn`` and store it in the latent-cache layout.

    ``settings`` (JSON-able) is everything that determines the latents; a folder holding files made with other
    settings is a :class:`UserError` unless ``overwrite`` (then they are deleted first). A complete folder for the
    same settings and count is left as it is. ``index_extra`` adds fields to ``index.json`` (e.g. the resolution).
    """
    from tqdm.auto import tqdm

    out = Path(output_dir).expanduser()
    require(len(captions) > 0, "no caption to generate from; pass at least one prompt")
    if not _open_for_writing(out, settings, len(captions), shard_size, overwrite):
        return out
    digest = fingerprint_digest(settings)
    shards: list[dict[str, Any]] = []
    metadata = {DIGEST_KEY: digest, SETTINGS_KEY: json.dumps(settings, sort_keys=True, default=str)}
    with tqdm(total=len(captions), disable=not progress, desc="prepare-synthetic", unit="latent") as bar:
        for start in range(0, len(captions), shard_size):
            end = min(start + shard_size, len(captions))
            if shard_count(out / shard_name(len(shards)), digest) == end - start:
                shards.append({"file": shard_name(len(shards)), "count": end - start})
                bar.update(end - start)
                continue
            batches = [list(range(first, min(first + batch_size, end))) for first in range(start, end, batch_size)]
            pending = _make_shard(captions, batches, sample_fn, encode_text_fn, bar.update)
            flush_shard(pending, out, shards, metadata)
    save_empty_prompt(encode_text_fn, out)
    write_index(out, settings, shards, list(captions), **dict(index_extra or {}))
    return out


def _open_for_writing(out: Path, settings: Mapping[str, Any], count: int, shard_size: int, overwrite: bool) -> bool:
    """Make ``out`` ready for ``count`` samples in shards of ``shard_size``: refuse other settings (cleared first when
    ``overwrite``), drop the index and the shards past the last one; False when it is complete already."""
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        clear_cache_files(out)
    check_same_settings(out, settings)
    if is_complete(out, settings, count):
        return False
    (out / INDEX_NAME).unlink(missing_ok=True)  # the folder is incomplete until the new index is written
    _remove_shards_from(out, len(range(0, count, shard_size)))
    return True


def _make_shard(captions: Sequence[str], batches: list[list[int]], sample_fn: SampleFn,
                encode_text_fn: Callable[[list[str]], torch.Tensor],
                done: Callable[[int], Any]) -> dict[str, list[torch.Tensor]]:
    """One shard's latents and text embeddings, made batch by batch (``done(n)`` after each batch of ``n``)."""
    pending: dict[str, list[torch.Tensor]] = {"latents": [], "prompt_embeds": []}
    for indices in batches:
        with torch.no_grad():
            embeds = encode_text_fn([captions[i] for i in indices])
            pending["latents"].append(sample_fn(embeds, indices).cpu())
        for key, value in text_parts(embeds).items():  # SDXL: the pooled text_embeds too
            pending.setdefault(key, []).append(value.cpu())
        done(len(indices))
    return pending


def is_complete(output_dir: str | Path, settings: Mapping[str, Any], count: int) -> bool:
    """``output_dir`` holds all ``count`` samples made with ``settings``, index included (nothing left to make)."""
    out = Path(output_dir).expanduser()
    index = read_index(out)
    return (index is not None and index.get("fingerprint") == fingerprint_digest(settings)
            and index.get("num_items") == count and index_complete(out, index))


def shard_count(path: Path, digest: str) -> int | None:
    """Samples in the shard at ``path`` when it was made with the settings ``digest``; None otherwise."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get(DIGEST_KEY) != digest:
                return None
            return int(handle.get_slice("latents").get_shape()[0])
    except Exception:  # a damaged shard (safetensors raises its own error type): made again
        return None


def _shard_settings(path: Path) -> tuple[str | None, dict[str, Any]]:
    """(digest, settings) recorded in a shard; (None, {}) for a shard without them (a latent cache's)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except Exception:  # unreadable: no settings to compare, it will be made again
        return "", {}
    return meta.get(DIGEST_KEY), json.loads(meta.get(SETTINGS_KEY, "{}"))


def check_same_settings(out: Path, settings: Mapping[str, Any]) -> None:
    """Refuse a folder whose index or shards were made with other settings, naming what changed."""
    digest = fingerprint_digest(settings)
    settings = json.loads(json.dumps(settings, default=str))  # as recorded: tuples are lists, paths strings
    index = read_index(out)
    recorded = [(index.get("fingerprint"), index.get("fingerprint_data") or {})] if index is not None else []
    recorded += [_shard_settings(p) for p in sorted(out.glob("latents-*.safetensors"))]
    for found, old in recorded:
        if found in (digest, ""):
            continue
        changed = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)] if old else []
        what = ", ".join(f"{k} {_short(old.get(k))} -> {_short(settings.get(k))}" for k in changed[:4]) or "other settings"
        raise UserError(f"--output_dir {out} already holds latents made with other settings ({what}); pick another "
                        "--output_dir, or pass --overwrite to replace them")


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _remove_shards_from(out: Path, first: int) -> None:
    """Delete shards numbered ``first`` and up (left by a run of more samples)."""
    for path in out.glob("latents-*.safetensors"):
        number = path.name.removeprefix("latents-").removesuffix(".safetensors")
        if number.isdigit() and int(number) >= first:
            path.unlink()


def open_latents_dir(latents_dir: str | Path | None, proportion_empty_prompts: float = 0.0, seed: int = 0,
                     max_train_samples: int | None = None) -> CachedLatentDataset:
    """``data.source: latents``: the folder as a :class:`CachedLatentDataset`, refused unless it is complete."""
    root = Path(str(latents_dir or "")).expanduser()
    make = f"make it with `distill-diffusion prepare-synthetic --output_dir {root}`"
    require(root.is_dir(), f"data.latents_dir {root}: no such folder; {make}, or fix data.latents_dir")
    index = read_index(root)
    again = "run the same `distill-diffusion prepare-synthetic` command again"
    require(index is not None, f"data.latents_dir {root} has no complete {INDEX_NAME} (an unfinished `prepare-synthetic` "
            f"run?); {again} to finish it, or fix data.latents_dir")
    problems = shard_problems(root, index)
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    require(not problems, f"data.latents_dir {root}: {problems[0] if problems else ''}{more}; {again} to make the "
            "damaged files again, or fix data.latents_dir")
    return CachedLatentDataset(root, proportion_empty_prompts, seed, max_train_samples)


def check_latents_fit(dataset: CachedLatentDataset, resolution: int, in_channels: int, text_width: int,
                      pooled_width: int | None = None) -> None:
    """The stored latents and embeddings fit the teacher (its UNet's input channels and text width, and for an SDXL
    teacher, ``pooled_width`` set, the pooled text embeddings its added conditioning takes) and the run's
    ``data.resolution`` is the one they were made at; each mismatch is a one-line error with the fix."""
    item = dataset[0]
    channels, width = int(item["latents"].shape[0]), int(item["prompt_embeds"].shape[-1])
    where, remake = f"data.latents_dir {dataset.cache_dir}", "make the latents with this teacher (prepare-synthetic)"
    # checked first: an SD folder's text width differs from SDXL's too, but the family is the cause to name
    pooled = item.get("text_embeds")
    require(pooled is not None or pooled_width is None, f"{where} holds no pooled text embeddings (text_embeds), so it was made "
            f"for an SD 1.x/2.x teacher, but this SDXL teacher's UNet takes them with its time ids; {remake}")
    require(pooled is None or pooled_width is not None, f"{where} holds pooled text embeddings (text_embeds), so it was made "
            f"for an SDXL teacher, but this teacher's UNet takes none; {remake}")
    require(pooled is None or int(pooled.shape[-1]) == pooled_width, f"{where} holds pooled text embeddings of width "
            f"{int(pooled.shape[-1]) if pooled is not None else 0} but the teacher's UNet takes {pooled_width}; {remake}, or train "
            "the teacher they were made with")
    require(channels == in_channels, f"{where} holds {channels}-channel latents but the teacher's UNet takes {in_channels}; "
            f"{remake}, or train the teacher they were made with")
    require(width == text_width, f"{where} holds text embeddings of width {width} but the teacher's UNet attends to "
            f"{text_width}; {remake}, or train the teacher they were made with")
    made_at = dataset.resolution
    require(made_at is None or int(made_at) == resolution, f"{where} was made at resolution {made_at}, but "
            f"data.resolution is {resolution}; pass --data.resolution {made_at}, or make latents at {resolution}")
