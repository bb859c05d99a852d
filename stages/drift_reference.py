"""DVC stage `drift_reference`: the drift features of the sources the model learned from (the reference
`synclip drift` compares requests with), and a baseline report of held-out sources against them."""

from synclip.entry import stage
from synclip.quality.drift import reference_stage

if __name__ == "__main__":
    stage(
        __doc__,
        reference_stage,
        manifest="data/processed/manifest.parquet",
        raw="data/raw",
        reference="the reference features (.parquet)",
        baseline="the baseline report's folder",
        metrics="the stage's metrics (.json)",
    )
