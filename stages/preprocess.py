"""DVC stage `preprocess`: raw videos -> aligned clips, manifest.parquet, rejects.csv, metrics."""

from synclip.data.preprocess import preprocess_stage
from synclip.entry import stage

if __name__ == "__main__":
    stage(
        __doc__, preprocess_stage, raw="data/raw", out="data/processed", metrics="the stage's metrics (.json)"
    )
