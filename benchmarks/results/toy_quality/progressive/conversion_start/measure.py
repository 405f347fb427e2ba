# ruff: noqa  (a record of the measurement as run at its commit; later renames, e.g. load_preset -> load_config, are not applied)
"""The start of progressive distillation's first round on the toy world, from two students (results.md).

tiny/progressive's round 1 (64 -> 32 steps, the eps teacher guided at w = 1 by CFG, a v student) from (A) the
teacher's weights copied unchanged and (B) the copy after M steps of the conversion stage. Reported every `every`
steps: the round-1 loss (truncated-SNR x loss against the original teacher's two-step target) on a fixed held-out
set of 128 latents with their (z_t, i), and the relative x0 gap ||x̂_student − x̂_teacher|| / ||x̂_teacher|| to the
guided teacher at t = 999 / 499 / 100. AdamW at the preset's lr with its warmup, gradient clipping, no EMA, no
cosine decay. One thread.

usage: python measure.py TOY_WORLD M K BATCH EVERY OUT.json
"""
import copy
import json
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)
from distill_diffusion.config import build_run_config, load_preset
from distill_diffusion.core.losses import weighted_mse
from distill_diffusion.data import build_train_dataset, collate_examples
from distill_diffusion.models.batch import latents_and_embeddings
from distill_diffusion.models.loading import load_teacher
from distill_diffusion.trainers.methods.base import Phase, StepContext
from distill_diffusion.trainers.methods.progressive import Progressive

world, M, K, B, every, out_json = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
preset = load_preset("tiny/progressive")
preset["model"]["pretrained_model_name_or_path"] = str(world / "teacher")
preset["data"]["train_data_dir"] = str(world / "data")
run = build_run_config("progressive", Progressive, preset)
comps = load_teacher(run.model)
for mod in (comps.unet, comps.vae, comps.text_encoder):
    mod.requires_grad_(False)
t0 = time.time()
ds = build_train_dataset(run.data)
n = min(len(ds), 640)
X, C = [], []
for s in range(0, n, 64):
    x, c = latents_and_embeddings(collate_examples([ds[i] for i in range(s, min(n, s + 64))]), comps)
    X.append(x); C.append(c)
X, C = torch.cat(X), torch.cat(C)
Xtr, Ctr, Xev, Cev = X[128:], C[128:], X[:128], C[:128]
print(f"encoded {n} in {time.time() - t0:.0f}s; teacher {comps.prediction_type}, student {run.method_config.prediction_type}", flush=True)

def build(convert_steps):
    cfg = copy.deepcopy(run.method_config); cfg.convert_steps = convert_steps
    return Progressive(comps, cfg)

base = build(M)
stage1 = base.plan.first_round_stage
torch.manual_seed(123)
w_ev = base.sample_w(128, X.device)
with torch.no_grad():
    grid = base.plan.grid(stage1)
    i_ev = torch.randint(0, grid.student_steps, (128,))
    t_ev = grid.pairs[i_ev, 0]
    z_ev = base.schedule.add_noise(Xev, torch.randn_like(Xev), t_ev)
    xt_ev = base.x_tilde(z_ev, i_ev, Cev, w_ev, stage1)
    gap_inputs = []
    for t in (999, 499, 100):
        tt = torch.full((128,), t)
        zt = base.schedule.add_noise(Xev, torch.randn_like(Xev), tt)
        gap_inputs.append((t, tt, zt, base.first_teacher(zt, tt, Cev, w_ev)[0]))

def evaluate(m):
    with torch.no_grad():
        xp = m.student_denoiser()(z_ev, t_ev, Cev).x0
        loss = weighted_mse(xp, xt_ev, m.loss_weights(t_ev)).item()
        gaps = {t: round(((m.student_denoiser()(zt, tt, Cev).x0 - xt).norm() / xt.norm()).item(), 3) for t, tt, zt, xt in gap_inputs}
    return round(loss, 5), gaps

def train(m, stage, steps, log):
    opt = torch.optim.AdamW(m.trainable_parameters(Phase("unet", "unet")), lr=run.train.learning_rate, weight_decay=0.0)
    warm = run.train.lr_warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / warm))
    gen = torch.Generator().manual_seed(stage)
    t1 = time.time()
    for k in range(steps):
        idx = torch.randint(0, len(Xtr), (B,), generator=gen)
        out = m.compute_loss("unet", {"latents": Xtr[idx], "prompt_embeds": Ctr[idx]}, StepContext(step=k, stage=stage, modules=m.models))
        opt.zero_grad(); out.loss.backward()
        torch.nn.utils.clip_grad_norm_(m.unet.parameters(), run.train.max_grad_norm); opt.step(); sched.step()
        if (k + 1) % every == 0:
            log.append((k + 1, *evaluate(m)))
            print(stage, log[-1], f"{(time.time() - t1) / (k + 1):.2f}s/step", flush=True)

results = {}
torch.manual_seed(0)
a = build(0)
assert a.plan.first_round_stage == 0
results["A_copy_start"] = evaluate(a)
print("A start", results["A_copy_start"], flush=True)
la = []; train(a, 0, K, la); results["A_round1"] = la
del a
b = base
results["B_copy_start"] = evaluate(b)
lc = []; train(b, 0, M, lc); results["B_convert"] = lc
b.on_stage_end(0, {})
assert b.round_teacher is None
results["B_round1_start"] = evaluate(b)
print("B round-1 start", results["B_round1_start"], flush=True)
lb = []; train(b, 1, K, lb); results["B_round1"] = lb
print(json.dumps(results))
Path(out_json).write_text(json.dumps(results, indent=1))
