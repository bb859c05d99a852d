"""DVC stage `train_vae`: the tiny profile's latent space (resumes a killed run), or, with
`vae.source: pretrained`, the VAE at pretrained.sd_vae; either way evaluated on test identities."""

from synclip.entry import stage
from synclip.train.vae import vae_stage

if __name__ == "__main__":
    stage(
        __doc__,
        vae_stage,
        processed="data/processed",
        out="the VAE's folder (diffusers)",
        metrics="the stage's metrics (.json)",
        history="the training curve (.csv)",
        grid="the reconstruction grid (.png)",
    )
