"""Where the trained toy world lives: the user cache folder and the :class:`ToyWorld` paths inside it.

``$DISTILL_DIFFUSION_CACHE`` (or ``~/.cache/distill-diffusion``) holds ``toy-v3/`` with ``data/`` (the
imagefolder), ``teacher/`` (a stock ``StableDiffusionPipeline`` folder), ``clip/`` (a stock ``CLIPModel``
folder with its processor), ``classifier/`` (the shape/colour/background classifier of ``toy.classifier``)
and ``build.json`` (what was trained, how long, losses, calibration). The version suffix changes whenever the world or its training changes, so an old cache is never reused.
The toy SDXL teacher, built only when asked for (``toy build --sdxl``), lives in ``xl/`` with its own ``build.json``
stamped with :data:`XL_VERSION`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CACHE_ENV = "DISTILL_DIFFUSION_CACHE"
TOY_VERSION = "toy-v3"
#: The toy SDXL teacher's version (``xl/build.json``); bump it whenever its data, architecture or training change.
XL_VERSION = "xl-v1"
#: The toy teacher's reference guidance scale: its calibration, the quickstart's teacher rows and the progressive
#: and adversarial toy benchmarks' default (bksdm-toy keeps the 3.0 its results used). At 2.0 the toy-v3 teacher's
#: 50-step FID is a third lower than at 3.0 with the same CLIP score and prompt accuracy (3.0 is past the FID-optimal
#: point of the curve), and extra guidance hides what few DDIM steps lose: leading 4-step FID is 3.6x the 50-step at
#: 2.0, 2.1x at 3.0 (docs/toy_world.md).
TOY_GUIDANCE = 2.0
BUILD_FILE = "build.json"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$DISTILL_DIFFUSION_CACHE``, else ``~/.cache/distill-diffusion``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "distill-diffusion"


@dataclass(frozen=True)
class ToyWorld:
    """Paths of one built toy world (``root`` = ``<cache>/toy-v3``)."""

    root: Path

    @classmethod
    def in_cache(cls, cache_dir: str | Path | None = None) -> ToyWorld:
        return cls(cache_root(cache_dir) / TOY_VERSION)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def teacher(self) -> Path:
        return self.root / "teacher"

    @property
    def clip(self) -> Path:
        return self.root / "clip"

    @property
    def classifier(self) -> Path:
        """The attribute classifier (``toy.classifier``); not in :meth:`is_complete`: worlds built before it
        gain it on first use."""
        return self.root / "classifier"

    @property
    def build_json(self) -> Path:
        return self.root / BUILD_FILE

    @property
    def xl(self) -> Path:
        """The SDXL teacher's own folder (``toy.build_xl``): ``teacher/``, ``data/`` and ``build.json``, versioned by
        :data:`XL_VERSION` in that ``build.json``; built on demand, never by the SD build."""
        return self.root / "xl"

    @property
    def teacher_xl(self) -> Path:
        """The toy SDXL teacher, a stock ``StableDiffusionXLPipeline`` folder."""
        return self.xl / "teacher"

    @property
    def data_xl(self) -> Path:
        """The XL teacher's training images: the toy examples on canvases of varied size (``toy.world_xl``)."""
        return self.xl / "data"

    def xl_is_complete(self) -> bool:
        """True when the XL teacher was built, finished (``xl/build.json`` is written last) and is of this
        :data:`XL_VERSION`; an XL folder of an older version is rebuilt, like the world's version suffix."""
        stamp = self.xl / BUILD_FILE
        if not (stamp.is_file() and (self.teacher_xl / "model_index.json").is_file()):
            return False
        try:
            return json.loads(stamp.read_text()).get("version") == XL_VERSION
        except (OSError, json.JSONDecodeError):
            return False

    def is_complete(self) -> bool:
        """True when every part is there; ``build.json`` is written last, and the folder appears only by
        an atomic rename of a finished build, so a half-built world never passes."""
        return (
            self.build_json.is_file()
            and (self.teacher / "model_index.json").is_file()
            and (self.clip / "config.json").is_file()
            and (self.data / "metadata.jsonl").is_file()
        )

    def info(self) -> dict[str, Any]:
        """The contents of ``build.json``."""
        return json.loads(self.build_json.read_text())


@dataclass(frozen=True)
class ToyTeacher:
    """One teacher of a toy world and the names that go with it: the SD teacher, or with ``sdxl`` the toy SDXL
    teacher (``toy build --sdxl``), whose tiny configs are the SD ones' ``_xl`` variants (``tiny/ladd`` →
    ``tiny/ladd_xl``) and whose benchmark folders carry ``_xl``. Both are distilled on the world's square 32² images
    (for SDXL: time ids original 32², crop (0, 0), what its pipeline passes when sampling)."""

    world: ToyWorld
    sdxl: bool = False

    @property
    def path(self) -> Path:
        """The teacher's pipeline folder."""
        return self.world.teacher_xl if self.sdxl else self.world.teacher

    @property
    def data(self) -> Path:
        """The images its students train on."""
        return self.world.data

    def config(self, name: str) -> str:
        """The shipped tiny config of this teacher for the SD config ``name``."""
        return f"{name}_xl" if self.sdxl else name

    def folder(self, path: str | Path) -> Path:
        """A benchmark's default results or run folder for this teacher (``…/bksdm`` → ``…/bksdm_xl``)."""
        return Path(f"{path}_xl") if self.sdxl else Path(path)
