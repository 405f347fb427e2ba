"""Benchmarks that print a markdown table and write it, with the raw numbers as JSON, under benchmarks/results/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(result: dict[str, Any], table: str, output: str | Path) -> Path:
    """Write ``result`` to ``output`` (JSON) and ``table`` next to it (``.md``), print the table; returns ``output``."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    output.with_suffix(".md").write_text(table + "\n")
    print(table)
    return output
