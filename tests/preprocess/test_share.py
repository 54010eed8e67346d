"""`preprocess push/pull` against real servers on 127.0.0.1 (moto S3, `python -m http.server`):
copies are byte-identical, resumable after a SIGKILL, verified, and a pulled zstd store is
memory-mapped. Also `build --out URL` and a missing protocol package."""

from __future__ import annotations

import json
import os
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
from shared.store import ChunkMemmapArray, open_store
from shared.transfer import MARKER
from tests.remote_servers import S3_ENV, http_server, s3_filesystem, s3_server

CHUNK_FRAMES = "32"  # ~40 chunks per frame array: a copy long enough to kill mid-way


@pytest.fixture(scope="module")
def stores(synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("share")
    built = {}
    for compression in ("none", "zstd"):
        out = root / f"{compression}.zarr"
        args = ("--chunk-frames", CHUNK_FRAMES, "--compression", compression)
        assert cli_build(synthetic_dataset, out, *args).exit_code == 0
        built[compression] = out
    return built


@pytest.fixture()
def s3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)


def _files(store: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()
    }


def _killed_midway(args: list[str], started: callable, env: dict | None = None) -> None:
    """Run `python -m preprocess ARGS` and SIGKILL it once `started()` is true."""
    process = subprocess.Popen(
        [sys.executable, "-m", "preprocess", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
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


def test_push_to_s3_killed_then_resumed_is_byte_identical(stores, s3_env, tmp_path):
    source = stores["none"]
    with s3_server() as options:
        fs = s3_filesystem(options)
        fs.mkdir("team")
        url = "s3://team/nymeria.zarr"
        push = ["push", str(source), url, "--storage-options", json.dumps(options),
                "--jobs", "1", "--no-progress"]  # fmt: skip

        def some_chunks_copied() -> bool:
            fs.invalidate_cache()
            return len(fs.glob("team/nymeria.zarr/features/c/*/0")) >= 5

        _killed_midway(push, some_chunks_copied, env={**os.environ, **S3_ENV})
        fs.invalidate_cache()
        assert fs.exists(f"team/nymeria.zarr/{MARKER}")
        root = json.loads(fs.cat_file("team/nymeria.zarr/zarr.json"))
        assert root["attributes"]["complete"] is False  # an interrupted copy is not a store

        result = CliRunner().invoke(main, push[:-3] + ["--no-progress"])  # default --jobs
        assert result.exit_code == 0, result.output
        assert "kept from an earlier run" in result.output
        kept = int(result.output.split(" kept from")[0].rsplit(", ", 1)[-1])
        assert kept >= 5
        fs.invalidate_cache()
        pushed = {
            path.removeprefix("team/nymeria.zarr/"): fs.cat_file(path)
            for path in fs.find("team/nymeria.zarr")
        }
        assert pushed == _files(source)
        opened = open_store(url, storage_options=options)
        assert opened.fingerprint == open_store(source).fingerprint
        assert not opened.is_memory_mapped

        # A different store is not pushed over this one without --overwrite.
        other = CliRunner().invoke(
            main, ["push", str(stores["zstd"]), "s3://team", "--storage-options",
                   json.dumps(options), "--no-progress"],
        )  # fmt: skip
        assert other.exit_code == 1 and "--overwrite" in other.output


def test_pull_zstd_over_http_killed_then_resumed_is_identical_and_memory_mapped(stores, tmp_path):
    source = stores["zstd"]
    with http_server(source.parent) as base:
        url = f"{base}/{source.name}"
        served = open_store(url)  # a listing without sizes: each chunk's size is asked for
        assert served.fingerprint == open_store(source).fingerprint and not served.is_memory_mapped
        whole, resumed = tmp_path / "whole.zarr", tmp_path / "resumed.zarr"
        pull = ["pull", url, "--jobs", "1", "--no-progress"]
        result = CliRunner().invoke(main, [*pull[:2], str(whole), *pull[2:]])
        assert result.exit_code == 0, result.output
        assert "re-encoded as raw chunks: contact, features, timestamp_ns" in result.output

        def some_chunks_written() -> bool:
            return len(list((resumed / "features" / "c").glob("*/0"))) >= 5

        _killed_midway([*pull[:2], str(resumed), *pull[2:]], some_chunks_written)
        assert (resumed / MARKER).exists()
        with pytest.raises(ValueError, match="incomplete"):
            open_store(resumed)
        result = CliRunner().invoke(main, [*pull[:2], str(resumed), *pull[2:]])
        assert result.exit_code == 0, result.output
        assert "kept from an earlier run" in result.output

    assert _files(resumed) == _files(whole)
    pulled = open_store(resumed)
    assert pulled.is_memory_mapped and isinstance(pulled.features, ChunkMemmapArray)
    original = open_store(source)
    assert pulled.fingerprint == original.fingerprint
    assert (pulled.features[:] == original.features[:]).all()
    assert (pulled.timestamp_ns[:] == original.timestamp_ns[:]).all()
    assert json.loads((resumed / "zarr.json").read_text())["attributes"]["complete"] is True


def test_pull_repairs_a_damaged_chunk_of_an_earlier_copy(stores, tmp_path):
    source, copy = stores["none"], tmp_path / "copy.zarr"
    pull = ["pull", str(source), str(copy), "--no-progress"]
    assert CliRunner().invoke(main, pull).exit_code == 0
    chunk = copy / "features" / "c" / "3" / "0"
    damaged = bytearray(chunk.read_bytes())
    damaged[100] ^= 0xFF  # same size, same trailing checksum: only the deep check sees it
    chunk.write_bytes(bytes(damaged))
    result = CliRunner().invoke(main, pull)
    assert result.exit_code == 0, result.output
    assert _files(copy) == _files(source)


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
    result = CliRunner().invoke(main, ["info", "gs://team/x.zarr"])
    assert result.exit_code == 1
    assert "pip install 'nymeria-mvae[gcs]'" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(main, ["push", str(stores["none"]), "gs://team/x.zarr"])
    assert "pip install 'nymeria-mvae[gcs]'" in result.output and result.exit_code == 1


def test_pull_from_a_server_that_does_not_list_directories(stores, tmp_path):
    served = tmp_path / "served" / "nymeria.zarr"
    shutil.copytree(stores["none"], served)
    for directory in [served, *(p for p in served.rglob("*") if p.is_dir())]:
        (directory / "index.html").write_text("<html><body>no listing here</body></html>")
    copy = tmp_path / "copy.zarr"
    with http_server(served.parent) as base:
        pull = ["pull", f"{base}/nymeria.zarr", str(copy), "--no-progress"]
        result = CliRunner().invoke(main, pull)
    assert result.exit_code == 0, result.output
    assert _files(copy) == _files(stores["none"])
