"""FID-vs-steps benchmark (``distill-diffusion bench quality``): several pipelines × step counts, same prompts and
seeds, one table and one plot.

The comparison distillation papers report (e.g. Luo et al., arXiv:2310.04378, Table 1: FID and CLIP score at 1, 2, 4
and 8 steps), against the teacher at 25/50 steps, with latency per image (docs/evaluation.md). Every number is
recorded with its sample count, feature space, resize policy, device and dtype, because FID is biased at small N and
only comparable at equal N. ``--teacher PATH --pipeline NAME=PATH,lora=DIR,sampler=S ...`` on the command line; the
toy method benchmarks and the quickstart call :func:`run_quality_benchmark` with
:class:`~distill_diffusion.bench.specs.PipelineSpec` rows. Torch is
imported when it runs (the CLI imports this module to build ``--help``).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill_diffusion.bench.options import add_metric_options, add_model_options, check_stats_cache
from distill_diffusion.bench.specs import PipelineSpec, parse_pipeline_spec
from distill_diffusion.errors import UserError, require
from distill_diffusion.paths import check_output_dir

if TYPE_CHECKING:
    import torch
    from torch import nn

    from distill_diffusion.eval.prompt_accuracy import PromptScorer

HELP = "FID / CLIP / speed vs steps (and guidance) for several pipelines (table + plots)"
TEACHER_STEPS = (1, 2, 4, 8, 25, 50)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    p.add_argument("--pipeline", action="append", default=[], metavar="NAME=PATH[,lora=DIR][,sampler=S][,guidance=1|1.5|2][,steps=1|2|4]",
                   help="several guidance scales make a sweep: a row per (steps, guidance) and a FID-vs-CLIP curve")  # fmt: skip
    p.add_argument("--teacher", default=None, help="shortcut: --pipeline teacher=PATH,sampler=ddim,steps=1|2|4|8|25|50")
    p.add_argument("--teacher_guidance", type=float, nargs="+", default=None,
                   help="teacher guidance_scale (default 7.5); several values sweep it (curve, 'at equal FID' summary)")  # fmt: skip
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8], help="steps for pipelines without steps=")
    p.add_argument("--prompts", required=True, help="text file, JSON list / COCO captions, or 'toy'")
    p.add_argument("--num_images", type=int, default=None, help="images per (pipeline, steps); cycles prompts")
    p.add_argument("--real", default=None, help="folder of real images for FID (omit: CLIP and speed only)")
    p.add_argument("--output_dir", default="benchmarks/results/quality")
    p.add_argument("--grid_rows", type=int, default=4)
    p.add_argument("--toy_classifier", default=None, metavar="PATH|toy",
                   help="add prompt-accuracy columns (acc_shape, acc_colour, acc_background) from a toy classifier "
                        "folder, or 'toy' for the cached toy world's")  # fmt: skip
    add_metric_options(p)
    add_model_options(p)


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; prints the table and the files written; returns the exit code."""
    check_stats_cache(args.stats_cache)
    specs = []
    if args.teacher is not None:
        guidance = tuple(args.teacher_guidance) if args.teacher_guidance is not None else None
        specs.append(PipelineSpec("teacher", args.teacher, sampler="ddim", guidance_scale=guidance, steps=TEACHER_STEPS))
    specs += [parse_pipeline_spec(text, args.steps) for text in args.pipeline]
    settings = BenchmarkSettings(
        prompts=args.prompts, num_images=args.num_images, real_dir=args.real, fid_feature=args.fid_feature,
        inception_weights=args.inception_weights, clip_model=args.clip_model, resize=args.resize, kid=args.kid,
        stats_cache=args.stats_cache, seed=args.seed, batch_size=args.batch_size, device=args.device,
        dtype=args.dtype, local_files_only=args.local_files_only, grid_rows=args.grid_rows,
        prompt_scorer=_toy_scorer(args.toy_classifier),
    )  # fmt: skip
    result = run_quality_benchmark(specs, args.output_dir, settings)
    if result["files"]:
        print(Path(result["files"]["markdown"]).read_text())
        print("\n".join(f"{k}: {v}" for k, v in result["files"].items()))
    return 0


def _toy_scorer(spec: str | None) -> PromptScorer | None:
    """The toy classifier's prompt scorer for ``--toy_classifier`` (None without it); a bad path fails here,
    before anything is generated."""
    if spec is None:
        return None
    from distill_diffusion.toy.classifier import resolve_toy_classifier, toy_prompt_scorer

    return toy_prompt_scorer(resolve_toy_classifier(spec))


@dataclass
class BenchmarkSettings:
    """Everything but the pipelines; recorded in ``results.json``."""

    prompts: str | list[str] = "toy"
    num_images: int | None = None
    real_dir: str | None = None
    fid_feature: str | nn.Module = "inception"
    feature_dim: int | None = None
    inception_weights: str | None = None
    clip_model: str | None = None
    clip: tuple[Any, Any] | None = field(default=None, repr=False)
    #: Extra per-set metrics, e.g. the toy world's prompt accuracies (``toy.classifier.toy_prompt_scorer``).
    prompt_scorer: PromptScorer | None = field(default=None, repr=False)
    resize: str = "none"
    kid: bool = False
    stats_cache: str | None = None
    seed: int = 0
    batch_size: int = 8
    device: str | None = None
    dtype: str = "float32"
    local_files_only: bool = False
    grid_rows: int = 4
    #: Rows measured elsewhere under the same key (:mod:`~distill_diffusion.bench.row_cache`), reused without generating.
    reference_rows: str | None = None
    #: What the row keys cannot read off the settings, e.g. the toy world's feature-network and classifier weights.
    cache_tag: str | None = None


def toy_bench_settings(world: Any, num_images: int, cache_dir: str | Path | None = None) -> BenchmarkSettings:
    """Settings on the toy world: its prompts and real images, Fréchet distance and CLIP score in its tiny CLIP's
    space, and prompt accuracy by its classifier (the quickstart's and the toy benchmarks'). The teacher rows the
    shipped world comes with (:data:`~distill_diffusion.toy.shipped.REFERENCE_ROWS`) are reused wherever a row's key
    matches, so every toy table reads the same teacher rows and none generates them again."""
    from transformers import CLIPModel

    from distill_diffusion.bench.row_cache import fingerprint
    from distill_diffusion.toy.classifier import resolve_toy_classifier, toy_prompt_scorer
    from distill_diffusion.toy.clip import clip_feature_net, toy_clip_processor
    from distill_diffusion.toy.shipped import REFERENCE_ROWS
    from distill_diffusion.toy.tokenizer import build_tokenizer

    clip = CLIPModel.from_pretrained(world.clip).eval()
    classifier = resolve_toy_classifier("toy", cache_dir)
    return BenchmarkSettings(
        prompts="toy", num_images=num_images, real_dir=str(world.data), fid_feature=clip_feature_net(clip),
        clip=(clip, toy_clip_processor(build_tokenizer())), local_files_only=True, batch_size=64,
        prompt_scorer=toy_prompt_scorer(classifier), cache_tag=f"toy clip {fingerprint(world.clip)} classifier {fingerprint(world.classifier)}",
        reference_rows=str(REFERENCE_ROWS),
    )  # fmt: skip


def parse_dtype(name: str) -> torch.dtype:
    """``float32``/``float16``/``bfloat16`` (or fp32/fp16/bf16) → torch dtype; anything else is a UserError."""
    import torch

    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}  # fmt: skip
    require(name in table, f"dtype {name!r} is unknown; use float32, float16 or bfloat16")
    return table[name]


def with_card_sampling(p: PipelineSpec, local_files_only: bool) -> tuple[PipelineSpec, str | None]:
    """``p`` with its sampler (and, without ``guidance=``, its guidance) from its artefact's model card as ``generate``
    reads it, and the note to print once every check has passed."""
    from distill_diffusion.pipelines.card import resolve_sampling

    try:
        choice = resolve_sampling(p.model, p.lora, p.sampler, local_files_only=local_files_only, option="sampler=NAME in --pipeline")
    except UserError as exc:
        raise UserError(f"{p.name}: {exc}") from None
    return replace(p, sampler=choice.sampler, guidance_scale=choice.guidance_scale(p.guidance_scale)), choice.note


def _validate(pipelines: Sequence[PipelineSpec], s: BenchmarkSettings, output_dir: str | Path) -> tuple[list[str], Any, Any]:
    """Every check that can fail, before anything is generated or written (``pipelines`` with their samplers set)."""
    from distill_diffusion.config import ModelConfig
    from distill_diffusion.eval.clip_score import load_clip
    from distill_diffusion.eval.evaluate import checked_evaluator
    from distill_diffusion.eval.generate import check_seeds, resolve_prompts
    from distill_diffusion.pipelines.loader import check_device, check_pipeline_request

    require(bool(pipelines), "no pipeline to benchmark; pass --teacher PATH and/or --pipeline NAME=PATH")
    names = [p.name for p in pipelines]
    require(len(set(names)) == len(names), f"pipeline names repeat ({names}); give each --pipeline its own NAME")
    check_device(s.device)
    for p in pipelines:
        cfg = ModelConfig(pretrained_model_name_or_path=p.model, local_files_only=s.local_files_only)
        try:
            check_pipeline_request(cfg, p.lora, p.sampler, steps=p.steps)
        except UserError as exc:
            raise UserError(f"{p.name}: {exc}") from None
    parse_dtype(s.dtype)
    require(s.batch_size >= 1, f"batch size {s.batch_size}; pass 1 or more (--batch_size)")
    require(s.grid_rows >= 1, f"grid rows {s.grid_rows}; pass 1 or more (--grid_rows)")
    check_output_dir(str(output_dir), "--output_dir")
    prompts = resolve_prompts(s.prompts, s.num_images, s.seed)
    check_seeds(s.seed, len(prompts))
    evaluator = None
    if s.real_dir is not None:
        evaluator = checked_evaluator(s.real_dir, len(prompts), s.fid_feature, feature_dim=s.feature_dim,
                                      inception_weights=s.inception_weights, resize=s.resize, kid=s.kid, device=s.device)  # fmt: skip
    clip = s.clip or (load_clip(s.clip_model, device=s.device) if s.clip_model else None)
    return prompts, evaluator, clip


def _stats_cache_path(out: Path, evaluator: Any, real_dir: str | Path) -> Path:
    """Default real-statistics cache, named by feature space, resize policy and real set (reused across runs).

    The real set's resolved path is in the name (a short digest) so that another real set, or the same toy world
    installed under another cache folder, gets its own file instead of tripping the stale-cache check, which stays
    for a ``--stats_cache`` the user names."""
    name = evaluator.net.name.replace(":", "_").replace("/", "_")
    source = hashlib.sha256(str(Path(real_dir).expanduser().resolve()).encode()).hexdigest()[:8]
    return out / f"real_stats_{name}_{evaluator.resize.describe()}_{source}.safetensors"


def _row(p: PipelineSpec, scheduler: str, steps: int, guidance: float, timing: Any, scores: dict) -> dict:
    spi = timing.seconds_per_image
    return {
        "pipeline": p.name, "model": p.model, "lora": p.lora, "sampler": p.sampler, "scheduler": scheduler,
        "steps": steps, "guidance_scale": guidance, "fid": scores.get("fid"), "kid_mean": scores.get("kid_mean"),
        "kid_std": scores.get("kid_std"), "clip_score": scores.get("clip_score"), "seconds_per_image": spi,
        "images_per_second": (1.0 / spi) if spi else None, "num_images": timing.images,
        "num_real": scores.get("num_real"), "feature": scores.get("feature"), "resize": scores.get("resize"),
        **scores.get("prompt_scores", {}),
    }  # fmt: skip


def run_quality_benchmark(
    pipelines: Sequence[PipelineSpec], output_dir: str | Path, settings: BenchmarkSettings | None = None
) -> dict[str, Any]:
    """Generate every (pipeline, steps, guidance) with the same prompts and seeds, score, and write the report.

    Writes ``output_dir/images/<pipeline>/steps_<k>[_g<G>]/`` (PNGs + manifest), ``results.{csv,json,md}``,
    ``fid_vs_steps.png``, ``grid_<pipeline>.png`` and, for guidance sweeps, ``fid_vs_clip.png`` and
    ``fid_vs_<acc_*>.png`` (see :mod:`distill_diffusion.eval.curves`). Returns ``{"rows", "meta", "files"}`` (files on the
    main process only). All input errors are raised before anything is written. With several processes,
    seconds per image and images per second are per process (``meta["num_processes"]`` records how many).
    """
    from accelerate import PartialState

    from distill_diffusion.bench.row_cache import benchmark_store
    from distill_diffusion.eval.evaluate import prepare_real, score_generated
    from distill_diffusion.eval.grid import make_grid
    from distill_diffusion.pipelines import load_pipeline

    s = settings or BenchmarkSettings()
    resolved = [with_card_sampling(p, s.local_files_only) for p in pipelines]
    pipelines = [p for p, _ in resolved]
    prompts, evaluator, clip = _validate(pipelines, s, output_dir)
    for note in dict.fromkeys(note for _, note in resolved if note):
        print(note, file=sys.stderr)
    state = PartialState()
    device = s.device or str(state.device)
    out = Path(output_dir)
    num_real = None
    if evaluator is not None and state.is_main_process:
        num_real = prepare_real(evaluator, s.real_dir, s.stats_cache or _stats_cache_path(out, evaluator, s.real_dir))
    rows, files = [], {}
    store = benchmark_store(s, prompts, evaluator, device)
    for p in pipelines:
        def load(p: PipelineSpec = p) -> Any:
            return load_pipeline(p.model, p.lora, p.sampler, device=device, dtype=parse_dtype(s.dtype), local_files_only=s.local_files_only)

        columns = _bench_pipeline(p, load, prompts, out, s, rows, store,
                                  lambda folder: score_generated(folder, evaluator, clip, prompt_scorer=s.prompt_scorer))  # fmt: skip
        if state.is_main_process and columns:
            files[f"grid_{p.name}"] = make_grid(columns, out / f"grid_{p.name}.png", max_rows=s.grid_rows)
    meta = {**_meta(s, prompts, num_real, evaluator, device, state.num_processes, clip), "reused_rows": store.reused}
    if state.is_main_process:
        files.update(_write_outputs(rows, meta, out))
    state.wait_for_everyone()
    return {"rows": rows, "meta": meta, "files": files}


def _bench_pipeline(p: PipelineSpec, load: Callable[[], Any], prompts: list[str], out: Path, s: BenchmarkSettings,
                    rows: list[dict], store: Any, score: Callable[[Path], dict]) -> list[tuple[str, Path]]:  # fmt: skip
    """Generate ``p`` at every (steps, guidance) with the benchmark's prompts and seeds; score on the main process.

    Appends one row per pair to ``rows`` and returns the grid's ``(label, folder)`` columns. A sweep's folders
    and labels carry ``g``; a single guidance keeps the ``steps_<k>`` layout. A row measured before under the same key
    (``store``, a :class:`~distill_diffusion.bench.row_cache.RowStore`) is reused, and the pipeline is loaded only when
    a row must be generated.
    """
    from accelerate import PartialState

    from distill_diffusion.bench.row_cache import save_row
    from distill_diffusion.eval.generate import MANIFEST, generate_to_folder
    from distill_diffusion.pipelines import get_sampler

    sampler, sweep = get_sampler(p.sampler), len(p.guidance_scales) > 1
    columns, pipe = [], None
    for steps in p.steps:
        for guidance in p.guidance_scales:
            kwargs = sampler.call_kwargs(steps, guidance)
            tag = f"_g{kwargs['guidance_scale']:g}" if sweep else ""
            folder = out / "images" / p.name / f"steps_{steps:03d}{tag}"
            key = store.key(p.model, p.lora, p.sampler, steps, kwargs["guidance_scale"])
            row = store.find(folder, key, f"{p.name} {steps}{tag}")
            if row is None:
                pipe = pipe or load()
                folder, timing = generate_to_folder(
                    pipe, prompts, folder, seed=s.seed, batch_size=s.batch_size, warmup=True,
                    manifest_extra={"pipeline": p.name, "sampler": p.sampler, "model": p.model, "lora": p.lora}, **kwargs,
                )  # fmt: skip
                if PartialState().is_main_process:
                    row = _row(p, type(pipe.scheduler).__name__, steps, kwargs["guidance_scale"], timing, score(folder))
                    save_row(folder, key, row)
            if (folder / MANIFEST).is_file():
                columns.append((f"{steps} step" + ("s" if steps > 1 else "") + tag.replace("_g", " g="), folder))
            if PartialState().is_main_process:
                rows.append({**row, "pipeline": p.name, "model": p.model, "lora": p.lora})
    return columns


def _write_outputs(rows: list[dict], meta: dict[str, Any], out: Path) -> dict[str, Path]:
    """The report, the FID-vs-CLIP (and FID-vs-``acc_*``) curves and, when the teacher swept guidance, the
    "at equal FID" summary in ``results.md`` and ``results.json``."""
    from distill_diffusion.eval.curves import equal_fid_markdown, equal_fid_summary, write_curve_plots
    from distill_diffusion.eval.report import write_report

    summary = equal_fid_summary(rows)
    files = write_report(rows, meta, out, extra={"equal_fid": summary} if summary else None, appendix=equal_fid_markdown(summary))
    files.update(write_curve_plots(rows, meta, out))
    return files


def _meta(s: BenchmarkSettings, prompts: list[str], num_real: int | None, evaluator: Any, device: str,
          num_processes: int, clip: Any) -> dict[str, Any]:  # fmt: skip
    import diffusers
    import torch

    # Not dataclasses.asdict: it would deep-copy an injected CLIP model or feature network.
    settings = {f.name: getattr(s, f.name) for f in fields(s) if f.name not in ("clip", "fid_feature", "prompt_scorer")}
    return {
        **settings,
        "prompts": s.prompts if isinstance(s.prompts, str) else f"<{len(s.prompts)} prompts>",
        "num_images": len(prompts),
        "num_real": num_real,
        "fid_feature": s.fid_feature if isinstance(s.fid_feature, str) else type(s.fid_feature).__name__,
        "feature": evaluator.net.name if evaluator is not None else None,
        "feature_dim": evaluator.feature_dim if evaluator is not None else None,
        "resize": evaluator.resize.describe() if evaluator is not None else s.resize,
        "antialias": evaluator.antialias if evaluator is not None else None,
        "clip_model": s.clip_model or ("injected" if clip is not None else None),
        "prompt_scorer": getattr(s.prompt_scorer, "__name__", "injected") if s.prompt_scorer else None,
        "device": device + (f" ({torch.cuda.get_device_name()})" if device.startswith("cuda") else ""),
        "num_processes": num_processes,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "timing": "wall-clock of the pipeline call per batch (text encoder + denoising + VAE decode), warm-up excluded",
    }
