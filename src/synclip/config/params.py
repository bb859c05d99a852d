"""params.yaml as frozen, strict dataclasses: one per section, each checking its own rules."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from synclip.config.strict import (
    ConfigError,
    from_dict,
    merge_strict,
    parse_override,
    read_mapping,
    set_strict,
    to_dict,
)
from synclip.constants import NOISE_SCHEDULE

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
UNET_DOWN_BLOCKS = ("CrossAttnDownBlock3D", "DownBlock3D")
UNET_UP_BLOCKS = ("CrossAttnUpBlock3D", "UpBlock3D")


def check_box(key: str, box: tuple[float, float, float, float]) -> None:
    """A region of the aligned face: (top, bottom, left, right) fractions with top < bottom, left < right."""
    top, bottom, left, right = box
    if not (0 <= top < bottom <= 1 and 0 <= left < right <= 1):
        raise ConfigError(f"{key} must be (top, bottom, left, right) fractions in [0, 1], got {box}")


def at_least_one(key: str, section: Any, names: Sequence[str]) -> None:
    """Each named field of `section` must be >= 1."""
    small = [name for name in names if getattr(section, name) < 1]
    if small:
        raise ConfigError(f"{key}: {', '.join(small)} must be >= 1")


def check_sampling(steps: int, guidance: float) -> None:
    """The sampler's rule for a call's DDIM steps and audio guidance."""
    most = NOISE_SCHEDULE["num_train_timesteps"]
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= most:
        raise ConfigError(f"steps must be an integer in [1, {most}], got {steps!r}")
    if not (guidance >= 1.0 and math.isfinite(guidance)):  # inf would paint a black lower face
        raise ConfigError(f"guidance must be >= 1.0 and finite (1.0 turns guidance off), got {guidance!r}")


# --- sections ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuntimeParams:
    """Where and how the library runs; read once, at the entry point."""

    device: str  # auto | cpu | cuda | cuda:N | mps
    threads: int  # torch intra-op threads; 0 keeps torch's default
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"]
    # auto: launched by torchrun (WORLD_SIZE > 1), join its process group and train data-parallel
    # (docs/scale-out.md); off: always one process, and a torchrun launch is an error
    distributed: Literal["auto", "off"]

    def validate(self, key: str = "runtime") -> None:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ConfigError(f"{key}.device must be auto, cpu, mps, cuda or cuda:N, got {self.device!r}")
        if self.threads < 0:
            raise ConfigError(f"{key}.threads must be >= 0, got {self.threads}")


@dataclass(frozen=True)
class PretrainedParams:
    """Local paths of pretrained weights. Nothing is ever downloaded from a hub at run time.

    `make setup` fetches the first two (see models/README.md); the others are optional and
    point at files the user already has; None disables what needs them, with a logged reason.
    """

    face_landmarker: str  # MediaPipe FaceLandmarker bundle (.task)
    whisper: str  # transformers Whisper directory (config.json + model.safetensors)
    sd_vae: str | None  # diffusers AutoencoderKL directory (e.g. sd-vae-ft-mse), full profile
    taef2: str | None  # TAEF2's diffusers folder (vendored in the package), the tiny profile's latent space
    videomae: str | None  # transformers VideoMAE directory (TREPA), full profile
    lpips_vgg: str | None  # torchvision VGG16 ImageNet state dict for calibrated LPIPS
    hyperiqa: str | None  # hyperIQA KonIQ weights (image-quality filter)
    # a published StableSyncNet: `stable_syncnet.pt`, or the syncnet/ folder `synclip weights
    # import-latentsync` writes (a published UNet is a stage's `train_unet.stageN.init_from`)
    latentsync_syncnet: str | None
    # the papers' instruments (`synclip weights import-latentsync … --auxiliary` writes the first three):
    syncnet_v2: str | None  # syncnet_python's SyncNet, `syncnet_v2.model`: Sync-C / Sync-D
    s3fd: str | None  # S3FD, `sfd_face.pth`: the face crops Sync-C / Sync-D are measured on
    i3d: str | None  # I3D TorchScript, `i3d_torchscript.pt`: FVD
    fid_inception: str | None  # pytorch-fid's Inception, `pt_inception-2015-12-05-6726825d.pth`: FID

    def validate(self, key: str = "pretrained") -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None and not value.strip():
                raise ConfigError(f"{key}.{field.name} is an empty path; use null to leave it unset")


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

    def validate(self, key: str = "corpus") -> None:
        if self.clips < 1 or min(self.identities.train, self.identities.test) < 1:
            raise ConfigError(f"{key}.clips and {key}.identities.train/test must be >= 1")
        if self.identities.val < 0:
            raise ConfigError(f"{key}.identities.val must be >= 0, got {self.identities.val}")
        if not 0 < self.min_seconds <= self.max_seconds:
            raise ConfigError(
                f"{key}.min_seconds ({self.min_seconds}) must be > 0 and <= {key}.max_seconds ({self.max_seconds})"
            )
        for rate in self.frame_rates:
            if not re.fullmatch(r"\d+(/\d+)?", rate) or Fraction(rate) <= 0:
                raise ConfigError(f"{key}.frame_rates: {rate!r} is not a positive rate like 25 or 30000/1001")
        for width, height in self.sizes:
            if width % 2 or height % 2 or min(width, height) < 64:
                raise ConfigError(f"{key}.sizes: {width}x{height} must be even and at least 64 px")
        if not 0.15 <= self.face_width[0] <= self.face_width[1] <= 0.6:
            raise ConfigError(
                f"{key}.face_width must satisfy 0.15 <= low <= high <= 0.6, got {self.face_width}"
            )
        if not 0 <= self.defect_rate <= 1 or not 0 <= self.stereo_fraction <= 1:
            raise ConfigError(f"{key}.defect_rate and {key}.stereo_fraction must be in [0, 1]")
        if self.workers < 1:
            raise ConfigError(f"{key}.workers must be >= 1, got {self.workers}")
        if self.preset not in X264_PRESETS:
            raise ConfigError(f"{key}.preset must be one of {', '.join(X264_PRESETS)}; got {self.preset!r}")


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
    workers: int  # processes here; with scheduler dask and no address, the LocalCluster's
    scheduler: Literal["local", "dask"]  # dask: one Dask task per source (or set SYNCLIP_DASK_SCHEDULER)
    dask_address: str  # a running scheduler, tcp://host:8786; empty: a LocalCluster of `workers`

    def validate(self, key: str = "preprocess") -> None:
        if self.resolution % 8 or self.resolution < 32:
            raise ConfigError(f"{key}.resolution must be a multiple of 8 and >= 32, got {self.resolution}")
        if not 0 < self.min_segment_seconds <= self.max_segment_seconds:
            raise ConfigError(
                f"{key}.min_segment_seconds ({self.min_segment_seconds}) must be > 0 and <= "
                f"{key}.max_segment_seconds ({self.max_segment_seconds})"
            )
        if not 0 < self.min_one_face_fraction <= 1:
            raise ConfigError(
                f"{key}.min_one_face_fraction must be in (0, 1], got {self.min_one_face_fraction}"
            )
        if self.val_fraction < 0 or self.test_fraction < 0 or self.val_fraction + self.test_fraction >= 1:
            raise ConfigError(f"{key}.val_fraction and test_fraction must be >= 0 and sum to less than 1")
        if self.workers < 1:
            raise ConfigError(f"{key}.workers must be >= 1, got {self.workers}")
        if self.dask_address and (self.scheduler != "dask" or "://" not in self.dask_address):
            raise ConfigError(
                f"{key}.dask_address {self.dask_address!r} needs {key}.scheduler dask (got {self.scheduler!r}) "
                "and a scheduler address like tcp://host:8786"
            )


@dataclass(frozen=True)
class DataQualityParams:
    """The data-quality gate on the preprocessing manifest (`validate` stage)."""

    min_clips: int  # fewer accepted clips than this fails the gate
    max_jitter_px: float  # aligned eye and mouth-corner wobble allowed per clip, pixels

    def validate(self, key: str = "data_quality") -> None:
        """No rule ties these two: any count and any distance is a gate."""


@dataclass(frozen=True)
class OptimParams:
    """What every training run has: batches, AdamW, the learning-rate schedule and the cadence."""

    batch_size: int
    lr: float
    warmup_steps: int  # linear warm-up, then cosine decay to lr · final_lr_fraction (1.0: constant)
    final_lr_fraction: float
    weight_decay: float
    grad_clip: float
    max_steps: int
    val_every: int
    checkpoint_every: int

    def validate(self, key: str) -> None:
        at_least_one(key, self, ("batch_size", "val_every", "checkpoint_every"))
        if self.max_steps < (0 if self.may_skip_training() else 1):
            raise ConfigError(f"{key}: max_steps must be >= 1, got {self.max_steps}")
        if self.lr <= 0 or self.grad_clip <= 0:
            raise ConfigError(f"{key}.lr ({self.lr}) and {key}.grad_clip ({self.grad_clip}) must be > 0")
        if self.warmup_steps < 0 or not 0 <= self.final_lr_fraction <= 1:
            raise ConfigError(
                f"{key}.warmup_steps must be >= 0 ({self.warmup_steps}) and {key}.final_lr_fraction in "
                f"[0, 1] ({self.final_lr_fraction})"
            )

    def may_skip_training(self) -> bool:
        """Whether max_steps = 0 is allowed: only where the run starts from given weights."""
        return False


@dataclass(frozen=True)
class TowerParams:
    block_out_channels: tuple[int, ...]
    downsample_factors: tuple[int | tuple[int, int], ...]  # per stage: 1, 2 or [h, w]
    attn_blocks: tuple[int, ...]  # per stage: 1 = a self-attention block after it
    norm_num_groups: int = 32

    def validate(self, key: str) -> None:
        if not len(self.block_out_channels) == len(self.downsample_factors) == len(self.attn_blocks):
            raise ConfigError(
                f"{key}: block_out_channels, downsample_factors and attn_blocks differ in length"
            )
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ConfigError(f"{key}.block_out_channels must be multiples of norm_num_groups")


@dataclass(frozen=True)
class SyncNetParams(OptimParams):
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
    val_pairs: int  # balanced pairs from held-out identities, fixed across evaluations
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

    def validate(self, key: str = "syncnet") -> None:
        super().validate(key)
        self.visual.validate(f"{key}.visual")
        self.audio.validate(f"{key}.audio")
        check_box(f"{key}.crop", self.crop)
        if not 0 <= self.small_offset_fraction <= 1:
            raise ConfigError(
                f"{key}.small_offset_fraction must be in [0, 1], got {self.small_offset_fraction}"
            )
        at_least_one(key, self, ("val_pairs",))
        if self.windows_per_clip < 1 or self.batch_size % self.windows_per_clip:
            raise ConfigError(
                f"{key}.windows_per_clip ({self.windows_per_clip}) must be >= 1 and divide "
                f"{key}.batch_size ({self.batch_size})"
            )
        if self.bce_negatives == "same_clip" and (self.windows_per_clip < 2 or self.contrastive_offsets):
            raise ConfigError(
                f"{key}.bce_negatives: same_clip needs windows_per_clip >= 2 and no contrastive_offsets "
                "(otherwise no window has a same-clip negative, or the shifted audio is the negative)"
            )
        if not (0 <= self.flip_fraction <= 1 and self.brightness >= 0 and self.contrast >= 1):
            raise ConfigError(
                f"{key}.flip_fraction must be in [0, 1], brightness >= 0 and contrast >= 1, got "
                f"{self.flip_fraction}, {self.brightness}, {self.contrast}"
            )
        if any(k < 1 for k in self.contrastive_offsets):
            raise ConfigError(
                f"{key}.contrastive_offsets must be >= 1 frame, got {list(self.contrastive_offsets)}"
            )
        if self.contrastive_weight > 0 and self.batch_size < 2:
            raise ConfigError(f"{key}.contrastive_weight > 0 needs batch_size >= 2 (in-batch negatives)")


@dataclass(frozen=True)
class VaeParams(OptimParams):
    """The latent space (`train_vae`): TAEF2 with its latent scaling fitted on training faces, a small
    diffusers AutoencoderKL trained on aligned faces, or pretrained.sd_vae."""

    # taef2: pretrained.taef2, frozen (its per-channel scaling fitted on scale_frames training frames);
    # trained: the AutoencoderKL below; pretrained: load pretrained.sd_vae and only evaluate it
    source: Literal["taef2", "trained", "pretrained"]
    # the frozen VAE's encode / decode on the CPU (latent caching, stage 2's decode of x̂0, evaluation,
    # lip-sync): bf16 autocast where the CPU has native bf16, else fp32
    precision: Literal["fp32", "bf16"]
    block_out_channels: tuple[int, ...]  # one per level; len − 1 downsamplings (4 levels: 8x)
    layers_per_block: int
    latent_channels: int
    norm_num_groups: int
    frame_stride: int  # every k-th frame of each training clip goes into the pool
    l1_weight: float
    edge_weight: float  # L1 between Sobel gradients: keeps lip edges and teeth sharp
    ssim_weight: float  # 1 − SSIM (Zhao et al. 2017: L1 + SSIM beats L2 for image restoration)
    mouth_weight: float  # pixel terms weigh 1 + this inside the mouth box (what the UNet generates)
    kl_weight: float  # per-latent-element KL to N(0, 1)
    mouth: tuple[float, float, float, float]  # (top, bottom, left, right) of the aligned face, fractions
    val_frames: int  # fixed frames of val identities, evaluated every val_every steps
    scale_frames: int  # training frames whose latents set the scaling factor (1 / std)
    test_stride: int  # the final evaluation uses every k-th frame of the test clips
    grid_identities: int  # test identities shown in reports/vae/grid.png

    def validate(self, key: str = "vae") -> None:
        super().validate(key)
        if not self.block_out_channels or any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ConfigError(
                f"{key}.block_out_channels {list(self.block_out_channels)} must be non-empty multiples of "
                f"{key}.norm_num_groups ({self.norm_num_groups})"
            )
        check_box(f"{key}.mouth", self.mouth)
        at_least_one(
            key,
            self,
            (
                "layers_per_block",
                "latent_channels",
                "frame_stride",
                "val_frames",
                "scale_frames",
                "test_stride",
                "grid_identities",
            ),
        )
        for name in ("l1_weight", "mouth_weight", "edge_weight", "ssim_weight", "kl_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{key}.{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class VideoMAEParams(OptimParams):
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
    val_windows: int  # fixed windows (and masks) of val identities, evaluated every val_every steps

    def validate(self, key: str = "videomae") -> None:
        super().validate(key)
        at_least_one(
            key,
            self,
            (
                "image_size",
                "patch_size",
                "num_frames",
                "tubelet_size",
                "hidden_size",
                "num_layers",
                "num_heads",
                "intermediate_size",
                "decoder_hidden_size",
                "decoder_num_layers",
                "decoder_num_heads",
                "decoder_intermediate_size",
                "val_windows",
            ),
        )
        if self.image_size % self.patch_size or self.num_frames % self.tubelet_size:
            raise ConfigError(
                f"{key}.image_size ({self.image_size}) must be a multiple of {key}.patch_size "
                f"({self.patch_size}) and {key}.num_frames ({self.num_frames}) of {key}.tubelet_size "
                f"({self.tubelet_size})"
            )
        if self.hidden_size % self.num_heads or self.decoder_hidden_size % self.decoder_num_heads:
            raise ConfigError(
                f"{key}.hidden_size ({self.hidden_size}) and decoder_hidden_size ({self.decoder_hidden_size}) "
                f"must be multiples of num_heads ({self.num_heads}) and decoder_num_heads ({self.decoder_num_heads})"
            )
        patches = (self.image_size // self.patch_size) ** 2
        visible = patches - int(self.mask_ratio * patches)  # as the tube masking counts them
        if not 0 < self.mask_ratio < 1 or visible < 1:
            raise ConfigError(
                f"{key}.mask_ratio must be in (0, 1) and leave at least one visible patch per frame, "
                f"got {self.mask_ratio} on a {self.image_size // self.patch_size}² patch grid"
            )


@dataclass(frozen=True)
class UNetParams:
    """The denoiser's geometry, what a user sets; `synclip.nn.unet.UNetConfig` adds what the run
    decides (the audio width, the motion modules). The defaults are LatentSync's."""

    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",)
    up_block_types: tuple[str, ...] = ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3
    layers_per_block: int = 2  # resnets per down block; up blocks have one more
    # the NUMBER of heads at every level (what SD-1.5 configs call `attention_head_dim`)
    num_attention_heads: int = 8
    norm_num_groups: int = 32
    # GroupNorm statistics of the ResNets and conv_norm_out over all F frames of a clip (reference);
    # False normalises each frame alone, so without motion modules frames are independent
    joint_frame_groupnorm: bool = True
    motion_num_attention_heads: int = 8
    motion_module_decoder_only: bool = False  # motion modules in the up blocks only
    # what the UNet outputs: ε (LatentSync) or v = √ᾱ·ε − √(1 − ᾱ)·z0 (Salimans & Ho 2022), whose x̂0 stays
    # exact at high noise, where ε's divides the error by √ᾱ (≈ 0.07 at t = 999)
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    # none (LatentSync) or reference: each latent channel standardised by its mean and std on the reference
    # latents' kept cells, per window, and mapped back before decoding (synclip.nn.latent_norm)
    latent_norm: Literal["none", "reference"] = "none"

    def validate(self, key: str = "unet") -> None:
        levels = len(self.block_out_channels)
        if not levels == len(self.down_block_types) == len(self.up_block_types):
            raise ConfigError(
                f"{key}: block_out_channels {self.block_out_channels}, down_block_types "
                f"{self.down_block_types} and up_block_types {self.up_block_types} need one entry per level"
            )
        for kinds, allowed in (
            (self.down_block_types, UNET_DOWN_BLOCKS),
            (self.up_block_types, UNET_UP_BLOCKS),
        ):
            unknown = [k for k in kinds if k not in allowed]
            if unknown:
                raise ConfigError(f"{key}: unknown block types {unknown}; expected one of {allowed}")
        for channels in self.block_out_channels:
            for name in ("norm_num_groups", "num_attention_heads", "motion_num_attention_heads"):
                if channels % getattr(self, name):
                    raise ConfigError(
                        f"{key}.block_out_channels {self.block_out_channels}: {channels} % {name} "
                        f"{getattr(self, name)} != 0"
                    )
        if self.layers_per_block < 1:
            raise ConfigError(f"{key}.layers_per_block {self.layers_per_block} < 1")


@dataclass(frozen=True)
class UNetLossWeights:
    """Weights of the named loss terms (`synclip.train.diffusion`); 0 turns a term off."""

    recon: float  # ε MSE
    sync: float  # frozen SyncNet on the decoded one-step x̂0
    lpips: float  # lower half of the decoded faces (needs pretrained.lpips_vgg)
    trepa: float  # VideoMAE features of the decoded clip (needs a TREPA encoder)


@dataclass(frozen=True)
class UNetStageParams(OptimParams):
    """One UNet training stage (`train_unet_stage1` / `train_unet_stage2`)."""

    num_frames: int  # F, frames per window
    # the reference window starts at least max(F, reference_gap) frames from the target's (LatentSync: F)
    reference_gap: int
    ema_decay: float
    audio_dropout: float  # share of windows whose audio tokens are zeroed (trains the CFG branch)
    mixed_noise_alpha: float  # PYoCo: inter-frame noise correlation α²/(1+α²); 0 = independent
    motion_modules: bool
    trainable: tuple[str, ...]  # fnmatch patterns over parameter names; empty = the whole UNet
    loss_weights: UNetLossWeights
    # the ε MSE weighs the latent cells of vae.mouth (snapped outward) 1 + recon_mouth_weight times
    # the others, normalised to a mean weight of 1 (0: plain MSE)
    recon_mouth_weight: float
    # (std of the log gain, std of the shift): one random per-channel gain and shift per window, applied
    # alike to the target's and the reference's latents on the cells the mask generates (synclip's
    # addition, stage 1 only; (0, 0): none). The lower face's look then comes from the reference.
    lower_face_jitter: tuple[float, float]
    # (top, bottom, left, right) of the face decoded for the pixel losses; snapped outward to latent cells
    pixel_region: tuple[float, float, float, float]
    max_clips: int  # train clips whose latents are encoded (0 = all; bounds the VAE encoding time)
    val_windows: int  # fixed windows of val identities, fixed noise and timesteps
    # a sample video (a val identity dubbed, as inference does it) and its sync score every
    # `sample_every` steps (a multiple of val_every; 0: none) and at the end
    sample_every: int
    sample_frames: int  # frames of the sample (at least syncnet.num_frames + 2 · syncnet.max_offset)
    sample_steps: int  # its DDIM steps and audio guidance; chunking, η and seed are `inference`'s
    sample_guidance: float
    # a synclip UNet artifact the stage starts from (e.g. LatentSync's published UNet, imported by
    # `synclip weights import-latentsync`), instead of a fresh UNet (stage 1) or stage 1's (stage 2);
    # with max_steps 0 the stage's UNet is that one, unchanged
    init_from: str | None

    def may_skip_training(self) -> bool:
        return self.init_from is not None

    def validate(self, key: str) -> None:
        super().validate(key)
        at_least_one(key, self, ("num_frames", "val_windows", "sample_steps"))
        if not 0 <= self.audio_dropout < 1 or not 0 <= self.ema_decay < 1:
            raise ConfigError(
                f"{key}: audio_dropout ({self.audio_dropout}) and ema_decay ({self.ema_decay}) must be in [0, 1)"
            )
        if self.mixed_noise_alpha < 0 or self.max_clips < 0 or self.reference_gap < 0:
            raise ConfigError(f"{key}: mixed_noise_alpha, max_clips and reference_gap must be >= 0")
        if self.sample_every < 0 or self.sample_every % self.val_every:
            raise ConfigError(
                f"{key}: sample_every ({self.sample_every}) must be 0 or a multiple of val_every ({self.val_every})"
            )
        if not self.sample_guidance >= 1:
            raise ConfigError(
                f"{key}.sample_guidance must be >= 1 (1: no guidance), got {self.sample_guidance}"
            )
        if self.motion_modules and self.num_frames < 2:
            raise ConfigError(f"{key}: motion modules need num_frames >= 2, got {self.num_frames}")
        check_box(f"{key}.pixel_region", self.pixel_region)
        if self.recon_mouth_weight < 0:
            raise ConfigError(f"{key}.recon_mouth_weight must be >= 0, got {self.recon_mouth_weight}")
        if min(self.lower_face_jitter) < 0:
            raise ConfigError(f"{key}.lower_face_jitter must be >= 0, got {list(self.lower_face_jitter)}")
        weights = dataclasses.asdict(self.loss_weights)
        if min(weights.values()) < 0 or weights["recon"] <= 0:
            raise ConfigError(f"{key}.loss_weights must be >= 0 with recon > 0, got {weights}")
        pixel_terms = [term for term, weight in weights.items() if term != "recon" and weight > 0]
        if max(self.lower_face_jitter) > 0 and pixel_terms:
            raise ConfigError(
                f"{key}: lower_face_jitter {list(self.lower_face_jitter)} with the pixel loss terms "
                f"{pixel_terms}: their targets are the real pixels, which the jitter does not change "
                "(set it to [0, 0] for this stage)"
            )


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
        merge_strict(merged, self.stage2, source="params", prefix="train_unet.stage2")
        return from_dict(UNetStageParams, merged, source="params", prefix="train_unet.stage2", defaults=False)

    def validate(self, key: str = "train_unet") -> None:
        for number in (1, 2):
            self.stage(number).validate(f"{key}.stage{number}")


@dataclass(frozen=True)
class InferenceParams:
    """The sampler a packaged model carries (`assemble` → pipeline.json); the sampler defaults are
    LatentSync's, the front ends default to synclip's own."""

    num_frames: int = 16  # F, frames per chunk (the UNet's training window)
    overlap: int = 4  # frames shared by consecutive chunks, cross-faded
    steps: int = 20  # DDIM steps
    guidance: float = 1.5  # audio classifier-free guidance (1.0: off)
    seed: int = 1247  # the shared initial noise
    eta: float = 0.0  # DDIM η: 0 deterministic, 1 fresh (shared) noise at every step
    # the fresh noise of a step with η > 0 is scaled by this (Karras et al.'s S_noise; 1: DDIM's). Under 1 the
    # chain samples at a lower temperature: the mouth varies less from seed to seed, closer to the mean face
    noise_scale: float = 1.0
    # What the model was trained on and how a video reaches it; synclip's own by default, LatentSync's
    # for its published weights (params/latentsync-1.5.yaml, `synclip weights import-latentsync`).
    audio_frontend: Literal["synclip", "latentsync"] = "synclip"  # Whisper windows and frame count
    face_frontend: Literal["synclip", "latentsync"] = "synclip"  # crop template, smoothing, paste-back
    latents: Literal["mean", "sample"] = "mean"  # VAE posterior mean, or a sample (LatentSync)
    last_chunk: Literal["slide", "short"] = "slide"  # slide back to a whole chunk, or run short (LatentSync)
    loop: Literal["reflect", "repeat_ends"] = "reflect"  # ping-pong; LatentSync's shows each end frame twice
    fps: int = 0  # 0: the input's frame rate; 25: resampled first (LatentSync)
    # the latent cells the mask keeps: generated by the UNet like the others (LatentSync), or after every
    # DDIM step replaced by the input's own latents noised to the next step's level (RePaint's known region)
    kept_cells: Literal["generated", "replaced"] = "generated"
    # fp16: the networks in half on CUDA (LatentSync); bf16: the UNet's passes under bf16 autocast on a CPU
    # with native bf16 (AVX512-BF16 / AMX), fp32 elsewhere; fp32: fp32 everywhere
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"

    def validate(self, key: str = "inference") -> None:
        if self.num_frames < 1:
            raise ConfigError(f"{key}.num_frames must be >= 1, got {self.num_frames}")
        if not 0 <= self.overlap <= self.num_frames // 2:
            raise ConfigError(
                f"{key}.overlap must be in [0, num_frames // 2 = {self.num_frames // 2}], got {self.overlap}"
            )
        try:
            check_sampling(self.steps, self.guidance)
        except ConfigError as error:
            raise ConfigError(f"{key}: {error}") from None
        if not 0.0 <= self.eta <= 1.0:
            raise ConfigError(f"{key}.eta must be in [0, 1], got {self.eta}")
        if self.noise_scale < 0:
            raise ConfigError(f"{key}.noise_scale must be >= 0, got {self.noise_scale}")
        if self.fps < 0:
            raise ConfigError(f"{key}.fps must be 0 (the input's rate) or positive, got {self.fps}")


@dataclass(frozen=True)
class EvaluateParams:
    """The `evaluate` stage: reconstruction and dubbing on test identities (`synclip.eval.protocol`)."""

    split: Literal["train", "val", "test", "all"]  # whose clips (test: identities never trained on)
    clips: int  # clips dubbed, spread over identities (0 = every clean clip of the split)
    reconstruction_clips: int  # of those, the first ones also reconstructed (0 = all)
    max_frames: int  # frames of each clip generated (from its start)
    steps: int  # DDIM steps (the packaged default is inference.steps)
    closed_ratio: float  # inner-lip gap / mouth width below which a measured mouth counts as closed
    silent_margin_frames: int  # a GT pause frame counts as silent this many frames inside the pause
    samples: int  # sample videos written to reports/eval/samples
    sheet_frames: int  # frames per clip in the contact sheet
    sheet_clips: int  # clips in the contact sheet (the first ones)
    photo: bool  # the photo check (`synclip.eval.photo`): the astronaut photo lip-synced to the first clip's speech

    def validate(self, key: str = "evaluate") -> None:
        if min(self.clips, self.reconstruction_clips, self.samples, self.silent_margin_frames) < 0:
            raise ConfigError(
                f"{key}.clips, reconstruction_clips, samples and silent_margin_frames must be >= 0"
            )
        if self.sheet_clips < 1:
            raise ConfigError(f"{key}.sheet_clips must be >= 1, got {self.sheet_clips}")
        if not 0 < self.closed_ratio < 1 or self.sheet_frames < 1:
            raise ConfigError(
                f"{key}.closed_ratio must be in (0, 1) ({self.closed_ratio}), sheet_frames >= 1 "
                f"({self.sheet_frames})"
            )


@dataclass(frozen=True)
class DriftParams:
    """Input-drift monitoring (`drift_reference` stage, `synclip drift`, the service's request log)."""

    sampled_frames: int  # frames per video the features look at (light, sharpness, the face)
    reference_split: Literal["train", "val", "test"]  # the sources the reference describes
    baseline_split: Literal["train", "val", "test"]  # compared with the reference as a no-drift check
    drift_share: float  # the inputs drifted when this share of the features did (Evidently's default: 0.5)

    def validate(self, key: str = "drift") -> None:
        if self.sampled_frames < 1:
            raise ConfigError(f"{key}.sampled_frames must be >= 1, got {self.sampled_frames}")
        if not 0 < self.drift_share <= 1:
            raise ConfigError(f"{key}.drift_share must be in (0, 1], got {self.drift_share}")
        if self.reference_split == self.baseline_split:
            raise ConfigError(f"{key}.baseline_split must differ from {key}.reference_split")


@dataclass(frozen=True)
class PromoteParams:
    """The retrain flow's rule for promoting an evaluated model to the service (flows/retrain.py,
    `synclip.eval.compare`): the candidate and the promoted model are scored on the same clips."""

    score: str  # a per-clip metric ("dubbing.lse_c"): the paired difference must clear `margin`
    margin: float  # the paired difference's 95 % interval must lie wholly above this
    required: tuple[str, ...]  # boolean metrics of the candidate's metrics.json that must all be true
    guards: tuple[str, ...]  # per-clip metrics that must not get significantly worse (or the photo's change)
    photo_tolerance: float  # grey levels the photo check's change outside the mask may grow
    photo_opening_tolerance: float  # how far the photo's mouth-opening r may fall

    def validate(self, key: str = "promote") -> None:
        tolerances = (self.margin, self.photo_tolerance, self.photo_opening_tolerance)
        if min(tolerances) < 0:
            raise ConfigError(
                f"{key}.margin, photo_tolerance and photo_opening_tolerance must be >= 0, got "
                + ", ".join(f"{t:g}" for t in tolerances)
            )


@dataclass(frozen=True)
class Params:
    """Everything params.yaml holds."""

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
        """Each section's own rules, then the rules between sections; ConfigError names the key."""
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        for field in dataclasses.fields(self):
            section = getattr(self, field.name)
            if dataclasses.is_dataclass(section):
                section.validate(field.name)
        if self.vae.source == "taef2" and self.pretrained.taef2 is None:
            raise ConfigError("vae.source is 'taef2' but pretrained.taef2 is not set")
        for name, setting in (("syncnet", "latentsync_syncnet"), ("vae", "sd_vae"), ("videomae", "videomae")):
            if getattr(self, name).source == "pretrained" and getattr(self.pretrained, setting) is None:
                raise ConfigError(f"{name}.source is 'pretrained' but pretrained.{setting} is not set")
        levels = len(self.vae.block_out_channels)
        if self.preprocess.resolution % 2 ** (levels - 1):
            raise ConfigError(
                f"preprocess.resolution ({self.preprocess.resolution}) must be divisible by the VAE's "
                f"downsampling 2^{levels - 1} (vae.block_out_channels has {levels} levels)"
            )
        least = self.syncnet.num_frames + 2 * self.syncnet.max_offset  # a SyncNet window and its offsets
        for number in (1, 2):
            stage = self.train_unet.stage(number)
            if stage.sample_every and stage.sample_frames < least:
                raise ConfigError(
                    f"train_unet.stage{number}.sample_frames ({stage.sample_frames}) must be at least "
                    f"syncnet.num_frames + 2 · syncnet.max_offset = {least}"
                )
        packaged = self.train_unet.stage(2).num_frames  # the packaged UNet is stage 2's
        if self.inference.num_frames != packaged:
            raise ConfigError(
                f"inference.num_frames ({self.inference.num_frames}) must equal the packaged UNet's training "
                f"window train_unet.stage2 num_frames ({packaged})"
            )
        if self.evaluate.max_frames < least:
            raise ConfigError(
                f"evaluate.max_frames ({self.evaluate.max_frames}) must cover a SyncNet window and its offsets "
                f"(>= {least})"
            )
        try:
            check_sampling(self.evaluate.steps, self.inference.guidance)
        except ConfigError as error:
            raise ConfigError(f"evaluate: {error}") from None


# --- loading -------------------------------------------------------------------------------------

EXTENDS = "extends"  # a profile file's key naming the profile it starts from


def profile_chain(folder: Path, name: str) -> list[tuple[Path, dict[str, Any]]]:
    """(file, overrides) of profile `name` and the profiles it extends, the most basic first; [] for tiny."""
    chain: list[tuple[Path, dict[str, Any]]] = []
    while name != BASE_PROFILE:
        if any(name == seen.stem for seen, _ in chain):
            raise ConfigError(f"profile {name!r}: profiles extend each other in a loop")
        profile_path = folder / f"{name}.yaml"
        if not profile_path.is_file():
            raise ConfigError(f"profile {name!r}: {profile_path} does not exist")
        layer = read_mapping(profile_path)
        parent = layer.pop(EXTENDS, BASE_PROFILE)
        if not isinstance(parent, str):
            raise ConfigError(f"{profile_path}: '{EXTENDS}' must name a profile, got {parent!r}")
        chain.insert(0, (profile_path, layer))
        name = parent
    return chain


def load_params(
    path: str | Path = "params.yaml",
    overrides: Sequence[str] = (),
    profile: str | None = None,
) -> Params:
    """Read params.yaml, apply a profile and `key=value` overrides, check types and rules.

    params.yaml is the `tiny` profile and lists every key. Another profile is a file of overrides
    next to it (`params/<name>.yaml`, e.g. `params/full.yaml`), applied when `profile: <name>` is set
    (in params.yaml, by `-S profile=full`, or by the caller). Overrides never add keys: an unknown
    key, a missing key or a value of the wrong type is a `ConfigError` that names the key.

    Order: params.yaml, then the profile's file, then `overrides` (so `-S` wins). A `profile=`
    override or the `profile` argument selects the profile before its file is applied. A profile file
    may start from another (`extends: full`), whose file is applied before it.
    """
    path = Path(path)
    raw = read_mapping(path)
    parsed = [parse_override(item) for item in overrides]
    for key, value in parsed:
        if key == "profile":
            profile = value
    if profile is not None:
        raw["profile"] = profile
    chosen = raw.get("profile", BASE_PROFILE)
    if not isinstance(chosen, str):
        raise ConfigError(f"{path}: 'profile' must be a string, got {type(chosen).__name__}")
    for profile_path, layer in profile_chain(path.parent / PROFILE_DIR, chosen):
        merge_strict(raw, layer, source=str(profile_path))
    for key, value in parsed:
        set_strict(raw, key, value, source="override")
    params = from_dict(Params, raw, source=str(path), defaults=False)
    params.validate()
    return params
