"""Fixtures of the Sync-C / Sync-D instrument: syncnet_python's `S` and `SyncNetEval.evaluate`, as LatentSync
ships them (eval/syncnet/), on seeded random weights: tests/fixtures/latentsync/sync_conf.safetensors.

Weights: `tests.seeded_weights.seeded_state(shapes_of(S), SEED)`, saved as a plain state dict (the
format of syncnet_v2.model) and loaded with upstream's own `SyncNetEval.loadParameters`; the test rebuilds
them. Inputs: the closed-form clip of tests/sync_conf_inputs.py (50 frames, a voice 3 frames late), which
the test computes too; the fixture stores only upstream's outputs and the inputs' sha256.

Recorded:
- `mfcc`: python_speech_features.mfcc of the samples, stacked (13, T) as `evaluate` stacks it.
- `embed.lips` / `embed.audio`: S's embeddings of the windows `embed.windows`, in float64 (a `.double()`
  copy of S on float64 inputs; fp32 rounding would hide the differences the test looks for).
- `memory.*`: `evaluate` with its file reading replaced by the in-memory frames and samples (its
  `subprocess`, `glob`, `cv2.imread` and `wavfile` swapped for stand-ins; everything after is upstream's
  float32 code): the embeddings and distances `calc_pdist` saw and returned, `mean_dists`, and
  (av_offset, min_dist, conf). synclip must equal these.
- `e2e.*`: `evaluate` end to end on an mp4 of the same clip (lossless libx264rgb video, 96 kb/s AAC
  audio, written with synclip's VideoWriter), with ffmpeg (imageio-ffmpeg's) on PATH for its JPEG and
  wav extraction.
- `decoded.*`: upstream's arithmetic on that mp4 without the JPEG round trip (frames decoded by ffmpeg
  straight to bgr24, equal to the inputs since the video is lossless; audio from the same ffmpeg wav
  command as `evaluate`). e2e − decoded is the JPEG effect, decoded − memory the AAC effect.

Stubbed: `latentsync.utils.util` (its `check_model_and_download` only downloads a missing file; the
real module needs matplotlib, decord, torchvision). Needs python_speech_features in /tmp/upstream-deps
(`.venv/bin/pip install --target /tmp/upstream-deps --no-deps python_speech_features`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import subprocess
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import torch
from scipy.io import wavfile

from scripts.latentsync_fixtures.common import write_fixture
from synclip.media.io import VideoWriter
from tests.seeded_weights import seeded_state, shapes_of
from tests.sync_conf_inputs import AUDIO_DELAY, FRAMES, mouth_crops, speech

UPSTREAM_DEPS = "/tmp/upstream-deps"
SOURCES = ("eval/syncnet/syncnet.py", "eval/syncnet/syncnet_eval.py", "eval/eval_sync_conf.py")
# With random towers a zero-padded audio window is nearer than a real one, so the best offset lands at an
# end (±15) for most seeds; 11 has the widest gap between the best and second-best offset of seeds 0–19
# (0.11 on distances of ~760), so the offset comparison is nowhere near a tie.
SEED = 11
VSHIFT = 15
EMBED_WINDOWS = [0, 17, 44]  # first, middle and last of the 45 windows


def sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


@contextlib.contextmanager
def in_memory(module: types.ModuleType, frames: np.ndarray, samples: np.ndarray) -> Iterator[None]:
    """`evaluate` reads (N, 224, 224, 3) BGR `frames` and int16 `samples` instead of running ffmpeg."""
    names = [f"{i + 1:06d}.jpg" for i in range(len(frames))]
    stand_ins = {
        "subprocess": types.SimpleNamespace(call=lambda *args, **kwargs: 0),
        "glob": types.SimpleNamespace(glob=lambda pattern: list(names)),
        "cv2": types.SimpleNamespace(
            imread=lambda name: frames[int(Path(name).stem) - 1].copy(), resize=cv2.resize
        ),
        "wavfile": types.SimpleNamespace(read=lambda path: (16000, samples.copy())),
    }
    saved = {name: getattr(module, name) for name in stand_ins}
    for name, value in stand_ins.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


@contextlib.contextmanager
def recording(module: types.ModuleType, record: dict) -> Iterator[None]:
    """Keeps the arguments and result of upstream's `calc_pdist` in `record`."""
    original = module.calc_pdist

    def calc_pdist(feat1, feat2, vshift=10):
        dists = original(feat1, feat2, vshift=vshift)
        record.update(lips=feat1.clone(), audio=feat2.clone(), dists=dists, vshift=vshift)
        return dists

    module.calc_pdist = calc_pdist
    try:
        yield
    finally:
        module.calc_pdist = original


def evaluate(syncnet, module: types.ModuleType, video: str, temp_dir: Path) -> tuple[tuple, dict]:
    """(av_offset, min_dist, conf) of upstream's `evaluate`, and what its `calc_pdist` saw."""
    record: dict = {}
    with recording(module, record):
        result = syncnet.evaluate(video, temp_dir=str(temp_dir), batch_size=20, vshift=VSHIFT)
    pdist = torch.stack(record["dists"], 1)  # (2·vshift + 1, L), as evaluate stacks it
    record["pdist"] = pdist
    record["mean"] = torch.mean(pdist, 1)
    return result, record


def write_mp4(path: Path, crops: np.ndarray, samples: np.ndarray) -> None:
    """Lossless RGB H.264 (so a decode gives the crops back) with AAC audio, at 25 fps."""
    with VideoWriter(path, 224, 224, 25, audio_rate=16000, lossless=True) as writer:
        for frame in crops:
            writer.write_frame(frame[..., ::-1])
        writer.write_audio(samples[None].astype(np.float32) / 32768.0)


def ffmpeg_frames(ffmpeg: str, video: Path) -> np.ndarray:
    """(N, 224, 224, 3) BGR frames decoded by ffmpeg with no JPEG in between."""
    raw = subprocess.run(
        [
            ffmpeg,
            "-loglevel",
            "error",
            "-nostdin",
            "-i",
            str(video),
            "-f",
            "rawvideo",
            "-pix_fmt",
            "bgr24",
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, 224, 224, 3)


def ffmpeg_wav(ffmpeg: str, video: Path, wav: Path) -> np.ndarray:
    """The int16 samples of `evaluate`'s own audio extraction command."""
    subprocess.run(
        [
            ffmpeg,
            "-loglevel",
            "error",
            "-nostdin",
            "-y",
            "-i",
            str(video),
            "-async",
            "1",
            "-ac",
            "1",
            "-vn",
            "-acodec",
            "pcm_s16le",
            "-ar",
            "16000",
            str(wav),
        ],
        check=True,
    )
    rate, samples = wavfile.read(wav)
    assert rate == 16000, rate
    assert samples.dtype == np.int16, samples.dtype
    return samples


def check_model_and_download(path: str, *args: object) -> None:
    """Upstream's downloads a missing checkpoint; here the checkpoint is always written first."""
    if not os.path.exists(path):
        raise FileNotFoundError(path)


def ffmpeg_jpegs(ffmpeg: str, video: Path, folder: Path) -> np.ndarray:
    """(N, 224, 224, 3) BGR frames of `evaluate`'s own JPEG extraction command, read back with cv2."""
    folder.mkdir()
    subprocess.run(
        [
            ffmpeg,
            "-loglevel",
            "error",
            "-nostdin",
            "-y",
            "-i",
            str(video),
            "-f",
            "image2",
            str(folder / "%06d.jpg"),
        ],
        check=True,
    )
    return np.stack([cv2.imread(str(name)) for name in sorted(folder.glob("*.jpg"))])


def effect(a: tuple, b: tuple) -> dict:
    return {"offset": a[0] - b[0], "min_dist": a[1] - b[1], "conf": a[2] - b[2]}


def generate(root: Path) -> None:
    if UPSTREAM_DEPS not in sys.path:
        sys.path.append(UPSTREAM_DEPS)
    import python_speech_features

    util = types.ModuleType("latentsync.utils.util")
    util.check_model_and_download = check_model_and_download
    sys.modules.setdefault("latentsync.utils.util", util)
    import eval.syncnet.syncnet_eval as module
    from eval.syncnet.syncnet_eval import SyncNetEval

    crops, samples = mouth_crops(FRAMES), speech(FRAMES, AUDIO_DELAY)
    syncnet = SyncNetEval(device="cpu")
    tensors: dict[str, torch.Tensor | np.ndarray] = {}
    results: dict[str, tuple] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.save(seeded_state(shapes_of(syncnet.__S__), SEED), tmp / "syncnet_v2.model")
        syncnet.loadParameters(str(tmp / "syncnet_v2.model"))
        net = syncnet.__S__.eval()

        mfcc = np.stack([np.array(i) for i in zip(*python_speech_features.mfcc(samples, 16000), strict=True)])
        tensors["mfcc"] = mfcc  # (13, T) float64

        net64 = copy.deepcopy(net).double()
        im = np.transpose(
            np.expand_dims(np.stack(list(crops), axis=3), axis=0), (0, 3, 4, 1, 2)
        )  # (1, C, N, H, W)
        imtv, cct = torch.from_numpy(im.astype(float)), torch.from_numpy(mfcc[None, None])
        with torch.no_grad():
            lips = net64.forward_lip(torch.cat([imtv[:, :, v : v + 5] for v in EMBED_WINDOWS]))
            audio = net64.forward_aud(torch.cat([cct[:, :, :, 4 * v : 4 * v + 20] for v in EMBED_WINDOWS]))
        tensors |= {"embed.windows": torch.tensor(EMBED_WINDOWS), "embed.lips": lips, "embed.audio": audio}

        with in_memory(module, crops, samples):
            results["memory"], record = evaluate(syncnet, module, "memory.mp4", tmp / "memory")
        tensors |= {f"memory.{k}": record[k] for k in ("lips", "audio", "pdist", "mean")}
        ranked = record["mean"].sort().values

        video = tmp / "clip.mp4"
        write_mp4(video, crops, samples)
        ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
        decoded = ffmpeg_frames(ffmpeg, video)
        assert np.array_equal(decoded, crops), "the lossless mp4 does not decode to the crops"
        wav = ffmpeg_wav(ffmpeg, video, tmp / "audio.wav")
        jpegs = ffmpeg_jpegs(ffmpeg, video, tmp / "jpegs")
        error = jpegs.astype(np.float64) - crops
        jpeg_error = {
            "psnr_db": float(10 * np.log10(255**2 / np.mean(error**2))),
            "mean_abs": float(np.abs(error).mean()),
        }
        with in_memory(module, decoded, wav):
            results["decoded"], record = evaluate(syncnet, module, str(video), tmp / "decoded")
        tensors["decoded.mean"] = record["mean"]

        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        (bin_dir / "ffmpeg").symlink_to(ffmpeg)
        path = os.environ["PATH"]
        os.environ["PATH"] = f"{bin_dir}{os.pathsep}{path}"
        try:
            results["e2e"], record = evaluate(syncnet, module, str(video), tmp / "e2e")
        finally:
            os.environ["PATH"] = path
        tensors["e2e.mean"] = record["mean"]

    for name, (offset, min_dist, conf) in results.items():
        tensors[f"{name}.result"] = torch.tensor([offset, min_dist, conf], dtype=torch.float64)
    notes = {
        "seed": SEED,
        "vshift": VSHIFT,
        "batch_size": 20,
        "frames": FRAMES,
        "audio_delay": AUDIO_DELAY,
        "windows": int(tensors["memory.lips"].shape[0]),
        "sha256": {"crops": sha256(crops), "samples": sha256(samples)},
        "wav_samples": len(wav),
        "jpeg_error": jpeg_error,  # of ffmpeg's default-quality JPEGs against the crops
        "memory_margin": float(ranked[1] - ranked[0]),  # second-best − best mean distance
        "results": {name: list(value) for name, value in results.items()},
        "effects": {
            "jpeg": effect(results["e2e"], results["decoded"]),
            "aac": effect(results["decoded"], results["memory"]),
        },
        "ffmpeg": Path(imageio_ffmpeg.get_ffmpeg_exe()).name,
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    print(notes["results"], notes["effects"], sep="\n")
    write_fixture("sync_conf", tensors, root, SOURCES, notes)
