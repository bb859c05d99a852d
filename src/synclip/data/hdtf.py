"""HDTF (Zhang et al., CVPR 2021): its published lists, synclip's fixed test selection, and the builder
that downloads the YouTube sources and cuts 512×512, 25 fps, 16 kHz clips (HDTF's crop method 1).

HDTF ships lists only (assets/hdtf/README.md): per group (RD, WDA, WRA) the URL of each source video,
the resolution it was downloaded at, the time ranges of its talking clips and, per clip, a fixed square
crop window. Crop method 1 of HDTF's README: download at that resolution, crop that window, resize to
512×512. Clip `i` of video `V` in group `G` is written as `<out>/G_V_i.mp4`.

Quirks of the lists at commit bbde889 and how they are treated (nothing is dropped silently):

* WDA_video_url.txt starts with a UTF-8 byte-order mark, several lines have trailing spaces and some
  files end without a newline: read as UTF-8 with the mark removed, fields split on whitespace.
* Names carry `.mp4` in every file but the URL lists: it is removed.
* 13 URLs carry `&t=<n>s` (a player start offset; the time ranges count from the start of the video):
  each URL is reduced to `https://www.youtube.com/watch?v=<id>`.
* Time ranges are all `mm:ss-mm:ss`; `hh:mm:ss` is accepted too. WRA MittRomney's second range
  (00:33-08:53) contains its first (08:10-08:30), probably a typo for 08:33-08:53: kept as listed, noted.
* Radio24 has a URL and a resolution but no time ranges: no clip, noted.
* 15 annotated clips have no crop window in `<group>_crop_wh.txt` (RD 2, WDA 6, WRA 7): unbuildable.
* WRA KevinMcCarthy1's resolution is 0: its 2 clips are unbuildable.
* 3 crop windows reach below the bottom of a frame of the listed height (WDA MaggieHassan_0 and
  MazieHirono1_0, WRA PeterKing_0: windows 776, 1134 and 872 px high at "720"): unbuildable.
* WDA WhipJimClyburn and JamesClyburn1 are the same YouTube video with the same time range: both are
  clips of the lists; downloads are shared by YouTube id, and the test selection counts them as one.
* Crop windows read as `x w y h` (`min_width width min_height height`): all 421 are square (w == h),
  every window fits a 16:9 frame of the listed height except the 5 above, and 48 are wider than a 4:3
  frame would allow; `x y w h` or corner pairs would give zero-sized or inverted windows.

Tests replace the network with local files: when the environment variable SYNCLIP_HDTF_TEST_ROOT
(`TEST_ROOT_ENV`) names a folder, `synclip data hdtf` reads the lists (and the test list) from
`<folder>/lists/` and "downloads" by copying `<folder>/sources/<youtube id>.mp4`. Test-only: never set
it for real data.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from rich.progress import Progress, TaskID

from synclip.constants import AUDIO_SAMPLE_RATE, SAMPLES_PER_FRAME, VIDEO_FPS
from synclip.errors import UserError
from synclip.files import write_json
from synclip.log import progress
from synclip.media.decode import iter_frames, read_audio
from synclip.media.io import VideoWriter
from synclip.media.memory import reproducible_encoding, trimmed
from synclip.media.probe import MediaError, probe, require_video

log = logging.getLogger(__name__)

ASSETS = Path(__file__).parent / "assets" / "hdtf"
HDTF_REPOSITORY = "https://github.com/MRzzm/HDTF"
HDTF_COMMIT = "bbde889bbab954c9a9ebcabe9962885c29f2165e"
GROUPS = ("RD", "WDA", "WRA")  # radio, Democrat and Republican speeches (HDTF's naming)
CLIP_SIZE = 512  # px, HDTF's README: every cropped video is resized to 512×512
TEST_LIST = "synclip_test_30.txt"
TEST_COUNT = 30  # LatentSync evaluates on 30 randomly selected HDTF videos
TEST_SEED = 2021
REPORT = "hdtf_report.json"
DOWNLOADS = ".downloads"
TEST_ROOT_ENV = "SYNCLIP_HDTF_TEST_ROOT"
YOUTUBE_ID = re.compile(r"^https?://(?:www\.)?youtube\.com/watch\?(?:.*&)?v=([A-Za-z0-9_-]{11})(?:&.*)?$")
TIME = re.compile(r"^(?:(\d+):)?(\d+):(\d{2}(?:\.\d+)?)$")
# yt-dlp's messages for a video that will not come back by retrying
UNAVAILABLE = (
    "video unavailable",
    "private video",
    "has been removed",
    "not available",
    "account associated with this video has been terminated",
    "copyright",
    "sign in to confirm your age",
    "members-only",
)

Download = Callable[[str, Path, int], None]  # (url, dest, height): write the video, with audio, to dest


class HdtfListError(UserError):
    """A malformed line of an HDTF list; the message names the file and the line."""


class SourceUnavailableError(Exception):
    """A source video that retrying will not bring (removed, private, region or age locked)."""


class CutError(Exception):
    """A clip that cannot be cut from its downloaded source; the message says why."""


@dataclass(frozen=True)
class CropBox:
    """A window of the frame in pixels: columns [x, x + w), rows [y, y + h)."""

    x: int
    y: int
    w: int
    h: int

    def scaled(self, factor: Fraction) -> CropBox:
        return CropBox(*(round(v * factor) for v in (self.x, self.y, self.w, self.h)))

    def fits(self, width: int, height: int) -> bool:
        return self.x >= 0 and self.y >= 0 and self.x + self.w <= width and self.y + self.h <= height


@dataclass(frozen=True)
class HdtfClip:
    """One annotated talking clip: [start, end) seconds of a YouTube video, and its crop window."""

    group: str
    video: str
    index: int
    url: str  # https://www.youtube.com/watch?v=<video_id>
    video_id: str
    start: float  # seconds
    end: float
    height: int  # the reference download resolution (frame height, px)
    crop: CropBox  # in pixels of a frame of that height

    @property
    def name(self) -> str:
        """`<group>_<video>_<index>`, the output file's stem."""
        return f"{self.group}_{self.video}_{self.index}"

    @property
    def source(self) -> str:
        """The download's name: one per YouTube video and resolution."""
        return f"{self.video_id}_{self.height}p"

    @property
    def frames(self) -> int:
        """N, frames of the clip at 25 fps."""
        # floor, as iter_frames: only whole 25 fps frames inside [start, end)
        span = Fraction(self.end).limit_denominator(10**6) - Fraction(self.start).limit_denominator(10**6)
        return int(span * VIDEO_FPS)

    @property
    def seconds(self) -> Fraction:
        return Fraction(self.frames, VIDEO_FPS)


@dataclass(frozen=True)
class Unbuildable:
    """An annotated clip the lists do not give enough to build; `reason` says what is missing."""

    name: str
    reason: str


@dataclass(frozen=True)
class HdtfLists:
    """The parsed lists: buildable clips in list order, unbuildable ones with reasons, and notes on
    entries that make no clip or look wrong but are kept."""

    clips: tuple[HdtfClip, ...]
    unbuildable: tuple[Unbuildable, ...]
    notes: tuple[str, ...]

    def by_name(self) -> dict[str, HdtfClip]:
        return {clip.name: clip for clip in self.clips}


# --- the lists ---------------------------------------------------------------------------------


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, whitespace-split fields) of every non-blank line; a BOM is dropped."""
    if not path.is_file():
        raise HdtfListError(f"{path}: no such list file")
    text = path.read_text(encoding="utf-8-sig")
    return [(number, line.split()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def _name(field: str) -> str:
    return field.removesuffix(".mp4")


def _int(field: str, where: str, what: str) -> int:
    if not re.fullmatch(r"\d+", field):
        raise HdtfListError(f"{where}: {what} must be a whole number, got {field!r}")
    return int(field)


def parse_time(token: str, where: str = "time") -> float:
    """`mm:ss` or `hh:mm:ss` (seconds may have a fraction) → seconds."""
    match = TIME.match(token)
    hours, minutes, seconds = match.groups() if match else (None, "0", "60")
    if match is None or float(seconds) >= 60 or (hours is not None and int(minutes) >= 60):
        raise HdtfListError(f"{where}: {token!r} is not a time of the form mm:ss or hh:mm:ss")
    return int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)


def _ranges(fields: list[str], where: str) -> list[tuple[float, float]]:
    ranges = []
    for token in fields:
        parts = token.split("-")
        if len(parts) != 2:
            raise HdtfListError(f"{where}: {token!r} is not a time range start-end (e.g. 00:30-01:00)")
        start, end = (parse_time(part, where) for part in parts)
        if end <= start:
            raise HdtfListError(f"{where}: time range {token!r} ends before it starts")
        ranges.append((start, end))
    return ranges


def _keyed(path: Path, fields: int, what: str) -> dict[str, tuple[str, list[str]]]:
    """name → (where, other fields) of a list with `fields` fields per line; duplicates are errors."""
    entries: dict[str, tuple[str, list[str]]] = {}
    for number, parts in _lines(path):
        where = f"{path}:{number}"
        if len(parts) != fields:
            raise HdtfListError(
                f"{where}: expected {fields} fields ({what}), got {len(parts)}: {' '.join(parts)}"
            )
        name = _name(parts[0])
        if name in entries:
            raise HdtfListError(f"{where}: {name} is listed again (first at {entries[name][0]})")
        entries[name] = (where, parts[1:])
    return entries


def load_lists(folder: str | Path = ASSETS) -> HdtfLists:
    """Parse the HDTF lists in `folder` (default: the vendored copy); HdtfListError on a malformed line."""
    folder = Path(folder)
    clips: list[HdtfClip] = []
    unbuildable: list[Unbuildable] = []
    notes: list[str] = []
    for group in GROUPS:
        urls = _keyed(folder / f"{group}_video_url.txt", 2, "name url")
        resolutions = _keyed(folder / f"{group}_resolution.txt", 2, "name resolution")
        crops = _keyed(folder / f"{group}_crop_wh.txt", 5, "name_index min_width width min_height height")
        times_path = folder / f"{group}_annotion_time.txt"
        annotated: dict[str, str] = {}
        used_crops: set[str] = set()
        for number, parts in _lines(times_path):
            where = f"{times_path}:{number}"
            if len(parts) < 2:
                raise HdtfListError(
                    f"{where}: expected a name and at least one time range, got {' '.join(parts)}"
                )
            video = _name(parts[0])
            if video in annotated:
                raise HdtfListError(f"{where}: {video} is listed again (first at {annotated[video]})")
            annotated[video] = where
            ranges = _ranges(parts[1:], where)
            for (_, end), (start, _) in itertools.pairwise(ranges):
                if start < end:
                    notes.append(
                        f"{_short(where)}: {group} {video}: a range starts at {_clock(start)}, before the previous one ends at {_clock(end)}"
                    )
            problems = []
            video_id = url = ""
            if video not in urls:
                problems.append(f"no URL in {group}_video_url.txt")
            else:
                url_where, (raw_url,) = urls[video]
                match = YOUTUBE_ID.match(raw_url)
                if match is None:
                    raise HdtfListError(f"{url_where}: {raw_url!r} is not a YouTube watch URL")
                video_id = match.group(1)
                url = f"https://www.youtube.com/watch?v={video_id}"
            height = 0
            if video not in resolutions:
                problems.append(f"no resolution in {group}_resolution.txt")
            else:
                res_where, (value,) = resolutions[video]
                height = _int(value, res_where, "the resolution")
                if height == 0:
                    problems.append(f"its resolution is 0 ({_short(res_where)})")
            for index, (start, end) in enumerate(ranges):
                name = f"{video}_{index}"
                reasons = list(problems)
                crop = None
                if name not in crops:
                    reasons.append(f"no crop window in {group}_crop_wh.txt")
                else:
                    used_crops.add(name)
                    crop_where, values = crops[name]
                    x, w, y, h = (_int(v, crop_where, "a crop value") for v in values)
                    crop = CropBox(x, y, w, h)
                    if w == 0 or h == 0:
                        reasons.append(f"its crop window is empty ({_short(crop_where)})")
                    elif height and y + h > height:
                        reasons.append(
                            f"its crop window (rows {y}-{y + h}) reaches below a frame {height} px high ({_short(crop_where)})"
                        )
                clip_name = f"{group}_{name}"
                if reasons:
                    unbuildable.append(Unbuildable(clip_name, "; ".join(reasons)))
                    continue
                assert crop is not None
                clips.append(HdtfClip(group, video, index, url, video_id, start, end, height, crop))
        for video in sorted(set(urls) - set(annotated)):
            notes.append(f"{_short(urls[video][0])}: {group} {video} has a URL but no time ranges: no clip")
        for name in sorted(set(crops) - used_crops):
            notes.append(
                f"{_short(crops[name][0])}: {group} {name} has a crop window but no time range: no clip"
            )
    return HdtfLists(tuple(clips), tuple(unbuildable), tuple(notes))


def _short(where: str) -> str:
    """`file:line` without the folder, for reasons and notes."""
    return Path(where).name


def _clock(seconds: float) -> str:
    whole = int(seconds)
    text = (
        f"{whole // 60:02d}:{whole % 60:02d}"
        if whole < 3600
        else f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
    )
    return text + (f"{seconds - whole:.3f}"[1:] if seconds != whole else "")


# --- the test selection --------------------------------------------------------------------------


def select_test_clips(lists: HdtfLists, count: int = TEST_COUNT, seed: int = TEST_SEED) -> list[HdtfClip]:
    """`count` clips, one per source video, split evenly over the groups and interleaved RD, WDA, WRA, …

    Rule: `random.Random(seed)`; per group in GROUPS order, sample count/3 of its YouTube ids (sorted;
    an id listed under two names counts once, under its first), then one clip of each sampled id
    (`choice` over its clips in list order). The groups are interleaved so the first N of the list
    span the groups.
    """
    if count % len(GROUPS):
        raise ValueError(f"count must split evenly over the {len(GROUPS)} groups, got {count}")
    rng = random.Random(seed)
    by_id: dict[str, list[HdtfClip]] = {}
    for clip in lists.clips:
        first = by_id.setdefault(clip.video_id, [clip])[0]
        if clip is not first and (first.group, first.video) == (clip.group, clip.video):
            by_id[clip.video_id].append(clip)
    per_group = []
    for group in GROUPS:
        ids = sorted(i for i, clips in by_id.items() if clips[0].group == group)
        picked = rng.sample(ids, count // len(GROUPS))
        per_group.append([rng.choice(by_id[i]) for i in picked])
    return [clip for row in zip(*per_group, strict=True) for clip in row]


def format_test_list(clips: Sequence[HdtfClip], seed: int = TEST_SEED) -> str:
    """The committed test list: a header saying how it was made, then one clip name a line."""
    header = [
        f"# synclip's HDTF test set: {len(clips)} clips, one per source video, {len(clips) // len(GROUPS)} per group.",
        f"# Lists: {HDTF_REPOSITORY} at {HDTF_COMMIT}.",
        f"# Made by synclip.data.hdtf.select_test_clips(load_lists(), {len(clips)}, seed={seed}):",
        "#   random.Random(seed); per group in the order RD, WDA, WRA: sample(sorted YouTube ids of the group's",
        "#   buildable clips, count/3), then choice(that id's clips in list order) for each; groups interleaved.",
        "# `synclip data hdtf --clips N` builds the first N lines.",
    ]
    return "\n".join([*header, *(clip.name for clip in clips)]) + "\n"


def read_test_list(path: str | Path) -> list[str]:
    """Clip names of a test list (comments and blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such test list")
    names = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not re.fullmatch(r"(RD|WDA|WRA)_[A-Za-z0-9-]+_\d+", line):
            raise HdtfListError(f"{path}:{number}: {line!r} is not a clip name like RD_Radio11_0")
        names.append(line)
    return names


def choose_clips(
    lists: HdtfLists, which: str, folder: str | Path = ASSETS
) -> tuple[list[HdtfClip], list[Unbuildable]]:
    """(clips to build, unbuildable clips to report) for `--clips`: `all` (every annotated clip), `test`
    (`folder`'s whole test list) or N (its first N)."""
    if which == "all":
        return list(lists.clips), list(lists.unbuildable)
    if which != "test" and not re.fullmatch(r"\d+", which):
        raise UserError(f"--clips must be 'test', a number of test clips or 'all', got {which!r}")
    names = read_test_list(Path(folder) / TEST_LIST)
    count = len(names) if which == "test" else int(which)
    if not 1 <= count <= len(names):
        raise UserError(
            f"--clips must be between 1 and {len(names)} (the test list's length) or 'all', got {count}"
        )
    known = lists.by_name()
    missing = [name for name in names[:count] if name not in known]
    if missing:
        raise UserError(f"{Path(folder) / TEST_LIST}: not buildable clips of the lists: {', '.join(missing)}")
    return [known[name] for name in names[:count]], []


def describe(clip: HdtfClip) -> str:
    """One line for `--list`."""
    box = clip.crop
    return (
        f"{clip.name:<34} {_clock(clip.start)}-{_clock(clip.end)} ({float(clip.seconds):5.0f} s)  "
        f"{clip.height}p crop x={box.x} y={box.y} w={box.w} h={box.h}  {clip.url}"
    )


# --- downloading ---------------------------------------------------------------------------------


def parse_rate(text: str) -> int:
    """A download rate like 500K, 2M or 1.5M (bytes per second) → bytes per second."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]?)(?:i?B)?", text.strip(), re.IGNORECASE)
    if match is None or float(match.group(1)) <= 0:
        raise UserError(f"--rate-limit must be bytes per second like 500K or 2M, got {text!r}")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[match.group(2).upper()]
    return int(float(match.group(1)) * scale)


def youtube_download(rate_limit: int | None = None, ffmpeg: str | Path | None = None) -> Download:
    """The network download: yt-dlp at most `height` px high, mp4 video + m4a audio merged to mp4.

    yt-dlp works in a hidden folder beside `dest` that is kept between tries (its own `.part` files
    resume); the merged file is moved to `dest` at the end. SourceUnavailableError for a removed, private or
    locked video; yt-dlp's DownloadError for the rest.
    """
    import yt_dlp

    if ffmpeg is None:
        import imageio_ffmpeg

        ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()

    def download(url: str, dest: Path, height: int) -> None:
        work = dest.with_name(f".{dest.name}.yt-dlp")
        work.mkdir(parents=True, exist_ok=True)
        options = {
            "format": f"bestvideo[height<={height}][ext=mp4]+bestaudio[ext=m4a]/best[height<={height}]",
            "merge_output_format": "mp4",
            "outtmpl": str(work / "%(id)s.%(ext)s"),
            "quiet": True,
            "no_warnings": True,
            "noprogress": True,
            "noplaylist": True,
            "continuedl": True,
            "ffmpeg_location": str(ffmpeg),
            "ratelimit": rate_limit,
            "logger": _YtDlpLog(),
        }
        try:
            with yt_dlp.YoutubeDL(options) as ydl:
                ydl.download([url])
        except yt_dlp.utils.DownloadError as error:
            message = re.sub(r"^ERROR:\s*", "", str(error))
            if any(phrase in message.lower() for phrase in UNAVAILABLE):
                shutil.rmtree(work, ignore_errors=True)
                raise SourceUnavailableError(message) from None
            raise
        # the merged mp4 (or, from the `best` fallback, one file of the site's container); not the
        # per-format `<id>.f137.mp4` parts or unfinished `.part` files
        finished = [p for p in work.iterdir() if not re.search(r"\.f\d+\.|\.part$|\.ytdl$|\.temp\.", p.name)]
        if len(finished) != 1:
            raise RuntimeError(
                f"yt-dlp left {sorted(p.name for p in work.iterdir())} in {work}, not one video"
            )
        os.replace(finished[0], dest)
        shutil.rmtree(work)

    return download


class _YtDlpLog:
    """yt-dlp's messages into synclip's log at DEBUG: its errors reach the report through DownloadError."""

    def debug(self, message: str) -> None:
        log.debug("yt-dlp: %s", message)

    info = warning = error = debug


def standin_download(folder: str | Path) -> Download:
    """Test-only (see TEST_ROOT_ENV): "download" by copying `<folder>/<youtube id>.mp4`."""
    folder = Path(folder)

    def download(url: str, dest: Path, height: int) -> None:
        match = YOUTUBE_ID.match(url)
        assert match is not None, url
        source = folder / f"{match.group(1)}.mp4"
        if not source.is_file():
            raise SourceUnavailableError(f"stand-in source {source} does not exist")
        shutil.copyfile(source, dest)

    return download


def from_environment() -> tuple[Path, Download | None]:
    """(lists folder, download override): the vendored lists and None, unless TEST_ROOT_ENV is set."""
    root = os.environ.get(TEST_ROOT_ENV)
    if not root:
        return ASSETS, None
    log.warning("%s=%s: TEST MODE, lists and sources come from that folder", TEST_ROOT_ENV, root)
    return Path(root) / "lists", standin_download(Path(root) / "sources")


# --- cutting ---------------------------------------------------------------------------------------


def cut_clip(
    source: str | Path,
    clip: HdtfClip,
    dest: str | Path,
    audio: np.ndarray,
    on_frame: Callable[[int], None] | None = None,
) -> list[str]:
    """Cut `clip` from its downloaded `source` into `dest`: frames [start, end) at 25 fps (frame exact:
    decoded from the keyframe before and dropped up to start), the crop window, 512×512, with the 16 kHz
    mono `audio` (the whole source's samples) of the same span as AAC. Returns notes (a crop window
    rescaled to a download of another height). CutError when the range or the window does not fit;
    an error midway leaves no file at `dest` (VideoWriter writes a sibling and renames it at the end).
    """
    source, dest = Path(source), Path(dest)
    info = probe(source)
    video = require_video(info)
    width, height = video.display_size
    notes = []
    crop = clip.crop
    if height != clip.height:
        # HDTF's windows are in pixels of the reference resolution; YouTube may no longer offer it
        crop = clip.crop.scaled(Fraction(height, clip.height))
        notes.append(f"downloaded {width}x{height}, not {clip.height}p: crop window scaled to {crop}")
    if not crop.fits(width, height):
        raise CutError(f"crop window {crop} lies outside the {width}x{height} frame")
    if clip.end > video.duration + 1e-3:
        raise CutError(
            f"time range {_clock(clip.start)}-{_clock(clip.end)} ends past the end of the video ({video.duration:.2f} s)"
        )
    first = round(clip.start * AUDIO_SAMPLE_RATE)
    samples = audio[first : first + clip.frames * SAMPLES_PER_FRAME]
    if len(samples) < (clip.frames - 1) * SAMPLES_PER_FRAME:
        raise CutError(f"the audio ends at {len(audio) / AUDIO_SAMPLE_RATE:.2f} s, before the clip's end")
    # within one frame of the end: pad, so the audio spans exactly N frames
    samples = np.pad(samples, (0, clip.frames * SAMPLES_PER_FRAME - len(samples)))
    interpolation = cv2.INTER_AREA if crop.w >= CLIP_SIZE else cv2.INTER_CUBIC
    written = 0
    with VideoWriter(dest, CLIP_SIZE, CLIP_SIZE, VIDEO_FPS, audio_rate=AUDIO_SAMPLE_RATE) as writer:
        for frame in trimmed(iter_frames(source, VIDEO_FPS, clip.start, clip.end)):  # (H, W, 3)
            window = frame[crop.y : crop.y + crop.h, crop.x : crop.x + crop.w]
            writer.write_frame(cv2.resize(window, (CLIP_SIZE, CLIP_SIZE), interpolation=interpolation))
            # the frame's 640 samples with it, so the file interleaves audio and video
            writer.write_audio(samples[None, written * SAMPLES_PER_FRAME : (written + 1) * SAMPLES_PER_FRAME])
            written += 1
            if on_frame is not None:
                on_frame(written)
        if written != clip.frames:
            raise CutError(f"decoded {written} of the clip's {clip.frames} frames: the video ends early")
    return notes


def incomplete(path: str | Path, clip: HdtfClip) -> str | None:
    """Why the file at `path` is not a finished clip (None when it is): 512×512 at 25 fps with audio,
    lasting the clip's duration ±1 frame."""
    try:
        info = probe(path)
        video = require_video(info)
    except MediaError as error:
        return str(error)
    if (video.width, video.height) != (CLIP_SIZE, CLIP_SIZE) or video.fps != VIDEO_FPS:
        return f"{video.width}x{video.height} at {float(video.fps):g} fps, not {CLIP_SIZE}x{CLIP_SIZE} at {VIDEO_FPS}"
    if info.audio is None or info.audio.sample_rate != AUDIO_SAMPLE_RATE:
        return "no 16 kHz audio stream"
    if abs(video.duration - clip.seconds) > Fraction(1, VIDEO_FPS) + 1e-6:
        return f"lasts {video.duration:.3f} s, not {float(clip.seconds):.3f} s"
    return None


# --- building ---------------------------------------------------------------------------------------


def build_hdtf(
    out: str | Path,
    clips: Sequence[HdtfClip],
    *,
    download: Download | None = None,
    rate_limit: int | None = None,
    retries: int = 3,
    sleep: float = 5.0,
    keep_sources: bool = False,
    ffmpeg: str | Path | None = None,
    unbuildable: Iterable[Unbuildable] = (),
) -> dict:
    """Build `clips` into `out` and return the report (also written to `<out>/hdtf_report.json`).

    Per source video: skip it when all its clips are complete already; else download it once
    (`download`, default `youtube_download(rate_limit, ffmpeg)`; `retries` more tries after a failure,
    waiting `sleep`·2^k s, none for SourceUnavailableError) to `<out>/.downloads/<id>_<height>p.mp4.part`,
    renamed without `.part` once it probes as a video; cut each clip (`cut_clip`); delete the source
    when all its clips are done, unless `keep_sources`; sleep `sleep` s before the next download.
    Every failure lands in the report's `failed` list with its stage and reason and the run goes on;
    `unbuildable` (clips the lists cannot give) is reported as it is.
    """
    out = Path(out)
    if retries < 0 or sleep < 0:
        raise ValueError(f"retries and sleep must be >= 0, got {retries} and {sleep}")
    names = [clip.name for clip in clips]
    if len(set(names)) != len(names):
        raise ValueError(f"clips must be distinct, got {len(names)} names of which {len(set(names))} differ")
    download = download or youtube_download(rate_limit, ffmpeg)
    downloads = out / DOWNLOADS
    downloads.mkdir(parents=True, exist_ok=True)
    reproducible_encoding()  # the clips repeat byte for byte, so DVC's hash of the folder does too
    report: dict = {
        "lists": f"{HDTF_REPOSITORY} at {HDTF_COMMIT}",
        "built": [],
        "skipped": [],
        "failed": [],
        "unbuildable": [dataclasses.asdict(u) for u in unbuildable],
    }
    by_source: dict[str, list[HdtfClip]] = {}
    for clip in clips:
        by_source.setdefault(clip.source, []).append(clip)

    def save() -> None:
        report["summary"] = {key: len(report[key]) for key in ("built", "skipped", "failed", "unbuildable")}
        write_json(out / REPORT, report, sort_keys=False)

    downloaded_before = False
    with progress("clips") as bar:
        task = bar.add_task("hdtf", total=len(clips))
        for key, group in by_source.items():
            todo = []
            for clip in group:
                path = out / f"{clip.name}.mp4"
                reason = incomplete(path, clip) if path.exists() else None
                if path.exists() and reason is None:
                    report["skipped"].append({"clip": clip.name, "reason": "already built"})
                    bar.advance(task)
                else:
                    if reason is not None:  # not one of ours, or from other lists: built again
                        log.warning("%s: rebuilding (%s)", path, reason)
                        path.unlink()
                    todo.append(clip)
            if not todo:
                save()
                continue
            source = downloads / f"{key}.mp4"
            if not source.is_file():
                if downloaded_before and sleep:
                    time.sleep(sleep)
                bar.update(task, description=f"download {key}")
                failure = _download(download, todo[0], source, retries, sleep)
                bar.update(task, description="hdtf")
                downloaded_before = True
                if failure is not None:
                    for clip in todo:
                        report["failed"].append(
                            {"clip": clip.name, "stage": "download", "url": clip.url, "reason": failure}
                        )
                        bar.advance(task)
                    save()
                    continue
            cut_failed = _cut_all(source, todo, out, report, bar, task)
            if not keep_sources and not cut_failed:
                source.unlink()
            save()
    save()
    return report


def _download(download: Download, clip: HdtfClip, source: Path, retries: int, sleep: float) -> str | None:
    """Download `clip`'s source video to `source` (through `.part`); the failure's reason, or None."""
    part = source.with_name(source.name + ".part")
    reason = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(sleep * 2 ** (attempt - 1))
        part.unlink(missing_ok=True)
        try:
            download(clip.url, part, clip.height)
            require_video(probe(part))
        except SourceUnavailableError as error:
            part.unlink(missing_ok=True)
            return f"unavailable: {error}"
        # any failure of an injected downloader (network, yt-dlp, disk) is recorded and retried
        except Exception as error:
            part.unlink(missing_ok=True)
            reason = f"{type(error).__name__}: {error}"
            log.warning("%s: download try %d of %d failed: %s", clip.url, attempt + 1, retries + 1, reason)
            continue
        os.replace(part, source)
        return None
    return f"failed after {retries + 1} tries: {reason}"


def _cut_all(
    source: Path, clips: list[HdtfClip], out: Path, report: dict, bar: Progress, task: TaskID
) -> bool:
    """Cut every clip of one source into `out`, recording each outcome; True when any failed."""
    failed = False
    audio: np.ndarray | str
    try:
        audio = read_audio(source)  # the whole source at 16 kHz mono: 3.8 MB a minute
    except MediaError as error:
        audio = f"no usable audio: {error}"
    for clip in clips:
        frames = bar.add_task(f"cut {clip.name}", total=clip.frames)
        try:
            if isinstance(audio, str):
                raise CutError(audio)
            notes = cut_clip(
                source, clip, out / f"{clip.name}.mp4", audio, lambda n, t=frames: bar.update(t, completed=n)
            )
            reason = incomplete(out / f"{clip.name}.mp4", clip)
            if reason is not None:
                (out / f"{clip.name}.mp4").unlink()
                raise CutError(f"the written clip is not right: {reason}")
        except (CutError, MediaError, av.error.FFmpegError, OSError) as error:
            failed = True
            report["failed"].append(
                {"clip": clip.name, "stage": "cut", "reason": str(error) or type(error).__name__}
            )
        else:
            report["built"].append(
                {"clip": clip.name, "frames": clip.frames, "seconds": float(clip.seconds), "notes": notes}
            )
        finally:
            bar.remove_task(frames)
            bar.advance(task)
    return failed


def summary_line(report: dict, out: str | Path) -> str:
    """`hdtf: 28 built, 1 skipped, 1 failed, 0 unbuildable (report: <out>/hdtf_report.json)`."""
    counts = ", ".join(f"{len(report[key])} {key}" for key in ("built", "skipped", "failed", "unbuildable"))
    return f"hdtf: {counts} (report: {Path(out) / REPORT})"


def failure_lines(report: dict) -> list[str]:
    """One line per failed and unbuildable clip, with its reason."""
    lines = [
        f"failed       {entry['clip']} ({entry['stage']}): {entry['reason']}" for entry in report["failed"]
    ]
    lines += [f"unbuildable  {entry['name']}: {entry['reason']}" for entry in report["unbuildable"]]
    return lines
