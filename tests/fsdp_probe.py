"""Run by tests under ``accelerate launch --use_fsdp`` on CPU processes: train through the library with accelerate's
FSDP2 code path, then record each trainable module's gathered weights and the run's export.

accelerate 1.16 never selects FSDP on CPU (``AcceleratorState`` turns only GPU-like multi-process types into FSDP; a
CPU launch stays ``MULTI_CPU`` and wraps in DDP, silently), while torch's ``fully_shard`` shards over gloo. This probe
switches the accelerator's state to FSDP after it is built, so accelerate's FSDP2 ``prepare``, ``save_state`` and
``load_state`` and our engine run exactly as on GPUs, on CPU processes.

Usage: python fsdp_probe.py OUT_JSON_PREFIX -- METHOD --config FILE [overrides]
Writes ``<prefix>_rank<i>.json`` per process and ``<prefix>_weights.safetensors`` (main process: the gathered trainable
weights of every module, ``<module>.<name>``, and the method's own state, ``method.<name>``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import torch
from safetensors.torch import save_file


def force_fsdp(accelerator) -> None:
    """Turn a CPU ``MULTI_CPU`` accelerator into an FSDP one with the plugin the launcher's environment describes."""
    from accelerate import DistributedType
    from accelerate.state import PartialState
    from accelerate.utils import FullyShardedDataParallelPlugin

    state = accelerator.state
    if state.distributed_type == DistributedType.MULTI_CPU and os.environ.get("ACCELERATE_USE_FSDP") == "true":
        state.fsdp_plugin = FullyShardedDataParallelPlugin()
        state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def full_weights(engine) -> dict[str, torch.Tensor]:
    """Every trainable weight of every prepared module, gathered from its shards (collective: all ranks call it)."""
    out = {}
    for name, module in engine.method.models.items():
        for key, p in engine.accelerator.unwrap_model(module).named_parameters():
            if p.requires_grad:
                full = p.full_tensor() if hasattr(p, "full_tensor") else p
                out[f"{name}.{key}"] = full.detach().cpu().clone()
    return out


def main() -> None:
    split = sys.argv.index("--")
    prefix, train_args = sys.argv[1], sys.argv[split + 1 :]
    from distill_diffusion.config import build_run_config, load_config, parse_overrides
    from distill_diffusion.trainers.engine import build
    from distill_diffusion.trainers.engine.persist import whole_method_state
    from distill_diffusion.trainers.methods.registry import get_method_class

    make = build.make_accelerator

    def make_fsdp(cfg):
        accelerator = make(cfg)
        force_fsdp(accelerator)
        return accelerator

    build.make_accelerator = make_fsdp
    method, rest = train_args[0], train_args[1:]
    i = rest.index("--config")
    config = load_config(rest[i + 1])
    del rest[i : i + 2]
    run = build_run_config(method, get_method_class(method), config, parse_overrides(rest))
    engine = build.build_engine(run)
    acc = engine.accelerator
    engine.train()
    engine.export()
    weights = full_weights(engine)
    weights.update({f"method.{k}": v.detach().cpu() for k, v in whole_method_state(engine.method).items()})
    h = hashlib.sha256()
    for key in sorted(weights):
        h.update(weights[key].float().contiguous().numpy().tobytes())
    record = {"distributed_type": str(acc.distributed_type), "num_processes": acc.num_processes, "weights_end": h.hexdigest(),
              "sharded": sorted({type(p).__name__ for m in engine.method.models.values() for p in m.parameters()}),
              "units": {name: sum(type(u).__name__.startswith("FSDP") for u in m.modules()) for name, m in engine.method.models.items()}}
    if acc.is_main_process:
        save_file({k: v.contiguous() for k, v in weights.items()}, f"{prefix}_weights.safetensors")
    with open(f"{prefix}_rank{acc.process_index}.json", "w") as f:
        json.dump(record, f)
    acc.end_training()


if __name__ == "__main__":
    main()
