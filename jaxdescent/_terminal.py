"""Small helpers the ``jaxdescent`` commands share: tables on stdout, paths, file-only plots."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


def use_agg() -> None:
    """Draw to files only: no window, no display needed."""
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")


def shown(path: Path) -> str:
    """``path`` as the user would type it: relative paths start with ``./``."""
    text = os.path.relpath(path) if not path.is_absolute() else str(path)
    return text if text.startswith((".", "/")) else f"./{text}"


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print left-aligned columns under ``header`` and a rule."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths)).rstrip())
    print(line)
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
