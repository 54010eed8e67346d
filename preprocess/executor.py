"""Where the per-file and per-sequence work runs: a plain loop, a local Dask cluster, or an
existing Dask cluster. The work functions are pure, so the choice changes speed, not results.

    scheduler=None           local `distributed.LocalCluster`: `workers` processes, 1 thread each
    scheduler="synchronous"  plain loop in this process (debugging, tests)
    scheduler="tcp://..."    an existing Dask cluster (its workers must see DATA at the same path)
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

logger = logging.getLogger(__name__)

SYNCHRONOUS = "synchronous"
# Tasks in flight per worker: enough to keep workers busy, few enough to bound memory (in
# order-preserving maps, finished results wait in memory until all earlier ones are consumed).
IN_FLIGHT_PER_WORKER = 4
ORDERED_IN_FLIGHT_PER_WORKER = 2
# Items per task when items are small (a clip file takes ~3 ms, a Dask task ~1 ms of overhead).
MAX_ITEMS_PER_TASK = 16
TASKS_PER_WORKER = 8  # at least this many tasks per worker, for load balance


class Executor(Protocol):
    workers: int

    def items_per_task(self, num_items: int) -> int:
        """How many small items to group into one task."""
        ...

    def map_unordered(self, fn: Callable, args: Iterable[tuple]) -> Iterator[Any]:
        """fn(*a) for every a in `args`, yielded as they finish."""
        ...

    def map_ordered(self, fn: Callable, args: Iterable[tuple]) -> Iterator[Any]:
        """fn(*a) for every a in `args`, yielded in input order; `args` is consumed lazily."""
        ...


class SynchronousExecutor:
    """A plain loop in this process."""

    workers = 1

    def items_per_task(self, num_items: int) -> int:
        return 1  # no per-task overhead to amortise

    def map_unordered(self, fn: Callable, args: Iterable[tuple]) -> Iterator[Any]:
        for a in args:
            yield fn(*a)

    def map_ordered(self, fn: Callable, args: Iterable[tuple]) -> Iterator[Any]:
        return self.map_unordered(fn, args)


class DaskExecutor:
    """Tasks on a `distributed.Client`, with a bounded number in flight."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.workers = max(1, len(client.scheduler_info()["workers"]))
        self.max_in_flight = IN_FLIGHT_PER_WORKER * self.workers

    def items_per_task(self, num_items: int) -> int:
        return max(1, min(MAX_ITEMS_PER_TASK, num_items // (TASKS_PER_WORKER * self.workers)))

    def map_unordered(self, fn: Callable, args: Iterable[tuple]) -> Iterator[Any]:
        from distributed import as_completed

        pending = iter(args)
        running = as_completed()
        for a in _take(pending, self.max_in_flight):
            running.add(self.client.submit(fn, *a, pure=False))
        for future in running:
            result = future.result()
            future.release()
            for a in _take(pending, 1):
                running.add(self.client.submit(fn, *a, pure=False))
            yield result

    def map_ordered(self, fn: Callable, args: Iterable[tuple]) -> Iterator[Any]:
        pending = iter(args)
        first = _take(pending, ORDERED_IN_FLIGHT_PER_WORKER * self.workers)
        running: deque = deque(self.client.submit(fn, *a, pure=False) for a in first)
        while running:
            future = running.popleft()
            result = future.result()
            future.release()
            for a in _take(pending, 1):
                running.append(self.client.submit(fn, *a, pure=False))
            yield result


def _take(iterator: Iterator[tuple], count: int) -> list[tuple]:
    out = []
    for _ in range(count):
        try:
            out.append(next(iterator))
        except StopIteration:
            break
    return out


def default_workers() -> int:
    return os.cpu_count() or 1


@contextmanager
def open_executor(scheduler: str | None, workers: int | None) -> Iterator[Executor]:
    """An executor for `scheduler` (see module doc); clusters it starts are closed on exit."""
    if scheduler == SYNCHRONOUS:
        yield SynchronousExecutor()
        return
    from distributed import Client, LocalCluster

    if scheduler is None:
        n = workers or default_workers()
        logger.info("starting a local Dask cluster: %d worker processes, 1 thread each", n)
        with (
            LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            yield DaskExecutor(client)
        return
    logger.info("connecting to the Dask scheduler at %s", scheduler)
    with Client(scheduler) as client:
        yield DaskExecutor(client)
