"""The second teacher of tests/second_teacher.py, saved by a run of run_step_check, sampled with DDIM at guidance 2: Fréchet distance to real latents."""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, "/work/main/tests")
from diffusers import DDIMScheduler, StableDiffusionPipeline
from second_teacher import PROMPTS, SHAPE, MixtureWorld

from distill_diffusion.eval.fid import frechet_distance
from distill_diffusion.models.encode import encode_prompt

pipe = StableDiffusionPipeline.from_pretrained("/tmp/st/root/teacher", safety_checker=None)
world, images, seed = MixtureWorld(), 1024, 1
g = torch.Generator().manual_seed(seed)
labels = torch.arange(images) % len(PROMPTS)
real = world.sample(labels, g).flatten(1).double()
c = encode_prompt(pipe.tokenizer, pipe.text_encoder, [*PROMPTS, ""])
cond, uncond = c[labels], c[len(PROMPTS)].expand(images, *c.shape[1:])
out = {}
for spacing in ("leading", "trailing"):
    for n in (1, 2, 4, 50):
        sch = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing=spacing)
        sch.set_timesteps(n)
        x = torch.randn(images, *SHAPE, generator=torch.Generator().manual_seed(seed + 1))
        with torch.no_grad():
            for t in sch.timesteps:
                o = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
                u, k = o.chunk(2)
                x = sch.step(u + 2.0 * (k - u), t, x).prev_sample
        f = x.flatten(1).double()
        out[f"{spacing}-{n}"] = round(float(frechet_distance(real.mean(0), real.T.cov(), f.mean(0), f.T.cov())), 3)
        print(spacing, n, out[f"{spacing}-{n}"], flush=True)
Path("/tmp/st/teacher_fd.json").write_text(json.dumps(out, indent=2))
