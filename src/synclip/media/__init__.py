"""Media I/O through PyAV (FFmpeg libraries bundled in its wheel; no system ffmpeg needed)."""

import av.logging

# FFmpeg's own log lines (x264 statistics, demuxer warnings) would drown progress and errors;
# synclip reports every failure itself, with FFmpeg's reason in the message.
av.logging.set_level(av.logging.PANIC)
