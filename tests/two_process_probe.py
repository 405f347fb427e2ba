"""Run by tests under ``accelerate launch``: build a training run through the library, record what each
process holds (target network, trainable weights, the data it sees), train, export.

Usage: python two_process_probe.py OUT_JSON_PREFIX [--build-only] [--probe-data] -- METHOD --config FILE [overrides]
Writes ``<prefix>_rank<i>.json`` per process and ``<prefix>_weights.safetensors`` (main process).
"""

from __future__ import annotations

import hashlib
import json
import sys

import torch
from safetensors.torch import save_file


def digest(tensors: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def target_tensors(method) -> list[torch.Tensor]:
    """The LCM target network θ⁻: the EMA LoRA shadow (LoRA) or the EMA UNet (full); none for other methods."""
    return list(getattr(method, "shadow", []))


def trainable(engine) -> dict[str, torch.Tensor]:
    model = engine.accelerator.unwrap_model(engine.method.models["unet"])
    return {k: p.detach().cpu().clone() for k, p in model.named_parameters() if p.requires_grad}


def data_ids(engine) -> list[str]:
    """Hashes of the images this process sees in epoch 0 (re-seeded exactly as the engine does)."""
    engine.dataloader.set_epoch(0)
    return [hashlib.sha1(x.numpy().tobytes()).hexdigest() for batch in engine.dataloader for x in batch["pixel_values"]]


def main() -> None:
    split = sys.argv.index("--")
    prefix, flags, train_args = sys.argv[1], sys.argv[2:split], sys.argv[split + 1 :]
    from distill_diffusion.config import build_run_config, load_config, parse_overrides
    from distill_diffusion.trainers.engine.build import build_engine
    from distill_diffusion.trainers.methods.registry import get_method_class

    method, rest = train_args[0], train_args[1:]
    i = rest.index("--config")
    config = load_config(rest[i + 1])
    del rest[i : i + 2]
    run = build_run_config(method, get_method_class(method), config, parse_overrides(rest))
    engine = build_engine(run)
    acc = engine.accelerator
    record = {"num_processes": acc.num_processes, "target_start": digest(target_tensors(engine.method))}
    if "--probe-data" in flags:
        record["data_epoch0"] = data_ids(engine)
    if "--build-only" not in flags:
        engine.train()
        engine.export()
        record["target_end"] = digest(target_tensors(engine.method))
        weights = trainable(engine)
        record["weights_end"] = digest(list(weights.values()))
        # every weight of every module, whichever phase trains it (DMD2: both adapters on one UNet, and the head)
        record["models_end"] = digest([p for m in engine.method.models.values() for p in acc.unwrap_model(m).parameters()])
        if acc.is_main_process:
            state = {**{f"w.{k}": v for k, v in weights.items()},
                     **{f"m.{k}": v.detach().cpu().contiguous() for k, v in engine.method.state_dict().items()}}
            save_file(state, f"{prefix}_weights.safetensors")
    with open(f"{prefix}_rank{acc.process_index}.json", "w") as f:
        json.dump(record, f)
    acc.end_training()


if __name__ == "__main__":
    main()
