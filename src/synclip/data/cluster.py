"""Independent tasks on a Dask cluster: a LocalCluster of worker processes, or a running scheduler."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from synclip.errors import UserError

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)

# Set to a scheduler address (tcp://host:8786) to run on that cluster whatever params.yaml says.
SCHEDULER_ENV = "SYNCLIP_DASK_SCHEDULER"


def dask_address(scheduler: str, address: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """Where work runs: None on this machine without Dask, "" a LocalCluster, else a scheduler's address.

    `SYNCLIP_DASK_SCHEDULER`, when set, wins over the params (`scheduler`, `address`).
    """
    override = environ.get(SCHEDULER_ENV, "")
    if override:
        if "://" not in override:
            raise UserError(f"{SCHEDULER_ENV}={override!r} is not a scheduler address (tcp://host:8786)")
        return override
    assert scheduler in ("local", "dask"), scheduler  # PreprocessParams.validate
    return address if scheduler == "dask" else None


@contextmanager
def connect(address: str, workers: int) -> Iterator[Client]:
    """A client of the scheduler at `address`, or of a new LocalCluster of `workers` one-thread processes.

    The LocalCluster's scheduler serves its dashboard (and health routes) on a free port, never a busy
    8787; a real cluster's dashboard is its scheduler's.
    """
    from distributed import Client, LocalCluster

    if address:
        with Client(address) as client:
            yield client
        return
    local = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0")
    with local as cluster, Client(cluster) as client:
        log.info("Dask dashboard: %s", client.dashboard_link)
        yield client


def map_on_dask(
    function: Callable[..., Any], items: Sequence[tuple], keys: Sequence[str], address: str, workers: int
) -> Iterator[Any]:
    """`function(*item)` for each item as one Dask task named by its key; yields results as they complete.

    Completion order is the cluster's: callers that need an order sort what they collect. A task
    whose worker dies is rescheduled by the scheduler on another worker (up to
    `distributed.scheduler.allowed-failures` deaths, then it fails with `KilledWorker`); an error
    raised by a task is raised here. A result is let go of as soon as it is yielded, so a later
    worker death cannot make the scheduler recompute a task whose result the caller already has.
    """
    from distributed import as_completed

    assert len(items) == len(keys) == len(set(keys)), (len(items), len(keys), len(set(keys)))
    with connect(address, workers) as client:
        info = client.scheduler_info()
        log.info(
            "Dask scheduler %s: %d worker(s), %d thread(s)",
            info["address"],
            len(info["workers"]),
            sum(worker["nthreads"] for worker in info["workers"].values()),
        )
        futures = [client.submit(function, *item, key=key) for item, key in zip(items, keys, strict=True)]
        completed = as_completed(futures, with_results=True)
        del futures  # `completed` holds each future only until it yields it
        for future, result in completed:
            del future  # the scheduler forgets the task; the result lives only here now
            yield result
