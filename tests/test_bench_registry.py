"""The benchmark registry: generic and per-method benchmarks, each a module with HELP, add_arguments and run."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

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


def test_a_method_declares_its_benchmarks_by_kind_in_its_own_package(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = MethodEntry("distill_diffusion.trainers.methods.lcm:Fake", benchmarks={"fake-speed": "speed"})
    monkeypatch.setitem(METHODS, "fake", entry)
    assert registry.benchmarks()["fake-speed"] == "distill_diffusion.trainers.methods.lcm.bench_speed"
    assert registry.load_benchmark("fake-speed").HELP


def test_every_benchmark_follows_the_placement_rule() -> None:
    """A method's benchmarks are its package's ``bench_<kind>.py``, every one registered; shared ones live in
    ``bench/``; no benchmark has a separate argument-parsing module beside it."""
    package = Path(registry.__file__).resolve().parents[1]
    registered = set(registry.benchmarks().values())
    on_disk = {".".join(("distill_diffusion", *p.relative_to(package).with_suffix("").parts))
               for p in (package / "trainers" / "methods").glob("*/bench_*.py")}
    assert on_disk <= registered, f"not registered in the method registry: {sorted(on_disk - registered)}"
    assert all(m.startswith("distill_diffusion.bench.") for m in registry.GENERIC.values())
    assert not sorted(package.rglob("*_command.py"))


def test_parsing_every_benchmarks_arguments_imports_no_torch() -> None:
    required = {"quality": ["--prompts", "toy"], "consistency": ["run_dir"]}
    code = ("import sys; from distill_diffusion.bench.registry import benchmarks; from distill_diffusion.cli import build_parser; "
            f"p = build_parser(); [p.parse_args(['bench', n, *{required!r}.get(n, [])]) for n in benchmarks()]; "
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr[-2000:]


def test_a_name_declared_twice_and_an_unknown_name_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(METHODS, "fake", MethodEntry("distill_diffusion.trainers.methods.lcm:Fake", benchmarks={"engine": "speed"}))
    with pytest.raises(ValueError, match="'engine' of method 'fake' is already registered"):
        registry.benchmarks()
    monkeypatch.delitem(METHODS, "fake")
    with pytest.raises(UserError, match="unknown benchmark .nope.; choose one of: add, bksdm, bksdm-gpu, bksdm-toy, consistency, dmd2, dmd2-gpu, engine, ladd, ladd-gpu"):
        registry.load_benchmark("nope")


@pytest.mark.parametrize(("name", "guidance"), [("quickstart", None), ("progressive-toy", TOY_GUIDANCE),
                                                ("methods", TOY_GUIDANCE), ("bksdm-toy", TOY_GUIDANCE)])
def test_toy_benchmarks_default_to_the_toy_reference_guidance(name: str, guidance: float | None) -> None:
    from distill_diffusion.quickstart import TEACHER_GUIDANCE
    from distill_diffusion.toy.build import BuildBudget

    if guidance is None:  # the quickstart's teacher rows and the build's calibration use the reference scale
        assert TEACHER_GUIDANCE == BuildBudget().guidance_scale == TOY_GUIDANCE
        return
    parser = argparse.ArgumentParser()
    registry.load_benchmark(name).add_arguments(parser)
    assert parser.parse_args([]).guidance_scale == guidance
