"""Faults of the build's environment: a full disk, a rebuild killed part-way, a store whose root
metadata is damaged or hostile.

The full disk is real: the build runs in a subprocess under a file size limit (RLIMIT_FSIZE),
so the kernel fails its large writes with EFBIG exactly where a full disk fails them with
ENOSPC; where unprivileged mount namespaces exist, a build into a 1 MB tmpfs checks ENOSPC
itself.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from store_testing import cli_build, content_files, feature_chunk_files, synchronous_build
from test_resume import REPO_ROOT, kill, wait_for

import preprocess.build.run
from preprocess.build import BuildPaths
from preprocess.cli import main
from shared.store import StoreError, open_store

CHUNK_FRAMES = 512  # 18 clips of ~150 frames: several chunks, so stage 3 records progress often

# The real CLI, except that the build stalls right after recording its `stop_after`-th stage-3
# progress (and says so by creating `marker`), so the test kills it at a known point (bounded in
# case the test dies first).
STALLING_BUILD = """
import sys, time
from pathlib import Path
import preprocess.build.write
from preprocess.cli import main

stop_after, marker = int(sys.argv[1]), Path(sys.argv[2])
save, saved = preprocess.build.write.save_progress, []

def stalling_save(path, progress):
    save(path, progress)
    saved.append(progress.rows_written)
    if len(saved) == stop_after:
        marker.touch()
        time.sleep(600)
        sys.exit("stalled build was not killed")

preprocess.build.write.save_progress = stalling_save
main(sys.argv[3:], prog_name="preprocess")
"""


def _build(
    data: Path, out: Path, *extra: str, limit_bytes: int | None = None
) -> subprocess.CompletedProcess:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run(
        [
            sys.executable,
            "-m",
            "preprocess",
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
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=None if limit_bytes is None else limit,
    )


def _error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    (line,) = re.findall(r"Error: [^\r\n]*", stderr)
    return line


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".partial") or ".replaced-" in p.name]


@pytest.mark.slow
def test_disk_full_during_an_overwrite_keeps_the_old_store_and_resumes(synthetic_dataset, tmp_path):
    out = tmp_path / "store.zarr"
    assert cli_build(synthetic_dataset, out, "--split-seed", "1").exit_code == 0
    old = content_files(out)
    # Per-file results (~180 kB) fit under the limit, the 2,700-frame feature chunk (3.2 MB) does
    # not.
    full = _build(synthetic_dataset, out, "--overwrite", limit_bytes=1_000_000)
    assert full.returncode == 1
    line = _error_line(full.stderr)
    paths = BuildPaths(out)
    assert line.startswith(
        f"Error: building {out}: the file size limit (`ulimit -f`) was reached writing "
    ), line
    assert str(paths.staging / "features") in line and "needs about" in line and "free now" in line
    assert f"{out} is untouched" in line and "rerun with --overwrite --resume" in line
    assert content_files(out) == old and open_store(out)  # the old store is intact and usable
    assert not _temp_files(tmp_path) and not paths.lock.exists()
    assert len(list(paths.clips.glob("*.clip"))) == 18  # the finished work is kept

    refused = cli_build(synthetic_dataset, out, "--resume")
    assert refused.exit_code == 1 and "pass --overwrite --resume to replace it" in refused.output
    resumed = cli_build(synthetic_dataset, out, "--overwrite", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "18 found, 18 reused from an interrupted build, 18 used" in resumed.output
    reference = tmp_path / "reference.zarr"
    synchronous_build(synthetic_dataset, reference)
    assert content_files(out) == content_files(reference)
    assert not paths.build_dir.exists() and not _temp_files(tmp_path)


@pytest.mark.slow
def test_build_into_a_full_file_system_is_one_line(synthetic_dataset, tmp_path):
    """ENOSPC itself: the build writes into a 1 MB tmpfs of its own mount namespace."""
    unshare = shutil.which("unshare")
    if (
        unshare is None
        or subprocess.run([unshare, "-rm", "true"], check=False, capture_output=True).returncode
    ):
        pytest.skip("no unprivileged mount namespaces here (the EFBIG test covers the same path)")
    small = tmp_path / "small"
    small.mkdir()
    script = (
        f"mount -t tmpfs -o size=1m tmpfs {small} && exec {sys.executable} -m preprocess build "
        f"{synthetic_dataset} --out {small / 'store.zarr'} --scheduler synchronous --no-progress"
    )
    result = subprocess.run(
        [unshare, "-rm", "sh", "-c", script],
        cwd=REPO_ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    line = _error_line(result.stderr)
    assert line.startswith(
        f"Error: building {small / 'store.zarr'}: no space left on device writing "
    ), line
    assert "needs about" in line and "rerun with --resume" in line, line


@pytest.mark.slow
def test_build_killed_while_writing_frames_resumes_there(synthetic_dataset, tmp_path):
    out = tmp_path / "store.zarr"
    paths = BuildPaths(out)
    marker = tmp_path / "stalled"
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            STALLING_BUILD,
            "4",
            str(marker),
            "build",
            str(synthetic_dataset),
            "--out",
            str(out),
            "--scheduler",
            "synchronous",
            "--no-progress",
            "--chunk-frames",
            str(CHUNK_FRAMES),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(marker.exists, "the fourth progress record", process)
    finally:
        kill(process)
    durable = {p: p.stat().st_mtime_ns for p in feature_chunk_files(paths.staging)}
    left = len(list(paths.clips.glob("*.clip")))
    assert 0 < left < 18  # results of the sequences already written are gone
    assert paths.clips.joinpath("entries.index").exists()

    resumed = cli_build(synthetic_dataset, out, "--resume", "--chunk-frames", str(CHUNK_FRAMES))
    assert resumed.exit_code == 0, resumed.output
    reference = tmp_path / "reference.zarr"
    synchronous_build(synthetic_dataset, reference, chunk_frames=CHUNK_FRAMES)
    assert content_files(out) == content_files(reference)
    assert open_store(out).fingerprint == open_store(reference).fingerprint
    rewritten = [
        p
        for p, mtime in durable.items()
        if (out / p.relative_to(paths.staging)).stat().st_mtime_ns != mtime
    ]
    assert not rewritten  # durable chunks were kept, not computed and written again


def test_resume_with_other_chunking_rereads_what_it_needs(synthetic_dataset, tmp_path, monkeypatch):
    """A progress record of another plan is ignored; results already deleted are read again."""
    out = tmp_path / "store.zarr"
    paths = BuildPaths(out)

    def fail_to_publish(*args: object) -> None:
        raise OSError("killed before publishing")

    with monkeypatch.context() as patch:  # every frame written, every per-file result used
        patch.setattr(preprocess.build.run, "publish_store", fail_to_publish)
        with pytest.raises(OSError, match="killed before publishing"):
            synchronous_build(synthetic_dataset, out, chunk_frames=64)
    assert not list(paths.clips.glob("*.clip")) and paths.clips.joinpath("entries.index").exists()
    resumed = cli_build(synthetic_dataset, out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    reference = tmp_path / "reference.zarr"
    synchronous_build(synthetic_dataset, reference)
    assert content_files(out) == content_files(reference)


HOSTILE_ROOT_METADATA = {
    "truncated": b'{"zarr_format": 3, "node_type": "gr',
    "empty": b"",
    "binary garbage": bytes(range(256)) * 4,
    "a list": b"[1, 2]",
    "nested a million deep": b"[" * 1_000_000 + b"]" * 1_000_000,
    "attributes not a mapping": b'{"zarr_format": 3, "node_type": "group", "attributes": 5}',
    "a 5000-digit number": b'{"zarr_format": 3, "node_type": "group", "attributes": {"fps": 1'
    + b"0" * 5000
    + b"}}",
    "an array, not a group": b'{"zarr_format": 3, "node_type": "array"}',
}


def test_damaged_or_hostile_root_metadata_is_one_line(synthetic_dataset, tmp_path):
    good = tmp_path / "good.zarr"
    synchronous_build(synthetic_dataset, good)
    attrs = json.loads((good / "zarr.json").read_text())
    hostile_attrs = {  # valid JSON and a valid group, attribute values of the wrong types
        "build_config a list": {**attrs["attributes"], "complete": False, "build_config": [1]},
        "schema a string": {**attrs["attributes"], "schema": "x"},
    }
    cases = dict(HOSTILE_ROOT_METADATA)
    for name, values in hostile_attrs.items():
        cases[name] = json.dumps({**attrs, "attributes": values}).encode()
    for name, data in cases.items():
        store = tmp_path / f"{len(os.listdir(tmp_path))}.zarr"
        shutil.copytree(good, store)
        (store / "zarr.json").write_bytes(data)
        with pytest.raises(StoreError, match=str(store)):
            open_store(store)
        result = CliRunner().invoke(main, ["info", str(store)])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (
            name,
            result.output,
        )
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and str(store) in lines[0], (
            name,
            lines,
        )
    table = tmp_path / "table.zarr"
    shutil.copytree(good, table)
    (table / "sequences" / "zarr.json").write_text(
        json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"table": {"name": 3}}})
    )
    with pytest.raises(StoreError, match="sequence table lacks columns"):
        open_store(table)
