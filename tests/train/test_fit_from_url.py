"""`train fit --store s3://...` against moto's S3 server on 127.0.0.1: the run reads the store
through the local chunk cache, fetching only the chunks its windows use (its DataLoader worker
fetches too) before and while it trains; a second run with the same windows reads them all from
the cache. `encode` copies the store into the cache once and writes latents to the bucket."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from shared.remote_layout import version_prefix
from shared.store import FEATURES, FRAME_ARRAYS, open_store
from shared.transfer import push
from tests.remote_servers import S3_ENV, s3_filesystem, s3_server
from tests.train.conftest import TINY_MODEL
from train.cli import main

CHUNK_FRAMES = 32  # ~110 chunks per frame array, of which a short run needs a few


def _losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["train/total"] for r in rows if "train/total" in r]


def _cached(cache: Path, array: str) -> set[int]:
    """Indices of the chunks of `array` in a chunk cache."""
    folder = cache / array / "c"
    return {int(p.relative_to(folder).parts[0]) for p in folder.rglob("*") if p.is_file()}


def _chunks_of_split(store, split: str) -> set[int]:
    return {
        i
        for r in store.split(split)
        for i in range(r.start // CHUNK_FRAMES, (r.stop - 1) // CHUNK_FRAMES + 1)
    }


@pytest.fixture(scope="module")
def small_chunk_store(feature_store: Path, build_store) -> Path:
    """The session's feature store built again with CHUNK_FRAMES-frame chunks."""
    store = feature_store.parent / f"chunks{CHUNK_FRAMES}.zarr"
    if not store.exists():
        build_store(feature_store.parent / "hdf5", store, "--chunk-frames", str(CHUNK_FRAMES))
    return store


@contextmanager
def _pushed(store: Path, monkeypatch) -> Iterator[tuple[dict, object, str]]:
    """`store` pushed to moto's S3 on 127.0.0.1: (storage options, file system, URL)."""
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    with s3_server() as options:
        fs = s3_filesystem(options)
        fs.mkdir("team")
        url = "s3://team/nymeria.zarr"
        push(store, url, storage_options=options, progress=False)
        yield options, fs, url


def test_fit_from_s3_reads_only_the_chunks_it_uses(small_chunk_store, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    local = open_store(small_chunk_store)
    with _pushed(small_chunk_store, monkeypatch) as (options, fs, url):

        def fit(run: Path, workers: str) -> None:
            args = [
                "fit",
                "--store",
                url,
                "--storage-options",
                json.dumps(options),
                "--cache-dir",
                str(cache),
                "--out",
                str(run),
                "--num-workers",
                workers,
                "--batch-size",
                "4",
                "--val-windows",
                "8",
                "--steps",
                "3",
                "--log-every",
                "1",
                "--val-every",
                "3",
                "--seq-len",
                "32",
                *TINY_MODEL,
            ]
            result = CliRunner().invoke(main, args)
            assert result.exit_code == 0, result.output

        fit(tmp_path / "first", workers="1")  # the DataLoader worker fetches its windows
        cached = cache / f"{local.fingerprint}.chunks"
        features, timestamps, contact = (_cached(cached, a) for a in FRAME_ARRAYS)
        # Training and validation windows only: no test-split chunk, no contact or timestamps.
        used = _chunks_of_split(local, "train") | _chunks_of_split(local, "val")
        assert features and not features & (_chunks_of_split(local, "test") - used)
        assert len(features) < local.features.num_chunks
        assert not contact and not timestamps
        for i in features:  # byte for byte the store's chunk files, checksums included
            key = f"{FEATURES}/c/{i}/0"
            assert (cached / key).read_bytes() == (small_chunk_store / key).read_bytes()

        # encode copies the whole store into the cache once and writes latents to the bucket.
        ckpt = str(tmp_path / "first" / "checkpoints" / "last.pt")
        s3 = ["--storage-options", json.dumps(options)]
        latents = "s3://team/latents.zarr"
        encode = [
            "encode",
            "--ckpt",
            ckpt,
            "--store",
            url,
            "--cache-dir",
            str(cache),
            "--out",
            latents,
            *s3,
        ]
        result = CliRunner().invoke(main, encode)
        assert result.exit_code == 0, result.output
        decoded = tmp_path / "decoded.zarr"
        decode = ["decode", "--ckpt", ckpt, "--latents", latents, "--out", str(decoded), *s3]
        result = CliRunner().invoke(main, decode)
        assert result.exit_code == 0, result.output
        assert zarr.open_group(decoded, mode="r")["features"].shape == local.features.shape

        # Without the frame arrays' chunks at the URL, the same windows come from the cache.
        fs.invalidate_cache()
        for name in FRAME_ARRAYS:
            version = version_prefix(local.fingerprint)
            fs.rm(f"team/nymeria.zarr/{version}/{name}/c", recursive=True)
        fit(tmp_path / "second", workers="0")
    first = _losses(tmp_path / "first")
    assert len(first) == 3
    assert _losses(tmp_path / "second") == pytest.approx(first)
    run_info = json.loads((tmp_path / "second" / "run_info.json").read_text())
    assert run_info["store"]["fingerprint"] == local.fingerprint
    assert np.isfinite(first).all()


def test_a_damaged_remote_chunk_stops_fit_with_one_line_from_a_loader_worker(
    small_chunk_store, tmp_path, monkeypatch
):
    """A chunk whose bytes changed at the URL (its stored crc32c no longer matches) is named in
    one line and the run stops, also when a DataLoader worker is the one fetching it (the
    worker's error must not come back as torch's multi-line re-raise)."""
    local = open_store(small_chunk_store)
    with _pushed(small_chunk_store, monkeypatch) as (options, fs, url):
        folder = f"team/nymeria.zarr/{version_prefix(local.fingerprint)}/{FEATURES}/c"
        for key in fs.find(folder):  # every features chunk: one byte flipped, size kept
            data = bytearray(fs.cat_file(key))
            data[10] ^= 0xFF
            fs.pipe_file(key, bytes(data))
        args = [
            "fit",
            "--store",
            url,
            "--storage-options",
            json.dumps(options),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--out",
            str(tmp_path / "run"),
            "--num-workers",
            "1",
            "--batch-size",
            "4",
            "--val-windows",
            "8",
            "--steps",
            "3",
            "--val-every",
            "3",
            "--seq-len",
            "32",
            *TINY_MODEL,
        ]
        result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and FEATURES in errors[0], result.output
    assert "Traceback" not in result.output and "DataLoader worker" not in result.output
