"""The benchmark registry: generic and per-method benchmarks, each a module with HELP, add_arguments and run."""

from __future__ import annotations

import argparse
import importlib

import pytest

from distill_diffusion.bench import registry
from distill_diffusion.errors import UserError
from distill_diffusion.toy.paths import TOY_GUIDANCE
from distill_diffusion.trainers.methods.registry import METHODS, MethodEntry


def test_every_benchmark_module_has_the_interface() -> None:
    names = registry.benchmarks()
    assert {"engine", "quality", "threads", "lcm", "lcm-gpu", "consistency"} <= names.keys()
    for name, path in names.items():
        module = importlib.import_module(path)
        assert isinstance(module.HELP, str) and module.HELP, name
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        assert callable(module.run), name


def test_a_method_declares_its_benchmarks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(METHODS, "fake", MethodEntry("x:Y", benchmarks={"fake-speed": "distill_diffusion.bench.threads"}))
    assert registry.benchmarks()["fake-speed"] == "distill_diffusion.bench.threads"
    assert registry.load_benchmark("fake-speed").HELP


def test_a_name_declared_twice_and_an_unknown_name_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(METHODS, "fake", MethodEntry("x:Y", benchmarks={"engine": "distill_diffusion.bench.threads"}))
    with pytest.raises(ValueError, match="'engine' of method 'fake' is already registered"):
        registry.benchmarks()
    monkeypatch.delitem(METHODS, "fake")
    with pytest.raises(UserError, match="unknown benchmark .nope.; choose one of: add, adversarial-toy, bksdm, bksdm-gpu, bksdm-toy, consistency, engine, ladd, ladd-gpu"):
        registry.load_benchmark("nope")


@pytest.mark.parametrize(("name", "guidance"), [("quickstart", None), ("progressive-toy", TOY_GUIDANCE),
                                                ("adversarial-toy", TOY_GUIDANCE), ("bksdm-toy", 3.0)])
def test_toy_benchmarks_default_to_the_toy_reference_guidance_or_the_one_their_results_used(name: str, guidance: float | None) -> None:
    from distill_diffusion.quickstart import TEACHER_GUIDANCE
    from distill_diffusion.toy.build import BuildBudget

    if guidance is None:  # the quickstart's teacher rows and the build's calibration use the reference scale
        assert TEACHER_GUIDANCE == BuildBudget().guidance_scale == TOY_GUIDANCE
        return
    parser = argparse.ArgumentParser()
    registry.load_benchmark(name).add_arguments(parser)
    assert parser.parse_args([]).guidance_scale == guidance
