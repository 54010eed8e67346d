"""`preprocess push/pull/versions` against real servers on 127.0.0.1 (moto S3, `python -m
http.server`, a server that never answers): versioned and atomic publishing, byte-identical and
resumable copies, pulls that never destroy a good copy, hostile remotes (keys that climb out of
DEST, crafted metadata, stray objects), timeouts. Also `build --out URL` and a missing protocol
package."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from store_testing import cli_build

from preprocess.cli import main
from shared.remote_layout import MANIFEST, POINTER, version_prefix
from shared.store import ChunkMemmapArray, open_store
from shared.transfer import MARKER, STAGING_SUFFIX
from tests.remote_servers import (
    S3_ENV,
    flaky_http_server,
    http_server,
    s3_filesystem,
    s3_server,
    stalled_server,
)

CHUNK_FRAMES = "32"  # ~40 chunks per frame array: a copy long enough to kill mid-way
HANG_GUARD_S = 120  # a subprocess still running after this is hung (the old code hung > 200 s)


@pytest.fixture(scope="module")
def stores(synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("share")
    built = {}
    for name, args in {
        "none": ("--compression", "none"),
        "zstd": ("--compression", "zstd"),
        "other": ("--compression", "none", "--fps", "15"),  # another fingerprint
    }.items():
        out = root / f"{name}.zarr"
        assert (
            cli_build(synthetic_dataset, out, "--chunk-frames", CHUNK_FRAMES, *args).exit_code == 0
        )
        built[name] = out
    return built


@pytest.fixture()
def s3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)


def _files(store: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()
    }


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def _one_line_failure(code: int, output: str) -> str:
    assert code == 1, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    return lines[0]


def _run(args: list[str], env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """`python -m preprocess ARGS` in a subprocess, hang-guarded."""
    return subprocess.run(
        [sys.executable, "-m", "preprocess", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        env={**os.environ, **S3_ENV, **(env or {})},
        **kwargs,
    )


def _killed_midway(args: list[str], started: callable) -> None:
    """Run `python -m preprocess ARGS` and SIGKILL it once `started()` is true."""
    process = subprocess.Popen(
        [sys.executable, "-m", "preprocess", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **S3_ENV},
    )
    deadline = time.monotonic() + 60
    try:
        while not started():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the copy never started"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the copy finished before it could be killed"


def _bucket_files(fs, prefix: str) -> dict[str, bytes]:
    fs.invalidate_cache()
    return {path.removeprefix(f"{prefix}/"): fs.cat_file(path) for path in fs.find(prefix)}


# --- publishing -------------------------------------------------------------------------------


def test_push_to_s3_is_versioned_resumable_and_a_noop_when_published(stores, s3_env):
    source = stores["none"]
    fingerprint = open_store(source).fingerprint
    with s3_server() as options:
        fs = s3_filesystem(options)
        fs.mkdir("team")
        url, version = "s3://team/nymeria.zarr", f"team/nymeria.zarr/{version_prefix(fingerprint)}"
        push = ["push", str(source), url, "--storage-options", json.dumps(options), "--no-progress"]

        def some_chunks_copied() -> bool:
            fs.invalidate_cache()
            return len(fs.glob(f"{version}/features/c/*/0")) >= 5

        _killed_midway([*push, "--jobs", "1"], some_chunks_copied)
        fs.invalidate_cache()
        assert not fs.exists(f"team/nymeria.zarr/{POINTER}")  # nothing published yet
        assert not fs.exists(f"{version}/{MANIFEST}")  # the version is unfinished
        code, output = _cli(*push)
        assert code == 0, output
        kept = int(output.split(" already there")[0].rsplit(", ", 1)[-1])
        copied = int(output.split(" objects (")[0].rsplit(" ", 1)[-1])
        assert kept >= 5 and copied + kept == len(_files(source))  # each object counted once

        pushed = _bucket_files(fs, version)
        manifest = json.loads(pushed.pop(MANIFEST))
        assert pushed == _files(source)
        assert set(manifest["objects"]) == set(pushed)
        pointer = json.loads(fs.cat_file(f"team/nymeria.zarr/{POINTER}"))
        assert pointer["fingerprint"] == fingerprint
        assert pointer["version"] == version_prefix(fingerprint)

        # The same push again: the pointer and the manifest match, nothing is uploaded.
        modified = {p: fs.info(p)["LastModified"] for p in fs.find(version)}
        code, output = _cli(*push)
        assert code == 0 and "nothing uploaded" in output, output
        fs.invalidate_cache()
        assert {p: fs.info(p)["LastModified"] for p in fs.find(version)} == modified

        # info and verify read the published version through the pointer.
        s3 = ["--storage-options", json.dumps(options)]
        code, output = _cli("info", url, *s3)
        assert code == 0 and fingerprint in output, output
        code, output = _cli("verify", url, *s3, "--no-progress")
        assert code == 0 and "verify passed" in output, output


def test_overwrite_publishes_a_new_version_and_the_url_stays_readable(stores, s3_env, tmp_path):
    first, second = stores["none"], stores["other"]
    old, new = open_store(first).fingerprint, open_store(second).fingerprint
    with s3_server() as options:
        fs = s3_filesystem(options)
        fs.mkdir("team")
        url = "s3://team/x.zarr"
        s3 = ["--storage-options", json.dumps(options), "--no-progress"]
        assert _cli("push", str(first), url, *s3)[0] == 0
        code, output = _cli("push", str(second), url, *s3)
        assert "--overwrite" in _one_line_failure(code, output)

        # Killed while uploading the new version: the URL still publishes the old one.
        def new_version_started() -> bool:
            fs.invalidate_cache()
            return len(fs.glob(f"team/x.zarr/{version_prefix(new)}/features/c/*/0")) >= 3

        push = ["push", str(second), url, *s3, "--overwrite", "--jobs", "1"]
        _killed_midway(push, new_version_started)
        code, output = _cli("pull", url, str(tmp_path / "during"), *s3)
        assert code == 0, output
        assert open_store(tmp_path / "during").fingerprint == old

        assert _cli(*push)[0] == 0
        code, output = _cli("pull", url, str(tmp_path / "after"), *s3)
        assert code == 0, output
        assert open_store(tmp_path / "after").fingerprint == new

        code, output = _cli("versions", url, *s3[:2])
        assert code == 0 and old in output and new in output, output
        assert [line.split()[0] for line in output.splitlines() if new in line] == ["*"]
        code, output = _cli("versions", url, *s3[:2], "--remove", new)
        assert "points at" in _one_line_failure(code, output)  # the current one stays
        code, output = _cli("versions", url, *s3[:2], "--keep-latest", "1")
        assert code == 0 and f"removed 1 version: {old}" in output, output
        fs.invalidate_cache()
        assert fs.ls("team/x.zarr/versions") == [f"team/x.zarr/{version_prefix(new)}"]


# --- pulling ----------------------------------------------------------------------------------


def test_pull_zstd_over_http_killed_then_resumed_is_identical_and_memory_mapped(stores, tmp_path):
    source = stores["zstd"]
    with http_server(source.parent) as base:
        url = f"{base}/{source.name}"  # the previous layout: a store at the URL itself
        whole, resumed = tmp_path / "whole.zarr", tmp_path / "resumed.zarr"
        staging = resumed.with_name(resumed.name + STAGING_SUFFIX)
        pull = ["pull", url, "--jobs", "1", "--no-progress"]
        code, output = _cli(*pull[:2], str(whole), *pull[2:])
        assert code == 0, output
        assert "re-encoded as raw chunks: features, timestamp_ns, contact" in output

        def some_chunks_written() -> bool:
            return len(list((staging / "features" / "c").glob("*/0"))) >= 5

        _killed_midway([*pull[:2], str(resumed), *pull[2:]], some_chunks_written)
        assert (staging / MARKER).exists() and not resumed.exists()  # DEST only when verified
        leftover = staging / "features" / "c" / ".0.123.deadbeef.partial"
        leftover.write_bytes(b"half a chunk")  # what a kill during a write leaves
        code, output = _cli(*pull[:2], str(resumed), *pull[2:])
        assert code == 0, output
        assert " 0 already there" not in output  # objects of the killed run were kept
        assert not staging.exists() and not leftover.exists()

    assert _files(resumed) == _files(whole)
    pulled = open_store(resumed)
    assert pulled.is_memory_mapped and isinstance(pulled.features, ChunkMemmapArray)
    original = open_store(source)
    assert pulled.fingerprint == original.fingerprint
    assert (pulled.features[:] == original.features[:]).all()
    assert json.loads((resumed / "zarr.json").read_text())["attributes"]["complete"] is True


def test_pull_repairs_a_damaged_chunk_of_an_earlier_copy(stores, tmp_path):
    source, copy = stores["none"], tmp_path / "copy.zarr"
    pull = ["pull", str(source), str(copy), "--no-progress"]
    assert _cli(*pull)[0] == 0
    chunk = copy / "features" / "c" / "3" / "0"
    damaged = bytearray(chunk.read_bytes())
    damaged[100] ^= 0xFF  # same size, same trailing checksum: only the checksum sees it
    chunk.write_bytes(bytes(damaged))
    (copy / ".zarr.json.1.abcd.partial").write_bytes(b"{")  # left by a killed older pull
    code, output = _cli(*pull)
    assert code == 0, output
    assert _files(copy) == _files(source)


def test_a_damaged_remote_never_replaces_a_good_local_copy(stores, tmp_path):
    served = tmp_path / "served" / "x.zarr"
    shutil.copytree(stores["none"], served)
    good = tmp_path / "good.zarr"
    assert _cli("pull", str(served), str(good), "--no-progress")[0] == 0
    before = _files(good)
    chunk = served / "features" / "c" / "2" / "0"
    damaged = bytearray(chunk.read_bytes())
    damaged[-1] ^= 0xFF  # the stored checksum no longer matches
    chunk.write_bytes(bytes(damaged))
    code, output = _cli("pull", str(served), str(tmp_path / "fresh.zarr"), "--no-progress")
    line = _one_line_failure(code, output)
    assert "features/c/2/0" in line and "checksum" in line
    assert not (tmp_path / "fresh.zarr").exists()
    # Over the good copy: its chunks verify and are kept, the damaged one is never written.
    code, output = _cli("pull", str(served), str(good), "--no-progress")
    assert code == 0, output
    assert _files(good) == before
    # Damaged metadata at the remote stops the pull and leaves the good copy.
    stats = served / "stats" / "zarr.json"
    stats.write_bytes(stats.read_bytes()[:40])
    code, output = _cli("pull", str(served), str(good), "--no-progress")
    _one_line_failure(code, output)
    assert _files(good) == before


def test_pull_of_an_unfinished_copy_says_to_push_again(stores, tmp_path):
    served = tmp_path / "served.zarr"
    shutil.copytree(stores["none"], served)
    root = json.loads((served / "zarr.json").read_text())
    root["attributes"]["complete"] = False  # as an interrupted push of the previous layout left it
    (served / "zarr.json").write_text(json.dumps(root))
    line = _one_line_failure(*_cli("pull", str(served), str(tmp_path / "d"), "--no-progress"))
    assert "push" in line and "--resume" not in line
    assert not (tmp_path / "d").exists()
    with http_server(tmp_path) as base:
        for command in ("info", "verify"):
            line = _one_line_failure(*_cli(command, f"{base}/served.zarr"))
            assert "push" in line and "--resume" not in line


def test_pull_from_a_server_that_does_not_list_directories(stores, tmp_path):
    served = tmp_path / "served" / "nymeria.zarr"
    shutil.copytree(stores["none"], served)
    for directory in [served, *(p for p in served.rglob("*") if p.is_dir())]:
        (directory / "index.html").write_text("<html><body>no listing here</body></html>")
    copy = tmp_path / "copy.zarr"
    with http_server(served.parent) as base:
        code, output = _cli("pull", f"{base}/nymeria.zarr", str(copy), "--no-progress")
    assert code == 0, output
    assert _files(copy) == _files(stores["none"])


# --- hostile remotes --------------------------------------------------------------------------


def test_hostile_http_listing_and_stray_objects_write_nothing_outside_dest(stores, tmp_path):
    served = tmp_path / "www" / "a" / "b" / "x.zarr"
    shutil.copytree(stores["none"], served)
    (tmp_path / "www" / "FILE").write_text("planted")
    (served / "stray.bin").write_bytes(os.urandom(1 << 20))  # never in the schema: never copied
    links = '<a href="../../FILE">FILE</a> <a href="../../../FILE">F</a> <a href="stray.bin">s</a>'
    for directory in [served, *(p for p in served.rglob("*") if p.is_dir())]:
        (directory / "index.html").write_text(f"<html><body>{links}</body></html>")
    work = tmp_path / "work"
    dest = work / "inner" / "dest.zarr"
    dest.parent.mkdir(parents=True)
    with http_server(tmp_path / "www") as base:
        code, output = _cli("pull", f"{base}/a/b/x.zarr", str(dest), "--no-progress")
    assert code == 0, output
    assert _tree(work) == {"inner", "inner/dest.zarr"} | {
        f"inner/dest.zarr/{k}" for k in _tree(dest)
    }
    assert _files(dest) == {
        k: v for k, v in _files(served).items() if k != "stray.bin" and not k.endswith("index.html")
    }


def test_hostile_s3_keys_and_manifest_are_refused(stores, s3_env, tmp_path):
    source = stores["none"]
    fingerprint = open_store(source).fingerprint
    with s3_server() as options:
        fs = s3_filesystem(options)
        fs.mkdir("team")
        s3 = ["--storage-options", json.dumps(options), "--no-progress"]
        # The previous layout with keys that climb out of DEST when taken from a listing.
        fs.put(str(source), "team/old.zarr", recursive=True)
        fs.pipe_file("team/old.zarr/sequences/../../../../FILE", b"planted")
        fs.pipe_file("team/old.zarr/features/c/../../../../../FILE2", b"planted")
        work = tmp_path / "work"
        dest = work / "a" / "b" / "dest.zarr"
        dest.parent.mkdir(parents=True)
        code, output = _cli("pull", "s3://team/old.zarr", str(dest), *s3)
        assert code == 0, output
        assert _files(dest) == _files(source)
        assert _tree(work) == {"a", "a/b", "a/b/dest.zarr"} | {
            f"a/b/dest.zarr/{k}" for k in _tree(dest)
        }
        # A published version whose manifest names a key out of DEST: refused, nothing written.
        url = "s3://team/new.zarr"
        assert _cli("push", str(source), url, *s3)[0] == 0
        manifest_path = f"team/new.zarr/{version_prefix(fingerprint)}/{MANIFEST}"
        manifest = json.loads(fs.cat_file(manifest_path))
        manifest["objects"]["../../../FILE"] = {"size": 7, "crc32c": "00000000"}
        fs.pipe_file(manifest_path, json.dumps(manifest).encode())
        other = tmp_path / "other" / "dest.zarr"
        line = _one_line_failure(*_cli("pull", url, str(other), *s3))
        assert "../../../FILE" in line and "refused" in line
        assert not (tmp_path / "FILE").exists() and not (tmp_path / "other" / "FILE").exists()
        # A pointer naming a version outside versions/.
        pointer = json.loads(fs.cat_file(f"team/new.zarr/{POINTER}"))
        pointer["version"] = "../old.zarr"
        fs.pipe_file(f"team/new.zarr/{POINTER}", json.dumps(pointer).encode())
        line = _one_line_failure(*_cli("pull", url, str(other), *s3))
        assert "../old.zarr" in line


def test_crafted_huge_shape_fails_in_one_line_with_bounded_memory(stores, tmp_path):
    served = tmp_path / "served" / "x.zarr"
    shutil.copytree(stores["none"], served)
    for name, row in (("features", [294]), ("timestamp_ns", []), ("contact", [4])):
        meta_path = served / name / "zarr.json"
        meta = json.loads(meta_path.read_text())
        meta["shape"] = [10**12, *row]  # a table covering as many frames would pass open_store
        meta_path.write_text(json.dumps(meta))
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)); "
    code = limit + "from preprocess.cli import main; main()"
    with http_server(served.parent) as base:
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                code,
                "pull",
                f"{base}/x.zarr",
                str(tmp_path / "d"),
                "--no-progress",
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=HANG_GUARD_S,
        )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused" in lines[0] and "MemoryError" not in lines[0], lines
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("protocol", ["http", "s3"])
def test_a_stalled_endpoint_fails_in_bounded_time_with_one_line(protocol, tmp_path):
    with stalled_server() as base:
        if protocol == "http":
            args = ["pull", f"{base}/x.zarr", str(tmp_path / "d")]
        else:
            options = {"endpoint_url": base, "key": "testing", "secret": "testing"}
            args = [
                "pull",
                "s3://team/x.zarr",
                str(tmp_path / "d"),
                "--storage-options",
                json.dumps(options),
            ]
        result = _run([*args, "--timeout", "0.5", "--no-progress"])
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no answer after" in lines[0] and "--timeout" in lines[0], lines
    assert not (tmp_path / "d").exists()


# --- misc -------------------------------------------------------------------------------------


def test_build_to_a_url_is_refused_with_the_two_commands(synthetic_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli_build(synthetic_dataset, "s3://team/x.zarr")
    assert result.exit_code == 2
    assert "preprocess build DATA --out" in result.output
    assert "preprocess push data/store.zarr s3://team/x.zarr" in result.output
    assert list(tmp_path.iterdir()) == []  # no ./s3:/team/x.zarr


def test_missing_protocol_package_names_the_extra(stores):
    try:
        import gcsfs  # noqa: F401

        pytest.skip("gcsfs is installed")
    except ImportError:
        pass
    code, output = _cli("info", "gs://team/x.zarr")
    assert "pip install 'nymeria-mvae[gcs]'" in _one_line_failure(code, output)
    code, output = _cli("push", str(stores["none"]), "gs://team/x.zarr")
    assert "pip install 'nymeria-mvae[gcs]'" in _one_line_failure(code, output)


def test_push_refuses_a_symlink_out_of_the_store_and_a_damaged_chunk(stores, tmp_path):
    store = tmp_path / "store.zarr"
    shutil.copytree(stores["none"], store)
    secret = tmp_path / "secret"
    secret.write_bytes((store / "features" / "c" / "1" / "0").read_bytes())  # same size
    chunk = store / "features" / "c" / "1" / "0"
    chunk.unlink()
    chunk.symlink_to(secret)
    line = _one_line_failure(*_cli("push", str(store), str(tmp_path / "remote"), "--no-progress"))
    assert "features/c/1/0" in line and "symlink" in line
    assert not (tmp_path / "remote" / POINTER).exists()

    chunk.unlink()
    damaged = bytearray(secret.read_bytes())
    damaged[10] ^= 0xFF  # a local chunk whose stored checksum no longer matches
    chunk.write_bytes(bytes(damaged))
    line = _one_line_failure(*_cli("push", str(store), str(tmp_path / "remote"), "--no-progress"))
    assert "features/c/1/0" in line and "checksum" in line
    assert not (tmp_path / "remote" / POINTER).exists()  # a damaged store is never published


def test_dropped_connections_are_retried(stores, tmp_path):
    served = tmp_path / "served" / "x.zarr"
    shutil.copytree(stores["none"], served)
    copy = tmp_path / "copy.zarr"
    with flaky_http_server(served.parent) as (base, counts):
        code, output = _cli("pull", f"{base}/x.zarr", str(copy), "--no-progress", "--jobs", "4")
    assert code == 0, output
    assert _files(copy) == _files(stores["none"])
    fetched = {path: n for path, n in counts.items() if path.startswith("/x.zarr/features/c/")}
    assert fetched and set(fetched.values()) == {2}  # each chunk: dropped once, then served


@pytest.mark.slow
def test_pull_into_a_full_disk_is_one_line_naming_the_copy(stores, tmp_path):
    """Writes that fail for lack of space (EFBIG under a file size limit, as ENOSPC) end the
    pull in one line naming where it was copying to (it was `OSError: [Errno 27] File too
    large`, and a traceback once commands stopped catching every OSError)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    dest = tmp_path / "copy.zarr"
    result = _run(["pull", str(stores["none"]), str(dest), "--no-progress"], preexec_fn=limit)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: pulling into {dest}.pull"), lines
    assert "file size limit" in lines[0] and not dest.exists()
