"""DVC stage `pretrain_videomae`: TREPA's VideoMAE, pretrained on the processed clips (resumes a killed
run), or a local VideoMAE-v2 copied from pretrained.videomae and checked (videomae.source: pretrained)."""

from synclip.entry import stage
from synclip.train.videomae import videomae_stage

if __name__ == "__main__":
    stage(
        __doc__,
        videomae_stage,
        processed="data/processed",
        out="the VideoMAE's folder (transformers)",
        metrics="the stage's metrics (.json)",
        history="the training curve (.csv)",
    )
