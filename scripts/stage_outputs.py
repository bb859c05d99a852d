"""Fingerprint every output of the real dvc.yaml on a small corpus, to check that a change keeps behaviour.

    python scripts/stage_outputs.py --tree /path/to/checkout --out before.json   # e.g. a `git worktree`
    python scripts/stage_outputs.py --out after.json                              # this checkout
    python scripts/stage_outputs.py --compare before.json after.json

Runs `dvc repro` of the tree's dvc.yaml, stages/ and src/ in a fresh git + DVC repository under
--work, on a 13-clip SynthTalk corpus (made once, in --corpus) with every training stage shortened
to a few steps, one thread per stage; then hashes every file the stages wrote: weights, configs,
manifests, metrics and histories (times left out), videos. The same code gives the same hashes
(seen: two runs at one commit agree on all 72 files), so any difference is a change of behaviour.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ("models", "data/synced", "data/processed", "reports")
SHORT = {  # every training stage a few steps: the check is about the code paths, not the models
    "data_quality": {"min_clips": 3},
    "syncnet": {
        "max_steps": 12,
        "val_every": 4,
        "checkpoint_every": 4,
        "val_pairs": 16,
        "batch_size": 8,
        "min_confidence": 0.0,
        "max_abs_offset": 15,
        "min_correction": 16,
    },
    "vae": {
        "max_steps": 10,
        "val_every": 5,
        "checkpoint_every": 5,
        "val_frames": 8,
        "scale_frames": 16,
        "test_stride": 8,
        "batch_size": 2,
    },
    "videomae": {"max_steps": 6, "val_every": 3, "checkpoint_every": 3, "val_windows": 4, "batch_size": 2},
    "evaluate": {"split": "train", "clips": 2, "max_frames": 46, "steps": 2, "samples": 1, "sheet_frames": 3},
}
UNET = {
    "stage1": {
        "max_steps": 8,
        "val_every": 4,
        "checkpoint_every": 4,
        "val_windows": 2,
        "max_clips": 4,
        "sample_every": 4,
        "sample_frames": 46,
        "sample_steps": 2,
    },
    "stage2": {"max_steps": 4, "val_every": 2, "checkpoint_every": 2, "sample_every": 2},
}


def make_corpus(folder: Path) -> None:
    """The tests' small corpus: 13 clips of 2.5–3.5 s, 9 with one defect each."""
    import dataclasses

    from synclip.config import load_params
    from synclip.data.synthtalk import synthesize_corpus

    base = load_params(ROOT / "params.yaml").corpus
    identities = dataclasses.replace(base.identities, train=4, val=1, test=2)
    spec = dataclasses.replace(
        base, clips=13, identities=identities, min_seconds=2.5, max_seconds=3.5, defect_rate=9 / 13, workers=1
    )
    synthesize_corpus(spec, folder)


def run_pipeline(tree: Path, work: Path, corpus: Path) -> None:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml", "params", "stages", "src"):
        source = tree / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, work / name)
    shutil.copytree(ROOT / "models" / "pretrained", work / "models" / "pretrained")
    shutil.copytree(corpus, work / "data" / "raw")
    params = yaml.safe_load((work / "params.yaml").read_text())
    for section, changes in SHORT.items():
        params[section].update(changes)
    for stage, changes in UNET.items():
        params["train_unet"][stage].update(changes)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "PYTHONPATH": str(work / "src"),
        "OMP_NUM_THREADS": "2",
    }
    for command in (
        ["git", "init", "-q"],
        [str(bin_dir / "dvc"), "init", "-q"],
        [str(bin_dir / "dvc"), "repro"],
    ):
        result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, check=False)
        if result.returncode:
            sys.exit(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")


def without_times(value):
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


def digest(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".json":
        data = json.dumps(without_times(json.loads(data)), sort_keys=True).encode()
    elif path.suffix == ".csv":
        rows = [
            {k: v for k, v in row.items() if k != "seconds"}
            for row in csv.DictReader(io.StringIO(data.decode()))
        ]
        data = json.dumps(rows).encode()
    return hashlib.md5(data).hexdigest()


def fingerprints(work: Path) -> dict[str, str]:
    """Every output file but the pretrained weights, training checkpoints (they hold times) and work caches."""
    hashes = {}
    for top in OUTPUTS:
        for path in sorted((work / top).rglob("*")):
            name = str(path.relative_to(work))
            if (
                path.is_file()
                and "pretrained" not in name
                and path.name != "checkpoint.pt"
                and "/.work" not in name
            ):
                hashes[name] = digest(path)
    return hashes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose pipeline runs")
    parser.add_argument("--out", type=Path, help="where the fingerprints go (.json)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "synclip-stage-outputs")
    parser.add_argument(
        "--corpus", type=Path, default=Path(tempfile.gettempdir()) / "synclip-stage-outputs-corpus"
    )
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        before, after = (json.loads(path.read_text()) for path in args.compare)
        differ = sorted(name for name in set(before) | set(after) if before.get(name) != after.get(name))
        print(f"{len(before)} vs {len(after)} files; {len(differ)} differ")
        for name in differ:
            print(f"  {name}: {before.get(name)} -> {after.get(name)}")
        sys.exit(1 if differ else 0)
    if args.out is None:
        parser.error("--out is needed (or --compare)")
    if not (args.corpus / "synthtalk.json").is_file():
        make_corpus(args.corpus)
    run_pipeline(args.tree.resolve(), args.work, args.corpus)
    hashes = fingerprints(args.work)
    args.out.write_text(json.dumps(hashes, indent=1))
    print(f"{len(hashes)} files fingerprinted -> {args.out}")


if __name__ == "__main__":
    main()
