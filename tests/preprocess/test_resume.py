"""Restart and safety: a SIGKILLed build resumes to a byte-identical store; one build per store."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from store_testing import (
    cli_build,
    content_files,
    read_raw,
    root_attrs,
    synchronous_build,
    write_variant,
)

import shared.store
from preprocess import nymeria_format
from preprocess.build import BuildPaths
from preprocess.clip_cache import ClipCache
from preprocess.read_clip import read_clip
from shared.store import open_store

REPO_ROOT = Path(__file__).resolve().parents[2]
FILES_BEFORE_KILL = 5
POLL_TIMEOUT_S = 60

# The real CLI, except that the build stalls right after persisting its `stop_after`-th per-file
# result, so the test kills it at a known point whatever the machine's speed (a clip takes a few
# ms, too fast to catch part-way by polling). The stall is bounded in case the test dies first.
STALLING_BUILD = """
import sys, time
from preprocess.cli import main
from preprocess.clip_cache import ClipCache

stop_after, save, saved = int(sys.argv[1]), ClipCache.save, []

def stalling_save(self, result):
    save(self, result)
    saved.append(result.file)
    if len(saved) == stop_after:
        time.sleep(600)
        sys.exit("stalled build was not killed")

ClipCache.save = stalling_save
main(sys.argv[2:], prog_name="preprocess")
"""


def start_build(
    data: Path, out: Path, *extra: str, stop_after: int | None = None
) -> subprocess.Popen:
    """`python -m preprocess build` in a subprocess; with `stop_after`, one that stalls."""
    if stop_after is None:
        launcher = ["-m", "preprocess"]
    else:
        launcher = ["-c", STALLING_BUILD, str(stop_after)]
    return subprocess.Popen(
        [
            sys.executable,
            *launcher,
            "build",
            str(data),
            "--out",
            str(out),
            "--scheduler",
            "synchronous",
            "--no-progress",
            *extra,
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, what: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the build exited ({process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.05)


def finished_results(out: Path) -> dict[Path, int]:
    clips = BuildPaths(out).clips
    return {p: p.stat().st_mtime_ns for p in clips.glob("*.clip")} if clips.exists() else {}


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=POLL_TIMEOUT_S)


@pytest.mark.slow
def test_killed_build_resumes_byte_identical(synthetic_dataset: Path, tmp_path: Path):
    out = tmp_path / "resumed.zarr"
    process = start_build(synthetic_dataset, out, stop_after=FILES_BEFORE_KILL)
    try:
        wait_for(lambda: len(finished_results(out)) >= FILES_BEFORE_KILL, "results", process)
    finally:
        kill(process)
    assert process.returncode == -signal.SIGKILL
    done = finished_results(out)
    assert len(done) == FILES_BEFORE_KILL
    assert not out.exists()  # nothing that looks like a store
    paths = BuildPaths(out)
    assert paths.lock.exists()  # the dead build's lock is still there

    refused = start_build(synthetic_dataset, out)
    _, stderr = refused.communicate(timeout=POLL_TIMEOUT_S)
    assert refused.returncode == 1 and "pass --resume to take it over" in stderr

    resumed = start_build(synthetic_dataset, out, "--resume")
    stdout, stderr = resumed.communicate(timeout=POLL_TIMEOUT_S)
    assert resumed.returncode == 0, stderr
    assert "took over the stale lock" in stderr
    assert f"18 found, {len(done)} reused from an interrupted build, 18 used" in stdout
    # Finished files were not read again.
    for path, mtime_ns in done.items():
        assert not path.exists() or path.stat().st_mtime_ns == mtime_ns
    assert not paths.build_dir.exists() and not paths.lock.exists()

    reference = tmp_path / "uninterrupted.zarr"
    synchronous_build(synthetic_dataset, reference)
    assert content_files(out) == content_files(reference)
    resumed_attrs, reference_attrs = root_attrs(out), root_attrs(reference)
    # The resumed build keeps the time its first attempt wrote the store; --resume is not
    # recorded. The two builds differ only in when they started and where they wrote.
    assert resumed_attrs[shared.store.ATTR_CREATED] <= reference_attrs[shared.store.ATTR_CREATED]
    assert "resume" not in resumed_attrs[shared.store.ATTR_BUILD_CONFIG]
    for attrs in (resumed_attrs, reference_attrs):
        del attrs[shared.store.ATTR_CREATED], attrs[shared.store.ATTR_BUILD_CONFIG]["out"]
    assert resumed_attrs == reference_attrs
    assert open_store(out).fingerprint == open_store(reference).fingerprint


def test_build_that_fails_while_writing_resumes_with_its_first_created_time(
    synthetic_dataset: Path, tmp_path: Path, monkeypatch
):
    import preprocess.build.write

    out = tmp_path / "store.zarr"

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed while writing frames")

    with monkeypatch.context() as patched:
        patched.setattr(preprocess.build.write, "_write_frames", crash)
        with pytest.raises(RuntimeError, match="killed while writing frames"):
            synchronous_build(synthetic_dataset, out)
    created = (BuildPaths(out).build_dir / "created").read_text()
    time.sleep(1.1)  # `created` has whole seconds: a new time would differ
    synchronous_build(synthetic_dataset, out, resume=True)
    attrs = root_attrs(out)
    assert attrs[shared.store.ATTR_CREATED] == created
    assert "resume" not in attrs[shared.store.ATTR_BUILD_CONFIG]
    open_store(out)


def test_resumed_frame_writing_keeps_writing_all_zero_chunks(
    synthetic_dataset: Path, tmp_path: Path, monkeypatch
):
    """Zarr skips chunks that hold only the fill value unless told otherwise, and that setting is
    not stored with an array: a resumed stage 3 must set it again, or the store misses chunks."""
    import preprocess.build.write

    data = tmp_path / "no_contact"
    for clip in sorted(synthetic_dataset.glob("*.h5")):
        frames = len(read_raw(clip)[nymeria_format.KEY_TIMESTAMP_NS])
        zeros = np.zeros((frames, shared.store.NUM_CONTACTS), np.float32)
        write_variant(clip, data / clip.name, {nymeria_format.KEY_CONTACT_INFORMATION: zeros})
    out = tmp_path / "store.zarr"
    save, saved = preprocess.build.write.save_progress, []

    def save_then_die(path: Path, progress: object) -> None:
        save(path, progress)
        saved.append(path)
        if len(saved) == 3:
            raise RuntimeError("killed while writing frames")

    with monkeypatch.context() as patched:
        patched.setattr(preprocess.build.write, "save_progress", save_then_die)
        with pytest.raises(RuntimeError, match="killed while writing frames"):
            synchronous_build(data, out, chunk_frames=256)
    synchronous_build(data, out, chunk_frames=256, resume=True)
    assert shared.store.check_chunks(out, deep=True) == []
    np.testing.assert_array_equal(open_store(out).contact[:], 0)


@pytest.mark.slow
def test_concurrent_build_is_refused(synthetic_dataset: Path, tmp_path: Path):
    out = tmp_path / "store.zarr"
    first = start_build(synthetic_dataset, out, stop_after=1)
    try:
        wait_for(lambda: len(finished_results(out)) >= 1, "the first build to start", first)
        second = cli_build(synthetic_dataset, out, "--resume")
        assert second.exit_code == 1
        lock = BuildPaths(out).lock
        assert f"another build holds the lock {lock}: pid {first.pid}" in second.output
        assert first.poll() is None  # the first build is unharmed
    finally:
        kill(first)


def write_lock(out: Path, pid: int, host: str) -> Path:
    lock = BuildPaths(out).lock
    lock.write_text(json.dumps({"pid": pid, "host": host, "started": "earlier"}))
    return lock


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_lock_is_taken_over_only_when_asked(synthetic_dataset: Path, tmp_path: Path, caplog):
    out = tmp_path / "store.zarr"
    lock = write_lock(out, dead_pid(), socket.gethostname())
    refused = cli_build(synthetic_dataset, out)
    assert refused.exit_code == 1 and "died and left the lock" in refused.output
    assert lock.exists()
    taken = cli_build(synthetic_dataset, out, "--resume")
    assert taken.exit_code == 0, taken.output
    assert "took over the stale lock" in caplog.text
    assert not lock.exists()
    open_store(out)


def test_lock_of_another_host_is_never_taken_over(synthetic_dataset: Path, tmp_path: Path):
    out = tmp_path / "store.zarr"
    write_lock(out, 1, "some-other-host.example")
    result = cli_build(synthetic_dataset, out, "--resume")
    assert result.exit_code == 1
    assert "host 'some-other-host.example'" in result.output and "delete" in result.output


def test_partial_build_needs_resume_or_overwrite(synthetic_dataset: Path, tmp_path: Path):
    out = tmp_path / "store.zarr"
    BuildPaths(out).clips.mkdir(parents=True)
    refused = cli_build(synthetic_dataset, out)
    assert refused.exit_code == 1
    assert "pass --resume to continue it or --overwrite to discard it" in refused.output
    assert cli_build(synthetic_dataset, out, "--overwrite").exit_code == 0
    open_store(out)


def test_resume_with_other_settings_is_refused(synthetic_dataset: Path, tmp_path: Path):
    out = tmp_path / "store.zarr"
    paths = BuildPaths(out)
    paths.build_dir.mkdir()
    paths.work_json.write_text(json.dumps({"data": "/elsewhere", "rotation_atol": 0.001}))
    result = cli_build(synthetic_dataset, out, "--resume")
    assert result.exit_code == 1 and "rerun with the same DATA" in result.output


def test_changed_source_file_is_read_again(synthetic_dataset: Path, tmp_path: Path):
    data = tmp_path / "data"
    shutil.copytree(synthetic_dataset, data)
    out = tmp_path / "store.zarr"
    paths = BuildPaths(out)
    # A partial build that has read every file (as if killed right after stage 1) ...
    results = ClipCache(paths.clips)
    files = sorted(p.name for p in data.glob("*.h5"))
    for file in files:
        results.save(read_clip(data, file))
    paths.work_json.write_text(json.dumps({"data": str(data.resolve()), "rotation_atol": 0.001}))
    # ... then one source file changes.
    touched = data / files[0]
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    summary = synchronous_build(data, out, resume=True)
    assert summary.files_reused == len(files) - 1
