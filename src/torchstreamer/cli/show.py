"""Terminal output for the CLI: tables and progress bars with ``rich`` when it is installed,
plain text otherwise (``rich`` is the optional ``cli`` extra)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

__all__ = ["message", "progress", "table"]

T = TypeVar("T")


def _console(stderr: bool = False) -> Any:
    try:
        from rich.console import Console
    except ImportError:
        return None
    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not console.is_terminal:  # a file or a pipe: do not squeeze tables to 80 columns
        console = Console(stderr=stderr, highlight=False, soft_wrap=True, width=200)
    return console


def table(title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print a table (numbers right-aligned)."""
    rows = [[_text(v) for v in row] for row in rows]
    console = _console()
    if console is not None:
        from rich.table import Table

        shown = Table(title=title, title_justify="left")
        for i, header in enumerate(headers):
            numeric = bool(rows) and all(_numeric(row[i]) for row in rows)
            shown.add_column(header, justify="right" if numeric else "left")
        for row in rows:
            shown.add_row(*row)
        console.print(shown)
        return
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    print(title)
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def message(text: str, error: bool = False) -> None:
    """Print a line (to stderr when ``error``)."""
    print(text, file=sys.stderr if error else sys.stdout)


def progress(items: Sequence[T], description: str) -> Iterator[T]:
    """Iterate with a progress bar on a terminal (rich), silently otherwise."""
    console = _console(stderr=True)
    if console is None or not console.is_terminal:
        yield from items
        return
    from rich.progress import track

    yield from track(items, description=description, console=console, transient=True)


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.0f}"
    return "-" if value is None else str(value)


def _numeric(text: str) -> bool:
    try:
        float(text.rstrip("x%"))
    except ValueError:
        return text == "-"
    return True
