"""FID/KID evaluator, float64 Fréchet distance, reference-statistics cache and Inception weight handling."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from distill_diffusion.errors import UserError
from distill_diffusion.eval import (
    INCEPTION_WEIGHTS_FILE,
    FeatureNet,
    FeatureStats,
    FIDEvaluator,
    ResizePolicy,
    frechet_distance,
    load_inception,
)

DIM = 8


class TinyFeatures(nn.Module):
    """A fixed random conv net: uint8 images → DIM features (stands in for Inception)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, DIM, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv(x.float() / 127.5 - 1.0))
        return h.mean(dim=(2, 3))


def images(n: int, seed: int, shift: int = 0, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 200, (n, 3, size, size), generator=g) + shift
    return x.clamp(0, 255).to(torch.uint8)


def evaluator(**kw) -> FIDEvaluator:
    kw.setdefault("feature_name", "tiny")
    return FIDEvaluator(TinyFeatures(), DIM, **kw)


def scipy_fid(mu1, s1, mu2, s2) -> float:
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def random_gaussian(rng: np.random.Generator, dim: int, rank: int | None = None):
    a = rng.standard_normal((dim, rank or dim))
    return rng.standard_normal(dim), a @ a.T / dim


@pytest.mark.parametrize("rank", [None, 5])
def test_frechet_distance_matches_scipy_sqrtm(rank):
    rng = np.random.default_rng(0)
    mu1, s1 = random_gaussian(rng, 16, rank)
    mu2, s2 = random_gaussian(rng, 16)
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(scipy_fid(mu1, s1, mu2, s2), rel=1e-7, abs=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_known_value_and_shape_check():
    # Two isotropic Gaussians: d² = ‖Δμ‖² + D(σ1 − σ2)² (σ = std).
    d = frechet_distance(np.zeros(3), 4 * np.eye(3), np.ones(3), np.eye(3))
    assert d == pytest.approx(3 + 3 * (2 - 1) ** 2)
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_fid_of_set_with_itself_is_zero_and_shift_is_positive():
    ev = evaluator()
    real = images(40, seed=1)
    ev.update(real, real=True)
    ev.update(real, real=False)
    same = ev.compute()
    assert same.fid == pytest.approx(0.0, abs=1e-8)
    assert (same.num_real, same.num_fake, same.feature, same.feature_dim) == (40, 40, "tiny", DIM)
    ev.reset_fake()
    ev.update(images(40, seed=2), real=False)
    other = ev.compute().fid
    ev.reset_fake()
    ev.update(images(40, seed=2, shift=60), real=False)
    shifted = ev.compute().fid
    assert 0 < other < shifted
    assert ev.real_stats().count == 40  # real set survived both resets


def test_evaluator_agrees_with_plain_torchmetrics_fid():
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = images(30, seed=3), images(30, seed=4, shift=30)
    ev = evaluator()
    tm = FrechetInceptionDistance(feature=FeatureNet(TinyFeatures(), DIM, "tiny"), reset_real_features=False)
    for batch in real.split(7):
        ev.update(batch, real=True)
        tm.update(batch, real=True)
    for batch in fake.split(9):
        ev.update(batch, real=False)
        tm.update(batch, real=False)
    ours = ev.compute().fid
    assert ours > 0.01
    assert float(tm.compute()) == pytest.approx(ours, rel=1e-4)
    # Our moments equal direct float64 moments of the features.
    feats = ev.features(real).double()
    stats = ev.real_stats()
    torch.testing.assert_close(stats.mu, feats.mean(0))
    torch.testing.assert_close(stats.sigma, torch.cov(feats.T))


def test_fewer_samples_than_feature_dim_is_a_user_error_with_kid_hint():
    ev = evaluator()
    ev.update(images(DIM - 1, seed=0), real=True)
    ev.update(images(20, seed=1), real=False)
    with pytest.raises(UserError, match="KID"):
        ev.compute()


def test_kid_at_small_n_reports_kid_and_no_fid():
    ev = evaluator(kid=True, kid_subsets=20)
    ev.update(images(6, seed=0), real=True)
    ev.update(images(6, seed=0), real=False)
    same = ev.compute()
    assert same.fid is None and same.kid_subset_size == 6
    ev.reset_fake()
    ev.update(images(6, seed=5, shift=80), real=False)
    shifted = ev.compute()
    assert shifted.kid_mean > same.kid_mean + 1e-4
    assert ev.compute().kid_mean == shifted.kid_mean  # seeded subset draws


def test_resize_policy_is_applied_and_recorded():
    ev = evaluator(resize=ResizePolicy(size=8))
    assert ev.features(images(2, seed=0, size=16)).shape == (2, DIM)
    assert ev.metadata()["resize"] == "bicubic-8"
    assert ev.metadata()["antialias"] == "n/a"  # only meaningful for Inception
    with pytest.raises(TypeError, match="uint8"):
        ev.update(torch.rand(2, 3, 8, 8), real=True)


def test_stats_cache_round_trip_and_reuse(tmp_path):
    cache = tmp_path / "ref" / "stats.safetensors"
    ev = evaluator(kid=True, kid_subsets=10)
    stats = ev.prepare_real(images(20, seed=1).split(6), cache, source="coco-val")
    assert cache.is_file() and stats.count == 20 and stats.features.shape == (20, DIM)

    def must_not_read():
        raise AssertionError("cache hit must not read the real images")
        yield  # pragma: no cover

    ev2 = evaluator(kid=True, kid_subsets=10)
    loaded = ev2.prepare_real(must_not_read(), cache, source="coco-val")
    assert loaded.mu.dtype == torch.float64
    torch.testing.assert_close(loaded.sigma, stats.sigma, rtol=0, atol=0)
    fake = images(20, seed=2, shift=40)
    ev.update(fake, real=False)
    ev2.update(fake, real=False)
    r1, r2 = ev.compute(), ev2.compute()
    assert r2.fid == pytest.approx(r1.fid, rel=1e-10)
    assert r2.kid_mean == pytest.approx(r1.kid_mean, rel=1e-6)
    loaded2, meta = FeatureStats.load(cache)
    assert meta["feature"] == "tiny" and meta["count"] == "20" and meta["resize"] == "none"


@pytest.mark.parametrize(
    ("kwargs", "source", "needle"),
    [
        ({"resize": ResizePolicy(size=8)}, "coco-val", "resize"),
        ({"feature_name": "other-net"}, "coco-val", "feature"),
        ({}, "other-folder", "source"),
        ({"kid": True}, "coco-val", "KID"),
    ],
)
def test_stats_cache_refuses_other_settings(tmp_path, kwargs, source, needle):
    cache = tmp_path / "stats.safetensors"
    evaluator().prepare_real([images(10, seed=1)], cache, source="coco-val")
    with pytest.raises(UserError, match=needle):
        evaluator(**kwargs).prepare_real([], cache, source=source)


def test_empty_real_set_is_not_cached(tmp_path):
    with pytest.raises(UserError, match="only 0 real images"):
        evaluator().prepare_real([], tmp_path / "stats.safetensors")
    assert not (tmp_path / "stats.safetensors").exists()


def test_stats_cache_rejects_foreign_file(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="unreadable"):
        evaluator().prepare_real([], bad)


def test_missing_inception_weights_names_the_exact_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE
    with pytest.raises(UserError) as info:
        FIDEvaluator("inception")
    assert str(expected) in str(info.value)
    assert not expected.exists()  # nothing was downloaded
    with pytest.raises(UserError, match="nowhere.pth"):
        FIDEvaluator("inception", weights_path=tmp_path / "nowhere.pth")
    with pytest.raises(UserError, match="unknown"):
        FIDEvaluator("resnet")


def test_inception_weights_must_be_a_plain_state_dict(tmp_path):
    bad = tmp_path / "pickled.pth"
    torch.save(ResizePolicy(size=3), bad)  # an arbitrary object: refused by the weights_only unpickler
    with pytest.raises(UserError, match="plain Inception state dict"):
        load_inception(weights_path=bad)
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(UserError, match="does not match"):
        load_inception(weights_path=wrong)


def random_inception_weights(path, monkeypatch) -> None:
    """Write a randomly initialised state dict with the real Inception layout (no download)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    dummy = path.with_name("empty.pth")
    torch.save({}, dummy)
    with monkeypatch.context() as m:
        m.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
        torch.manual_seed(0)
        net = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(dummy)
        )
    torch.save(net.state_dict(), path)


def test_inception_from_hub_cache_with_antialias_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = tmp_path / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE
    path.parent.mkdir(parents=True)
    random_inception_weights(path, monkeypatch)
    batch = images(2, seed=0, size=32)
    ev = FIDEvaluator("inception", 64, antialias=False)
    feats = ev.features(batch)
    assert feats.shape == (2, 64) and torch.isfinite(feats).all()
    assert ev.metadata() == {
        "feature": "inception-v3-compat-64",
        "feature_dim": "64",
        "resize": "none",
        "antialias": "false",
    }
    smooth = load_inception(64, weights_path=path, antialias=True)(batch)
    assert not torch.allclose(smooth, feats)  # the flag reaches the resize to 299
