"""DVC stage `validate`: the Great Expectations gate on the preprocessing manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from synclip.config import load_params
from synclip.entry import run
from synclip.errors import UserError
from synclip.log import setup_logging
from synclip.quality.expectations import validate_manifest, write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    setup_logging(params.runtime.log_level)
    outcome = validate_manifest(pd.read_parquet(args.manifest), params.preprocess, params.data_quality)
    write_report(outcome, args.out)
    print(outcome.summary())
    if not outcome.success:
        raise UserError(f"data-quality gate failed; see {args.out / 'index.html'}")


if __name__ == "__main__":
    run(main)
