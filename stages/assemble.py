"""DVC stage `assemble`: the stage-2 UNet, the VAE, the Whisper encoder, DDIM and the mask → models/synclip."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

from synclip.config import load_params
from synclip.entry import run
from synclip.log import setup_logging
from synclip.nn.unet import load_unet
from synclip.pipeline import LipSyncPipeline, PipelineConfig, assemble
from synclip.train.vae import load_vae

log = logging.getLogger("stages.assemble")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--unet", type=Path, required=True, help="models/unet_stage2")
    parser.add_argument("--vae", type=Path, required=True)
    parser.add_argument(
        "--whisper", type=Path, help="transformers Whisper folder (default: pretrained.whisper)"
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    setup_logging(params.runtime.log_level)
    config = PipelineConfig(resolution=params.preprocess.resolution, **dataclasses.asdict(params.inference))
    unet = load_unet(args.unet)
    vae = load_vae(args.vae, param="--vae")
    folder = assemble(args.out, unet, vae, args.whisper or Path(params.pretrained.whisper), config)
    LipSyncPipeline.from_pretrained(folder)  # the package loads strictly, as a user will load it
    log.info("packaged %s: %s", folder, json.dumps(dataclasses.asdict(config)))


if __name__ == "__main__":
    run(main)
