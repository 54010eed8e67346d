"""`shared.chunk_cache` against moto's S3 server on 127.0.0.1 (and an HTTP server that drops
connections): chunks arrive as they are first used and match the local store, a damaged remote
chunk is named and never cached, a compressed store is cached raw and memory-mapped, a published
version is read and checked against its manifest, the size limit holds (and a reader drops maps
of chunks another evicted), several processes fill one cache with identical verified chunks, a
worker process fetches through the pickled store, dropped HTTP connections are retried."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import subprocess
import sys
from pathlib import Path

import google_crc32c
import numpy as np
import pytest

from preprocess import synth
from shared.chunk_cache import ChunkCacheError, open_cached_store
from shared.remote_layout import (
    MANIFEST,
    POINTER,
    ManifestEntry,
    manifest_document,
    pointer_document,
    version_prefix,
)
from shared.store import CONTACT, FEATURES, TIMESTAMP_NS, FeatureStore, open_store
from tests.remote_servers import S3_ENV, flaky_http_server, s3_filesystem, s3_server

pytestmark = pytest.mark.slow  # a moto server and store builds in subprocesses

CHUNK_FRAMES = 32  # ~110 chunks per frame array: room to see which ones were fetched


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two builds of one synthetic dataset: raw chunks and zstd."""
    root = tmp_path_factory.mktemp("chunk_cache")
    synth.generate_dataset(root / "hdf5", recordings=6, seed=1, clips_per_recording=4)
    built = {}
    for compression in ("none", "zstd"):
        built[compression] = root / f"{compression}.zarr"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "preprocess",
                "build",
                str(root / "hdf5"),
                "--out",
                str(built[compression]),
                "--scheduler",
                "synchronous",
                "--chunk-frames",
                str(CHUNK_FRAMES),
                "--compression",
                compression,
            ],
            check=True,
            capture_output=True,
        )
    return built


@pytest.fixture(scope="module")
def bucket(stores: dict[str, Path]):
    """moto S3 holding both stores at s3://team/{none,zstd}.zarr; yields the storage options."""
    with pytest.MonkeyPatch.context() as env:
        for key, value in S3_ENV.items():
            env.setenv(key, value)
        with s3_server() as options:
            fs = s3_filesystem(options)
            fs.mkdir("team")
            for name, store in stores.items():  # a plain upload: `push` is tested on its own
                fs.put(f"{store}/", f"team/{name}.zarr", recursive=True)
            yield options


def _cached_chunks(store: FeatureStore, array: str) -> set[int]:
    folder = Path(store.url) / array / "c"  # chunk files c/<i>/0 (c/<i> for 1-D arrays)
    files = (p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    return {int(p.relative_to(folder).parts[0]) for p in files}


def _chunk_files(store: FeatureStore) -> dict[str, bytes]:
    root = Path(store.url)
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and "/c/" in str(p.relative_to(root)) and not p.name.startswith(".")
    }


def test_chunks_are_fetched_as_used_and_match_the_local_store(stores, bucket, tmp_path):
    local = open_store(stores["none"])
    cached = open_cached_store("s3://team/none.zarr", tmp_path, bucket)
    assert cached.is_memory_mapped and cached.fingerprint == local.fingerprint
    assert _cached_chunks(cached, FEATURES) == set()  # metadata and stats only, up front
    np.testing.assert_array_equal(cached.read_features(100, 140), local.read_features(100, 140))
    assert _cached_chunks(cached, FEATURES) == {3, 4}  # frames 100-139 of 32-frame chunks
    assert _cached_chunks(cached, CONTACT) == _cached_chunks(cached, TIMESTAMP_NS) == set()
    # Every cached chunk file is the local store's, byte for byte (crc32c included).
    for key, data in _chunk_files(cached).items():
        assert data == (stores["none"] / key).read_bytes(), key


def test_a_compressed_store_is_decoded_into_raw_memory_mapped_chunks(stores, bucket, tmp_path):
    local = open_store(stores["none"])
    cached = open_cached_store("s3://team/zstd.zarr", tmp_path, bucket)
    assert cached.is_memory_mapped
    np.testing.assert_array_equal(cached.features[:], local.features[:])
    for key, data in _chunk_files(cached).items():  # raw chunks with their checksum, as built
        assert data == (stores["none"] / key).read_bytes(), key


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_a_damaged_remote_chunk_is_named_and_never_cached(stores, bucket, tmp_path, compression):
    fs = s3_filesystem(bucket)
    url = f"s3://team/{compression}.zarr"
    key = f"{url}/{FEATURES}/c/5/0"
    good = fs.cat_file(key)
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0xFF
    fs.pipe_file(key, bytes(damaged))
    try:
        cached = open_cached_store(url, tmp_path, bucket)
        with pytest.raises(ChunkCacheError) as error:
            cached.read_features(5 * CHUNK_FRAMES, 5 * CHUNK_FRAMES + 10)
    finally:
        fs.pipe_file(key, good)  # the other tests share the bucket
    message = str(error.value)
    assert "features/c/5/0" in message and "checksum" in message and "\n" not in message
    assert 5 not in _cached_chunks(cached, FEATURES)
    local = open_store(stores["none"])  # the other chunks are fine
    np.testing.assert_array_equal(cached.read_features(200, 240), local.read_features(200, 240))


def test_eviction_keeps_the_cache_under_its_limit(stores, bucket, tmp_path):
    local = open_store(stores["none"])
    chunk_nbytes = local.features.chunk_nbytes()
    with pytest.raises(ChunkCacheError, match=r"fewer than 4 chunks .*raise --cache-max-gb"):
        open_cached_store("s3://team/none.zarr", tmp_path, bucket, max_bytes=3 * chunk_nbytes)
    limit = 12 * chunk_nbytes
    cached = open_cached_store("s3://team/none.zarr", tmp_path, bucket, max_bytes=limit)
    rng = np.random.default_rng(0)
    for start in rng.integers(0, local.num_frames - 100, size=60):
        np.testing.assert_array_equal(
            cached.read_features(start, start + 100), local.read_features(start, start + 100)
        )
        used = sum(len(d) for k, d in _chunk_files(cached).items() if k.startswith(FEATURES))
        assert used <= limit
    assert cached.chunk_source.fetched > 12  # chunks were evicted and fetched again
    assert len(cached.features.mapped_chunks()) <= 12


_FILL_SCRIPT = """
import sys
import numpy as np
from shared.chunk_cache import open_cached_store
cache, options, seed = sys.argv[1], eval(sys.argv[2]), int(sys.argv[3])
store = open_cached_store("s3://team/none.zarr", cache, options)
for start in np.random.default_rng(seed).permutation(np.arange(0, store.num_frames, 16)):
    store.read_features(int(start), min(int(start) + 16, store.num_frames))
print(store.chunk_source.fetched)
"""


def test_two_processes_fill_one_cache_with_identical_verified_chunks(stores, bucket, tmp_path):
    env = {**os.environ, **S3_ENV, "PYTHONPATH": str(Path(__file__).parents[2])}
    args = [sys.executable, "-c", _FILL_SCRIPT, str(tmp_path), repr(bucket)]
    fillers = [
        subprocess.Popen(
            [*args, str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for seed in (1, 2)
    ]
    fetched = []
    for filler in fillers:
        out, err = filler.communicate(timeout=300)
        assert filler.returncode == 0, err
        fetched.append(int(out))
    cached = open_cached_store("s3://team/none.zarr", tmp_path, bucket)
    files = _chunk_files(cached)
    assert _cached_chunks(cached, FEATURES) == set(range(cached.features.num_chunks))
    for key, data in files.items():
        assert data == (stores["none"] / key).read_bytes(), key
    # Each chunk was downloaded once: a process waits for the other's download of a chunk.
    assert sum(fetched) == cached.features.num_chunks + 2  # + stats/mean and stats/std
    assert not [p for p in Path(cached.url).rglob(".*.partial")]


def _read_in_child(store: FeatureStore, start: int, stop: int, queue) -> None:
    queue.put((store.read_features(start, stop).copy(), store.chunk_source.fetched))


def test_a_worker_process_fetches_through_the_pickled_store(stores, bucket, tmp_path):
    cached = open_cached_store("s3://team/none.zarr", tmp_path, bucket)
    fetched_here = cached.chunk_source.fetched  # the stats, up front
    pickle.dumps(cached)  # what a spawned DataLoader worker receives
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_read_in_child, args=(cached, 600, 700, queue))
    child.start()
    values, fetched = queue.get(timeout=120)
    child.join(timeout=60)
    assert child.exitcode == 0 and fetched == 4  # chunks 18-21, by the worker itself
    np.testing.assert_array_equal(values, open_store(stores["none"]).read_features(600, 700))
    assert _cached_chunks(cached, FEATURES) == {18, 19, 20, 21}
    assert cached.chunk_source.fetched == fetched_here


def _publish_version(fs, store: Path, url: str, fingerprint: str) -> None:
    """The versioned layout as `shared.remote_layout` names it: the store under
    versions/FP/, its MANIFEST.json, then the pointer."""
    version = f"{url}/{version_prefix(fingerprint)}"
    fs.put(f"{store}/", version, recursive=True)
    entries = {}
    for path in (p for p in store.rglob("*") if p.is_file()):
        data, key = path.read_bytes(), path.relative_to(store).as_posix()
        content = data[:-4] if "/c/" in f"/{key}" else data  # a chunk: the crc it stores
        entries[key] = ManifestEntry(len(data), f"{google_crc32c.value(content):08x}")
    manifest = manifest_document(fingerprint, entries, "2026-01-01T00:00:00+00:00")
    fs.pipe_file(f"{version}/{MANIFEST}", json.dumps(manifest).encode())
    pointer = pointer_document(fingerprint, "2026-01-01T00:00:00+00:00")
    fs.pipe_file(f"{url}/{POINTER}", json.dumps(pointer).encode())


def test_a_published_version_is_read_and_checked_against_its_manifest(stores, bucket, tmp_path):
    fs = s3_filesystem(bucket)
    local = open_store(stores["none"])
    url = "s3://team/published.zarr"
    _publish_version(fs, stores["none"], url, local.fingerprint)
    # A chunk swapped for another whole chunk: its own crc32c holds, the manifest's does not.
    version = f"{url}/{version_prefix(local.fingerprint)}"
    fs.pipe_file(f"{version}/{FEATURES}/c/5/0", fs.cat_file(f"{version}/{FEATURES}/c/6/0"))
    cached = open_cached_store(url, tmp_path, bucket)
    assert cached.chunk_source.url == version
    np.testing.assert_array_equal(cached.read_features(100, 140), local.read_features(100, 140))
    with pytest.raises(ChunkCacheError, match=r"features/c/5/0 .*MANIFEST\.json"):
        cached.read_features(5 * CHUNK_FRAMES, 5 * CHUNK_FRAMES + 10)
    assert 5 not in _cached_chunks(cached, FEATURES)


def test_chunks_evicted_by_another_reader_are_unmapped_at_its_next_map(stores, bucket, tmp_path):
    local = open_store(stores["none"])
    reader = open_cached_store("s3://team/none.zarr", tmp_path, bucket)
    early = reader.read_features(0, 10 * CHUNK_FRAMES)  # chunks 0-9, mapped and kept
    assert reader.features.mapped_chunks() == list(range(10))
    # Another reader of the same cache (as another process would) with a limit of 8 chunks.
    limit = 8 * local.features.chunk_nbytes()
    other = open_cached_store("s3://team/none.zarr", tmp_path, bucket, max_bytes=limit)
    other.read_features(20 * CHUNK_FRAMES, 28 * CHUNK_FRAMES)
    assert not _cached_chunks(reader, FEATURES) & set(range(10))  # removed, still mapped here
    reader.read_features(50 * CHUNK_FRAMES, 50 * CHUNK_FRAMES + 1)  # the next map
    assert reader.features.mapped_chunks() == [50]  # the removed files' space is released
    np.testing.assert_array_equal(early, local.read_features(0, 10 * CHUNK_FRAMES))


def test_a_store_over_http_is_read_through_the_cache_retrying_dropped_connections(stores, tmp_path):
    local = open_store(stores["none"])
    with flaky_http_server(stores["none"].parent) as (base, gets):
        cached = open_cached_store(f"{base}/none.zarr", tmp_path)
        np.testing.assert_array_equal(cached.read_features(300, 400), local.read_features(300, 400))
    chunks = set(range(300 // CHUNK_FRAMES, 399 // CHUNK_FRAMES + 1))
    assert _cached_chunks(cached, FEATURES) == chunks
    # Each chunk's first GET was dropped by the server and tried again.
    assert all(gets[f"/none.zarr/{FEATURES}/c/{i}/0"] == 2 for i in chunks)


def test_metadata_declaring_a_huge_array_is_refused_before_anything_is_allocated(bucket, tmp_path):
    fs = s3_filesystem(bucket)
    key = f"team/none.zarr/{FEATURES}/zarr.json"
    good = fs.cat_file(key)
    hostile = json.loads(good)
    hostile["shape"] = [10**12, hostile["shape"][1]]
    fs.pipe_file(key, json.dumps(hostile).encode())
    try:
        with pytest.raises(ChunkCacheError, match=r"features/zarr.json: \d+ chunks .*refused"):
            open_cached_store("s3://team/none.zarr", tmp_path, bucket)
    finally:
        fs.pipe_file(key, good)
