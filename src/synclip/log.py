"""Logging with levels and rich progress bars for long work."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

T = TypeVar("T")

console = Console(stderr=True)


def setup_logging(level: str = "INFO") -> None:
    """Route the `synclip` loggers to stderr through rich; third-party loggers stay at WARNING."""
    if console.is_terminal:
        handler: logging.Handler = RichHandler(console=console, show_path=False, markup=False)
        fmt = "%(message)s"
    else:  # CI logs and files: one plain line per record, never wrapped
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    # other libraries (Great Expectations, PySceneDetect …) set their own loggers to INFO when
    # imported; only synclip's records below WARNING are shown
    handler.addFilter(lambda record: record.levelno >= logging.WARNING or record.name.startswith("synclip"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format=fmt, force=True)
    logging.getLogger("synclip").setLevel(level)


class RateColumn(ProgressColumn):
    """Items per second, e.g. `12.5 frames/s`."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.1f} {self.unit}/s", style="progress.data.speed")


def progress(unit: str = "items") -> Progress:
    """A progress bar that shows done/total, rate, elapsed time and ETA; use as a context manager."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )


def track(items: Iterable[T], description: str, total: int | None = None, unit: str = "items") -> Iterator[T]:
    """Iterate with a progress bar (done/total, rate, ETA)."""
    with progress(unit) as bar:
        task = bar.add_task(description, total=total if total is not None else _len(items))
        for item in items:
            yield item
            bar.advance(task)


def _len(items: Iterable[object]) -> int | None:
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None
