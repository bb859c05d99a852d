"""Media I/O through PyAV (FFmpeg libraries bundled in its wheel; no system ffmpeg needed)."""

import ctypes
import ctypes.util

import av.logging

# FFmpeg's own log lines (x264 statistics, demuxer warnings) would drown progress and errors;
# synclip reports every failure itself, with FFmpeg's reason in the message.
av.logging.set_level(av.logging.PANIC)

# Measured here: the same frames encoded with libx264 gave different bytes once the process had
# encoded other clips before, and always the same bytes when glibc hands out fresh (zeroed) pages
# for large buffers. Some encoder path reads memory it did not write; pinning glibc's mmap
# threshold (which otherwise grows after large frees, so big buffers get recycled) keeps output
# a pure function of the input, which SynthTalk's byte-for-byte reproducibility relies on.
_M_MMAP_THRESHOLD = -3
_libc_name = ctypes.util.find_library("c")
if _libc_name:
    ctypes.CDLL(_libc_name).mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
