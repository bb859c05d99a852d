#!/usr/bin/env bash
# Creates the project's virtual environment from requirements.lock, installs synclip into it
# and fetches the pretrained weights that can be had offline into models/pretrained.
# Idempotent: a second run checks what is there and does only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
export PIP_DISABLE_PIP_VERSION_CHECK=1

step() { printf '\n==> %s\n' "$*"; }

command -v "$PYTHON" >/dev/null || { echo "setup: $PYTHON not found; synclip needs CPython 3.11" >&2; exit 1; }

# OpenCV (pulled in by mediapipe as opencv-contrib-python) links libGL and glib at import.
if ! ldconfig -p | grep -q 'libGL.so.1' || ! ldconfig -p | grep -q 'libgthread-2.0.so.0'; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        step "installing libgl1 and libglib2.0-0 (needed by OpenCV)"
        apt-get update -qq && apt-get install -y -qq --no-install-recommends libgl1 libglib2.0-0 >/dev/null
    else
        echo "setup: libGL.so.1 / libgthread-2.0.so.0 missing; install libgl1 and libglib2.0-0 (Debian) first" >&2
        exit 1
    fi
fi

# tests/test_web.py drives the service's web page in Debian's chromium, headless, through Playwright
# (which never downloads a browser of its own here). About 10 s and 414 MB without the recommends.
if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        step "installing chromium (for the web page's test)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
    else
        echo "setup: note: no chromium; tests/test_web.py will skip (install Debian's chromium to run it)" >&2
    fi
fi

stamp="$VENV/.synclip-lock.sha256"
want=$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    step "environment $VENV matches requirements.lock"
else
    step "creating $VENV from requirements.lock (about 4 minutes the first time)"
    # torch's CUDA build and its nvidia-* wheels make the environment about 8.3 GB: say so up
    # front, so that a "No space left on device" half-way through has its reason.
    free_kb=$(df -Pk "$(dirname "$(realpath -m "$VENV")")" | awk 'NR==2 {print $4}')
    if [ ! -f "$VENV/bin/torchrun" ] && [ "$free_kb" -lt $((9 * 1024 * 1024)) ]; then
        echo "setup: warning: $VENV takes about 8.3 GB; $((free_kb / 1024 / 1024)) GB of disk is free" >&2
    fi
    [ -d "$VENV" ] || "$PYTHON" -m venv "$VENV"
    # No wheel cache: it would hold a second copy of the multi-GB wheels.
    # (this machine's pip configuration names local indexes that may not exist; skip that noise)
    "$VENV/bin/pip" install -q --no-cache-dir -r requirements.lock 2>&1 | { grep -v 'is ignored: it is neither' || true; }
    "$VENV/bin/pip" install -q --no-deps --no-build-isolation -e . 2>&1 | { grep -v 'is ignored: it is neither' || true; }
    "$VENV/bin/pip" check
    echo "$want" > "$stamp"
fi

step "pretrained weights -> models/pretrained"
"$VENV/bin/synclip" weights fetch --out models/pretrained

step "done: $("$VENV/bin/synclip" --version)"
