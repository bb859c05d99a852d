"""Training under torchrun: every recipe on 2 gloo ranks against one process on the same global batch,
a 2-rank run killed by SIGKILL that resumes exactly, and rank 0 as the only writer.

This file is also the ranks' script: `torchrun --nproc-per-node 2 tests/test_ddp.py FOLDER RUN...`
with RUN = RECIPE:NAME[:KILL_AT] trains RECIPE into FOLDER/runs/NAME and leaves each rank's evidence
in FOLDER/evidence/NAME (KILL_AT: rank 1 SIGKILLs itself after that many updates).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_syncnet import synthetic_clips
from test_trepa import synthetic_clips as synthetic_videos
from test_trepa import tiny_params as tiny_videomae_params
from test_unet_training import WIDTH, synthetic_clip, tiny_stage, tiny_unet_params, tiny_vae
from test_vae import faces

from synclip.config import RuntimeParams, load_params
from synclip.nn.syncnet import StableSyncNet, syncnet_config
from synclip.nn.unet import unet_config
from synclip.train.diffusion import DiffusionObjective
from synclip.train.syncnet import SyncNetRecipe
from synclip.train.trainer import CHECKPOINT, Recipe, Trainer
from synclip.train.unet import UNetRecipe
from synclip.train.vae import VaeRecipe
from synclip.train.videomae import VideoMAERecipe

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
SEED = 3
STEPS = 6
# The weights after 6 steps, 2 ranks vs 1 process. The averaged gradients of the half batches differ
# from the whole batch's in the last float bits (relative 3e-7 for the SyncNet, 8e-7 for the UNet at
# the first step, measured): the mean |Δweight| is 1e-10 to 6e-9. AdamW divides each gradient by its
# running RMS, so an element whose gradient is near 0 steps a fraction of lr either way on a last-bit
# difference: the largest |Δweight| measured is 0.0084 lr (SyncNet), 0.0025 (pairs), 0.032 (UNet stage
# 1), 0.0098 (stage 2), 0.0047 (VAE), 1e-5 (VideoMAE). Measured with DDP bypassed (each rank stepping
# on its half batch): max 0.68 to 11 lr, mean 2e-4 to 8e-4. The bounds sit 3x (max) and 17x (mean)
# above the first, far below the second.
MAX_DIFFERENCE = 0.1  # × lr
MEAN_DIFFERENCE = 1e-7

pytestmark = pytest.mark.usefixtures("one_thread")


# --- the recipes both sides run ------------------------------------------------------------------


def recipe(name: str) -> tuple[Recipe, str]:
    """A tiny run of `name` (6 steps), and the submodule whose inputs show how many rows a rank computes."""
    params = load_params(ROOT / "params.yaml")
    if name.startswith("syncnet"):
        # the tiny profile's contrastive loss (every window against the whole batch's audio), or
        # LatentSync's balanced pairs (a mean over items)
        weight = 0.0 if name == "syncnet_pairs" else params.syncnet.contrastive_weight
        sync = dataclasses.replace(
            params.syncnet, max_steps=STEPS, val_every=3, checkpoint_every=2, val_pairs=16, batch_size=8
        )
        sync = dataclasses.replace(sync, contrastive_weight=weight)
        return SyncNetRecipe(synthetic_clips(4, 60, 0), synthetic_clips(2, 60, 1), sync), "visual_encoder"
    if name.startswith("unet"):
        # stage 1: ε MSE; stage 2: motion modules and attentions only, and the SyncNet term on the x̂0
        # decoded by a (frozen) VAE
        frames = 24 if name == "unet_stage1" else 48  # stage 2: 16-frame windows, as the SyncNet's
        train = [synthetic_clip(f"t{i:03d}", frames, shift=i - 1, seed=i) for i in range(3)]
        val = [synthetic_clip("v000", frames, seed=9)]
        common = dict(batch_size=4, max_steps=STEPS, val_every=3, checkpoint_every=2)
        if name == "unet_stage1":
            stage = tiny_stage(params, **common)
            objective = DiffusionObjective({"recon": 1.0})
        else:
            two = params.train_unet.stage(2)
            stage = tiny_stage(
                params,
                **common,
                num_frames=16,
                motion_modules=True,
                trainable=two.trainable,
                lower_face_jitter=two.lower_face_jitter,  # stage 1's jitter is refused with pixel terms
            )
            torch.manual_seed(1)
            judge = StableSyncNet(syncnet_config(params.syncnet))
            objective = DiffusionObjective(
                {"recon": 1.0, "sync": 0.05},
                pixel_region=judge.config.crop,
                vae=tiny_vae(64),
                syncnet=judge.eval().requires_grad_(False),
            )
        config = unet_config(tiny_unet_params(params), stage, audio_width=WIDTH)
        return UNetRecipe(train, val, objective, config, stage), ""
    if name == "vae":
        vae = dataclasses.replace(
            params.vae,
            block_out_channels=(8, 16),
            norm_num_groups=4,
            batch_size=4,
            max_steps=STEPS,
            val_every=3,
            val_frames=6,
            checkpoint_every=2,
            scale_frames=16,
        )
        return VaeRecipe(faces(24, 0), faces(6, 1), vae), "encoder"
    assert name == "videomae", name
    mae = tiny_videomae_params(batch_size=4, max_steps=STEPS)
    return VideoMAERecipe(synthetic_videos(0, 3), synthetic_videos(1, 2), mae), "videomae"


RECIPES = ("syncnet", "syncnet_pairs", "unet_stage1", "unet_stage2", "vae", "videomae")


# --- the ranks' side -----------------------------------------------------------------------------


def rank_main(folder: Path, runs: list[str]) -> None:
    """One rank: join the process group as a stage does (`configure`), train each run, leave evidence."""
    import torch.distributed as dist

    from synclip.runtime import configure

    device = configure(RuntimeParams(device="cpu", threads=1, log_level="WARNING", distributed="auto"))
    rank = dist.get_rank()
    writes = watch_writes(folder / "runs")
    for run in runs:
        name, out, *kill_at = run.split(":")
        trained, watched = recipe(name)
        rows = watch_rows(trained, watched)
        if kill_at and rank == 1:
            kill_after(trained, int(kill_at[0]))
        first_write = len(writes)
        model, history = Trainer(trained, folder / "runs" / out, device, SEED).fit()
        evidence = {
            "rank": rank,
            "world": dist.get_world_size(),
            "backend": dist.get_backend(),
            "rows": rows,
            "writes": writes[first_write:],
            "history": history.rows,
        }
        (folder / "evidence" / out).mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), folder / "evidence" / out / f"rank{rank}.pt")
        (folder / "evidence" / out / f"rank{rank}.json").write_text(json.dumps(evidence))


def watch_writes(folder: Path) -> list[str]:
    """Every file or folder this process creates, replaces or removes under `folder`, from Python's
    audit events: `open` for writing, the atomic renames of checkpoints and artifacts, mkdir, unlink."""
    seen: list[str] = []
    folder = folder.resolve()
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            if not (mode and any(c in mode for c in "wxa+")) and not (mode is None and flags & writing):
                return
            paths = [path]
        elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir"):
            paths = list(args[:2]) if event == "os.rename" else [args[0]]
        else:
            return
        for path in paths:
            if isinstance(path, (str, os.PathLike)) and Path(path).resolve().is_relative_to(folder):
                seen.append(f"{event} {Path(path).name}")

    sys.addaudithook(hook)
    return seen


def watch_rows(trained: Recipe, module: str) -> list[int]:
    """The batch sizes the recipe's network (its `module`) sees in training forward passes."""
    seen: list[int] = []
    setup = trained.setup

    def hook(submodule: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if submodule.training:
            seen.append(len(next(a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))))

    def watched_setup(*args, **kwargs) -> torch.nn.Module:
        model = setup(*args, **kwargs)
        model.get_submodule(module).register_forward_pre_hook(hook, with_kwargs=True)
        return model

    trained.setup = watched_setup
    return seen


def kill_after(trained: Recipe, updates: int) -> None:
    done = 0
    after_update = trained.after_update

    def dying() -> None:
        nonlocal done
        after_update()
        done += 1
        if done == updates:
            os.kill(os.getpid(), signal.SIGKILL)

    trained.after_update = dying


# --- the tests' side -----------------------------------------------------------------------------


def torchrun(folder: Path, *runs: str) -> subprocess.CompletedProcess:
    """This file under the venv's torchrun: 2 ranks on one machine (gloo), one thread each."""
    launcher = Path(sys.executable).with_name("torchrun")
    command = [str(launcher)] if launcher.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    command += ["--standalone", "--nproc-per-node", "2", __file__, str(folder), *runs]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def evidence(folder: Path, run: str, launch: subprocess.CompletedProcess) -> list[dict]:
    files = [folder / "evidence" / run / f"rank{r}.json" for r in range(2)]
    assert all(f.is_file() for f in files), f"no evidence of {run}:\n{launch.stdout}\n{launch.stderr[-4000:]}"
    return [json.loads(f.read_text()) for f in files]


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, weights_only=True)["model"]


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    """One torchrun of every recipe and then a UNet run whose rank 1 is killed in step 5 (which fails
    the launch: rank 0 loses its peer in step 6)."""
    folder = tmp_path_factory.mktemp("ddp")
    result = torchrun(folder, *[f"{name}:{name}" for name in RECIPES], "unet_stage1:killed:5")
    return folder, result


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_two_ranks_train_as_one_process_on_the_whole_batch(launch, name, tmp_path):
    """Each rank computes half of every batch; the weights are one process's on the whole batch."""
    folder, result = launch
    ranks = evidence(folder, name, result)
    trained, _ = recipe(name)
    # one gloo group of 2 ranks; each computed half of every batch (a bypassed shard shows the whole
    # batch, a bypassed DDP the weights of half a batch's gradient, far outside the tolerance)
    assert [(e["rank"], e["world"], e["backend"]) for e in ranks] == [(0, 2, "gloo"), (1, 2, "gloo")]
    assert all(e["rows"] == [trained.params.batch_size // 2] * STEPS for e in ranks), [
        e["rows"] for e in ranks
    ]
    # rank 0 alone wrote the checkpoints and the artifact, and alone validated
    assert ranks[1]["writes"] == []
    assert any(CHECKPOINT in w for w in ranks[0]["writes"]), ranks[0]["writes"]  # the watch sees writes
    assert ranks[1]["history"] == []
    replicas = [torch.load(folder / "evidence" / name / f"rank{r}.pt") for r in range(2)]
    torch.testing.assert_close(replicas[1], replicas[0], rtol=0, atol=0)  # DDP keeps them equal

    _, history = Trainer(trained, tmp_path, CPU, SEED).fit()
    # the raw weights (the UNet's result is their EMA) in each run's last checkpoint
    distributed, single = (weights(f / CHECKPOINT) for f in (folder / "runs" / name, tmp_path))
    difference = torch.cat([(distributed[k].double() - single[k].double()).abs().flatten() for k in single])
    lr = trained.params.lr
    print(
        f"{name}: |Δweight| 2 ranks vs 1 process: max {difference.max() / lr:.3g} lr, mean {difference.mean():.3g}"
    )
    assert difference.max() < MAX_DIFFERENCE * lr
    assert difference.mean() < MEAN_DIFFERENCE
    for row, one in zip(ranks[0]["history"], history.rows, strict=True):
        assert row.keys() == one.keys()
        for key in row.keys() - {"seconds"}:  # the logged terms are the ranks' means
            assert row[key] == pytest.approx(one[key], rel=1e-3, abs=1e-4), key


@pytest.mark.slow
def test_a_killed_two_rank_run_resumes_to_the_uninterrupted_runs_weights(launch):
    """Rank 1 SIGKILLed after step 5; the rerun resumes from rank 0's step-4 checkpoint on both ranks."""
    folder, result = launch
    assert result.returncode != 0, result.stdout  # the kill failed the launch
    killed = folder / "runs" / "killed"
    assert not (killed / "model.safetensors").exists()
    assert torch.load(killed / CHECKPOINT, weights_only=True)["step"] == 4
    resumed_launch = torchrun(folder, "unet_stage1:killed")
    resumed = evidence(folder, "killed", resumed_launch)
    assert [(e["rank"], e["world"]) for e in resumed] == [(0, 2), (1, 2)]
    assert all(e["rows"] == [2, 2] for e in resumed)  # steps 5 and 6 only: resumed, not retrained
    assert resumed[1]["writes"] == []
    straight = evidence(folder, "unet_stage1", result)
    final = [
        torch.load(folder / "runs" / run / CHECKPOINT, weights_only=True) for run in ("killed", "unet_stage1")
    ]
    for part in ("model", "optimizer"):
        torch.testing.assert_close(final[0][part], final[1][part], rtol=0, atol=0)
    for rank in ("rank0.pt", "rank1.pt"):  # the EMA weights each rank returned
        torch.testing.assert_close(
            torch.load(folder / "evidence" / "killed" / rank),
            torch.load(folder / "evidence" / "unet_stage1" / rank),
            rtol=0,
            atol=0,
        )

    def without_time(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    assert without_time(resumed[0]["history"]) == without_time(straight[0]["history"])


if __name__ == "__main__":
    rank_main(Path(sys.argv[1]), sys.argv[2:])
