"""Data-parallel training across the ranks of a torchrun launch (`synclip.runtime.join_process_group`):
which rows of the global batch a rank computes, and what the ranks share. A single process is the
world of one, where every helper here does nothing."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from synclip.errors import UserError

Rows = TypeVar("Rows", torch.Tensor, np.ndarray)
Loss = Callable[[int, AbstractContextManager], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class Shard:
    """Rank `rank` of `world`: its rows of every global batch of B items are [rank·B/W, (rank+1)·B/W).

    Every rank draws the whole batch (items, augmentations, noise, timesteps) from the same seeded
    generators, so the random stream is exactly a single process's, then computes the loss on its
    rows only. A loss that is a mean over items then averages (DDP) to the mean over the whole batch:
    the gradient of a single process, up to the order of float sums.
    """

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Whether this rank writes (checkpoints, history, artifacts, samples)."""
        return self.rank == 0

    def rows(self, batch: int) -> slice:
        """This rank's rows of a global batch of `batch` items."""
        if batch % self.world:
            raise ValueError(f"a batch of {batch} items does not split over {self.world} ranks")
        size = batch // self.world
        return slice(self.rank * size, (self.rank + 1) * size)

    def take(self, items: Rows) -> Rows:
        """This rank's rows of `items` (B, ...) (a tensor or an array)."""
        return items[self.rows(len(items))]

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """Every rank's `rows` (B/W, ...) → the whole batch's (B, ...), in rank order. Differentiable:
        the backward sums every rank's gradient of its rows, so a loss over the whole batch that every
        rank computes (a contrastive loss, whose negatives are the batch's other items) gets, once DDP
        has averaged, a single process's gradient."""
        if self.world == 1:
            return rows
        return _Gather.apply(rows, self)

    def mean(self, value: torch.Tensor) -> float:
        """The mean over ranks of a scalar (a single process: its value)."""
        return self.means({"value": value})["value"]

    def means(self, terms: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Each scalar term's mean over ranks: the whole batch's mean of a term that is a mean over items."""
        if self.world == 1:
            return {name: term.item() for name, term in terms.items()}
        values = torch.stack([term.detach().to(torch.float64) for term in terms.values()])
        dist.all_reduce(values)
        return dict(zip(terms, (values / self.world).tolist(), strict=True))

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def agree(self, value: Any, what: str) -> None:
        """Raise unless every rank holds the same `value` (`what` names it in the error)."""
        if self.world == 1:
            return
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        if any(v != values[0] for v in values):
            raise UserError(f"the ranks disagree on {what}: {values} (rank order)")

    def follow_main(self, rng: np.random.Generator, device: torch.device) -> None:
        """Every rank takes rank 0's RNG states (torch's, `device`'s, `rng`'s), after work only rank 0
        did (a validation that drew noise) or after a resume (a checkpoint holds rank 0's device's
        generator); it also makes the others wait for rank 0 there."""
        if self.world == 1:
            return
        cuda = device.type == "cuda"
        state = [
            torch.get_rng_state(),
            torch.cuda.get_rng_state(device) if cuda else None,
            rng.bit_generator.state,
        ]
        dist.broadcast_object_list(state, src=0, device=device)
        torch.set_rng_state(state[0])
        if cuda:
            torch.cuda.set_rng_state(state[1], device)
        rng.bit_generator.state = state[2]


class _Gather(torch.autograd.Function):
    """all_gather whose backward all-reduces the whole batch's gradient and keeps this rank's rows
    (torch.distributed.nn's all_gather is deprecated in torch 2.14; this needs only all_gather and
    all_reduce, which gloo and NCCL both have)."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, shard: Shard) -> torch.Tensor:
        ctx.shard = shard
        parts = [torch.empty_like(rows) for _ in range(shard.world)]
        dist.all_gather(parts, rows.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.clone(memory_format=torch.contiguous_format)  # all_reduce works in place
        dist.all_reduce(grad)
        return ctx.shard.take(grad), None


def current_shard() -> Shard:
    """This process's shard: from torchrun's process group if it has joined one, else the whole batch."""
    if not dist.is_initialized():
        return Shard()
    return Shard(dist.get_rank(), dist.get_world_size())


class _StepLoss(torch.nn.Module):
    """A step's loss as a module's forward, so that DDP sees the whole step: recipes call their
    network's other methods too (encode / decode, embed_visual / embed_audio), and DDP only readies
    its gradient all-reduce for what runs inside its own forward."""

    def __init__(self, model: torch.nn.Module, loss: Loss) -> None:
        super().__init__()
        self.model = model  # registered here, so DDP holds its trainable parameters
        self.loss = loss

    def forward(self, step: int, autocast: AbstractContextManager):
        return self.loss(step, autocast)


def data_parallel(model: torch.nn.Module, loss: Loss, shard: Shard, device: torch.device) -> Loss:
    """`loss` (a recipe's, computed with `model`), under DDP when there are several ranks: the trainable
    parameters' gradients are averaged over the ranks during the backward pass (bucketed, overlapping
    the backward)."""
    if shard.world == 1:
        return loss
    # buffers are synced once, at the start, not before every forward: no network here has BatchNorm,
    # whose running statistics would differ per rank
    return DistributedDataParallel(
        _StepLoss(model, loss),
        device_ids=[device.index] if device.type == "cuda" else None,
        forward_sync_buffers=False,
    )
