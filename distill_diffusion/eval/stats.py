"""Feature statistics (μ, Σ in float64) of an image set and their safetensors cache file.

The real set of an FID evaluation is fixed, so its moments are computed once and reused. The cache
records the settings that make FID numbers comparable (feature network, dimension, resize policy,
Inception antialias flag, image source) and a reload with different settings is refused rather than
silently mixing protocols.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from distill_diffusion.errors import UserError

CACHE_FORMAT = "distill-diffusion-fid-stats-v1"
_CHECKED_KEYS = ("feature", "feature_dim", "resize", "antialias")


@dataclass
class FeatureStats:
    """Mean ``mu`` [D] and unbiased covariance ``sigma`` [D, D] (float64) of ``count`` feature vectors.

    ``features`` (float32 [N, D]) is kept only when KID is wanted: KID needs the samples, not moments.
    """

    mu: torch.Tensor
    sigma: torch.Tensor
    count: int
    features: torch.Tensor | None = None

    @classmethod
    def from_features(cls, features: torch.Tensor, keep_features: bool = False) -> FeatureStats:
        f = features.detach().double().cpu()
        n = f.shape[0]
        return cls.from_sums(f.sum(0), f.T @ f, n, features.detach().float().cpu() if keep_features else None)

    @classmethod
    def from_sums(
        cls, feat_sum: torch.Tensor, cov_sum: torch.Tensor, count: int, features: torch.Tensor | None = None
    ) -> FeatureStats:
        """From Σx and Σxxᵀ (torchmetrics' FID state): μ = Σx/n, Σ = (Σxxᵀ − n μμᵀ)/(n − 1)."""
        n = int(count)
        mu = feat_sum.detach().double().cpu() / max(n, 1)
        sigma = (cov_sum.detach().double().cpu() - n * torch.outer(mu, mu)) / max(n - 1, 1)
        return cls(mu=mu, sigma=sigma, count=n, features=features)

    def to_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse of :meth:`from_sums` (to restore torchmetrics' state from a cache)."""
        n = self.count
        return self.mu * n, self.sigma * (n - 1) + n * torch.outer(self.mu, self.mu)

    def save(self, path: str | Path, metadata: dict[str, str]) -> Path:
        """Write a safetensors file (atomically: temp file, then rename) with ``metadata`` and the count."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"mu": self.mu.contiguous(), "sigma": self.sigma.contiguous()}
        if self.features is not None:
            tensors["features"] = self.features.contiguous()
        meta = {**{k: str(v) for k, v in metadata.items()}, "count": str(self.count), "format": CACHE_FORMAT}
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> tuple[FeatureStats, dict[str, str]]:
        """Read a file written by :meth:`save`; returns the stats and their metadata."""
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = dict(handle.metadata() or {})
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise UserError(
                f"reference statistics cache {path} is unreadable ({exc}); delete it to recompute"
            ) from exc
        if meta.get("format") != CACHE_FORMAT or "mu" not in tensors or "sigma" not in tensors:
            raise UserError(
                f"{path} is not a distill-diffusion FID statistics file; delete it or pass another cache path"
            )
        stats = cls(
            tensors["mu"].double(), tensors["sigma"].double(), int(meta["count"]), tensors.get("features")
        )
        return stats, meta


def check_stats_metadata(found: dict[str, str], expected: dict[str, str], path: str | Path) -> None:
    """Refuse a cache made with other settings; ``source`` is compared only when both sides name one."""
    diffs = [
        f"{k}={found.get(k)!r} (now {expected.get(k)!r})"
        for k in _CHECKED_KEYS
        if found.get(k) != expected.get(k)
    ]
    if found.get("source") and expected.get("source") and found["source"] != expected["source"]:
        diffs.append(f"source={found['source']!r} (now {expected['source']!r})")
    if diffs:
        raise UserError(
            f"reference statistics cache {path} was made with different settings: {', '.join(diffs)}; "
            "delete it to recompute, or pass another cache path"
        )
