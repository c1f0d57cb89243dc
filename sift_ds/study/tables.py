"""Markdown tables of the study reports."""
from __future__ import annotations

from typing import List, Sequence


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> List[str]:
    """A Markdown table: the header, its rule, one line per row (cells as ``str``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows]
