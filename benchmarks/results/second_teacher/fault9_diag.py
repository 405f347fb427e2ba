"""Fault-9 diagnosis on the second teacher: train a LADD student with option overrides, save its LoRA, then per step
count: FD, the FD's mean and covariance parts, the class amplitude and the texture std (real: amplitude U(0.6,1.4),
texture 0.15), and FD after each step of the 4-step sampler."""
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
from safetensors.torch import save_file
from second_teacher import PROMPTS, SHAPE, MixtureWorld, train_student

from distill_diffusion.eval.fid import frechet_distance
from distill_diffusion.models.encode import encode_prompt

name, opts = sys.argv[1], json.loads(sys.argv[2])
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 1500
torch.manual_seed(0)
world, t0 = MixtureWorld(), time.time()
m = train_student(Path("/tmp/st/root/teacher"), world, steps, **opts)
minutes = (time.time() - t0) / 60
save_file({k: v.detach().contiguous() for k, v in m.unet.state_dict().items() if "lora_" in k}, f"/tmp/f9/{name}.safetensors")

def stats(x, labels):
    x = x.double()
    mk = world.means[labels].double()
    amp = (x * mk).flatten(1).sum(1) / mk.flatten(1).square().sum(1)
    resid = x - amp.view(-1, 1, 1, 1) * mk
    return float(amp.mean()), float(amp.std()), float(resid.std())

@torch.no_grad()
def run(images=1024, seed=1):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(images) % len(PROMPTS)
    real = world.sample(labels, g).flatten(1).double()
    mu_r, cov_r = real.mean(0), real.T.cov()
    c = encode_prompt(m.components.tokenizer, m.components.text_encoder, list(PROMPTS))[labels]
    out = {"real": stats(real.view(-1, *SHAPE), labels)}
    for n in (1, 2, 4):
        scheduler, g = copy.deepcopy(m.scheduler()), torch.Generator().manual_seed(seed + 1)
        latents = torch.randn(images, *SHAPE, generator=g)
        scheduler.set_timesteps(n)
        per = []
        for t in scheduler.timesteps:
            o = m.unet(latents, t, encoder_hidden_states=c).sample
            res = scheduler.step(o, t, latents, generator=g)
            d = res.denoised.flatten(1).double()
            per.append(round(float(frechet_distance(mu_r, cov_r, d.mean(0), d.T.cov())), 3))
            latents = res.prev_sample
        f = latents.flatten(1).double()
        fd = float(frechet_distance(mu_r, cov_r, f.mean(0), f.T.cov()))
        out[n] = {"fd": round(fd, 3), "mean_part": round(float((f.mean(0) - mu_r).square().sum()), 3),
                  "denoised_fd_per_step": per, "amp_mean_std_texture": [round(v, 3) for v in stats(latents, labels)]}
    return out

res = {"name": name, "options": opts, "steps": steps, "train_minutes": round(minutes, 1), **run()}
print(json.dumps(res, indent=1))
Path(f"/tmp/f9/{name}.json").write_text(json.dumps(res, indent=1))
