"""Engine-overhead benchmark (``distill-diffusion bench engine``): a plain fine-tune step through the engine vs the
bare UNet forward+backward.

Both run in the same process on the same tiny UNet, the same batches (pre-encoded latents, so the VAE
and text encoder are out of both measurements) and the same thread count. The engine step includes
everything the loop adds: batch handling, autocast, the finiteness check, clipping, the AdamW and LR
steps and logging. The bare baseline is ``z_t = add_noise; loss = mse(unet(z_t), target);
loss.backward()``; a second baseline adds the optimizer step, to show what the loop itself costs.
Torch is imported when it runs (the CLI imports this module to build ``--help``).
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable
from pathlib import Path

from distill_diffusion.bench.options import add_speed_options, run_speed

HELP = "engine overhead: fine-tune step vs bare forward+backward (tiny UNet, CPU)"
TARGET_RATIO = 1.10


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    add_speed_options(p, steps=30, batch_sizes=[8, 16, 32], output="benchmarks/results/engine_overhead.json")


def run(args: argparse.Namespace) -> int:
    """Run it with the parsed options; returns the exit code."""
    return run_speed(args, run_engine_benchmark)


def _measure(tmp: Path, batch_size: int, steps: int) -> dict[str, float]:
    """Median seconds per step of the three paths at one batch size."""
    import torch
    import torch.nn.functional as F

    from distill_diffusion.bench.timing import collate_latents, engine_stepper, median_seconds, tiny_engine

    engine, data = tiny_engine(tmp, "finetune", batch_size)
    schedule, unet = engine.method.schedule, engine.method.unet
    optimizer = engine.optimizers["unet"]
    batch = collate_latents([data[i] for i in range(batch_size)])

    def bare(with_optimizer: bool) -> Callable[[], None]:
        def run() -> None:
            x0, c = batch["latents"], batch["prompt_embeds"]
            eps = torch.randn_like(x0)
            t = torch.randint(0, schedule.num_train_timesteps, (x0.shape[0],))
            out = unet(schedule.add_noise(x0, eps, t), t, encoder_hidden_states=c).sample
            F.mse_loss(out.float(), eps).backward()
            if with_optimizer:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return run

    return {
        "bare forward+backward": median_seconds(bare(False), steps),
        "bare forward+backward+AdamW": median_seconds(bare(True), steps),
        "engine fine-tune step": median_seconds(engine_stepper(engine), steps),
    }


def run_engine_benchmark(
    steps: int = 30, batch_sizes: tuple[int, ...] = (8, 16, 32), output: str | Path = "benchmarks/results/engine_overhead.json"
) -> dict:
    """Time the paths at each batch size, print a table, write JSON + markdown next to ``output``."""
    import tempfile

    import torch

    rows = []
    for batch_size in batch_sizes:
        with tempfile.TemporaryDirectory() as tmp:
            sec = _measure(Path(tmp), batch_size, steps)
        rows.append({
            "batch_size": batch_size,
            "seconds_per_step": sec,
            "ratio_vs_forward_backward": sec["engine fine-tune step"] / sec["bare forward+backward"],
            "ratio_vs_forward_backward_adamw": sec["engine fine-tune step"] / sec["bare forward+backward+AdamW"],
        })
    result = {
        "benchmark": "engine overhead: plain fine-tune step vs bare UNet forward+backward (toy UNet, CPU)",
        "steps_timed": steps,
        "threads": torch.get_num_threads(),
        "device": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "target_ratio": TARGET_RATIO,
        "rows": rows,
    }
    _write(result, Path(output))
    return result


def _write(result: dict, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    lines = [
        "| batch | bare fwd+bwd ms | bare fwd+bwd+AdamW ms | engine step ms | engine / fwd+bwd | engine / fwd+bwd+AdamW |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        sec = row["seconds_per_step"]
        lines.append(
            f"| {row['batch_size']} | {sec['bare forward+backward'] * 1e3:.1f} | {sec['bare forward+backward+AdamW'] * 1e3:.1f} "
            f"| {sec['engine fine-tune step'] * 1e3:.1f} | **{row['ratio_vs_forward_backward']:.3f}** | {row['ratio_vs_forward_backward_adamw']:.3f} |"
        )
    lines += [
        "",
        f"Target: engine / bare forward+backward ≤ {result['target_ratio']}. Median of {result['steps_timed']} timed steps "
        f"after 3 warm-up steps; {result['threads']} threads, torch {result['torch']}, {result['device']}.",
    ]
    table = "\n".join(lines)
    output.with_suffix(".md").write_text(table + "\n")
    print(table)
