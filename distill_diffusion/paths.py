"""Checks on output paths the user names, run before any model loads so a bad path costs nothing.

``os.access`` is not enough: as root it says yes on read-only mounts (and on /proc), so writability is
proven by creating and removing a temporary file in the nearest folder that exists. Nothing is created
at the path itself: a refused run leaves no trace.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from distill_diffusion.errors import UserError, require


def _nearest_existing(path: Path) -> Path:
    """``absolute path`` itself or its closest ancestor that exists (the root always does)."""
    return next(candidate for candidate in (path, *path.parents) if candidate.exists())


def check_output_dir(path: str, flag: str) -> None:
    """Refuse an output folder that cannot be created or written, naming ``flag`` (e.g. ``--output_dir``).

    Fails for an empty string, a path that is a file, a path below a file, and a folder (or nearest
    existing ancestor) in which a temporary file cannot be created and removed.
    """
    require(bool(str(path).strip()), f"{flag} is empty; pass a folder to write to")
    _check_folder(Path(path).expanduser().absolute(), f"{flag} {path}", "pass a folder path")


def check_output_file(path: str, flag: str) -> None:
    """Refuse an output file path that is empty, is a folder, or whose folder cannot be created or written."""
    require(bool(str(path).strip()), f"{flag} is empty; pass a file path to write to")
    target = Path(path).expanduser().absolute()
    require(not target.is_dir(), f"{flag} {path} is a folder; pass a file path such as {target / 'result.json'}")
    _check_folder(target.parent, f"{flag} {path}", "pass a file path inside a folder")


def _check_folder(folder: Path, what: str, fix: str) -> None:
    """``folder`` (absolute) is, or can be created as, a folder we can write in; errors start with ``what``."""
    try:
        existing = _nearest_existing(folder)
    except OSError as exc:  # e.g. a parent folder we may not search
        raise UserError(f"{what}: cannot inspect it ({exc.strerror}); {fix} you can write to") from None
    if not existing.is_dir():
        where = "is a file, not a folder" if existing == folder else "is a file, so no folder can be created below it"
        raise UserError(f"{what}: {existing} {where}; {fix}")
    try:
        handle, probe = tempfile.mkstemp(prefix=".distill-diffusion-write-check-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"{what}: cannot write in {existing} ({exc.strerror or type(exc).__name__}); {fix} you can write to") from None
