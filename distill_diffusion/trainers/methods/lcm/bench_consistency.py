"""Consistency error per timestep (``distill-diffusion bench consistency``): how close LCM-LoRA students'
``f(z_t, t)`` are to the guided teacher's ODE.

Latent consistency distillation (Luo et al., arXiv:2310.04378, Alg. 1) trains ``f_θ(z_t, t)`` to map every point
of the guided teacher's probability-flow ODE trajectory to its origin, bootstrapping one solver hop at a time.
This benchmark measures that directly: for real training latents noised to ``z_t = α_t x0 + σ_t ε`` at chosen
``t``, the reference is the guided teacher's ODE solved from ``z_t`` to 0 with DDIM in steps of ``ode_step``,
and the error is ``MSE(f(z_t, t), reference)``. The undistilled teacher is scored too, as a consistency function
built from its guided x0 prediction (what the teacher sampled with ``LCMScheduler`` uses): a student above
that row at some ``t`` is less accurate there than no distillation at all, which is how too many
bootstrapping hops (a fine solver grid on a short budget) show up. Torch is imported when it runs (the CLI imports
this module to build ``--help``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill_diffusion.errors import UserError, require

if TYPE_CHECKING:
    from torch import Tensor

HELP = "LCM-LoRA runs: consistency error per timestep vs the guided teacher's ODE"
TEACHER_ROW = "teacher (guided x0)"


@dataclasses.dataclass
class ConsistencySettings:
    """What to measure; ``guidance_scale=None`` takes the middle of the first run's training guidance_scale range."""

    num_samples: int = 64
    timesteps: tuple[int, ...] = (999, 759, 499, 259, 99, 39)
    ode_step: int = 20
    guidance_scale: float | None = None
    batch_size: int = 16
    seed: int = 0
    device: str | None = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    p.add_argument("runs", nargs="+", help="output folders of `train lcm` runs (config.yaml + exported LoRA), one teacher")
    p.add_argument("--num_samples", type=int, default=64, help="training images (first in dataset order)")
    p.add_argument("--timesteps", type=int, nargs="+", default=[999, 759, 499, 259, 99, 39])
    p.add_argument("--ode_step", type=int, default=20, help="DDIM step (in timesteps) of the reference ODE solve")
    p.add_argument("--guidance", type=float, default=None, help="teacher guidance scale (default: the middle of the first run's guidance_scale range)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="e.g. cuda (default: cpu)")
    p.add_argument("--output", default="benchmarks/results/lcm_consistency.json")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    from distill_diffusion.threads import fix_threads

    if args.threads:
        fix_threads(args.threads)
    settings = ConsistencySettings(num_samples=args.num_samples, timesteps=tuple(args.timesteps), ode_step=args.ode_step,
                                   guidance_scale=args.guidance, batch_size=args.batch_size, seed=args.seed,
                                   device=args.device)  # fmt: skip
    run_consistency_benchmark(args.runs, settings, args.output)
    return 0


def load_lcm_lora_run(run_dir: str | Path) -> Any:
    """The resolved config of a finished LCM-LoRA training run (``config.yaml`` + the exported adapter)."""
    from distill_diffusion.config import build_run_config, load_yaml
    from distill_diffusion.trainers.methods.lcm import LCMConfig

    run = Path(run_dir)
    require((run / "config.yaml").is_file(), f"{run} has no config.yaml; pass the output_dir of a `train lcm` run")
    raw = load_yaml(run / "config.yaml")
    require(raw.get("method_name") == "lcm" and (raw.get("method") or {}).get("lora", True),
            f"{run} is not an LCM-LoRA run (method {raw.get('method_name')!r}); pass `train lcm` runs with method.lora true")
    require((run / "pytorch_lora_weights.safetensors").is_file(),
            f"{run} has no pytorch_lora_weights.safetensors; let the run finish (or resume it) to export the LoRA")
    raw.pop("method_name")
    return build_run_config("lcm", LCMConfig, raw)


def teacher_ode(teacher: Any, z: Tensor, t: int, c: Tensor, uncond: Tensor, w: Tensor, ode_step: int) -> Tensor:
    """The guided teacher's deterministic DDIM solution from ``z`` at ``t`` to timestep 0, ``ode_step`` at a time."""
    from distill_diffusion.models.teacher import guided_ddim_step

    while t > 0:
        s = max(t - ode_step, 0)
        z = guided_ddim_step(teacher, z, _full(t, z), _full(s, z), c, uncond, w)
        t = s
    return z


def _full(t: int, like: Tensor) -> Tensor:
    import torch

    return torch.full((like.shape[0],), t, device=like.device, dtype=torch.long)


def _check(settings: ConsistencySettings, runs: list[Any]) -> None:
    require(bool(runs), "no runs given; pass one or more `train lcm` output folders")
    base = runs[0].model.pretrained_model_name_or_path
    for run in runs[1:]:
        require(run.model.pretrained_model_name_or_path == base,
                f"runs distil different teachers ({base} and {run.model.pretrained_model_name_or_path}); compare runs of one teacher")
    ranges = {(r.method_config.guidance_scale_min, r.method_config.guidance_scale_max) for r in runs}
    require(len(ranges) == 1 or settings.guidance_scale is not None,
            f"runs were distilled at different guidance (guidance_scale ranges {sorted(ranges)}); compare runs of one guidance or pass --guidance")
    require(settings.num_samples >= 1 and settings.batch_size >= 1, "--num_samples and --batch_size must be ≥ 1")
    require(settings.ode_step >= 1, f"--ode_step {settings.ode_step} must be ≥ 1")
    require(all(0 < t < 1000 for t in settings.timesteps), f"--timesteps {settings.timesteps} must lie in 1..999")


def _training_latents(run: Any, components: Any, settings: ConsistencySettings) -> list[tuple[Tensor, Tensor]]:
    """``num_samples`` (x0, c) pairs from the run's training data, in dataset order, no flip or caption dropout."""
    from torch.utils.data import DataLoader

    from distill_diffusion.data import build_train_dataset, collate_examples
    from distill_diffusion.models.batch import latents_and_embeddings

    data = dataclasses.replace(run.data, random_flip=False, proportion_empty_prompts=0.0, cache_latents=False)
    loader = DataLoader(build_train_dataset(data, seed=settings.seed), batch_size=settings.batch_size, collate_fn=collate_examples)
    batches, seen = [], 0
    for batch in loader:
        x0, c = latents_and_embeddings(batch, components)
        take = min(len(x0), settings.num_samples - seen)
        batches.append((x0[:take], c[:take]))
        seen += take
        if seen == settings.num_samples:
            return batches
    raise UserError(f"the training data has {seen} images, fewer than --num_samples {settings.num_samples}; lower it")


def _noised_points(run: Any, components: Any, s: ConsistencySettings) -> list[tuple[Tensor, dict[int, Tensor]]]:
    """``(c, {t: z_t})`` per batch of training latents: one noise draw per image, shared by every t.

    Seeds torch's global RNG too: the VAE samples its posterior from it, and a rerun must give the same numbers.
    """
    import torch

    torch.manual_seed(s.seed)
    generator = torch.Generator().manual_seed(s.seed)
    points = []
    for x0, c in _training_latents(run, components, s):
        eps = torch.randn(x0.shape, generator=generator).to(x0.device)
        points.append((c, {t: components.schedule.add_noise(x0, eps, _full(t, x0)) for t in s.timesteps}))
    return points


def run_consistency_benchmark(run_dirs: list[str], settings: ConsistencySettings | None = None,
                              output: str | Path = "benchmarks/results/lcm_consistency.json") -> dict[str, Any]:
    """Score the teacher and every run's LoRA at each timestep; print a table, write JSON + markdown."""
    import torch

    with torch.no_grad():
        result = _score(run_dirs, settings or ConsistencySettings())
    _write(result, Path(output))
    return result


def _score(run_dirs: list[str], s: ConsistencySettings) -> dict[str, Any]:
    """The results of :func:`run_consistency_benchmark` (run without gradients): one row of MSE per timestep for the
    teacher, then for each run."""
    import torch

    from distill_diffusion.core import guidance_scale_to_lcm_w
    from distill_diffusion.models.denoiser import Denoiser
    from distill_diffusion.models.export import build_pipeline
    from distill_diffusion.models.loading import load_teacher
    from distill_diffusion.models.teacher import UncondEmbedding, guided_prediction

    runs = [load_lcm_lora_run(d) for d in run_dirs]
    _check(s, runs)
    method = runs[0].method_config
    g = s.guidance_scale if s.guidance_scale is not None else (method.guidance_scale_min + method.guidance_scale_max) / 2
    components = load_teacher(runs[0].model, device=s.device)
    pipe = build_pipeline(components)
    # the pipeline's UNet: the teacher while no LoRA is loaded, a student while one is
    model = Denoiser(pipe.unet, components.schedule, components.prediction_type)
    points = _noised_points(runs[0], components, s)
    uncond = UncondEmbedding(components, method.uncond_embedding)
    w = torch.tensor(float(guidance_scale_to_lcm_w(g)))

    def args(c: Any) -> tuple[Any, Tensor]:
        return uncond(c), w.expand(len(c)).to(c.device)

    refs = [{t: teacher_ode(model, z, t, c, *args(c), s.ode_step) for t, z in zs.items()} for c, zs in points]

    teacher_x0 = lambda z, t, c: guided_prediction(model, z, t, c, *args(c))[0]  # noqa: E731
    rows = [{"model": TEACHER_ROW, "mse": _mse_per_timestep(teacher_x0, points, refs, method.timestep_scaling)}]
    rows += _student_rows(pipe, model, run_dirs, runs, points, refs)
    return {
        "benchmark": "LCM consistency error per timestep: MSE(f(z_t, t), guided teacher DDIM ODE from z_t to 0)",
        "teacher": str(runs[0].model.pretrained_model_name_or_path), "guidance_scale": g,
        "settings": dataclasses.asdict(s) | {"guidance_scale": g}, "num_images": s.num_samples,
        "device": str(next(pipe.unet.parameters()).device), "torch": torch.__version__, "rows": rows,
    }


def _student_rows(pipe: Any, model: Any, run_dirs: list[str], runs: list[Any], points: list, refs: list) -> list[dict[str, Any]]:
    """One row per run: its LoRA loaded into ``pipe`` (whose UNet ``model`` wraps), scored, unloaded."""
    from distill_diffusion.pipelines.loader import apply_lora

    rows = []
    for run_dir, run in zip(run_dirs, runs):
        apply_lora(pipe, run_dir, fuse=False, lora_scale=1.0)
        student_x0 = lambda z, t, c: model(z, t, c).x0  # noqa: E731
        rows.append({"model": str(run_dir), "mse": _mse_per_timestep(student_x0, points, refs, run.method_config.timestep_scaling)})
        pipe.unload_lora_weights()
    return rows


def _mse_per_timestep(x0_of: Any, points: list, refs: list, scaling: float) -> dict[str, float]:
    """Mean over images and elements of ``(f(z_t, t) − ODE(z_t))²`` per t; ``x0_of(z, t, c)`` is the model's x0."""
    from distill_diffusion.core import consistency_function

    out = {}
    for t in points[0][1]:
        total, count = 0.0, 0
        for (c, zs), ref in zip(points, refs):
            z, tt = zs[t], _full(t, zs[t])
            total += float(((consistency_function(x0_of(z, tt, c), z, tt, scaling) - ref[t]) ** 2).sum())
            count += z.numel()
        out[str(t)] = total / count
    return out


def _write(result: dict[str, Any], output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    ts = list(result["rows"][0]["mse"])
    lines = [f"| model | {' | '.join(f't = {t}' for t in ts)} |", "|---|" + "---|" * len(ts)]
    for row in result["rows"]:
        lines.append(f"| {row['model']} | " + " | ".join(f"{row['mse'][t]:.4g}" for t in ts) + " |")
    st = result["settings"]
    lines += ["", f"MSE of f(z_t, t) against the guided teacher's DDIM ODE solution from z_t to 0 (steps of {st['ode_step']}, "
              f"guidance scale {result['guidance_scale']:g}), {st['num_samples']} training images, seed {st['seed']}; "
              f"teacher {result['teacher']}."]
    table = "\n".join(lines)
    output.with_suffix(".md").write_text(table + "\n")
    print(table)
