"""Probe a saved fault-9 student: each later step applied to re-noised REAL latents, and to the 1-step sample re-noised."""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
from safetensors.torch import load_file
from second_teacher import PROMPTS, SHAPE, MixtureWorld, train_student

from distill_diffusion.eval.fid import frechet_distance
from distill_diffusion.models.denoiser import Denoiser
from distill_diffusion.models.encode import encode_prompt

name = sys.argv[1]
torch.manual_seed(0)
world = MixtureWorld()
m = train_student(Path("/tmp/st/root/teacher"), world, 0, **json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})
m.unet.load_state_dict(load_file(f"/tmp/f9/{name}.safetensors"), strict=False)
m.unet.eval()


def stats(x, labels):
    x = x.double()
    mk = world.means[labels].double()
    amp = (x * mk).flatten(1).sum(1) / mk.flatten(1).square().sum(1)
    return [round(float(amp.mean()), 3), round(float(amp.std()), 3), round(float((x - amp.view(-1,1,1,1)*mk).std()), 3)]
n = 1024
g = torch.Generator().manual_seed(1)
labels = torch.arange(n) % 4
real = world.sample(labels, g)
rf = real.flatten(1).double()
mu, cov = rf.mean(0), rf.T.cov()


def fd(x):
    return round(float(frechet_distance(mu, cov, x.flatten(1).double().mean(0), x.flatten(1).double().T.cov())), 3)


c = encode_prompt(m.components.tokenizer, m.components.text_encoder, list(PROMPTS))[labels]
den = Denoiser(m.unet, m.schedule, m.components.prediction_type)
with torch.no_grad():
    x1 = den(torch.randn(n, *SHAPE, generator=g), torch.full((n,), 999), c).x0
    print("1-step sample", stats(x1, labels), fd(x1))
    for t in (749, 499, 249):
        tt = torch.full((n,), t)
        for src, x in (("real", real), ("1step", x1)):
            z = m.schedule.add_noise(x, torch.randn(x.shape, generator=g), tt)
            out = den(z, tt, c).x0
            print(t, src, "in", stats(x, labels), "out", stats(out, labels), "fd", fd(out))
