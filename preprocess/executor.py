"""Where the per-file and per-sequence work runs: a plain loop, a local Dask cluster, or an
existing Dask cluster. The work functions are pure, so the choice changes speed, not results.

    scheduler=None           local `distributed.LocalCluster`: `workers` processes, 1 thread each
    scheduler="synchronous"  plain loop in this process (debugging, tests)
    scheduler="tcp://..."    an existing Dask cluster (its workers must see DATA at the same path)
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from typing import Any, Protocol

from shared.errors import UserError

logger = logging.getLogger(__name__)

SYNCHRONOUS = "synchronous"
# Tasks in flight per worker: enough to keep workers busy, few enough to bound memory (in
# order-preserving maps, finished results wait in memory until all earlier ones are consumed).
IN_FLIGHT_PER_WORKER = 4
ORDERED_IN_FLIGHT_PER_WORKER = 2
# Items per task when items are small (a clip file takes ~3 ms, a Dask task ~1 ms of overhead).
MAX_ITEMS_PER_TASK = 16
TASKS_PER_WORKER = 8  # at least this many tasks per worker, for load balance
CONNECT_TIMEOUT_S = 10.0  # default time to reach an existing scheduler
DEFAULT_WORKER_TIMEOUT_S = 300.0  # a build fails after this long without any worker
POLL_S = 1.0  # how often a waiting build checks that the cluster still has workers


class ClusterError(UserError, RuntimeError):
    """The cluster cannot run the build (unreachable, no workers, a task kills its workers)."""


class TaskFailed(ClusterError):
    """A task's workers kept dying (`distributed.KilledWorker`); names what the task was doing."""


def describe_args(args: tuple) -> str:
    return repr(args)[:200]


class Executor(Protocol):
    workers: int

    def items_per_task(self, num_items: int) -> int:
        """How many small items to group into one task."""
        ...

    def map_unordered(
        self, fn: Callable, args: Iterable[tuple], describe: Callable[[tuple], str] = describe_args
    ) -> Iterator[Any]:
        """fn(*a) for every a in `args`, yielded as they finish; `describe(a)` names a task
        in errors."""
        ...

    def map_ordered(
        self, fn: Callable, args: Iterable[tuple], describe: Callable[[tuple], str] = describe_args
    ) -> Iterator[Any]:
        """fn(*a) for every a in `args`, yielded in input order; `args` is consumed lazily."""
        ...


class SynchronousExecutor:
    """A plain loop in this process."""

    workers = 1

    def items_per_task(self, num_items: int) -> int:
        return 1  # no per-task overhead to amortise

    def map_unordered(
        self, fn: Callable, args: Iterable[tuple], describe: Callable[[tuple], str] = describe_args
    ) -> Iterator[Any]:
        for a in args:
            yield fn(*a)

    def map_ordered(
        self, fn: Callable, args: Iterable[tuple], describe: Callable[[tuple], str] = describe_args
    ) -> Iterator[Any]:
        return self.map_unordered(fn, args, describe)


class DaskExecutor:
    """Tasks on a `distributed.Client`, with a bounded number in flight.

    Waiting never hangs silently: with no worker connected for `worker_timeout_s` it raises
    `ClusterError`, and a task whose workers keep dying raises `TaskFailed` naming the task.
    """

    def __init__(self, client: Any, worker_timeout_s: float = DEFAULT_WORKER_TIMEOUT_S) -> None:
        self.client = client
        self.worker_timeout_s = worker_timeout_s
        self.workers = max(1, self._connected_workers())
        self.max_in_flight = IN_FLIGHT_PER_WORKER * self.workers

    def _connected_workers(self) -> int:
        return len(self.client.scheduler_info().get("workers", {}))

    def items_per_task(self, num_items: int) -> int:
        return max(1, min(MAX_ITEMS_PER_TASK, num_items // (TASKS_PER_WORKER * self.workers)))

    def _wait_first(self, futures: Iterable[Any]) -> set:
        """The finished futures among `futures` (at least one), watching the workers."""
        from distributed import wait

        without_workers_since: float | None = None
        while True:
            try:
                return set(wait(list(futures), timeout=POLL_S, return_when="FIRST_COMPLETED").done)
            except TimeoutError:
                pass
            if self._connected_workers():
                without_workers_since = None
                continue
            now = time.monotonic()
            without_workers_since = without_workers_since or now
            if now - without_workers_since > self.worker_timeout_s:
                raise ClusterError(
                    f"no Dask worker has been connected to the scheduler "
                    f"{self.client.scheduler.address} for {self.worker_timeout_s:g} s (see "
                    f"--worker-timeout): start workers (`dask worker ADDRESS`) and rerun with "
                    f"--resume"
                )

    def _result(self, future: Any, args: tuple, describe: Callable[[tuple], str]) -> Any:
        from distributed import KilledWorker

        try:
            result = future.result()
        except KilledWorker:
            raise TaskFailed(
                f"the Dask workers running {describe(args)} died repeatedly (out of memory, or a "
                f"crash in a library): rerun with --resume to continue the build (finished work "
                f"is kept), with more memory per worker or that input removed"
            ) from None
        future.release()
        return result

    def map_unordered(
        self, fn: Callable, args: Iterable[tuple], describe: Callable[[tuple], str] = describe_args
    ) -> Iterator[Any]:
        pending = iter(args)
        running = {}
        for a in islice(pending, self.max_in_flight):
            running[self.client.submit(fn, *a, pure=False)] = a
        while running:
            for future in self._wait_first(running):
                yield self._result(future, running.pop(future), describe)
                for a in islice(pending, 1):
                    running[self.client.submit(fn, *a, pure=False)] = a

    def map_ordered(
        self, fn: Callable, args: Iterable[tuple], describe: Callable[[tuple], str] = describe_args
    ) -> Iterator[Any]:
        pending = iter(args)
        first = islice(pending, ORDERED_IN_FLIGHT_PER_WORKER * self.workers)
        running: deque = deque((self.client.submit(fn, *a, pure=False), a) for a in first)
        while running:
            future, a = running.popleft()
            self._wait_first([future])
            yield self._result(future, a, describe)
            for a in islice(pending, 1):
                running.append((self.client.submit(fn, *a, pure=False), a))


def default_workers() -> int:
    return os.cpu_count() or 1


async def _scheduler_identity(address: str, timeout_s: float) -> dict:
    """The scheduler's `identity` reply; connect, handshake and reply are each bounded by
    `timeout_s` (a listener that is not a Dask scheduler, e.g. its HTTP dashboard port, would
    otherwise keep the handshake waiting for minutes)."""
    from distributed.comm import connect

    comm = await asyncio.wait_for(connect(address, timeout=timeout_s), timeout_s)
    try:
        await asyncio.wait_for(comm.write({"op": "identity"}), timeout_s)
        return await asyncio.wait_for(comm.read(), timeout_s)
    finally:
        comm.abort()


def check_scheduler(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> dict:
    """The identity of the Dask scheduler at `address`, or `ClusterError` within ~`timeout_s`."""
    try:
        identity = asyncio.run(_scheduler_identity(address, timeout_s))
    except ValueError as error:  # malformed address
        raise ClusterError(f"--scheduler {address!r} is not a Dask address: {error}") from None
    except (OSError, TimeoutError) as error:
        raise ClusterError(
            f"cannot reach a Dask scheduler at {address} within {timeout_s:g} s "
            f"({type(error).__name__}{': ' + str(error) if str(error) else ''}); check the "
            f"address (the scheduler's port, usually 8786, not its dashboard) and that "
            f"`dask scheduler` runs there"
        ) from None
    if not isinstance(identity, dict) or identity.get("type") != "Scheduler":
        raise ClusterError(f"{address} answered, but is not a Dask scheduler: {identity!r:.200}")
    return identity


@contextmanager
def open_executor(
    scheduler: str | None,
    workers: int | None,
    worker_timeout_s: float = DEFAULT_WORKER_TIMEOUT_S,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
) -> Iterator[Executor]:
    """An executor for `scheduler` (see module doc); clusters it starts are closed on exit.

    An existing cluster is checked first: an address without a scheduler fails within about
    `connect_timeout_s`, and a cluster without workers for `worker_timeout_s` fails too.
    """
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
            yield DaskExecutor(client, worker_timeout_s)
        return
    logger.info("connecting to the Dask scheduler at %s", scheduler)
    check_scheduler(scheduler, connect_timeout_s)
    with Client(scheduler, timeout=connect_timeout_s) as client:
        try:
            client.wait_for_workers(1, timeout=worker_timeout_s)
        except TimeoutError:
            raise ClusterError(
                f"the Dask scheduler {scheduler} has had no worker for {worker_timeout_s:g} s "
                f"(see --worker-timeout): start workers with `dask worker {scheduler}`"
            ) from None
        yield DaskExecutor(client, worker_timeout_s)
