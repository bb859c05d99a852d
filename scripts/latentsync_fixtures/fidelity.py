"""LatentSync's FVD (eval/fvd.py) on seeded inputs: tests/fixtures/latentsync/fidelity.safetensors.

Upstream code run (from `root`): `compute_fvd` (mean, np.cov, scipy.linalg.sqrtm(σ_gen·σ_real), real part)
on seeded random feature sets in both argument orders, one with more samples than features and two with
fewer (rank-deficient covariances, as LatentSync's 30 videos × 400 I3D features give); and
`compute_our_fvd` end to end as eval/eval_fvd.py calls it: `compute_our_fvd(real, fake, device="cpu")` on (B, F, 224, 224, 3) float32
videos = uint8 / 255.0. Its first parameter is named `videos_fake`, so compute_fvd receives the real
videos' features as `feats_fake`; the features of both sets are recorded as compute_fvd received them.

The I3D is `TinyI3D` (tests/fidelity_inputs.py): a seeded, scripted module with the published
`i3d_torchscript.pt`'s call contract, saved to checkpoints/auxiliary/i3d_torchscript.pt under a temporary
working directory, the path fvd.py hardcodes. Stubbed in sys.modules: `latentsync.utils.util` (decord,
matplotlib; fvd.py only imports `check_model_and_download`, which would download the real I3D).
eval_fvd.py itself is not run: it needs decord and MediaPipe's retired `mp.solutions` face detector.

Upstream passes `disp=False` to sqrtm, which SciPy 1.17 deprecates (a warning) and 1.18 removes.
"""

from __future__ import annotations

import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import scipy
import torch

from scripts.latentsync_fixtures.common import write_fixture

REPO = Path(__file__).resolve().parents[2]
FILES = ["eval/fvd.py", "eval/eval_fvd.py"]
I3D_PATH = "checkpoints/auxiliary/i3d_torchscript.pt"  # fvd.py's, relative to the working directory
# name → (rows of a, rows of b, features): "tall" has more samples than features (FID over many frames),
# "wide" and "low_rank" fewer (LatentSync's FVD: 30 videos × 400 features)
FEATURE_SETS = {"tall": (40, 30, 16), "wide": (12, 10, 32), "low_rank": (6, 5, 24)}
VIDEOS = (6, 5)  # real, fake; 16 frames of 8×8 blocks each, 224×224 once expanded
SEED = 20240620
SMALL = 8  # video side before fidelity_inputs.expand blows it up to 224


def feature_sets(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Seeded feature pairs: correlated columns with different means and scales, float64."""
    out = {}
    for name, (rows_a, rows_b, dims) in FEATURE_SETS.items():
        mixing = rng.normal(size=(dims, dims)) / np.sqrt(dims)
        out[f"{name}.a"] = rng.normal(size=(rows_a, dims)) @ mixing + 0.5
        out[f"{name}.b"] = 1.3 * rng.normal(size=(rows_b, dims)) @ mixing + 0.2
    return out


def videos(rng: np.random.Generator, count: int, levels: tuple[int, int]) -> np.ndarray:
    """(count, 16, 8, 8, 3) uint8 noise, each video with its own brightness in `levels` and contrast, so
    the I3D features spread between videos (uniform noise alone gives nearly equal pooled features)."""
    shape = (count, 16, SMALL, SMALL, 3)
    level = rng.uniform(*levels, size=(count, 1, 1, 1, 1))
    spread = rng.uniform(10, 60, size=(count, 1, 1, 1, 1))
    return np.clip(level + spread * rng.normal(size=shape), 0, 255).round().astype(np.uint8)


def generate(root: Path) -> None:
    tests_dir = str(REPO / "tests")
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    from fidelity_inputs import I3D_SEED, expand, save_script, tiny_i3d

    util = types.ModuleType("latentsync.utils.util")
    downloads: list[str] = []
    util.check_model_and_download = downloads.append  # the file is already there; record the call
    sys.modules["latentsync.utils.util"] = util
    from eval import fvd as upstream

    rng = np.random.default_rng(SEED)
    tensors: dict[str, np.ndarray | torch.Tensor] = {}
    for key, value in feature_sets(rng).items():
        tensors[f"features.{key}"] = value
    for name in FEATURE_SETS:
        a, b = tensors[f"features.{name}.a"], tensors[f"features.{name}.b"]
        tensors[f"fd.{name}.ab"] = np.array(upstream.compute_fvd(a, b))
        tensors[f"fd.{name}.ba"] = np.array(upstream.compute_fvd(b, a))

    real_small = videos(rng, VIDEOS[0], levels=(60, 200))
    fake_small = videos(rng, VIDEOS[1], levels=(40, 160))
    received: dict[str, np.ndarray] = {}
    compute_fvd = upstream.compute_fvd

    def recording_fvd(feats_fake: np.ndarray, feats_real: np.ndarray) -> float:
        received["feats_fake"], received["feats_real"] = feats_fake, feats_real
        return compute_fvd(feats_fake, feats_real)

    upstream.compute_fvd = recording_fvd
    cwd = os.getcwd()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.chdir(tmp)
            Path(I3D_PATH).parent.mkdir(parents=True)
            save_script(tiny_i3d(I3D_SEED), Path(I3D_PATH))
            # as eval_fvd.detect_videos builds them: torch.stack(uint8 (F, H, W, C) clips) / 255.0
            real = torch.from_numpy(expand(real_small)) / 255.0
            fake = torch.from_numpy(expand(fake_small)) / 255.0
            value = upstream.compute_our_fvd(real, fake, device="cpu")
    finally:
        os.chdir(cwd)
        upstream.compute_fvd = compute_fvd
    assert downloads == [I3D_PATH], downloads
    tensors |= {
        "fvd.real_small": real_small,
        "fvd.fake_small": fake_small,
        "fvd.features_real": received["feats_fake"],  # compute_our_fvd(real, fake) swaps the names
        "fvd.features_fake": received["feats_real"],
        "fvd.value": np.array(value),
    }
    write_fixture(
        "fidelity",
        tensors,
        root,
        FILES,
        notes={
            "seed": SEED,
            "feature_sets": {name: list(shape) for name, shape in FEATURE_SETS.items()},
            "fd": "fd.<set>.ab = compute_fvd(features.<set>.a, features.<set>.b); .ba swapped",
            "fvd": "compute_our_fvd(real, fake, device='cpu') as eval_fvd calls it; videos = "
            "expand(fvd.*_small) / 255.0 (tests/fidelity_inputs.py), features float32 as compute_fvd got them",
            "i3d": f"tests/fidelity_inputs.py tiny_i3d({I3D_SEED}), scripted, in place of i3d_torchscript.pt",
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "torch": torch.__version__,
        },
    )
