"""No import runs back up the layers (docs/adding_a_method.md, "Package layout"): every import, function-level ones too, read with ``ast``.

Arrows run one way, down :data:`LAYERS`. Within ``trainers``, ``methods`` never imports ``engine``, and
``engine`` imports from ``methods`` only the contract (``base``) and the registry. A method's benchmarks
(its package's ``bench_<kind>`` modules, declared in its method-registry entry) sit at the ``bench`` layer,
since they drive the engine. Known exceptions, in files whose owners must fix them, are
listed in :data:`KNOWN_EXCEPTIONS`; an entry that no longer occurs fails too, so the list only shrinks.
"""

from __future__ import annotations

import ast
from pathlib import Path

from distill_diffusion.bench.registry import GENERIC
from distill_diffusion.trainers.methods.registry import METHODS

PACKAGE = Path(__file__).resolve().parents[1] / "distill_diffusion"

#: Top to bottom; a module may import modules of its own layer or of layers below it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli",),
    ("bench", "quickstart"),
    ("toy",),
    ("eval",),
    ("pipelines",),
    ("trainers.engine",),
    ("trainers.methods", "trainers"),
    ("models",),
    ("data",),
    ("core",),
    ("config", "config_types", "config_files", "hub"),
    ("threads",),
    ("paths", "prompts", "lazy"),
    ("errors",),
    ("",),  # the package itself: its version
)
ENGINE_MAY_IMPORT = ("trainers.methods.base", "trainers.methods.registry")

#: (importer, imported) → why it is allowed for now. Remove an entry when its import is gone.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {
    # resolve_prompts("toy") turns the toy world's name into its captions; callers above toy would have to
    # resolve it for eval (and BenchmarkSettings(prompts="toy") would change meaning).
    ("eval.generate", "toy.world"): "the 'toy' prompt set is resolved in eval",
}


def module_name(path: Path) -> str:
    """``distill_diffusion/eval/generate.py`` → ``eval.generate``; the package's ``__init__`` → ``""``."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(importer: str, node: ast.ImportFrom) -> list[str]:
    """The package modules an ``from X import a, b`` names (``a`` when it is a submodule of ``X``)."""
    if node.level:
        is_package = MODULES[importer].name == "__init__.py"
        base = importer.split(".") if is_package else importer.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    elif node.module == "distill_diffusion" or (node.module or "").startswith("distill_diffusion."):
        target = node.module.removeprefix("distill_diffusion").lstrip(".")
    else:
        return []
    subs = [f"{target}.{a.name}".lstrip(".") for a in node.names]
    return [s for s in subs if s in MODULES] or [target]


def imports_of(module: str) -> set[str]:
    """Every module of the package that ``module`` imports, at any depth of its code."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.removeprefix("distill_diffusion").lstrip(".") for a in node.names
                      if a.name == "distill_diffusion" or a.name.startswith("distill_diffusion.")}
        elif isinstance(node, ast.ImportFrom):
            found |= set(_resolve(module, node))
    return found - {module}


def method_benchmark_modules() -> set[str]:
    """Each method's registered benchmark modules."""
    return {path.removeprefix("distill_diffusion.") for entry in METHODS.values() for path in entry.benchmark_modules().values()}


def layer_of(module: str, bench_level: set[str]) -> int | None:
    """Index in :data:`LAYERS` of the longest name that ``module`` is or lies under; None if none."""
    if module in bench_level:
        module = "bench"
    matches = [(len(name), i) for i, names in enumerate(LAYERS) for name in names
               if module == name or module.startswith(f"{name}.")]
    return max(matches)[1] if matches else None


def violations() -> set[tuple[str, str]]:
    """(importer, imported) pairs that run up the layers or break the trainers rule."""
    bench_level = method_benchmark_modules()
    bad = set()
    for module in MODULES:
        for target in imports_of(module):
            if layer_of(target, bench_level) < layer_of(module, bench_level):
                bad.add((module, target))
            elif (module.startswith("trainers.engine") and target.startswith("trainers.methods")
                  and not target.startswith(ENGINE_MAY_IMPORT) and target not in bench_level):
                bad.add((module, target))
    return bad


def test_no_import_runs_up_the_layers() -> None:
    unexpected = sorted(violations() - KNOWN_EXCEPTIONS.keys())
    assert not unexpected, "imports against the layer order (docs/adding_a_method.md, Package layout):\n" + "\n".join(f"{a} -> {b}" for a, b in unexpected)


def test_known_exceptions_still_occur() -> None:
    stale = sorted(KNOWN_EXCEPTIONS.keys() - violations())
    assert not stale, f"fixed: remove these from KNOWN_EXCEPTIONS: {stale}"


def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in MODULES if layer_of(m, set()) is None)
    assert not missing, f"give these a layer in LAYERS: {missing}"


def test_benchmark_modules_are_registered_names() -> None:
    for path in [*GENERIC.values(), *(p for e in METHODS.values() for p in e.benchmark_modules().values())]:
        assert path.removeprefix("distill_diffusion.") in MODULES, path
