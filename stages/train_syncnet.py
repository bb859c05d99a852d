"""DVC stage `train_syncnet`: the lip-sync expert on the processed clips (resumes a killed run)."""

from synclip.entry import stage
from synclip.train.syncnet import syncnet_stage

if __name__ == "__main__":
    stage(
        __doc__,
        syncnet_stage,
        processed="data/processed",
        out="the SyncNet artifact's folder",
        metrics="the stage's metrics (.json)",
        history="the training curve (.csv)",
    )
