"""A build on an existing Dask cluster fails loudly, with one line, when the cluster cannot do the
work: nothing listening at the address (or something that is not a scheduler), no workers, a
task whose workers keep dying, a worker that cannot see DATA. Real `dask scheduler` and
`dask worker` processes on 127.0.0.1, always stopped at the end of each test."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from store_testing import content_files, synchronous_build
from test_resume import POLL_TIMEOUT_S, REPO_ROOT, wait_for

from preprocess.build import BuildPaths
from preprocess.cli import main
from preprocess.executor import ClusterError, check_scheduler

pytestmark = pytest.mark.slow

# Loaded into a worker with `--preload`: after persisting two per-file results the
# worker writes its pid to $NYMERIA_TEST_STALL_MARKER and stalls, so the test can kill it while it
# holds tasks (a clip takes milliseconds, too fast to catch part-way by polling).
STALL_PRELOAD = """
import os, time
from pathlib import Path
from preprocess.clip_cache import ClipCache

def stalling_save(self, result, save=ClipCache.save, saved=[]):
    save(self, result)
    saved.append(result.file)
    if len(saved) == 2:
        Path(os.environ["NYMERIA_TEST_STALL_MARKER"]).write_text(str(os.getpid()))
        time.sleep(600)

if not hasattr(ClipCache.save, "stalls"):  # the worker may run this file more than once
    stalling_save.stalls = True
    ClipCache.save = stalling_save
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """Processes started by one test; `stop` kills every one of them (and their children)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.processes: list[subprocess.Popen] = []
        self.address = ""

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        process = subprocess.Popen(
            list(args),
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def scheduler(self, **config: str) -> str:
        port = free_port()
        self.start(
            sys.executable,
            "-m",
            "distributed.cli.dask_scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-dashboard",
            env=config,
        )
        self.address = f"tcp://127.0.0.1:{port}"
        deadline = time.monotonic() + POLL_TIMEOUT_S
        while True:
            try:
                check_scheduler(self.address, timeout_s=2)
                return self.address
            except ClusterError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def worker(
        self, *extra: str, prefix: tuple[str, ...] = (), env: dict[str, str] | None = None
    ) -> None:
        self.start(
            *prefix,
            sys.executable,
            "-m",
            "distributed.cli.dask_worker",
            self.address,
            "--nthreads",
            "1",
            "--no-dashboard",
            "--host",
            "127.0.0.1",
            *extra,
            env=env,
        )

    def wait_for_workers(self, count: int) -> None:
        deadline = time.monotonic() + POLL_TIMEOUT_S
        while len(check_scheduler(self.address)["workers"]) < count:
            assert time.monotonic() < deadline, f"gave up waiting for {count} workers"
            time.sleep(0.2)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    started = Cluster(tmp_path)
    try:
        yield started
    finally:
        started.stop()


def build_args(data: Path, out: Path, scheduler: str, *extra: str) -> list[str]:
    return [
        "build",
        str(data),
        "--out",
        str(out),
        "--scheduler",
        scheduler,
        "--no-progress",
        *extra,
    ]


def start_build(data: Path, out: Path, scheduler: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "preprocess", *build_args(data, out, scheduler, *extra)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def error_line(output: str) -> str:
    assert "Traceback" not in output, output
    (line,) = [ln for ln in output.splitlines() if ln.startswith("Error: ")]
    return line


def kill_stalled_worker(build: subprocess.Popen, marker: Path) -> str:
    """SIGKILL the worker that wrote its pid to `marker` when it stalled; the build's stderr."""
    try:
        wait_for(marker.exists, "the worker to stall", build)
        os.kill(int(marker.read_text()), signal.SIGKILL)
        return build.communicate(timeout=POLL_TIMEOUT_S)[1]
    finally:
        if build.poll() is None:
            build.kill()


def test_an_address_without_a_scheduler_fails_in_seconds_and_leaves_nothing(
    synthetic_dataset, tmp_path, cluster
):
    out = tmp_path / "store.zarr"
    nothing = f"tcp://127.0.0.1:{free_port()}"
    port = free_port()  # the scheduler's dashboard would hang the Dask handshake the same way
    http = cluster.start(sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port))
    wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, "the HTTP server", http)
    for address in (nothing, f"tcp://127.0.0.1:{port}"):
        started = time.monotonic()
        result = CliRunner().invoke(
            main, build_args(synthetic_dataset, out, address, "--connect-timeout", "2")
        )
        assert time.monotonic() - started < 15
        assert result.exit_code == 1
        line = error_line(result.output)
        assert f"cannot reach a Dask scheduler at {address} within 2 s" in line, line
        assert sorted(p.name for p in tmp_path.iterdir()) == []  # no STORE.build/, no lock


def test_no_workers_fails_after_the_timeout_and_keeps_the_work(
    synthetic_dataset, tmp_path, cluster
):
    address = cluster.scheduler()
    out = tmp_path / "store.zarr"
    result = CliRunner().invoke(
        main, build_args(synthetic_dataset, out, address, "--worker-timeout", "1")
    )
    assert result.exit_code == 1
    assert f"the Dask scheduler {address} has had no worker for 1 s" in error_line(result.output)

    # All workers lost mid-build: one worker stalls holding tasks, then is killed.
    marker = tmp_path / "stalled"
    preload = tmp_path / "stall_preload.py"
    preload.write_text(STALL_PRELOAD)
    cluster.worker(
        "--no-nanny", "--preload", str(preload), env={"NYMERIA_TEST_STALL_MARKER": str(marker)}
    )
    cluster.wait_for_workers(1)
    build = start_build(synthetic_dataset, out, address, "--worker-timeout", "2")
    stderr = kill_stalled_worker(build, marker)
    assert build.returncode == 1
    line = error_line(stderr)
    assert f"no Dask worker has been connected to the scheduler {address} for 2 s" in line, line
    assert "rerun with --resume" in line and f"kept in {BuildPaths(out).build_dir}" in line
    assert not out.exists() and len(list(BuildPaths(out).clips.glob("*.clip"))) >= 2

    cluster.worker()  # a healthy worker: the build resumes and is the same as a local one
    resumed = CliRunner().invoke(main, build_args(synthetic_dataset, out, address, "--resume"))
    assert resumed.exit_code == 0, resumed.output
    reference = tmp_path / "reference.zarr"
    synchronous_build(synthetic_dataset, reference)
    assert content_files(out) == content_files(reference)


def test_a_task_that_kills_its_workers_names_its_files(synthetic_dataset, tmp_path, cluster):
    address = cluster.scheduler(DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="0")
    marker = tmp_path / "stalled"
    preload = tmp_path / "stall_preload.py"
    preload.write_text(STALL_PRELOAD)
    cluster.worker(
        "--preload", str(preload), env={"NYMERIA_TEST_STALL_MARKER": str(marker)}
    )  # with a nanny
    cluster.wait_for_workers(1)
    out = tmp_path / "store.zarr"
    build = start_build(synthetic_dataset, out, address)
    stderr = kill_stalled_worker(build, marker)  # a nanny restarts it; the task failed
    assert build.returncode == 1
    line = error_line(stderr)
    assert (
        "the Dask workers running the file" in line and ".h5" in line and "died repeatedly" in line
    ), line
    assert "rerun with --resume" in line and not out.exists()


def test_a_worker_that_cannot_see_data_stops_the_build(synthetic_dataset, tmp_path, cluster):
    unshare = shutil.which("unshare")
    if (
        unshare is None
        or subprocess.run([unshare, "-rm", "true"], check=False, capture_output=True).returncode
    ):
        pytest.skip("no unprivileged mount namespaces here to give a worker its own view of DATA")
    data = tmp_path / "data"
    shutil.copytree(synthetic_dataset, data)
    address = cluster.scheduler()
    # The worker's own mount namespace has an empty file system over DATA: a different mount.
    cluster.worker(
        prefix=(unshare, "-rm", "sh", "-c", f'mount -t tmpfs tmpfs {data} && exec "$0" "$@"')
    )
    cluster.wait_for_workers(1)
    out = tmp_path / "store.zarr"
    result = CliRunner().invoke(main, build_args(data, out, address))
    assert result.exit_code == 1
    line = error_line(result.output)
    assert "a Dask worker cannot see a file this process can" in line and str(data) in line, line
    assert "Workers must see DATA at the same path" in line and "--resume" in line
    assert not out.exists()
