"""The one training loop: AdamW on a warm-up + cosine schedule, mixed precision, gradient clipping,
validation rows, complete checkpoints and exact resumption, in one process or data-parallel over the
ranks of a torchrun launch; what differs per network is a `Recipe`."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synclip.config import OptimParams, to_dict
from synclip.errors import UserError
from synclip.log import progress
from synclip.runtime import autocast_dtype
from synclip.train.checkpoint import load_training_state, save_training_state
from synclip.train.distributed import Shard, current_shard, data_parallel
from synclip.train.optim import adamw, learning_rate

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


@dataclass
class History:
    rows: list[dict]  # one per validation: step, train_<term> means, the recipe's scores, seconds
    seconds: float  # training time, summed over resumed runs
    notes: dict = field(default_factory=dict)  # what the recipe reports besides the rows


class Recipe:
    """What the Trainer needs to know about one network's training. Subclasses set `name` and
    `params`, build their network in `setup` and say how a step's loss is made in `loss`.

    Under torchrun every rank runs `setup` and `loss`; `loss` draws the whole global batch and computes
    on `shard.take(...)` of it (`synclip.train.distributed.Shard`). `begin`, `opening_row`, `validate`
    and `finish` run on rank 0 only: they write files or score what rank 0 then writes.
    """

    name: str  # the progress bar's label
    params: OptimParams
    model: torch.nn.Module  # what `setup` built
    shard: Shard = Shard()  # this process's rows of every batch; the Trainer sets it before `setup`
    adam_betas: tuple[float, float] | None = None  # None: AdamW's default
    digits = 5  # history rounding of the training terms

    def setup(self, seed: int, rng: np.random.Generator, device: torch.device) -> torch.nn.Module:
        """Build the network (and data samplers) after the seeding with `seed` (which also seeds `rng`);
        returns the network to optimise."""
        raise NotImplementedError

    def fingerprint(self) -> list:
        """JSON-able values a checkpoint must share with this run to be resumed (its data, mostly)."""
        return []

    def loss(
        self, step: int, autocast: AbstractContextManager
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One batch: (the loss to minimise, the named terms to log), forward passes under `autocast`."""
        raise NotImplementedError

    def after_update(self) -> None:
        """After each optimiser step (e.g. an EMA update)."""

    def validate(self, step: int) -> dict[str, Any]:
        """The history row's scores at `step` (rounded, named as they are stored)."""
        return {}

    def describe(self) -> str:
        """What it trains on, for the log line that opens a run."""
        return ""

    def begin(self, step: int, resumed: bool) -> None:
        """Before the first step of this run: `step` is where it starts (0 unless `resumed`)."""

    def opening_row(self) -> dict[str, Any] | None:
        """A row for step 0 before any training (a fine-tune's starting point), or None."""
        return None

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the recipe besides the network (an EMA, running values)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass

    def notes(self) -> dict[str, Any]:
        """What the recipe reports besides the rows (goes into `History.notes`)."""
        return {}

    def result(self) -> torch.nn.Module:
        """The network a run returns (the EMA weights where there are some)."""
        return self.model

    def finish(self, out_dir: Path, step: int) -> torch.nn.Module:
        """Write the artifact into `out_dir` after the last step; returns the network written."""
        raise NotImplementedError


class Trainer:
    """Runs a `Recipe` to `params.max_steps` in `out_dir`.

    A run seeds torch and a numpy Generator with `seed`, lets the recipe build its network and data
    (in its own order, so its random draws are the same every run), then steps. Every `val_every` steps
    (and at the last) it appends a history row: the mean of each logged training term since the last
    row, then the recipe's validation scores. Every `checkpoint_every` steps (and at the last) it writes
    `out_dir/checkpoint.pt` with everything a killed run needs (`synclip.train.checkpoint`); a rerun
    with the same inputs continues from it and ends with the same weights as an uninterrupted run.

    Launched by torchrun (`synclip.runtime.join_process_group`), every rank runs this loop on its
    rows of the same global batch (`params.batch_size`, a multiple of the world size) under DDP, so
    the update is a single process's up to float summation order, at the same learning rate. The
    logged terms are means over the ranks; rank 0 alone validates and writes the history, the
    checkpoints and the artifact while the others wait, then they take its RNG states. Every rank
    resumes from the checkpoint in `out_dir`, which must therefore be a folder they all see.
    """

    def __init__(self, recipe: Recipe, out_dir: str | Path, device: torch.device, seed: int) -> None:
        self.recipe, self.out_dir, self.device, self.seed = recipe, Path(out_dir), device, seed

    def fit(self, stop_after: int | None = None) -> tuple[torch.nn.Module, History]:
        """Train (or resume) to the end and write the artifact; `stop_after` steps end early (tests)."""
        recipe, params, device = self.recipe, self.recipe.params, self.device
        shard = recipe.shard = current_shard()
        if params.batch_size % shard.world:
            raise UserError(
                f"{recipe.name}: batch_size {params.batch_size} (the global batch) does not split over "
                f"{shard.world} ranks; make it a multiple of the number of processes"
            )
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        model = recipe.setup(self.seed, rng, device)
        recipe.model = model
        trainable = [p for p in model.parameters() if p.requires_grad]
        betas = {} if recipe.adam_betas is None else {"betas": recipe.adam_betas}
        optimizer = adamw(trainable, device, params.lr, params.weight_decay, **betas)
        amp = autocast_dtype(device)
        scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
        autocast = torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()

        key = self.fingerprint()
        history, step, window = History(rows=[], seconds=0.0), 0, []
        checkpoint = self.out_dir / CHECKPOINT
        resumed = load_training_state(
            checkpoint, model=model, optimizer=optimizer, scaler=scaler, rng=rng, fingerprint=key
        )
        if resumed is not None:
            step, extra = resumed
            history, window = History(**extra["history"]), extra["window"]
            recipe.load_state(extra["recipe"])
            log.info("resuming %s from step %d (%s)", recipe.name, step, checkpoint)
        shard.agree(step, f"the step to resume from (is {self.out_dir} a folder every rank sees?)")
        if shard.main:
            recipe.begin(step, resumed is not None)
        log.info(
            "%s: %.2f M parameters (%.2f M trainable), %d steps on %s; %s",
            recipe.name,
            sum(p.numel() for p in model.parameters()) / 1e6,
            sum(p.numel() for p in trainable) / 1e6,
            params.max_steps,
            device,
            recipe.describe(),
        )
        started = time.perf_counter() - history.seconds
        if shard.main and not history.rows and (opening := recipe.opening_row()) is not None:
            history.rows.append({"step": 0, **opening, "seconds": 0.0})
        shard.follow_main(rng, device)  # after rank 0's opening row; a checkpoint holds rank 0's device RNG
        loss_of = data_parallel(model, recipe.loss, shard, device)
        bar = progress("steps")
        bar.disable = not shard.main  # one bar, rank 0's
        with bar:
            task = bar.add_task(recipe.name, total=params.max_steps, completed=step)
            while step < params.max_steps:
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(params, step)
                loss, terms = loss_of(step, autocast)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trainable, params.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                recipe.after_update()
                step += 1
                window.append(shard.means(terms))
                bar.advance(task)
                validating = step % params.val_every == 0 or step == params.max_steps
                saving = step % params.checkpoint_every == 0 or step == params.max_steps
                if validating and shard.main:
                    row = {"step": step}
                    row |= {
                        f"train_{name}": round(float(np.mean([w[name] for w in window])), recipe.digits)
                        for name in window[0]
                    }
                    row |= recipe.validate(step)
                    row["seconds"] = round(time.perf_counter() - started, 1)
                    history.rows.append(row)
                    log.info("%s step %d: %s", recipe.name, step, _shown(row))
                if validating:
                    window = []
                history.seconds = time.perf_counter() - started
                if saving and shard.main:
                    history.notes = recipe.notes()
                    extra = {
                        "history": dataclasses.asdict(history),
                        "window": window,
                        "recipe": recipe.state(),
                    }
                    save_training_state(
                        checkpoint,
                        model=model,
                        optimizer=optimizer,
                        scaler=scaler,
                        step=step,
                        rng=rng,
                        fingerprint=key,
                        extra=extra,
                    )
                if validating or saving:  # the others wait for rank 0's files and take its RNG states
                    shard.follow_main(rng, device)
                if stop_after is not None and step >= stop_after:
                    history.notes = recipe.notes()
                    return recipe.result(), history
        history.notes = recipe.notes()
        result = recipe.finish(self.out_dir, step) if shard.main else recipe.result()
        shard.barrier()  # every rank returns once the artifact is written
        return result, history

    def fingerprint(self) -> str:
        """What a checkpoint must share with this run to be resumed: params, seed, the recipe's data
        and this code (the output folder persists between `dvc repro` runs: after a change to the
        objective a finished checkpoint would otherwise be "resumed" at max_steps, never retrained)."""
        code = hashlib.sha256(Path(__file__).read_bytes())
        code.update(Path(inspect.getfile(type(self.recipe))).read_bytes())
        payload = [
            self.recipe.name,
            to_dict(self.recipe.params),
            self.seed,
            self.recipe.fingerprint(),
            code.hexdigest(),
        ]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _shown(row: dict) -> str:
    return ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if "_" in k
    )
