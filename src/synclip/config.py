"""params.yaml -> frozen, strict dataclasses; profiles and `-S key=value` overrides.

params.yaml is the `tiny` profile and lists every key. Another profile is a file of overrides
next to it (`params/<name>.yaml`, e.g. `params/full.yaml`), applied when `profile: <name>` is set
(in params.yaml, by `-S profile=full`, or by the caller). Overrides never add keys: an unknown
key, a missing key or a value of the wrong type is a `ConfigError` that names the key.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import yaml

from synclip.errors import UserError

BASE_PROFILE = "tiny"
PROFILE_DIR = "params"  # profiles live in <dir of params.yaml>/params/<name>.yaml
X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)


class ConfigError(UserError):
    """A params file or override the caller has to fix; the message names the key."""


# --- sections ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuntimeParams:
    """Where and how the library runs; read once, at the entry point."""

    device: str  # auto | cpu | cuda | cuda:N | mps
    threads: int  # torch intra-op threads; 0 keeps torch's default
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"]


@dataclass(frozen=True)
class PretrainedParams:
    """Local paths of pretrained weights. Nothing is ever downloaded from a hub at run time.

    `make setup` fetches the first two (see models/README.md); the others are optional and
    point at files the user already has; None disables what needs them, with a logged reason.
    """

    face_landmarker: str  # MediaPipe FaceLandmarker bundle (.task)
    whisper: str  # transformers Whisper directory (config.json + model.safetensors)
    sd_vae: str | None  # diffusers AutoencoderKL directory (e.g. sd-vae-ft-mse), full profile
    videomae: str | None  # transformers VideoMAE directory (TREPA), full profile
    lpips_vgg: str | None  # torchvision VGG16 ImageNet state dict for calibrated LPIPS
    hyperiqa: str | None  # hyperIQA KonIQ weights (image-quality filter)
    latentsync_unet: str | None  # a published LatentSync UNet checkpoint (.pt)
    latentsync_syncnet: str | None  # a published StableSyncNet checkpoint (.pt)


@dataclass(frozen=True)
class SplitCounts:
    train: int
    val: int
    test: int


@dataclass(frozen=True)
class CorpusParams:
    """SynthTalk, the built-in corpus (`synclip corpus synth`); data.dvc records what it produced."""

    seed: int
    clips: int
    identities: SplitCounts  # identities per split; no identity is in two splits
    min_seconds: float
    max_seconds: float
    frame_rates: tuple[str, ...]  # "25", "30", "30000/1001" ...
    sizes: tuple[tuple[int, int], ...]  # (width, height) of the raw videos
    face_width: tuple[float, float]  # face width as a fraction of the frame width
    audio_rates: tuple[int, ...]
    stereo_fraction: float
    snr_db: tuple[float, float]  # background noise
    defect_rate: float  # share of deliberately bad clips, spread over the defect kinds
    crf: int  # x264 quality of the raw clips
    preset: str  # x264 speed preset (the quality is crf's; a faster preset makes larger files)
    workers: int


@dataclass(frozen=True)
class PreprocessParams:
    """Raw videos -> aligned 25 fps face clips (the `preprocess` stage)."""

    resolution: int  # side of the aligned square crop, pixels
    min_segment_seconds: float  # shorter shots are rejected
    max_segment_seconds: float  # longer shots are cut into equal segments no longer than this
    shot_threshold: float  # PySceneDetect ContentDetector threshold
    min_face_px: float  # median face width in the source frames
    min_one_face_fraction: float  # share of frames that must show exactly one face
    max_piqe: float  # image quality (PIQE, lower is better) of the aligned crops
    min_audio_dbfs: float  # a segment whose audio peak is quieter than this is silent
    smoothing_frames: float  # Gaussian sigma, in frames, of the landmark smoothing before alignment
    crf: int  # x264 quality of the aligned clips
    val_fraction: float  # for sources without ground truth: share of sources in val
    test_fraction: float  # ... and in test
    workers: int


@dataclass(frozen=True)
class DataQualityParams:
    """The data-quality gate on the preprocessing manifest (`validate` stage)."""

    min_clips: int  # fewer accepted clips than this fails the gate
    max_jitter_px: float  # aligned eye and mouth-corner wobble allowed per clip, pixels


@dataclass(frozen=True)
class TowerParams:
    block_out_channels: tuple[int, ...]
    downsample_factors: tuple[int | tuple[int, int], ...]  # per stage: 1, 2 or [h, w]
    attn_blocks: tuple[int, ...]  # per stage: 1 = a self-attention block after it
    norm_num_groups: int


@dataclass(frozen=True)
class SyncNetParams:
    """The lip-sync expert: geometry, training (`train_syncnet`) and filtering (`sync_filter`)."""

    source: Literal["trained", "pretrained"]  # pretrained: load pretrained.latentsync_syncnet instead
    num_frames: int  # frames per window
    crop: tuple[
        float, float, float, float
    ]  # (top, bottom, left, right) of the aligned face; lower half: 0.5 1 0 1
    image_size: tuple[int, int]  # (H, W) the crop is resized to
    subtract_window_mean: bool  # visual tower sees frames minus the window's mean frame (synclip option)
    visual: TowerParams
    audio: TowerParams
    batch_size: int
    lr: float
    warmup_steps: int  # linear warm-up, then cosine decay to lr · final_lr_fraction (1.0: constant)
    final_lr_fraction: float
    weight_decay: float
    grad_clip: float
    max_steps: int
    val_every: int
    val_pairs: int  # balanced pairs from held-out identities, fixed across evaluations
    checkpoint_every: int
    small_offset_fraction: float  # share of negatives shifted by only 1–3 frames
    contrastive_weight: float  # multi-offset matching term (0 = LatentSync's single-pair BCE recipe)
    contrastive_offsets: tuple[
        int, ...
    ]  # shifted audio windows (± each) every video window is matched against
    contrastive_temperature: float
    flip_fraction: float  # training windows mirrored left-right (the mouth's sync does not change)
    brightness: float  # training windows get a uniform ±brightness offset (of the [−1, 1] range)
    contrast: float  # and a contrast gain in [1/contrast, contrast] (1: none)
    windows_per_clip: int  # windows drawn from each clip a matching batch picks (same-clip negatives)
    # BCE negatives without shifted audio: every other window of the batch, or those of its own clip
    bce_negatives: Literal["batch", "same_clip"]
    max_offset: int  # offsets searched when scoring: ±max_offset frames (15 as syncnet_python)
    min_confidence: float  # sync_filter: clips scoring below are dropped
    max_abs_offset: int  # sync_filter: clips further off are dropped; the rest are corrected
    min_correction: int  # sync_filter: smaller offsets are within the SyncNet's resolution: not corrected


@dataclass(frozen=True)
class VaeParams:
    """The latent space: a small diffusers AutoencoderKL trained on aligned faces (`train_vae`)."""

    source: Literal["trained", "pretrained"]  # pretrained: load pretrained.sd_vae and only evaluate it
    block_out_channels: tuple[int, ...]  # one per level; len − 1 downsamplings (4 levels: 8x)
    layers_per_block: int
    latent_channels: int
    norm_num_groups: int
    frame_stride: int  # every k-th frame of each training clip goes into the pool
    batch_size: int
    lr: float
    warmup_steps: int  # linear warm-up, then cosine decay to lr · final_lr_fraction
    final_lr_fraction: float
    weight_decay: float
    grad_clip: float
    max_steps: int
    l1_weight: float
    edge_weight: float  # L1 between Sobel gradients: keeps lip edges and teeth sharp
    ssim_weight: float  # 1 − SSIM (Zhao et al. 2017: L1 + SSIM beats L2 for image restoration)
    mouth_weight: float  # pixel terms weigh 1 + this inside the mouth box (what the UNet generates)
    kl_weight: float  # per-latent-element KL to N(0, 1)
    mouth: tuple[float, float, float, float]  # (top, bottom, left, right) of the aligned face, fractions
    val_every: int
    val_frames: int  # fixed frames of val identities, evaluated every val_every steps
    checkpoint_every: int
    scale_frames: int  # training frames whose latents set the scaling factor (1 / std)
    test_stride: int  # the final evaluation uses every k-th frame of the test clips
    grid_identities: int  # test identities shown in reports/vae/grid.png


@dataclass(frozen=True)
class VideoMAEParams:
    """TREPA's video encoder: a small transformers VideoMAE pretrained here by masked autoencoding
    (`pretrain_videomae`), or a local VideoMAE(-v2) folder at pretrained.videomae (source: pretrained)."""

    source: Literal["trained", "pretrained"]  # pretrained: copy and check pretrained.videomae instead
    image_size: int  # whole aligned face, resized to image_size × image_size
    patch_size: int
    num_frames: int  # frames per clip TREPA compares (LatentSync: 16)
    tubelet_size: int  # frames per token
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    decoder_hidden_size: int
    decoder_num_layers: int
    decoder_num_heads: int
    decoder_intermediate_size: int
    mask_ratio: float  # tube masking: share of spatial patches hidden in every frame (VideoMAE: 0.9)
    batch_size: int
    lr: float
    warmup_steps: int  # linear warm-up, then cosine decay to lr · final_lr_fraction
    final_lr_fraction: float
    weight_decay: float
    grad_clip: float
    max_steps: int
    val_every: int
    val_windows: int  # fixed windows (and masks) of val identities, evaluated every val_every steps
    checkpoint_every: int


@dataclass(frozen=True)
class UNetParams:
    """The denoiser's geometry (`synclip.nn.unet.UNetConfig`); the audio width comes from the Whisper
    encoder and the motion modules from the training stage."""

    block_out_channels: tuple[int, ...]
    down_block_types: tuple[str, ...]
    up_block_types: tuple[str, ...]
    layers_per_block: int
    num_attention_heads: int
    norm_num_groups: int
    joint_frame_groupnorm: bool
    motion_num_attention_heads: int
    motion_module_decoder_only: bool


@dataclass(frozen=True)
class UNetLossWeights:
    """Weights of the named loss terms (`synclip.train.diffusion`); 0 turns a term off."""

    recon: float  # ε MSE
    sync: float  # frozen SyncNet on the decoded one-step x̂0
    lpips: float  # lower half of the decoded faces (needs pretrained.lpips_vgg)
    trepa: float  # VideoMAE features of the decoded clip (needs a TREPA encoder)


@dataclass(frozen=True)
class UNetStageParams:
    """One UNet training stage (`train_unet_stage1` / `train_unet_stage2`)."""

    num_frames: int  # F, frames per window
    batch_size: int
    # the reference window starts at least max(F, reference_gap) frames from the target's (LatentSync: F)
    reference_gap: int
    lr: float
    warmup_steps: int  # linear warm-up, then cosine decay to lr · final_lr_fraction (1.0: constant)
    final_lr_fraction: float
    weight_decay: float
    grad_clip: float
    max_steps: int
    ema_decay: float
    audio_dropout: float  # share of windows whose audio tokens are zeroed (trains the CFG branch)
    mixed_noise_alpha: float  # PYoCo: inter-frame noise correlation α²/(1+α²); 0 = independent
    motion_modules: bool
    trainable: tuple[str, ...]  # fnmatch patterns over parameter names; empty = the whole UNet
    loss_weights: UNetLossWeights
    # the ε MSE weighs the latent cells of vae.mouth (snapped outward) 1 + recon_mouth_weight times
    # the others, normalised to a mean weight of 1 (0: plain MSE)
    recon_mouth_weight: float
    # (top, bottom, left, right) of the face decoded for the pixel losses; snapped outward to latent cells
    pixel_region: tuple[float, float, float, float]
    max_clips: int  # train clips whose latents are encoded (0 = all; bounds the VAE encoding time)
    val_every: int
    val_windows: int  # fixed windows of val identities, fixed noise and timesteps
    checkpoint_every: int
    # a sample video (a val identity dubbed, as inference does it) and its sync score every
    # `sample_every` steps (a multiple of val_every; 0: none) and at the end
    sample_every: int
    sample_frames: int  # frames of the sample (at least syncnet.num_frames + 2 · syncnet.max_offset)
    sample_steps: int  # its DDIM steps and audio guidance; chunking, η and seed are `inference`'s
    sample_guidance: float


@dataclass(frozen=True)
class TrainUNetParams:
    """Stage 1 in full; stage 2 only what differs from it (style rule 4)."""

    stage1: UNetStageParams
    stage2: dict[str, Any]  # overrides of stage1 (nested for loss_weights)

    def stage(self, number: int) -> UNetStageParams:
        """The resolved parameters of stage `number` (1 or 2), strictly typed."""
        if number == 1:
            return self.stage1
        if number != 2:
            raise ValueError(f"UNet training has stages 1 and 2, not {number}")
        merged = to_dict(self.stage1)
        _merge_strict(merged, self.stage2, source="params", prefix="train_unet.stage2")
        return from_dict(UNetStageParams, merged, source="params", prefix="train_unet.stage2")


@dataclass(frozen=True)
class InferenceParams:
    """The sampler a packaged model (`assemble`) carries as its defaults (`synclip.pipeline.PipelineConfig`)."""

    num_frames: int  # F, frames per chunk (the UNet's training window)
    overlap: int  # frames shared by consecutive chunks, cross-faded
    steps: int  # DDIM steps
    guidance: float  # audio classifier-free guidance (1.0: off)
    seed: int  # the shared initial noise
    eta: float  # DDIM η: 0 deterministic, 1 fresh (shared) noise at every step


@dataclass(frozen=True)
class EvaluateParams:
    """The `evaluate` stage: reconstruction and dubbing on test identities (`synclip.eval.protocol`)."""

    split: Literal["train", "val", "test"]  # whose clips (test: identities never trained on)
    clips: int  # clips evaluated, spread over identities (0 = every clean clip of the split)
    max_frames: int  # frames of each clip generated (from its start)
    steps: int  # DDIM steps (the packaged default is inference.steps)
    closed_ratio: float  # inner-lip gap / mouth width below which a measured mouth counts as closed
    silent_margin_frames: int  # a GT pause frame counts as silent this many frames inside the pause
    samples: int  # sample videos written to reports/eval/samples
    sheet_frames: int  # frames per clip in the contact sheet


@dataclass(frozen=True)
class DriftParams:
    """Input-drift monitoring (`drift_reference` stage, `synclip drift`, the service's request log)."""

    sampled_frames: int  # frames per video the features look at (light, sharpness, the face)
    reference_split: Literal["train", "val", "test"]  # the sources the reference describes
    baseline_split: Literal["train", "val", "test"]  # compared with the reference as a no-drift check
    drift_share: float  # the inputs drifted when this share of the features did (Evidently's default: 0.5)


@dataclass(frozen=True)
class PromoteParams:
    """The retrain flow's rule for promoting an evaluated model to the service (flows/retrain.py)."""

    score: str  # a `dvc metrics show` key, higher is better; the candidate must beat the promoted one
    required: tuple[str, ...]  # boolean metrics that must all be true
    min_gain: float  # how much the score must improve on the promoted model's


@dataclass(frozen=True)
class Params:
    """Everything params.yaml holds. Later stages add their sections here."""

    profile: str
    seed: int
    runtime: RuntimeParams
    pretrained: PretrainedParams
    corpus: CorpusParams
    preprocess: PreprocessParams
    data_quality: DataQualityParams
    syncnet: SyncNetParams
    vae: VaeParams
    videomae: VideoMAEParams
    unet: UNetParams
    train_unet: TrainUNetParams
    inference: InferenceParams
    evaluate: EvaluateParams
    drift: DriftParams
    promote: PromoteParams

    def validate(self) -> None:
        """Cross-field rules; raises ConfigError naming the offending key."""
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.runtime.device):
            raise ConfigError(
                f"runtime.device must be auto, cpu, mps, cuda or cuda:N, got {self.runtime.device!r}"
            )
        if self.runtime.threads < 0:
            raise ConfigError(f"runtime.threads must be >= 0, got {self.runtime.threads}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        corpus = self.corpus
        if corpus.clips < 1 or min(corpus.identities.train, corpus.identities.test) < 1:
            raise ConfigError("corpus.clips and corpus.identities.train/test must be >= 1")
        if corpus.identities.val < 0:
            raise ConfigError(f"corpus.identities.val must be >= 0, got {corpus.identities.val}")
        if not 0 < corpus.min_seconds <= corpus.max_seconds:
            raise ConfigError(
                f"corpus.min_seconds ({corpus.min_seconds}) must be > 0 and <= corpus.max_seconds ({corpus.max_seconds})"
            )
        for rate in corpus.frame_rates:
            if not re.fullmatch(r"\d+(/\d+)?", rate) or Fraction(rate) <= 0:
                raise ConfigError(
                    f"corpus.frame_rates: {rate!r} is not a positive rate like 25 or 30000/1001"
                )
        for width, height in corpus.sizes:
            if width % 2 or height % 2 or min(width, height) < 64:
                raise ConfigError(f"corpus.sizes: {width}x{height} must be even and at least 64 px")
        if not 0.15 <= corpus.face_width[0] <= corpus.face_width[1] <= 0.6:
            raise ConfigError(
                f"corpus.face_width must satisfy 0.15 <= low <= high <= 0.6, got {corpus.face_width}"
            )
        if not 0 <= corpus.defect_rate <= 1 or not 0 <= corpus.stereo_fraction <= 1:
            raise ConfigError("corpus.defect_rate and corpus.stereo_fraction must be in [0, 1]")
        if corpus.workers < 1:
            raise ConfigError(f"corpus.workers must be >= 1, got {corpus.workers}")
        if corpus.preset not in X264_PRESETS:
            raise ConfigError(
                f"corpus.preset must be one of {', '.join(X264_PRESETS)}; got {corpus.preset!r}"
            )
        pre = self.preprocess
        if pre.resolution % 8 or pre.resolution < 32:
            raise ConfigError(
                f"preprocess.resolution must be a multiple of 8 and >= 32, got {pre.resolution}"
            )
        if not 0 < pre.min_segment_seconds <= pre.max_segment_seconds:
            raise ConfigError(
                f"preprocess.min_segment_seconds ({pre.min_segment_seconds}) must be > 0 and <= "
                f"preprocess.max_segment_seconds ({pre.max_segment_seconds})"
            )
        if not 0 < pre.min_one_face_fraction <= 1:
            raise ConfigError(
                f"preprocess.min_one_face_fraction must be in (0, 1], got {pre.min_one_face_fraction}"
            )
        if pre.val_fraction < 0 or pre.test_fraction < 0 or pre.val_fraction + pre.test_fraction >= 1:
            raise ConfigError("preprocess.val_fraction and test_fraction must be >= 0 and sum to less than 1")
        if pre.workers < 1:
            raise ConfigError(f"preprocess.workers must be >= 1, got {pre.workers}")
        sync = self.syncnet
        for name in ("visual", "audio"):
            tower = getattr(sync, name)
            stages = len(tower.block_out_channels)
            if not stages == len(tower.downsample_factors) == len(tower.attn_blocks):
                raise ConfigError(
                    f"syncnet.{name}: block_out_channels, downsample_factors and attn_blocks differ in length"
                )
            if any(c % tower.norm_num_groups for c in tower.block_out_channels):
                raise ConfigError(f"syncnet.{name}.block_out_channels must be multiples of norm_num_groups")
        if sync.source == "pretrained" and self.pretrained.latentsync_syncnet is None:
            raise ConfigError("syncnet.source is 'pretrained' but pretrained.latentsync_syncnet is not set")
        if not 0 <= sync.small_offset_fraction <= 1:
            raise ConfigError(
                f"syncnet.small_offset_fraction must be in [0, 1], got {sync.small_offset_fraction}"
            )
        if min(sync.batch_size, sync.max_steps, sync.val_every, sync.checkpoint_every, sync.val_pairs) < 1:
            raise ConfigError(
                "syncnet.batch_size, max_steps, val_every, checkpoint_every and val_pairs must be >= 1"
            )
        if sync.windows_per_clip < 1 or sync.batch_size % sync.windows_per_clip:
            raise ConfigError(
                f"syncnet.windows_per_clip ({sync.windows_per_clip}) must be >= 1 and divide "
                f"syncnet.batch_size ({sync.batch_size})"
            )
        if sync.bce_negatives == "same_clip" and (sync.windows_per_clip < 2 or sync.contrastive_offsets):
            raise ConfigError(
                "syncnet.bce_negatives: same_clip needs windows_per_clip >= 2 and no contrastive_offsets "
                "(otherwise no window has a same-clip negative, or the shifted audio is the negative)"
            )
        if not (0 <= sync.flip_fraction <= 1 and sync.brightness >= 0 and sync.contrast >= 1):
            raise ConfigError(
                "syncnet.flip_fraction must be in [0, 1], brightness >= 0 and contrast >= 1, got "
                f"{sync.flip_fraction}, {sync.brightness}, {sync.contrast}"
            )
        if any(k < 1 for k in sync.contrastive_offsets):
            raise ConfigError(
                f"syncnet.contrastive_offsets must be >= 1 frame, got {list(sync.contrastive_offsets)}"
            )
        if sync.contrastive_weight > 0 and sync.batch_size < 2:
            raise ConfigError("syncnet.contrastive_weight > 0 needs batch_size >= 2 (in-batch negatives)")
        _check_schedule("syncnet", sync.warmup_steps, sync.final_lr_fraction)
        vae = self.vae
        levels = len(vae.block_out_channels)
        if levels < 1 or any(c % vae.norm_num_groups for c in vae.block_out_channels):
            raise ConfigError(
                f"vae.block_out_channels {list(vae.block_out_channels)} must be non-empty multiples of "
                f"vae.norm_num_groups ({vae.norm_num_groups})"
            )
        if pre.resolution % 2 ** (levels - 1):
            raise ConfigError(
                f"preprocess.resolution ({pre.resolution}) must be divisible by the VAE's downsampling "
                f"2^{levels - 1} (vae.block_out_channels has {levels} levels)"
            )
        top, bottom, left, right = vae.mouth
        if not (0 <= top < bottom <= 1 and 0 <= left < right <= 1):
            raise ConfigError(
                f"vae.mouth must be (top, bottom, left, right) fractions in [0, 1], got {vae.mouth}"
            )
        if vae.source == "pretrained" and self.pretrained.sd_vae is None:
            raise ConfigError("vae.source is 'pretrained' but pretrained.sd_vae is not set")
        if min(
            vae.layers_per_block, vae.latent_channels, vae.frame_stride, vae.batch_size, vae.max_steps,
            vae.val_every, vae.val_frames, vae.checkpoint_every, vae.scale_frames, vae.test_stride,
            vae.grid_identities,
        ) < 1:  # fmt: skip
            raise ConfigError(
                "vae.layers_per_block, latent_channels, frame_stride, batch_size, max_steps, val_every, "
                "val_frames, checkpoint_every, scale_frames, test_stride and grid_identities must be >= 1"
            )
        _check_schedule("vae", vae.warmup_steps, vae.final_lr_fraction)
        for name in ("l1_weight", "mouth_weight", "edge_weight", "ssim_weight", "kl_weight"):
            if getattr(vae, name) < 0:
                raise ConfigError(f"vae.{name} must be >= 0, got {getattr(vae, name)}")
        mae = self.videomae
        if mae.source == "pretrained" and self.pretrained.videomae is None:
            raise ConfigError("videomae.source is 'pretrained' but pretrained.videomae is not set")
        if min(
            mae.image_size, mae.patch_size, mae.num_frames, mae.tubelet_size, mae.hidden_size, mae.num_layers,
            mae.num_heads, mae.intermediate_size, mae.decoder_hidden_size, mae.decoder_num_layers,
            mae.decoder_num_heads, mae.decoder_intermediate_size, mae.batch_size, mae.max_steps,
            mae.val_every, mae.val_windows, mae.checkpoint_every,
        ) < 1:  # fmt: skip
            raise ConfigError("videomae sizes, batch_size, max_steps, val_every, val_windows and "
                              "checkpoint_every must be >= 1")  # fmt: skip
        if mae.image_size % mae.patch_size or mae.num_frames % mae.tubelet_size:
            raise ConfigError(
                f"videomae.image_size ({mae.image_size}) must be a multiple of videomae.patch_size "
                f"({mae.patch_size}) and videomae.num_frames ({mae.num_frames}) of videomae.tubelet_size "
                f"({mae.tubelet_size})"
            )
        if mae.hidden_size % mae.num_heads or mae.decoder_hidden_size % mae.decoder_num_heads:
            raise ConfigError(
                f"videomae.hidden_size ({mae.hidden_size}) and decoder_hidden_size ({mae.decoder_hidden_size}) "
                f"must be multiples of num_heads ({mae.num_heads}) and decoder_num_heads ({mae.decoder_num_heads})"
            )
        patches = (mae.image_size // mae.patch_size) ** 2
        visible = patches - int(mae.mask_ratio * patches)  # as the tube masking counts them
        if not 0 < mae.mask_ratio < 1 or visible < 1:
            raise ConfigError(
                f"videomae.mask_ratio must be in (0, 1) and leave at least one visible patch per frame, "
                f"got {mae.mask_ratio} on a {mae.image_size // mae.patch_size}² patch grid"
            )
        _check_schedule("videomae", mae.warmup_steps, mae.final_lr_fraction)
        if mae.lr <= 0 or mae.grad_clip <= 0:
            raise ConfigError(f"videomae.lr ({mae.lr}) and grad_clip ({mae.grad_clip}) must be > 0")
        self._validate_unet()
        self._validate_inference()
        for field in dataclasses.fields(self.pretrained):
            value = getattr(self.pretrained, field.name)
            if value is not None and not value.strip():
                raise ConfigError(f"pretrained.{field.name} is an empty path; use null to leave it unset")

    def _validate_inference(self) -> None:
        from synclip.pipeline import PipelineConfig, check_sampling

        inference = self.inference
        try:
            PipelineConfig(resolution=self.preprocess.resolution, **dataclasses.asdict(inference))
        except (ValueError, UserError) as error:
            raise ConfigError(f"inference: {error}") from None
        packaged = self.train_unet.stage(2).num_frames  # the packaged UNet is stage 2's
        if inference.num_frames != packaged:
            raise ConfigError(
                f"inference.num_frames ({inference.num_frames}) must equal the packaged UNet's training "
                f"window train_unet.stage2 num_frames ({packaged})"
            )
        ev = self.evaluate
        if ev.clips < 0 or ev.samples < 0 or ev.silent_margin_frames < 0:
            raise ConfigError("evaluate.clips, samples and silent_margin_frames must be >= 0")
        if ev.max_frames < self.syncnet.num_frames + 2 * self.syncnet.max_offset:
            raise ConfigError(
                f"evaluate.max_frames ({ev.max_frames}) must cover a SyncNet window and its offsets "
                f"(>= {self.syncnet.num_frames + 2 * self.syncnet.max_offset})"
            )
        try:
            check_sampling(ev.steps, inference.guidance)
        except UserError as error:
            raise ConfigError(f"evaluate: {error}") from None
        if not 0 < ev.closed_ratio < 1 or ev.sheet_frames < 1:
            raise ConfigError(
                f"evaluate.closed_ratio must be in (0, 1) ({ev.closed_ratio}), sheet_frames >= 1 "
                f"({ev.sheet_frames})"
            )
        if self.drift.sampled_frames < 1:
            raise ConfigError(f"drift.sampled_frames must be >= 1, got {self.drift.sampled_frames}")
        if not 0 < self.drift.drift_share <= 1:
            raise ConfigError(f"drift.drift_share must be in (0, 1], got {self.drift.drift_share}")
        if self.drift.reference_split == self.drift.baseline_split:
            raise ConfigError("drift.baseline_split must differ from drift.reference_split")
        if self.promote.min_gain < 0:
            raise ConfigError(f"promote.min_gain must be >= 0, got {self.promote.min_gain}")

    def _validate_unet(self) -> None:
        from synclip.nn.unet import UNetConfig

        try:
            UNetConfig(
                **dataclasses.asdict(self.unet), motion_modules=True
            )  # decoder_only applies to stage 2
        except ValueError as error:
            raise ConfigError(f"unet: {error}") from None
        for number in (1, 2):
            stage = self.train_unet.stage(number)
            key = f"train_unet.stage{number}"
            if min(stage.num_frames, stage.batch_size, stage.max_steps, stage.val_every,
                   stage.val_windows, stage.checkpoint_every) < 1:  # fmt: skip
                raise ConfigError(f"{key}: num_frames, batch_size, max_steps, val_every, val_windows and "
                                  "checkpoint_every must be >= 1")  # fmt: skip
            if not 0 <= stage.audio_dropout < 1 or not 0 <= stage.ema_decay < 1:
                raise ConfigError(f"{key}: audio_dropout ({stage.audio_dropout}) and ema_decay "
                                  f"({stage.ema_decay}) must be in [0, 1)")  # fmt: skip
            if (stage.lr <= 0 or stage.grad_clip <= 0 or stage.mixed_noise_alpha < 0 or stage.max_clips < 0
                    or stage.reference_gap < 0):  # fmt: skip
                raise ConfigError(
                    f"{key}: lr and grad_clip must be > 0, mixed_noise_alpha, max_clips and reference_gap >= 0"
                )
            _check_schedule(key, stage.warmup_steps, stage.final_lr_fraction)
            if stage.sample_every < 0 or stage.sample_every % stage.val_every or stage.sample_steps < 1:
                raise ConfigError(f"{key}: sample_every ({stage.sample_every}) must be 0 or a multiple of "
                                  f"val_every ({stage.val_every}), sample_steps >= 1")  # fmt: skip
            if not stage.sample_guidance >= 1:
                raise ConfigError(
                    f"{key}.sample_guidance must be >= 1 (1: no guidance), got {stage.sample_guidance}"
                )
            least = self.syncnet.num_frames + 2 * self.syncnet.max_offset
            if stage.sample_every and stage.sample_frames < least:
                raise ConfigError(f"{key}.sample_frames ({stage.sample_frames}) must be at least "
                                  f"syncnet.num_frames + 2 · syncnet.max_offset = {least}")  # fmt: skip
            if stage.motion_modules and stage.num_frames < 2:
                raise ConfigError(f"{key}: motion modules need num_frames >= 2, got {stage.num_frames}")
            top, bottom, left, right = stage.pixel_region
            if not (0 <= top < bottom <= 1 and 0 <= left < right <= 1):
                raise ConfigError(f"{key}.pixel_region must be (top, bottom, left, right) fractions, "
                                  f"got {stage.pixel_region}")  # fmt: skip
            if stage.recon_mouth_weight < 0:
                raise ConfigError(f"{key}.recon_mouth_weight must be >= 0, got {stage.recon_mouth_weight}")
            weights = dataclasses.asdict(stage.loss_weights)
            if min(weights.values()) < 0 or weights["recon"] <= 0:
                raise ConfigError(f"{key}.loss_weights must be >= 0 with recon > 0, got {weights}")


# --- loading -------------------------------------------------------------------------------------


def load_params(
    path: str | Path = "params.yaml",
    overrides: Sequence[str] = (),
    profile: str | None = None,
) -> Params:
    """Read params.yaml, apply a profile and `key=value` overrides, check types and rules.

    Order: params.yaml, then the profile's file, then `overrides` (so `-S` wins). A `profile=`
    override or the `profile` argument selects the profile before its file is applied.
    """
    path = Path(path)
    raw = _read_mapping(path)
    parsed = [_parse_override(item) for item in overrides]
    for key, value in parsed:
        if key == "profile":
            profile = value
    if profile is not None:
        raw["profile"] = profile
    chosen = raw.get("profile", BASE_PROFILE)
    if not isinstance(chosen, str):
        raise ConfigError(f"{path}: 'profile' must be a string, got {type(chosen).__name__}")
    if chosen != BASE_PROFILE:
        profile_path = path.parent / PROFILE_DIR / f"{chosen}.yaml"
        if not profile_path.is_file():
            raise ConfigError(f"profile {chosen!r}: {profile_path} does not exist")
        _merge_strict(raw, _read_mapping(profile_path), source=str(profile_path))
    for key, value in parsed:
        _set_strict(raw, key, value, source="override")
    params = from_dict(Params, raw, source=str(path))
    params.validate()
    return params


def to_dict(params: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists), the inverse of `from_dict`."""
    return _plain(dataclasses.asdict(params))


def from_dict(cls: type, data: Any, source: str = "params", prefix: str = "") -> Any:
    """Build the dataclass `cls` from a mapping, strictly: no unknown, missing or mistyped keys."""
    if not isinstance(data, Mapping):
        where = f"'{prefix}'" if prefix else "the top level"
        raise ConfigError(f"{source}: {where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = _join(prefix, str(unknown[0]))
        raise ConfigError(f"{source}: unknown key '{key}' (known here: {', '.join(fields)})")
    values = {}
    for name, field in fields.items():
        key = _join(prefix, name)
        if name not in data:
            if field.default is not dataclasses.MISSING:
                continue
            raise ConfigError(f"{source}: missing key '{key}'")
        values[name] = _convert(hints[name], data[name], source, key)
    return cls(**values)


def _check_schedule(key: str, warmup_steps: int, final_lr_fraction: float) -> None:
    """The rule of `synclip.train.optim.learning_rate`'s inputs, for every section that has them."""
    if warmup_steps < 0 or not 0 <= final_lr_fraction <= 1:
        raise ConfigError(
            f"{key}.warmup_steps must be >= 0 ({warmup_steps}) and {key}.final_lr_fraction in [0, 1] "
            f"({final_lr_fraction})"
        )


def _convert(hint: Any, value: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, source, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(option, value, source, key)
            except ConfigError as error:
                errors.append(error)
        if len(options) == 1:
            raise errors[0]
        raise ConfigError(f"{source}: '{key}' must be {_describe(hint)}, got {_show(value)}")
    if origin is Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        choices = ", ".join(repr(a) for a in args)
        raise ConfigError(f"{source}: '{key}' must be one of {choices}, got {_show(value)}")
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{source}: '{key}' must be a list, got {_show(value)}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"{source}: '{key}' must have {len(args)} items, got {len(value)}")
            return tuple(
                _convert(a, v, source, f"{key}[{i}]")
                for i, (a, v) in enumerate(zip(args, value, strict=True))
            )
        item = args[0]
        items = [_convert(item, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {_show(value)}")
        return {k: _convert(args[1], v, source, f"{key}.{k}") for k, v in value.items()}
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        # PyYAML reads 1e-3 (no dot) as a string; take exponent notation as the number it is
        if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value.strip()):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint in (str, bool):
        if isinstance(value, hint):
            return value
    elif hint is Any:
        return value
    else:
        raise TypeError(f"config field '{key}' has an unsupported type {hint!r}")
    raise ConfigError(f"{source}: '{key}' must be {_describe(hint)}, got {_show(value)}")


# --- raw-dict helpers ----------------------------------------------------------------------------


def _read_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like key.subkey=value")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {error}") from None
    return key, value


def _set_strict(raw: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    node = raw
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"{source}: unknown key '{'.'.join(parts[: depth + 1])}'")
        if depth == len(parts) - 1:
            node[part] = copy.deepcopy(value)
        else:
            node = node[part]


def _merge_strict(base: dict[str, Any], update: Mapping[str, Any], source: str, prefix: str = "") -> None:
    for name, value in update.items():
        key = _join(prefix, str(name))
        if name not in base:
            raise ConfigError(f"{source}: unknown key '{key}'")
        if isinstance(value, Mapping) and isinstance(base[name], dict):
            _merge_strict(base[name], value, source, key)
        else:
            base[name] = copy.deepcopy(value)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _describe(hint: Any) -> str:
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin in (tuple, list):
        return "a list"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
