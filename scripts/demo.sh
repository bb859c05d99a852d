#!/usr/bin/env bash
# The main job on the built-in corpus: set up, generate SynthTalk if it is absent, check it
# against data.dvc, and run the DVC pipeline (dvc.yaml: preprocess -> validate, more to come).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export DVC_NO_ANALYTICS=1 DO_NOT_TRACK=1
case $VENV in /*) ;; *) VENV="$PWD/$VENV" ;; esac
export PATH="$VENV/bin:$PATH"  # dvc.yaml's commands run `python` from the project's venv

bash scripts/setup.sh

if [ ! -f data/raw/synthtalk.json ]; then
    printf '\n==> SynthTalk -> data/raw (about 3.5 minutes on 2 cores)\n'
    "$VENV/bin/synclip" corpus synth --out data/raw
fi
printf '\n==> data/raw against data.dvc\n'
"$VENV/bin/dvc" status data.dvc

printf '\n==> dvc repro\n'
"$VENV/bin/dvc" repro
"$VENV/bin/synclip" corpus stats data/raw
