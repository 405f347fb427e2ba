"""The trained toy world shipped with the package: its weights (teacher, tiny CLIP, classifier; 11 MB of
safetensors), checked by SHA-256, installed into the cache in seconds instead of built in about 70 CPU-minutes.

Only the weights are shipped: the data is procedural and re-rendered from its seed (``toy.world``, 4 s), so an
installed world is the built one file for file. ``distill-diffusion toy build --force`` still re-creates the world
from scratch (``toy.build``); after a rebuild that should become the shipped one, ``python -m
distill_diffusion.toy.shipped`` copies the cached world's weights here and rewrites their sums.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from distill_diffusion.errors import require
from distill_diffusion.toy.paths import BUILD_FILE, TOY_VERSION, ToyWorld

#: The package folder of the shipped world (package data).
SHIPPED = Path(__file__).with_name("world")
SUMS_FILE = "SHA256SUMS"
#: The parts of a built world that are shipped (the rest, ``data/``, is rendered again).
PARTS = ("teacher", "clip", "classifier")
#: The shipped world's teacher rows as ``bench methods`` measured them (``[{"key", "row"}]``,
#: :mod:`~distill_diffusion.bench.row_cache`): the quickstart reads them instead of generating the same images again.
#: ``python -m distill_diffusion.bench.methods --write_reference_rows RESULTS`` writes them after a ``bench methods`` run.
REFERENCE_ROWS = Path(__file__).with_name("reference_rows.json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    """The shipped files under ``root``, relative, sorted: every file of :data:`PARTS` and ``build.json``."""
    files = [p.relative_to(root) for part in PARTS for p in (root / part).rglob("*") if p.is_file()]
    return sorted([*files, Path(BUILD_FILE)])


def shipped_version(folder: Path = SHIPPED) -> str | None:
    """The toy version of the shipped world (``build.json``), or None when the package ships none."""
    stamp = folder / BUILD_FILE
    return json.loads(stamp.read_text())["version"] if (folder / SUMS_FILE).is_file() and stamp.is_file() else None


def verify_shipped(folder: Path = SHIPPED) -> None:
    """Every file listed in ``SHA256SUMS`` is there with its hash (a damaged install fails here, naming the file)."""
    for line in (folder / SUMS_FILE).read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        path = folder / name
        require(path.is_file() and _sha256(path) == digest,
                f"the shipped toy world's {name} is missing or damaged; reinstall distill-diffusion, or build the world "
                "from scratch: distill-diffusion toy build --force")


def install_shipped_world(root: str | Path, folder: Path = SHIPPED) -> ToyWorld:
    """Install the shipped world into ``root`` (normally ``ToyWorld.in_cache().root``): check the weights, copy them,
    render the data from the build's seed, and rename the finished folder into place (never half-installed)."""
    from distill_diffusion.toy.build import _replace_dir
    from distill_diffusion.toy.world import make_toy_dataset

    verify_shipped(folder)
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f"{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    start = time.perf_counter()
    for name in _files(folder):
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(folder / name, tmp / name)
    info = json.loads((tmp / BUILD_FILE).read_text())
    make_toy_dataset(tmp / "data", num_images=info["budget"]["num_images"], seed=info["budget"]["seed"])
    info["installed"] = {"from": "the package's shipped weights", "seconds": round(time.perf_counter() - start, 1)}
    (tmp / BUILD_FILE).write_text(json.dumps(info, indent=2))
    _replace_dir(tmp, root)
    return ToyWorld(root)


def write_shipped(world: ToyWorld, folder: Path = SHIPPED) -> list[Path]:
    """Copy ``world``'s weights (a finished full build) into ``folder`` and write their sums; returns the files."""
    require(world.is_complete(), f"no finished toy world at {world.root}; build it first: distill-diffusion toy build --force")
    info = world.info()
    require(info["version"] == TOY_VERSION and "installed" not in info,
            f"{world.root} is not a fresh {TOY_VERSION} build; build it first: distill-diffusion toy build --force")
    shutil.rmtree(folder, ignore_errors=True)
    files = _files(world.root)
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(world.root / name, folder / name)
    (folder / SUMS_FILE).write_text("".join(f"{_sha256(folder / n)}  {n.as_posix()}\n" for n in files))
    return files


if __name__ == "__main__":
    for path in write_shipped(ToyWorld.in_cache()):
        print(SHIPPED / path)
