"""The README's results table is the one the committed evaluation (reports/eval/metrics.json) gives."""

from __future__ import annotations

import json
import subprocess
import sys

from synclip.eval.report import results_markdown


def test_the_readme_results_are_the_committed_evaluations(root):
    table = results_markdown(json.loads((root / "reports" / "eval" / "metrics.json").read_text()))
    assert table in (root / "README.md").read_text()
    check = [sys.executable, str(root / "scripts" / "readme_results.py"), "--check"]
    assert subprocess.run(check, cwd=root, check=False).returncode == 0


def test_the_check_fails_on_a_stale_table(root, tmp_path):
    metrics = json.loads((root / "reports" / "eval" / "metrics.json").read_text())
    metrics["dubbing"]["model"]["lse_c"] = 0.999
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    script = [
        sys.executable,
        str(root / "scripts" / "readme_results.py"),
        "--metrics",
        str(tmp_path / "metrics.json"),
    ]
    assert subprocess.run([*script, "--check"], cwd=root, check=False).returncode == 1
    readme = tmp_path / "README.md"
    readme.write_text((root / "README.md").read_text())
    subprocess.run([*script, "--readme", str(readme)], cwd=root, check=True)
    assert results_markdown(metrics) in readme.read_text()
