"""A tiny CLIP for the toy world: a stock transformers ``CLIPModel`` trained contrastively on toy images.

It plays the role OpenAI's CLIP and Inception play for real Stable Diffusion: its image tower is the
feature network of the toy Fréchet distance, and image-text cosine gives the toy CLIP score, through the
same evaluator code (``distill_diffusion.eval``). Architecture: a ViT on 32^2 images with 4^2 patches
(64 tokens), a 2-layer text transformer over the toy tokenizer (77 positions), both projected to a small
shared space (32 dims, so a Fréchet distance needs only a few hundred samples for a full-rank covariance).

Training is CLIP's symmetric contrastive loss (Radford et al., "Learning Transferable Visual Models From
Natural Language Supervision", 2021, Fig. 3 pseudocode), with one change for a world whose captions repeat:
all images in a batch with the same caption are positives for it (soft targets), so identical captions
are not pushed apart as CLIP's one-hot targets would do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from distill_diffusion.errors import require
from distill_diffusion.eval.features import FeatureNet
from distill_diffusion.toy.fit import fit
from distill_diffusion.toy.tokenizer import save_tokenizer

#: OpenAI CLIP's pixel normalisation (kept so the saved processor is an ordinary CLIP processor).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def build_toy_clip(tokenizer: Any, resolution: int = 32, projection_dim: int = 32, seed: int = 0) -> CLIPModel:
    """A random-initialised tiny ``CLIPModel`` (about 0.25M parameters) for ``tokenizer``'s vocabulary."""
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {
        "image_size": resolution,
        "patch_size": 4,
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "hidden_act": "quick_gelu",
    }
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPModel(config).eval()


def toy_clip_processor(tokenizer: Any, resolution: int = 32) -> CLIPProcessor:
    """A ``CLIPProcessor`` that keeps toy images at ``resolution`` (resize and crop are identities there)."""
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": resolution},
        crop_size={"height": resolution, "width": resolution},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _projected(output: Any) -> Tensor:
    """``get_*_features`` returns a tensor (transformers 4) or a ModelOutput with ``pooler_output`` (5)."""
    return output if isinstance(output, Tensor) else output.pooler_output


class ToyClipImageFeatures(nn.Module):
    """Float ``[B,3,H,W]`` images in [0, 1] → projected CLIP image embeddings ``[B, projection_dim]``.

    Normalises exactly as the saved processor does (toy images need no resize), so features from here and
    from ``eval.clip_score`` agree. Other sizes are resized (bicubic, antialiased) to the CLIP resolution.
    """

    def __init__(self, model: CLIPModel):
        super().__init__()
        self.model = model
        self.resolution = int(model.config.vision_config.image_size)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        if images.shape[-1] != self.resolution or images.shape[-2] != self.resolution:
            images = F.interpolate(images, size=(self.resolution,) * 2, mode="bicubic", antialias=True).clamp(0, 1)
        pixels = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        return _projected(self.model.get_image_features(pixel_values=pixels))


def clip_feature_net(model: CLIPModel) -> FeatureNet:
    """The toy CLIP image tower as a FID feature network (uint8 in, ``projection_dim`` features out)."""
    dim = int(model.config.projection_dim)
    return FeatureNet(ToyClipImageFeatures(model), dim, name=f"toy-clip-{dim}", input_scale="unit")


def contrastive_loss(image_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor, caption_ids: Tensor) -> Tensor:
    """Symmetric InfoNCE of CLIP (Radford et al. 2021), with every same-caption pair counted as positive.

    ``caption_ids[i]`` names image i's caption; the target distribution of row i spreads evenly over the
    columns with the same caption (one-hot when all captions differ, which is CLIP's loss exactly).
    """
    img = F.normalize(image_embeds, dim=-1)
    txt = F.normalize(text_embeds, dim=-1)
    logits = logit_scale.exp().clamp(max=100) * img @ txt.T
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def train_toy_clip(
    model: CLIPModel,
    tokenizer: Any,
    pixels: Tensor,
    captions: list[str],
    steps: int = 200,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
) -> list[float]:
    """Train ``model`` in place on ``pixels`` (float ``[N,3,R,R]`` in [-1, 1]) and their captions.

    AdamW with a cosine learning-rate decay; returns the loss of every step. The model is left in eval mode.
    """
    require(steps > 0 and batch_size > 1, f"steps={steps}, batch_size={batch_size}: need steps > 0 and batch_size > 1")
    require(len(pixels) == len(captions), f"{len(pixels)} images but {len(captions)} captions; pass one caption per image")
    unique = sorted(set(captions))
    caption_ids = torch.tensor([unique.index(c) for c in captions])
    tokens = tokenizer(unique, padding=True, return_tensors="pt")
    unit = (pixels.float() + 1) / 2
    normalised = (unit - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps, pct_start=0.05)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        ids = caption_ids[idx]
        image_embeds = _projected(model.get_image_features(pixel_values=normalised[idx]))
        text_embeds = _projected(model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]))
        return contrastive_loss(image_embeds, text_embeds[ids], model.logit_scale, ids)

    return fit(model, batch_loss, optimizer, schedule, steps=steps, num_items=len(pixels), batch_size=batch_size,
               generator=generator, desc="clip", progress=progress)


def save_toy_clip(model: CLIPModel, tokenizer: Any, out_dir: str | Path, resolution: int = 32) -> Path:
    """Save model (safetensors), processor and tokenizer so ``CLIPModel``/``CLIPProcessor.from_pretrained``
    and ``distill_diffusion.eval.load_clip`` read the folder like any CLIP checkpoint."""
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    toy_clip_processor(tokenizer, resolution).save_pretrained(str(out))
    save_tokenizer(tokenizer, out)
    return out
