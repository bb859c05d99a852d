#!/usr/bin/env bash
# The main job on the built-in corpus: set up, generate SynthTalk if it is absent, check it
# against data.dvc, run the DVC pipeline (dvc.yaml: data/raw -> ... -> models/synclip -> reports/eval),
# then lip-sync a clip of a test identity (never trained on) to a sentence no clip says.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export DVC_NO_ANALYTICS=1 DO_NOT_TRACK=1
case $VENV in /*) ;; *) VENV="$PWD/$VENV" ;; esac
export PATH="$VENV/bin:$PATH"  # dvc.yaml's commands run `python` from the project's venv

bash scripts/setup.sh

if [ ! -f data/raw/synthtalk.json ]; then
    printf '\n==> SynthTalk -> data/raw (about 3 minutes on 2 cores)\n'
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
"$VENV/bin/dvc" repro validate
# After preprocessing the DAG has two independent arms. They run side by side, one torch thread
# each, which gets a little more out of two cores than one after the other on two threads
# (measured: train_syncnet 12.0 min and train_vae 9.0 side by side, then sync_filter 1.7 and
# pretrain_videomae 2.0; alone on 2 threads 1800 SyncNet steps took 8.0; the arms are balanced by
# such times). With TAEF2 the VAE arm is the shorter one, so drift_reference, which needs only the
# processed corpus, runs there. dvc releases its repo lock while a stage's command runs, and
# --wait-for-lock makes each arm wait out the other's bookkeeping instead of failing; --single-item
# keeps both off the shared upstream stages, whose outputs they would otherwise both lock at once.
# Each arm's log lines carry its name.
arm() {
    local name=$1
    shift
    # pipefail: the arm fails when dvc does, not only when sed does
    OMP_NUM_THREADS=1 "$VENV/bin/dvc" --wait-for-lock repro --single-item "$@" 2>&1 | sed -u "s/^/[$name] /"
}
arm syncnet train_syncnet sync_filter &
first=$!
arm vae train_vae pretrain_videomae drift_reference &
second=$!
status=0
wait "$first" || status=$?
wait "$second" || status=$?
if [ "$status" -ne 0 ]; then
    echo "dvc repro failed in one of the two arms (see the lines above); rerun make demo to resume" >&2
    exit "$status"
fi
"$VENV/bin/dvc" repro   # the rest: the UNet stages, assemble, evaluate
"$VENV/bin/synclip" corpus stats data/raw

printf '\n==> demo: a test identity lip-synced to a new sentence\n'
mkdir -p demo
clip=$("$VENV/bin/python" -c '
import json
clips = json.load(open("data/raw/synthtalk.json"))["clips"]
print(next(c["file"] for c in clips if c["split"] == "test" and not c["defect"]))')
"$VENV/bin/synclip" corpus say "Every new voice gets the same face, and the lips follow the words." \
    --voice en+m3 -o demo/speech.wav
"$VENV/bin/synclip" lipsync --video "data/raw/$clip" --audio demo/speech.wav -o demo/demo.mp4
cat <<EOF

The demo video:      demo/demo.mp4 (data/raw/$clip driven by demo/speech.wav)
Evaluation:          reports/eval/summary.md, reports/eval/metrics.json (dvc metrics show)
Contact sheet:       reports/eval/contact_sheet.png; samples in reports/eval/samples/
Training curves:     dvc plots show (writes dvc_plots/index.html)
EOF
