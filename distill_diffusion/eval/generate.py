"""Deterministic generation for evaluation: prompts → PNG files + ``manifest.jsonl``, sharded with accelerate.

Image ``i`` gets prompt ``prompts[i]`` and its own ``torch.Generator`` seeded ``seed + i`` (on the CPU, so
the noise does not depend on the device either). Pipelines take a list of generators and draw each image's
noise from its own, so an image does not depend on the batch size or on which process made it, and every
step count and every pipeline sees the same initial noise for the same image.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distill_diffusion import threads
from distill_diffusion.errors import UserError, require
from distill_diffusion.eval.images import to_uint8, uint8_to_pil
from distill_diffusion.paths import check_output_dir
from distill_diffusion.pipelines.samplers import check_guidance, check_steps, sampler_of

MANIFEST = "manifest.jsonl"
DEFAULT_TOY_PROMPTS = 64


def resolve_prompts(prompts: str | Path | Sequence[str], num_images: int | None = None, seed: int = 0) -> list[str]:
    """Prompt list from ``"toy"`` (the toy world's captions), a file (text / JSON / COCO captions) or a list.

    With ``num_images`` the list is cycled (or cut) to exactly that length: one image per entry.
    """
    require(num_images is None or num_images >= 1, f"num_images={num_images}; pass 1 or more")
    if isinstance(prompts, str) and prompts == "toy":
        from distill_diffusion.toy.world import toy_prompts

        found = toy_prompts(num_images or DEFAULT_TOY_PROMPTS, seed)
    elif isinstance(prompts, (str, Path)):
        from distill_diffusion.prompts import load_prompts

        found = load_prompts(prompts)
    else:
        found = [str(p).strip() for p in prompts]
        require(bool(found) and all(found), "the prompt list is empty or holds an empty prompt; pass one prompt per image")
    if num_images is not None:
        found = [found[i % len(found)] for i in range(num_images)]
    return found


def check_seeds(seed: int, count: int) -> None:
    """Image ``i`` is seeded ``seed + i``; torch generators take 64-bit seeds, so all of them must fit."""
    require(
        -(2**63) <= seed and seed + count - 1 < 2**64,
        f"seed {seed} with {count} images leaves torch's 64-bit seed range; pass a seed such as 0 (--seed)",
    )


@dataclass
class GenerationTiming:
    """Wall-clock seconds of the timed pipeline calls (warm-up excluded) and how many images they made."""

    seconds: float = 0.0
    images: int = 0

    @property
    def seconds_per_image(self) -> float | None:
        return self.seconds / self.images if self.images else None


def _call(pipe: Any, prompts: list[str], seeds: list[int], steps: int, guidance: float, kwargs: dict) -> torch.Tensor:
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    out = pipe(
        prompts, num_inference_steps=steps, guidance_scale=guidance, generator=generators, output_type="pt", **kwargs
    )
    return to_uint8(out.images, "[0,1]").cpu()


@torch.no_grad()
def generate_images(
    pipe: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    num_inference_steps: int,
    guidance_scale: float,
    batch_size: int = 8,
    warmup: bool = False,
    pipe_kwargs: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, GenerationTiming]:
    """uint8 ``[N,3,H,W]`` images, one per (prompt, seed), and the timing of the pipeline calls.

    ``warmup`` first runs one untimed image (kernel selection, lazy init) so the timing is steady state.
    Timed: the whole pipeline call (text encoding, denoising, VAE decode) up to uint8 images on the host.
    """
    require(len(prompts) == len(seeds), f"{len(prompts)} prompts but {len(seeds)} seeds; pass one seed per prompt")
    require(batch_size >= 1, f"batch_size={batch_size}; pass 1 or more")
    check_steps(pipe.scheduler, num_inference_steps, sampler_of(pipe))
    check_guidance(guidance_scale)
    kwargs = dict(pipe_kwargs or {})
    timing = GenerationTiming()
    if warmup and prompts:
        _call(pipe, [prompts[0]], [seeds[0]], num_inference_steps, guidance_scale, kwargs)
    chunks = []
    for start in range(0, len(prompts), batch_size):
        batch_prompts = list(prompts[start : start + batch_size])
        threads.tick()  # CPU threads follow the load (outside the timed call)
        t0 = time.perf_counter()
        chunks.append(_call(pipe, batch_prompts, list(seeds[start : start + batch_size]), num_inference_steps, guidance_scale, kwargs))
        timing.seconds += time.perf_counter() - t0
        timing.images += len(batch_prompts)
    if not chunks:
        return torch.empty(0, 3, 0, 0, dtype=torch.uint8), timing
    return torch.cat(chunks), timing


def image_name(index: int) -> str:
    return f"{index:06d}.png"


def generate_to_folder(
    pipe: Any,
    prompts: Sequence[str],
    output_dir: str | Path,
    *,
    num_inference_steps: int,
    guidance_scale: float,
    seed: int = 0,
    batch_size: int = 8,
    warmup: bool = False,
    manifest_extra: dict[str, Any] | None = None,
    pipe_kwargs: dict[str, Any] | None = None,
) -> tuple[Path, GenerationTiming]:
    """Write ``output_dir/000000.png …`` and ``manifest.jsonl`` (file_name, prompt, seed, steps, guidance,
    scheduler, and ``manifest_extra``). Image ``i`` uses seed ``seed + i``.

    Sharded with accelerate (``PartialState().split_between_processes``): each process renders and saves its
    share; the main process writes the manifest after all are done. Returns the folder and the timing
    summed over processes (seconds of each process added up, so seconds/image is per process).
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object

    require(len(prompts) > 0, "the prompt set is empty; pass at least one prompt")
    require(num_inference_steps >= 1, f"num_inference_steps={num_inference_steps}; pass 1 or more")
    check_seeds(seed, len(prompts))
    check_output_dir(str(output_dir), "output_dir")
    state = PartialState()
    out = Path(output_dir)
    with state.split_between_processes(list(range(len(prompts)))) as mine:
        images, timing = generate_images(pipe, [prompts[i] for i in mine], [seed + i for i in mine],
                                         num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                         batch_size=batch_size, warmup=warmup, pipe_kwargs=pipe_kwargs)
        out.mkdir(parents=True, exist_ok=True)
        for i, image in zip(mine, uint8_to_pil(images)):
            image.save(out / image_name(i))
    timings = gather_object([(timing.seconds, timing.images)])
    total = GenerationTiming(sum(t[0] for t in timings), sum(t[1] for t in timings))
    state.wait_for_everyone()
    if state.is_main_process:
        common = {"steps": num_inference_steps, "guidance_scale": guidance_scale, "scheduler": type(pipe.scheduler).__name__}
        write_manifest(out, prompts, seed, {**common, **(manifest_extra or {})})
    state.wait_for_everyone()
    return out, total


def write_manifest(folder: Path, prompts: Sequence[str], seed: int, common: dict[str, Any]) -> Path:
    """``manifest.jsonl``: one line per image, ``{"file_name", "prompt", "seed", **common}``."""
    lines = [
        json.dumps({"file_name": image_name(i), "prompt": prompt, "seed": seed + i, **common})
        for i, prompt in enumerate(prompts)
    ]
    path = folder / MANIFEST
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_manifest(folder: str | Path) -> list[dict[str, Any]]:
    """Entries of ``folder/manifest.jsonl``; a missing/empty manifest or a listed file that is absent is a UserError."""
    root = Path(folder).expanduser()
    path = root / MANIFEST
    problem = "is a file, not a folder" if root.is_file() else "no such folder"
    require(root.is_dir(), f"generated folder {root}: {problem}; pass a folder written by `distill-diffusion generate`")
    require(path.is_file(), f"{root} has no {MANIFEST}; pass a folder written by `distill-diffusion generate`, or --prompts")
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path} line {number} is not JSON; regenerate the folder") from None
        require(
            isinstance(entry, dict) and "file_name" in entry and "prompt" in entry,
            f"{path} line {number} lacks file_name/prompt; regenerate the folder",
        )
        require((root / entry["file_name"]).is_file(), f"{root / entry['file_name']} is listed in {MANIFEST} but missing; regenerate")
        entries.append(entry)
    require(bool(entries), f"{path} lists no images; regenerate the folder")
    return entries
