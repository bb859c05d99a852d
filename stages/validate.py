"""DVC stage `validate`: the Great Expectations gate on the preprocessing manifest."""

from synclip.entry import stage
from synclip.quality.expectations import validate_stage

if __name__ == "__main__":
    stage(__doc__, validate_stage, manifest="data/processed/manifest.parquet", out="the report's folder")
