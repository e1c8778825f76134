"""Terminal output for the CLI: tables and progress bars with ``rich`` when it is installed,
plain text otherwise (``rich`` is the optional ``cli`` extra).

Progress: on a terminal with ``rich``, a spinner for each stage of the work and a bar for each
loop. Otherwise (stderr piped or redirected, or no ``rich``), :func:`reporting` prints a line on
stderr every :data:`INTERVAL` seconds saying what the command is doing, and nothing for work
shorter than that.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional, TypeVar

__all__ = ["INTERVAL", "count", "message", "progress", "reporting", "stage", "table", "width"]

T = TypeVar("T")

INTERVAL = 5.0
"""Seconds between two progress lines on stderr when it is not a terminal."""


class _Reporter:
    """What the command is doing now, printed every :data:`INTERVAL` seconds by a thread."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.doing = prefix, "starting"
        self.began = time.perf_counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._tick, name="torchstreamer-progress")
        self.thread.daemon = True

    def _tick(self) -> None:
        while not self.stop.wait(INTERVAL):
            elapsed = time.perf_counter() - self.began
            print(f"{self.prefix}: {self.doing}, {elapsed:.0f} s so far.", file=sys.stderr)
            sys.stderr.flush()


_reporter: Optional[_Reporter] = None
_live = False  # a rich spinner or bar is showing (rich shows one at a time)


def _rich_terminal() -> Any:
    """The rich console of stderr when it is a terminal and rich is installed, else None."""
    console = _console(stderr=True)
    return console if console is not None and console.is_terminal else None


@contextmanager
def reporting(prefix: str) -> Iterator[None]:
    """Report progress while the block runs, as one line every :data:`INTERVAL` seconds on
    stderr (``prefix: what it does, N s so far.``) unless rich draws on a terminal."""
    global _reporter
    if _rich_terminal() is not None or _reporter is not None:
        yield
        return
    _reporter = _Reporter(prefix)
    _reporter.thread.start()
    try:
        yield
    finally:
        _reporter.stop.set()
        _reporter.thread.join()
        _reporter = None


@contextmanager
def stage(doing: str) -> Iterator[None]:
    """Name a stage of the work: a spinner on a terminal, the text of the progress lines
    otherwise."""
    global _live
    console = None if _live else _rich_terminal()
    if console is not None:
        _live = True
        try:
            with console.status(doing):
                yield
        finally:
            _live = False
        return
    before = _reporter.doing if _reporter is not None else None
    if _reporter is not None:
        _reporter.doing = doing
    try:
        yield
    finally:
        if _reporter is not None and before is not None:
            _reporter.doing = before


def _console(stderr: bool = False, columns: Optional[int] = None) -> Any:
    try:
        from rich.console import Console
    except ImportError:
        return None
    console = Console(stderr=stderr, highlight=False, soft_wrap=True, width=columns)
    if not console.is_terminal and columns is None:  # a file or a pipe: do not squeeze tables
        console = Console(stderr=stderr, highlight=False, soft_wrap=True, width=200)
    return console


def table(
    title: str,
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    columns: Optional[int] = None,
) -> None:
    """Print a table (numbers right-aligned); rich fits it in ``columns`` when given."""
    rows = [[_text(v) for v in row] for row in rows]
    console = _console(columns=columns)
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


def count(n: int, thing: str) -> str:
    """``n`` and ``thing``, plural unless ``n`` is 1: ``count(1, "output sample")`` is
    ``"1 output sample"``, ``count(3, "output sample")`` is ``"3 output samples"``."""
    return f"{n} {thing}" if n == 1 else f"{n} {thing}s"


def message(text: str, error: bool = False) -> None:
    """Print a line (to stderr when ``error``)."""
    print(text, file=sys.stderr if error else sys.stdout)


def progress(items: Sequence[T], description: str) -> Iterator[T]:
    """Iterate with a progress bar on a terminal (rich), or with the count in the progress
    lines of :func:`reporting` otherwise."""
    global _live
    console = None if _live else _rich_terminal()
    if console is None:
        before = _reporter.doing if _reporter is not None else None
        try:
            for done, item in enumerate(items):
                if _reporter is not None:
                    _reporter.doing = f"{description}, {done} of {len(items)} done"
                yield item
        finally:
            if _reporter is not None and before is not None:
                _reporter.doing = before
        return
    from rich.progress import track

    _live = True
    try:
        yield from track(items, description=description, console=console, transient=True)
    finally:
        _live = False


def width() -> int:
    """Columns of the terminal (``COLUMNS`` when set; 80 for a pipe or a file)."""
    return shutil.get_terminal_size((80, 24)).columns


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return "-" if value is None else str(value)


def _numeric(text: str) -> bool:
    try:
        float(text.rstrip("x%"))
    except ValueError:
        return text == "-"
    return True
