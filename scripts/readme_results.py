"""Write the README's results table from reports/eval/metrics.json (`--check`: only say whether it is current).

The table is `synclip.eval.report.results_markdown` of the evaluation the repository's dvc.lock records;
tests/test_readme.py fails when the README's copy is not that table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from synclip.eval.report import results_markdown

ROOT = Path(__file__).resolve().parents[1]
BEGIN = "<!-- results: begin (python scripts/readme_results.py writes this table from reports/eval/metrics.json) -->"
END = "<!-- results: end -->"


def with_results(readme: str, table: str) -> str:
    """`readme` with the lines between the two markers replaced by `table`."""
    if readme.count(BEGIN) != 1 or readme.count(END) != 1:
        raise SystemExit(f"README.md must hold the two marker lines once each:\n{BEGIN}\n{END}")
    head, rest = readme.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 when the README's table is not current")
    parser.add_argument("--metrics", type=Path, default=ROOT / "reports" / "eval" / "metrics.json")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args()
    readme = args.readme.read_text()
    updated = with_results(readme, results_markdown(json.loads(args.metrics.read_text())))
    if args.check:
        sys.exit(0 if updated == readme else 1)
    args.readme.write_text(updated)


if __name__ == "__main__":
    main()
