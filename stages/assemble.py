"""DVC stage `assemble`: the stage-2 UNet, the VAE, the Whisper encoder, DDIM and the mask → models/synclip."""

from synclip.entry import Arg, stage
from synclip.inference.package import assemble_stage

if __name__ == "__main__":
    stage(
        __doc__,
        assemble_stage,
        unet="models/unet_stage2",
        vae="the VAE's folder",
        whisper=Arg("transformers Whisper folder (default: pretrained.whisper)", required=False),
        out="the packaged model's folder",
    )
