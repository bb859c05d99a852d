"""DVC stages `train_unet_stage1` / `train_unet_stage2`: the denoiser on cached latents (resumes a killed
run), with validation samples of a dubbed val clip."""

from functools import partial

from synclip.entry import Arg, stage
from synclip.eval.samples import validation_sample
from synclip.train.unet import unet_stage

if __name__ == "__main__":
    stage(
        __doc__,
        partial(unet_stage, make_sample=validation_sample),
        stage=Arg("the training stage", type=int, choices=(1, 2)),
        manifest="data/synced/manifest.parquet",
        clips="data/processed/clips",
        vae="the VAE's folder",
        init=Arg("stage 2: the stage-1 UNet artifact", required=False),
        syncnet=Arg("the SyncNet artifact (stage 2's sync loss; scores the samples)", required=False),
        trepa=Arg("stage 2: the TREPA video encoder folder", required=False),
        whisper_cache="the Whisper features cache",
        latent_cache="the VAE latents cache",
        out="the UNet artifact's folder",
        metrics="the stage's metrics (.json)",
        history="the training curve (.csv)",
        samples=Arg("the validation sample videos' folder (none without)", required=False),
    )
