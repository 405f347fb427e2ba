"""FID and KID between a real and a generated image set, with a cached reference-statistics file.

FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium"): d² = ‖μ_r − μ_g‖² + Tr(Σ_r + Σ_g − 2(Σ_r Σ_g)^½) over feature-space Gaussians.
KID (Bińkowski et al. 2018, "Demystifying MMD GANs"): unbiased squared MMD with the cubic polynomial
kernel, averaged over random subsets; unbiased at small N where FID is not.

Accumulation uses torchmetrics ``FrechetInceptionDistance`` / ``KernelInceptionDistance``. Features are
extracted once per batch by our :class:`~distill_diffusion.eval.features.FeatureNet` and handed to both
metrics through a pass-through ``feature`` module, so asking for KID does not run Inception twice.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from distill_diffusion.errors import UserError
from distill_diffusion.eval.features import build_feature_net
from distill_diffusion.eval.images import ResizePolicy, resize_uint8
from distill_diffusion.eval.stats import FeatureStats, check_stats_metadata

if TYPE_CHECKING:
    from torchmetrics.image.kid import KernelInceptionDistance

ArrayLike = torch.Tensor | np.ndarray


def _sqrt_eigenvalues(w: torch.Tensor) -> torch.Tensor:
    """√ of symmetric-PSD eigenvalues, with rounding noise (|λ| ≲ D·eps·λ_max) set to 0 first: √ would
    amplify a 1e-16 residue of a zero eigenvalue to 1e-8 (visible as FID(x, x) ≈ −1e-7 for singular Σ)."""
    tol = w.abs().max().clamp(min=torch.finfo(w.dtype).tiny) * w.numel() * torch.finfo(w.dtype).eps
    return torch.where(w > tol, w, torch.zeros_like(w)).sqrt()


def _psd_sqrt(a: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a PSD matrix via eigh."""
    w, v = torch.linalg.eigh((a + a.T) / 2)
    return (v * _sqrt_eigenvalues(w)) @ v.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Fréchet distance between N(μ1, Σ1) and N(μ2, Σ2) in float64 (Heusel et al. 2017, FID eq.).

    Tr (Σ1 Σ2)^½ is computed as Tr (Σ1^½ Σ2 Σ1^½)^½: the two matrices are similar, and the second is
    symmetric PSD, so ``eigvalsh`` gives real eigenvalues where ``scipy.linalg.sqrtm(Σ1 Σ2)`` can return
    spurious imaginary parts (which pytorch-fid then discards with a tolerance check).
    """
    m1, m2 = (torch.as_tensor(m, dtype=torch.float64).reshape(-1) for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(s, dtype=torch.float64) for s in (sigma1, sigma2))
    if m1.shape != m2.shape or s1.shape != s2.shape or s1.shape != (m1.numel(), m1.numel()):
        raise ValueError(
            f"shape mismatch: mu {tuple(m1.shape)}/{tuple(m2.shape)}, "
            f"sigma {tuple(s1.shape)}/{tuple(s2.shape)}"
        )
    root1 = _psd_sqrt(s1)
    inner = root1 @ s2 @ root1
    tr_covmean = _sqrt_eigenvalues(torch.linalg.eigvalsh((inner + inner.T) / 2)).sum()
    diff = m1 - m2
    return float(diff @ diff + s1.trace() + s2.trace() - 2 * tr_covmean)


class _Precomputed(nn.Module):
    """Pass-through ``feature`` for torchmetrics: it receives features we already extracted."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@dataclass(frozen=True)
class FIDResult:
    """One evaluation: the numbers and everything needed to compare them (N, feature, resize policy).

    ``fid`` is None only when KID was requested and a set is smaller than the feature dimension.
    """

    fid: float | None
    num_real: int
    num_fake: int
    feature: str
    feature_dim: int
    resize: str
    antialias: str
    kid_mean: float | None = None
    kid_std: float | None = None
    kid_subset_size: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class FIDEvaluator:
    """FID (Heusel et al. 2017) and optionally KID (Bińkowski et al. 2018) of generated vs real images.

    ``feature="inception"`` uses torch-fidelity's Inception (weights from the torch hub cache or
    ``weights_path``; ``antialias`` is torchmetrics' resize-to-299 flag). Any ``nn.Module`` mapping uint8
    ``[B,3,H,W]`` to ``[B, feature_dim]`` may be injected instead (name it with ``feature_name`` so caches
    can tell it apart). ``resize`` is applied to *both* sets before feature extraction. Real statistics
    survive :meth:`reset_fake`, so one real pass serves many generated sets.

    Single-process: the moments are read from torchmetrics' state without its distributed sync (a
    cached real set loaded on every rank would be summed world-size times), so gather generated images
    to the main process (e.g. ``accelerator.gather``) and evaluate there.
    """

    def __init__(
        self,
        feature: str | nn.Module = "inception",
        feature_dim: int = 2048,
        *,
        weights_path: str | Path | None = None,
        resize: ResizePolicy | None = None,
        antialias: bool = True,
        feature_name: str | None = None,
        kid: bool = False,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        seed: int = 0,
        device: torch.device | str | None = None,
    ):
        # torchmetrics' image package takes seconds to import: only pay for it when evaluating.
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        self.net = build_feature_net(feature, feature_dim, weights_path, antialias, feature_name).to(device)
        self.feature_dim = self.net.num_features
        self.resize = resize or ResizePolicy()
        self.antialias = str(antialias).lower() if self.net.name.startswith("inception") else "n/a"
        self.seed = seed
        self.kid_subset_size = kid_subset_size
        # Metric states stay on CPU in float64 (MPS has no float64; the D×D sums are cheap there).
        self.fid_metric = FrechetInceptionDistance(_Precomputed(self.feature_dim), reset_real_features=False)
        self.kid_metric: KernelInceptionDistance | None = None
        if kid:
            with warnings.catch_warnings():  # "will save all extracted features in buffer": that is KID.
                warnings.simplefilter("ignore", UserWarning)
                self.kid_metric = KernelInceptionDistance(
                    _Precomputed(self.feature_dim),
                    subsets=kid_subsets,
                    subset_size=kid_subset_size,
                    reset_real_features=False,
                )

    def metadata(self) -> dict[str, str]:
        """Settings that make statistics comparable; stored in caches and checked on reload."""
        return {
            "feature": self.net.name,
            "feature_dim": str(self.feature_dim),
            "resize": self.resize.describe(),
            "antialias": self.antialias,
        }

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Resize (policy) and extract float32 ``[B, D]`` CPU features of uint8 ``[B,3,H,W]`` images."""
        if images.dtype != torch.uint8:
            raise TypeError(f"FID takes uint8 images, got {images.dtype}; convert with eval.images.to_uint8")
        return self.net(resize_uint8(images, self.resize)).cpu()

    def update(self, images: torch.Tensor, real: bool) -> None:
        """Add a uint8 batch to the real or the generated set."""
        feats = self.features(images)
        self.fid_metric.update(feats, real=real)
        if self.kid_metric is not None:
            self.kid_metric.update(feats, real=real)

    def _stats(self, real: bool) -> FeatureStats:
        m, prefix = self.fid_metric, "real" if real else "fake"
        n = int(getattr(m, f"{prefix}_features_num_samples"))
        feats = None
        if real and self.kid_metric is not None and self.kid_metric.real_features:
            feats = torch.cat(self.kid_metric.real_features)
        return FeatureStats.from_sums(
            getattr(m, f"{prefix}_features_sum"), getattr(m, f"{prefix}_features_cov_sum"), n, feats
        )

    def real_stats(self) -> FeatureStats:
        return self._stats(real=True)

    def fake_stats(self) -> FeatureStats:
        return self._stats(real=False)

    def set_real_stats(self, stats: FeatureStats) -> None:
        """Replace the real-set state with ``stats`` (e.g. from a cache)."""
        if stats.mu.numel() != self.feature_dim:
            raise UserError(
                f"reference statistics have {stats.mu.numel()} features, expected {self.feature_dim}; "
                "recompute them with this feature network"
            )
        feat_sum, cov_sum = stats.to_sums()
        self.fid_metric.real_features_sum = feat_sum
        self.fid_metric.real_features_cov_sum = cov_sum
        self.fid_metric.real_features_num_samples = torch.tensor(stats.count, dtype=torch.long)
        if self.kid_metric is not None:
            if stats.features is None:
                raise UserError(
                    "the reference statistics hold no per-image features, which KID needs; "
                    "delete the cache file to recompute it with KID enabled, or disable KID"
                )
            self.kid_metric.real_features = [stats.features.float()]

    def prepare_real(
        self, batches: Iterable[torch.Tensor], cache_path: str | Path | None = None, source: str = ""
    ) -> FeatureStats:
        """Real-set statistics: loaded from ``cache_path`` when it exists (settings must match), else
        computed from ``batches`` (uint8, consumed only on a cache miss) and saved there."""
        expected = {**self.metadata(), "source": source}
        if cache_path is not None and Path(cache_path).is_file():
            stats, found = FeatureStats.load(cache_path)
            check_stats_metadata(found, expected, cache_path)
            self.set_real_stats(stats)
            return stats
        for batch in batches:
            self.update(batch, real=True)
        stats = self.real_stats()
        if stats.count < 2:
            raise UserError(
                f"only {stats.count} real images were read; FID/KID need a real image set (2+ images)"
            )
        if cache_path is not None:
            stats.save(cache_path, expected)
        return stats

    def reset_fake(self) -> None:
        """Forget the generated set, keep the real one."""
        self.fid_metric.reset()
        if self.kid_metric is not None:
            self.kid_metric.reset()

    def _fid_defined(self, n_real: int, n_fake: int) -> bool:
        """FID needs at least ``feature_dim`` samples per set (else Σ is singular and the value is
        mostly bias). Below that: UserError, unless KID was asked for, in which case FID is None."""
        for which, n in (("real", n_real), ("generated", n_fake)):
            if n < max(2, self.feature_dim):
                if self.kid_metric is not None:
                    return False
                raise UserError(
                    f"FID is undefined with {n} {which} images for {self.feature_dim}-dim features "
                    f"(the covariance needs at least {self.feature_dim} samples); use more images, "
                    "or report KID instead (kid=True), which is unbiased at small N"
                )
        return True

    def compute(self) -> FIDResult:
        """FID (our float64 :func:`frechet_distance` on torchmetrics' accumulated moments) and KID."""
        real, fake = self.real_stats(), self.fake_stats()
        fid = None
        if self._fid_defined(real.count, fake.count):
            fid = frechet_distance(real.mu, real.sigma, fake.mu, fake.sigma)
        kid_mean = kid_std = subset = None
        if self.kid_metric is not None:
            kid_mean, kid_std, subset = self._kid(real.count, fake.count)
        meta = self.metadata()
        return FIDResult(
            fid=fid,
            num_real=real.count,
            num_fake=fake.count,
            feature=meta["feature"],
            feature_dim=self.feature_dim,
            resize=meta["resize"],
            antialias=meta["antialias"],
            kid_mean=kid_mean,
            kid_std=kid_std,
            kid_subset_size=subset,
        )

    def _kid(self, n_real: int, n_fake: int) -> tuple[float, float, int]:
        """KID with the subset size clipped to the set sizes and a fixed seed for the subset draws."""
        subset = min(self.kid_subset_size, n_real, n_fake)
        if subset < 2:
            raise UserError(f"KID needs at least 2 real and 2 generated images, got {n_real} and {n_fake}")
        self.kid_metric.subset_size = subset
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            mean, std = self.kid_metric.compute()
        return float(mean), float(std), subset
