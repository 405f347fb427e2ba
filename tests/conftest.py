"""Shared fixtures: the toy dataset and a random tiny SD pipeline, built once per test session in seconds."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

# One thread: on a shared 2-core machine, OpenMP spin-waiting under contention made tiny forward
# passes 100x slower; the tiny models here gain nothing from a second thread anyway.
torch.set_num_threads(1)
# ...and the CLI's adaptive thread policy stays off in-process (it is off when the user fixed the count), while
# subprocesses the tests start inherit the single thread.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Nothing in the suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# A private cache: tests never read or fill the user's toy-world cache (removed when the session ends).
os.environ["DISTILL_DIFFUSION_CACHE"] = tempfile.mkdtemp(prefix="dd-test-cache-")
atexit.register(shutil.rmtree, os.environ["DISTILL_DIFFUSION_CACHE"], ignore_errors=True)


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``distill-diffusion toy init`` output: ``data/`` (256 captioned images) and ``teacher/`` (random tiny SD)."""
    from distill_diffusion.toy.tiny import init_toy

    root = tmp_path_factory.mktemp("toy")
    init_toy(root, num_images=256)
    return root


@pytest.fixture(scope="session")
def tiny_pipeline_dir(toy_dir: Path) -> Path:
    return toy_dir / "teacher"


@pytest.fixture(scope="session")
def tiny_sdxl_pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny SDXL pipeline folder (``StableDiffusionXLPipeline``, force_zeros_for_empty_prompt), 32² images."""
    from distill_diffusion.toy.tiny_sdxl import save_tiny_sdxl_pipeline

    return save_tiny_sdxl_pipeline(tmp_path_factory.mktemp("tiny_sdxl") / "teacher")


@pytest.fixture(scope="session", params=["sd1", "sdxl"])
def family_pipeline_dir(request: pytest.FixtureRequest) -> Path:
    """The tiny SD pipeline, then the tiny SDXL one: a test taking it runs once per family."""
    return request.getfixturevalue("tiny_pipeline_dir" if request.param == "sd1" else "tiny_sdxl_pipeline_dir")


@pytest.fixture(scope="session")
def toy_data_dir(toy_dir: Path) -> Path:
    return toy_dir / "data"


TIERS = ("e2e", "slow", "gpu")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test without another tier marker is a unit test, so `-m unit` selects exactly those."""
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in TIERS):
            item.add_marker(pytest.mark.unit)
