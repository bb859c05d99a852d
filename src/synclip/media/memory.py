"""glibc's allocator, tuned where it matters: reproducible libx264 output, and memory handed back.
Both are process-wide and Linux/glibc only; elsewhere they do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_M_MMAP_THRESHOLD = -3
TRIM_EVERY = 25  # items between hand-backs of the allocator's free memory (see `release_free_memory`)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:  # no C library to load by name: nothing to tune
        return None


@functools.cache
def reproducible_encoding() -> None:
    """Make libx264's output a pure function of its input frames, for the rest of this process.

    Measured here: the same frames encoded with libx264 gave different bytes once the process had
    encoded other clips before, and always the same bytes when glibc hands out fresh (zeroed)
    pages for large buffers: some encoder path reads memory it did not write. Pinning glibc's
    mmap threshold (which otherwise grows after large frees, so big buffers get recycled) fixes
    that, but it also makes every large allocation a fresh mapping, which slows torch training on
    the CPU badly (docs/benchmarks.md). So only the processes that write reproducible files call this
    (SynthTalk generation, preprocessing workers), never training or inference.
    """
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)


def _malloc_trim() -> Callable[[int], int] | None:
    libc = _libc()
    return None if libc is None else getattr(libc, "malloc_trim", None)  # glibc's; musl has none


def release_free_memory() -> None:
    """Hand the free pages of glibc's malloc arenas back to the OS (`malloc_trim`); elsewhere nothing.

    Frame-sized buffers are allocated and freed in MediaPipe's and FFmpeg's worker threads, from
    per-thread arenas that keep what is freed: without trimming, the resident set of a long decode
    grows by about a frame per frame though nothing is held (measurements: docs/benchmarks.md).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def trimmed(items: Iterable[T], every: int = TRIM_EVERY) -> Iterator[T]:
    """`items`, handing free memory back to the OS before every `every`-th one (the first included)."""
    for index, item in enumerate(items):
        if index % every == 0:
            release_free_memory()
        yield item
