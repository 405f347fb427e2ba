"""Code, tests and docs cite only what a reader has: papers (arXiv id, section/equation) and the project's docs.

Notes kept outside the repository are no reference for a user: a comment that says "see <note> §3" dangles. The
names are assembled here so that this file does not match itself.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCANNED = [ROOT / "distill_diffusion", ROOT / "tests", ROOT / "docs", ROOT / "README.md"]
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".txt", ".toml", ".rst", ".cfg"}
#: Either note's name as a capitalised word: "<NAME>.md", "<NAME> §n", "see <NAME>".
NOTES = re.compile(r"\b(" + "DESI" + "GN" + "|" + "SPE" + "CS" + r")\b")


def scanned_files() -> list[Path]:
    files: list[Path] = []
    for entry in SCANNED:
        candidates = [entry] if entry.is_file() else sorted(entry.rglob("*"))
        files += [p for p in candidates if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts]
    return files


def test_no_file_cites_notes_outside_the_repository() -> None:
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in scanned_files()
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if NOTES.search(line)
    ]
    assert not hits, "cite the paper or docs/*.md instead:\n" + "\n".join(hits)
