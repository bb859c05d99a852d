"""The tiny profile's TREPA backbone: masked-autoencoding pretraining of a small transformers
VideoMAE (tube masking, as VideoMAE) on aligned face clips; saved so that `load_trepa` reads it.

The full profile copies a VideoMAE-v2 folder instead (`install_pretrained`), checked by loading it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from einops import rearrange
from transformers import VideoMAEConfig, VideoMAEForPreTraining, VideoMAEImageProcessor
from transformers.utils import logging as transformers_logging
from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from synclip.config import VideoMAEParams, to_dict
from synclip.errors import UserError
from synclip.log import progress, track
from synclip.media.decode import iter_frames
from synclip.runtime import autocast_dtype
from synclip.train.checkpoint import load_training_state, save_training_state
from synclip.train.optim import adamw, learning_rate
from synclip.train.trepa import TrepaLoss, load_trepa

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
ADAM_BETAS = (0.9, 0.95)  # VideoMAE's pretraining optimizer
# files of a transformers VideoMAE folder that `install_pretrained` copies
FOLDER_FILES = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "preprocessor_config.json",
)


# --- data ----------------------------------------------------------------------------------------


def load_clips(
    manifest: pd.DataFrame, clips_dir: str | Path, size: int | None, min_frames: int, description: str
) -> list[np.ndarray]:
    """Every clip of `manifest` as uint8 (F, S, S, 3), resized to `size` (None: as stored).

    Clips shorter than `min_frames` cannot hold one window and are left out (logged).
    """
    clips, short = [], []
    for row in track(list(manifest.itertuples()), description, unit="clips"):
        frames = [
            f if size is None else cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA)
            for f in iter_frames(Path(clips_dir) / f"{row.clip}.mp4")
        ]
        (clips if len(frames) >= min_frames else short).append(np.stack(frames) if frames else row.clip)
    if short:
        log.warning("%s: %d clips shorter than %d frames left out", description, len(short), min_frames)
    if not clips:
        raise UserError(f"{clips_dir}: no clip of {description} has {min_frames} frames")
    return clips


class WindowSampler:
    """Random windows of `num_frames` consecutive frames; every start of every clip equally likely."""

    def __init__(self, clips: list[np.ndarray], num_frames: int, rng: np.random.Generator) -> None:
        self.clips, self.num_frames, self.rng = clips, num_frames, rng
        starts = np.array([len(c) - num_frames + 1 for c in clips])
        self.weights = starts / starts.sum()

    def windows(self, count: int) -> np.ndarray:
        """uint8 (B, F, S, S, 3)."""
        picks = self.rng.choice(len(self.clips), size=count, p=self.weights)
        out = []
        for i in picks:
            start = int(self.rng.integers(0, len(self.clips[i]) - self.num_frames + 1))
            out.append(self.clips[i][start : start + self.num_frames])
        return np.stack(out)


def tube_mask(batch: int, config: VideoMAEConfig, ratio: float, rng: np.random.Generator) -> torch.Tensor:
    """bool (B, N), True = hidden: the same `int(ratio · n)` of the n patches of a frame hidden in
    every tubelet (VideoMAE's TubeMaskingGenerator); token order (t, h, w) as the Conv3d flattens."""
    grid = (config.image_size // config.patch_size) ** 2
    tubelets = config.num_frames // config.tubelet_size
    hidden = int(ratio * grid)
    spatial = np.argsort(rng.random((batch, grid)), axis=1) < hidden  # (B, n)
    return torch.from_numpy(np.repeat(spatial[:, None, :], tubelets, axis=1).reshape(batch, -1))


def to_pixel_values(windows: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (B, F, S, S, 3) -> float (B, F, 3, S, S) normalised with ImageNet mean / std, which
    `VideoMAEForPreTraining` undoes to build its reconstruction targets."""
    frames = torch.from_numpy(np.ascontiguousarray(windows)).to(device)
    frames = rearrange(frames, "b f h w c -> b f c h w").float() / 255
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN, device=device).view(1, 1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD, device=device).view(1, 1, 3, 1, 1)
    return (frames - mean) / std


def to_clips(windows: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (B, F, H, W, 3) -> float (B, 3, F, H, W) in [−1, 1], what TREPA takes."""
    frames = torch.from_numpy(np.ascontiguousarray(windows)).to(device)
    return rearrange(frames, "b f h w c -> b c f h w").float() / 127.5 - 1


# --- model ---------------------------------------------------------------------------------------


def videomae_config(params: VideoMAEParams) -> VideoMAEConfig:
    return VideoMAEConfig(
        image_size=params.image_size,
        patch_size=params.patch_size,
        num_frames=params.num_frames,
        tubelet_size=params.tubelet_size,
        hidden_size=params.hidden_size,
        num_hidden_layers=params.num_layers,
        num_attention_heads=params.num_heads,
        intermediate_size=params.intermediate_size,
        decoder_hidden_size=params.decoder_hidden_size,
        decoder_num_hidden_layers=params.decoder_num_layers,
        decoder_num_attention_heads=params.decoder_num_heads,
        decoder_intermediate_size=params.decoder_intermediate_size,
        layer_norm_eps=1e-6,  # VideoMAE's (timm) LayerNorms
        use_mean_pooling=False,  # the pretraining encoder ends in a LayerNorm over tokens, as VideoMAE's
        norm_pix_loss=True,  # targets: each patch normalised by its own mean / std (VideoMAE)
    )


def zero_prediction_loss(config: VideoMAEConfig) -> float:
    """The loss of predicting 0 for every normalised target patch: (n − 1)/n with the unbiased std."""
    n = config.tubelet_size * config.patch_size**2
    return (n - 1) / n


# --- training ------------------------------------------------------------------------------------


@dataclass
class History:
    rows: list[dict]  # one per validation: step, train_loss, val_loss, lr, seconds
    seconds: float


@dataclass
class ValSet:
    """Fixed windows of val identities and fixed masks: the same task at every evaluation."""

    windows: np.ndarray  # uint8 (V, F, S, S, 3)
    masks: torch.Tensor  # bool (V, N)

    @classmethod
    def draw(cls, clips: list[np.ndarray], count: int, config: VideoMAEConfig, ratio: float, seed: int):
        rng = np.random.default_rng(seed)
        windows = WindowSampler(clips, config.num_frames, rng).windows(count)
        return cls(windows, tube_mask(count, config, ratio, rng))


def validation_loss(
    model: VideoMAEForPreTraining, val: ValSet, device: torch.device, batch: int = 16
) -> float:
    """Mean reconstruction loss (normalised-pixel MSE on hidden patches) over the fixed val windows."""
    was_training = model.training
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(val.windows), batch):
            pixels = to_pixel_values(val.windows[i : i + batch], device)
            loss = model(pixels, bool_masked_pos=val.masks[i : i + batch].to(device)).loss
            total += float(loss) * len(pixels)
    model.train(was_training)
    return total / len(val.windows)


def fingerprint(params: VideoMAEParams, seed: int, clips: list[np.ndarray]) -> str:
    payload = json.dumps([to_dict(params), seed, [c.shape[0] for c in clips]], sort_keys=True)
    digest = hashlib.sha256(payload.encode())
    for clip in clips:  # the frames themselves: other data must not resume this run
        digest.update(hashlib.sha256(clip.tobytes()).digest())
    return digest.hexdigest()[:16]


def pretrain_videomae(
    train: list[np.ndarray],
    val: list[np.ndarray],
    params: VideoMAEParams,
    out_dir: str | Path,
    device: torch.device,
    seed: int,
    stop_after: int | None = None,
) -> tuple[VideoMAEForPreTraining, History]:
    """Pretrain (or resume) and write the transformers folder `out_dir` (see `save_videomae`).

    `train` / `val`: uint8 clips (F, S, S, 3) at `params.image_size`. A complete checkpoint
    (`out_dir/checkpoint.pt`) is written every `checkpoint_every` steps; a rerun with the same
    params, seed and clips continues from it and ends with the same weights as an uninterrupted
    run. `stop_after` ends the run early after that many steps (for tests).
    """
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = videomae_config(params)
    model = VideoMAEForPreTraining(config).to(device)
    optimizer = adamw(model.parameters(), device, params.lr, params.weight_decay, betas=ADAM_BETAS)
    amp = autocast_dtype(device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    sampler = WindowSampler(train, params.num_frames, rng)
    val_set = ValSet.draw(val, params.val_windows, config, params.mask_ratio, seed + 1)

    key = fingerprint(params, seed, train)
    history, step, window_losses = History(rows=[], seconds=0.0), 0, []
    resumed = load_training_state(
        out_dir / CHECKPOINT, model=model, optimizer=optimizer, scaler=scaler, rng=rng, fingerprint=key
    )
    if resumed is not None:
        step, extra = resumed
        history, window_losses = History(**extra["history"]), extra["window_losses"]
        log.info("resuming VideoMAE pretraining from step %d (%s)", step, out_dir / CHECKPOINT)
    log.info(
        "VideoMAE: %.2f M parameters, %d train / %d val clips, %d steps of %d clips x %d frames on %s",
        sum(p.numel() for p in model.parameters()) / 1e6, len(train), len(val), params.max_steps,
        params.batch_size, params.num_frames, device,
    )  # fmt: skip
    started = time.perf_counter() - history.seconds
    context = torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()
    model.train()
    with progress("steps") as bar:
        task = bar.add_task("pretrain_videomae", total=params.max_steps, completed=step)
        while step < params.max_steps:
            lr = learning_rate(params, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            pixels = to_pixel_values(sampler.windows(params.batch_size), device)  # (B, F, 3, S, S)
            masks = tube_mask(params.batch_size, config, params.mask_ratio, rng).to(device)  # (B, N)
            with context:
                loss = model(pixels, bool_masked_pos=masks).loss
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            window_losses.append(loss.item())
            bar.advance(task)
            if step % params.val_every == 0 or step == params.max_steps:
                val_loss = validation_loss(model, val_set, device)
                history.rows.append(
                    {
                        "step": step,
                        "train_loss": round(float(np.mean(window_losses)), 5),
                        "val_loss": round(val_loss, 5),
                        "lr": lr,
                        "seconds": round(time.perf_counter() - started, 1),
                    }
                )
                window_losses = []
                log.info(
                    "step %d: train loss %.4f, val loss %.4f", step, history.rows[-1]["train_loss"], val_loss
                )
            history.seconds = time.perf_counter() - started
            if step % params.checkpoint_every == 0 or step == params.max_steps:
                save_training_state(
                    out_dir / CHECKPOINT, model=model, optimizer=optimizer, scaler=scaler, step=step, rng=rng,
                    fingerprint=key, extra={"history": dataclasses.asdict(history), "window_losses": window_losses},
                )  # fmt: skip
            if stop_after is not None and step >= stop_after:
                return model, history
    save_videomae(model, out_dir)
    return model, history


def save_videomae(model: VideoMAEForPreTraining, out_dir: str | Path) -> Path:
    """`save_pretrained` (config.json + model.safetensors) plus a preprocessor_config.json with the
    ImageNet mean / std it was trained with, swapped into `out_dir` (its checkpoint.pt is kept)."""
    transformers_logging.disable_progress_bar()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size = model.config.image_size
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        VideoMAEImageProcessor(
            size={"shortest_edge": size},
            crop_size={"height": size, "width": size},
            image_mean=list(IMAGENET_DEFAULT_MEAN),
            image_std=list(IMAGENET_DEFAULT_STD),
        ).save_pretrained(tmp)
        for name in ("model.safetensors", "preprocessor_config.json", "config.json"):  # config last
            os.replace(tmp / name, out_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def install_pretrained(source: str | Path, out_dir: str | Path) -> TrepaLoss:
    """Check that `source` (pretrained.videomae) loads as TREPA, then copy its files into `out_dir`."""
    trepa = load_trepa(source)
    source, out_dir = Path(source), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [n for n in FOLDER_FILES if (source / n).is_file()]
    if (source / "model.safetensors.index.json").is_file():
        index = json.loads((source / "model.safetensors.index.json").read_text())
        names += sorted(set(index["weight_map"].values()))
    for name in names:
        shutil.copyfile(source / name, out_dir / name)
    return trepa


# --- probes --------------------------------------------------------------------------------------


def trepa_probe(
    trepa: TrepaLoss, clips: list[np.ndarray], count: int, seed: int, batch: int = 4
) -> dict[str, float]:
    """What TREPA says about fixed val windows against: themselves with frames shuffled, themselves
    with Gaussian noise (σ 0.1 in [−1, 1]), and a window of another clip. Temporal sensitivity shows
    as `trepa_shuffled` well above 0 (identical clips give exactly 0)."""
    rng = np.random.default_rng(seed)
    device = next(trepa.parameters()).device
    windows = WindowSampler(clips, trepa.num_frames, rng).windows(count)  # (V, F, H, W, 3)
    order = torch.from_numpy(rng.permutation(trepa.num_frames)).to(device)
    others = np.roll(np.arange(count), 1)
    sums = {"trepa_shuffled": 0.0, "trepa_noise": 0.0, "trepa_other_clip": 0.0}
    with torch.no_grad():
        for i in range(0, count, batch):
            real = to_clips(windows[i : i + batch], device)  # (B, 3, F, H, W)
            noise = torch.from_numpy(rng.standard_normal(real.shape).astype(np.float32)).to(device)
            sums["trepa_shuffled"] += float(trepa(real[:, :, order], real)) * len(real)
            sums["trepa_noise"] += float(trepa((real + 0.1 * noise).clamp(-1, 1), real)) * len(real)
            sums["trepa_other_clip"] += float(
                trepa(to_clips(windows[others[i : i + batch]], device), real)
            ) * len(real)
    return {name: total / count for name, total in sums.items()}
