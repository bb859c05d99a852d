"""DVC stage `evaluate`: reconstruction and dubbing on test identities, baselines and ceiling → reports/eval."""

from synclip.entry import stage
from synclip.eval.report import evaluate_stage

if __name__ == "__main__":
    stage(
        __doc__,
        evaluate_stage,
        processed="data/processed",
        raw="data/raw (SynthTalk ground-truth sidecars)",
        model="models/synclip",
        syncnet="the SyncNet artifact",
        out="reports/eval",
    )
