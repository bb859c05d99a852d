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
# record the corpus in the DVC cache; data.dvc changes only if the files differ from the recorded ones
"$VENV/bin/dvc" commit --force --quiet data.dvc
if git diff --quiet -- data.dvc; then
    echo "data/raw is the corpus data.dvc records"
else
    echo "warning: data/raw differs from the corpus data.dvc records (other parameters or package versions?);"
    echo "         data.dvc now describes the files on disk: 'git diff data.dvc' shows the change"
fi

printf '\n==> dvc repro\n'
"$VENV/bin/dvc" repro
"$VENV/bin/synclip" corpus stats data/raw
