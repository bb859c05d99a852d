"""DVC stage `sync_filter`: score every processed clip with the SyncNet, drop and correct by offset."""

from synclip.entry import stage
from synclip.eval.sync_filter import sync_filter_stage

if __name__ == "__main__":
    stage(
        __doc__,
        sync_filter_stage,
        processed="data/processed",
        syncnet="the SyncNet artifact",
        out="the kept clips' manifest and the rejects (folder)",
        metrics="the stage's metrics (.json)",
    )
