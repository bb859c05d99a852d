"""Media I/O through PyAV (FFmpeg libraries bundled in its wheel; no system ffmpeg needed)."""

import ctypes
import ctypes.util
import functools

import av.logging

# FFmpeg's own log lines (x264 statistics, demuxer warnings) would drown progress and errors;
# synclip reports every failure itself, with FFmpeg's reason in the message.
av.logging.set_level(av.logging.PANIC)

_M_MMAP_THRESHOLD = -3


@functools.cache
def reproducible_encoding() -> None:
    """Make libx264's output a pure function of its input frames, for the rest of this process.

    Measured here: the same frames encoded with libx264 gave different bytes once the process had
    encoded other clips before, and always the same bytes when glibc hands out fresh (zeroed)
    pages for large buffers: some encoder path reads memory it did not write. Pinning glibc's
    mmap threshold (which otherwise grows after large frees, so big buffers get recycled) fixes
    that, but it also makes every large allocation a fresh mapping, which halves the speed of
    torch training on the CPU. So only the processes that write reproducible files call this
    (SynthTalk generation, preprocessing workers), never training or inference.
    """
    name = ctypes.util.find_library("c")
    if name:
        ctypes.CDLL(name).mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
