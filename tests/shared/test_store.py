"""The feature-store reader: validation, memory-mapped access, fsspec URLs.

Stores are written here directly with zarr (the schema is the contract), so these tests do not
depend on the preprocessing code.
"""

from __future__ import annotations

import json
import mmap
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import given
from hypothesis import strategies as hst

import shared.store
import shared.store.write
from shared.layout import FEATURE_DIM, HP, HP_DOT, JP, JV, layout_description
from shared.store import ChunkDamageError, ChunkMemmapArray, StoreError, open_store

CHUNK_FRAMES = 16
LENGTHS = (20, 7, 30)  # 57 frames: chunks of 16, last one partial
SPLIT_OF = ("train", "val", "test")


def write_store(
    path: Path,
    zstd_level: int | None = None,
    complete: bool = True,
    lengths: tuple[int, ...] = LENGTHS,
    chunk_frames: int = CHUNK_FRAMES,
) -> np.ndarray:
    """A small valid store; returns its features (random, but `hp_dot` and `jv` are the steps of
    `hp` and `jp` within each sequence, as a build writes them)."""
    rng = np.random.default_rng(0)
    num_frames = sum(lengths)
    features = rng.normal(size=(num_frames, FEATURE_DIM)).astype(np.float32)
    first = 0
    for n in lengths:
        seq = features[first : first + n]
        for value, step in ((HP, HP_DOT), (JP, JV)):
            seq[0, step] = 0
            seq[1:, step] = seq[1:, value] - seq[:-1, value]
        first += n
    root = zarr.open_group(path, mode="w", zarr_format=3)
    arrays = {
        shared.store.FEATURES: (features, (chunk_frames, FEATURE_DIM)),
        shared.store.TIMESTAMP_NS: (
            np.arange(num_frames, dtype=np.int64) * 33_333_333,
            (chunk_frames,),
        ),
        shared.store.CONTACT: (np.ones((num_frames, 4), np.float32), (chunk_frames, 4)),
    }
    compressors = shared.store.store_compressors(zstd_level)
    for name, (values, chunks) in arrays.items():
        array = root.create_array(
            name,
            shape=values.shape,
            chunks=chunks,
            dtype=values.dtype,
            compressors=compressors,
            fill_value=0,
            config=shared.store.ARRAY_CONFIG,
        )
        array[:] = values
    starts = np.concatenate([[0], np.cumsum(lengths)])
    records = [
        shared.store.SequenceRecord(
            f"seq{i}", f"person{i}", int(starts[i]), n, SPLIT_OF[i % 3], (f"seq{i}_00000.h5",)
        )
        for i, n in enumerate(lengths)
    ]
    table = shared.store.table_to_json(records)
    shared.store.write.write_table(root, table)
    mean, std = features.mean(0).astype(np.float64), features.std(0).astype(np.float64)
    stats = root.create_group(shared.store.STATS_GROUP)
    for name, values in ((shared.store.STATS_MEAN, mean), (shared.store.STATS_STD, std)):
        array = stats.create_array(
            name, shape=(FEATURE_DIM,), dtype="float64", compressors=compressors
        )
        array[:] = values
    stats_attrs = {
        shared.store.STATS_ATTR_COUNT: num_frames,
        shared.store.ATTR_WINDOW_FRAMES: 152,
    }
    stats.attrs.update(stats_attrs)
    attrs = {
        shared.store.ATTR_SCHEMA: {
            "name": shared.store.SCHEMA_NAME,
            "version": shared.store.SCHEMA_VERSION,
        },
        shared.store.ATTR_LAYOUT: layout_description(),
        shared.store.ATTR_FPS: 30.0,
        shared.store.ATTR_BUILD_CONFIG: {"out": str(path)},
        shared.store.ATTR_COMPLETE: complete,
    }
    attrs = json.loads(json.dumps(attrs))
    attrs[shared.store.ATTR_FINGERPRINT] = shared.store.compute_fingerprint(
        attrs, table, mean, std, stats_attrs
    )
    root.attrs.update(attrs)
    return features


def set_root_attrs(path: Path, **updates: object) -> None:
    meta_path = path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"].update(updates)
    meta_path.write_text(json.dumps(meta))


@pytest.fixture
def store_path(tmp_path: Path) -> tuple[Path, np.ndarray]:
    path = tmp_path / "store.zarr"
    return path, write_store(path)


def test_open_reads_everything(store_path):
    path, features = store_path
    store = open_store(path)
    assert store.is_memory_mapped
    assert isinstance(store.features, ChunkMemmapArray)
    assert store.num_frames == sum(LENGTHS) and store.fps == 30.0
    assert [r.length for r in store.sequences] == list(LENGTHS)
    assert store.sequences[1].start == 20 and store.sequences[1].stop == 27
    assert store.split("val") == (store.sequences[1],)
    assert store.stats.mean.dtype == np.float32 and store.stats.mean.shape == (FEATURE_DIM,)
    np.testing.assert_allclose(store.stats.mean, features.mean(0), rtol=1e-6)
    assert store.stats.count == sum(LENGTHS) and store.stats.window_frames == 152
    np.testing.assert_array_equal(store.features[:], features)
    np.testing.assert_array_equal(store.timestamp_ns[3:5], [99_999_999, 133_333_332])
    assert store.layout == layout_description()
    with pytest.raises(ValueError, match="split must be one of"):
        store.split("training")


def test_read_features_view_inside_chunk_copy_across(store_path):
    path, features = store_path
    store = open_store(path)
    inside = store.read_features(17, 30)  # chunk 1 = frames [16, 32)
    np.testing.assert_array_equal(inside, features[17:30])
    memory = inside
    while isinstance(memory, np.ndarray):
        memory = memory.base
    assert isinstance(memory, mmap.mmap)  # a view of the chunk file's map, no copy
    assert not inside.flags.writeable
    across = store.read_features(10, 50)
    np.testing.assert_array_equal(across, features[10:50])
    assert across.flags.owndata
    np.testing.assert_array_equal(store.read_features(48, 57), features[48:57])  # edge chunk
    assert store.read_features(5, 5).shape == (0, FEATURE_DIM)
    with pytest.raises(IndexError, match="not within"):
        store.read_features(50, 58)


def test_read_into_copies_across_chunks(store_path):
    path, features = store_path
    store = open_store(path)
    for start, rows in ((0, 57), (15, 2), (17, 30), (40, 17), (56, 1)):
        out = np.full((rows, FEATURE_DIM), np.nan, np.float32)
        assert store.read_features_into(out, start) is out
        np.testing.assert_array_equal(out, features[start : start + rows])
    zarr_read = open_store(path, memory_map=False).read_features_into(
        np.empty((30, FEATURE_DIM), np.float32), 17
    )
    np.testing.assert_array_equal(zarr_read, features[17:47])
    with pytest.raises(IndexError, match="not within"):
        store.read_features_into(np.empty((3, FEATURE_DIM), np.float32), 55)


# A store with more chunks than a low open-file limit allows maps: opened in a subprocess whose
# limit is set first; reads every frame through the maps and reports the soft limit after.
LIMITED_OPEN = """
import logging, resource, sys
import numpy as np
soft, hard = int(sys.argv[2]), int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
from shared.store import open_store
store = open_store(sys.argv[1])
rows = store.features.read_into(np.empty(store.features.shape, np.float32), 0)
rows = store.features.read_into(rows, 0)  # again: evicted maps are reopened
print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], float(np.abs(rows).sum()),
      len(store.features._maps))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="no RLIMIT_NOFILE")
def test_every_chunk_stays_mapped_within_the_open_file_limit(tmp_path):
    import subprocess

    path = tmp_path / "many.zarr"
    chunks = 300  # per array; 3 arrays
    features = write_store(path, lengths=(chunks * 4 - 1, 1), chunk_frames=4)
    expected = float(np.abs(features).sum())
    reserve = shared.store.OPEN_FILES_RESERVE

    def run(soft: int, hard: int) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", LIMITED_OPEN, str(path), str(soft), str(hard)],
            capture_output=True,
            text=True,
            check=True,
        )

    raised = run(300, 4096)  # room to raise: one map per chunk, no warning
    soft_after, total, maps = raised.stdout.split()
    assert int(soft_after) >= chunks + reserve and float(total) == pytest.approx(expected)
    assert int(maps) == chunks and "open-file limit" not in raised.stderr
    capped = run(400, 400)  # no room: maps are evicted, reads stay right, a warning says why
    soft_after, total, maps = capped.stdout.split()
    assert int(soft_after) == 400 and float(total) == pytest.approx(expected)
    assert int(maps) < chunks
    assert f"has {chunks} chunk files but this process may keep only" in capped.stderr
    assert "ulimit -n" in capped.stderr


def test_edge_chunk_is_stored_full_size(store_path):
    path, _ = store_path
    last = path / shared.store.FEATURES / "c" / "3" / "0"
    assert last.stat().st_size == CHUNK_FRAMES * FEATURE_DIM * 4 + shared.store.CHECKSUM_BYTES


@given(
    start=hst.integers(-70, 70),
    stop=hst.integers(-70, 70) | hst.none(),
    step=hst.sampled_from([None, 1, 2, 5]),
    cols=hst.sampled_from([None, slice(0, 6), 3]),
)
def test_memmap_slicing_matches_numpy(tmp_path_factory, start, stop, step, cols):
    path = tmp_path_factory.getbasetemp() / "hypothesis_store.zarr"
    if not path.exists():
        write_store(path)
    store = open_store(path)
    expected = np.asarray(store.zarr_arrays[shared.store.FEATURES][:])
    rows = slice(start, stop, step)
    key = rows if cols is None else (rows, cols)
    np.testing.assert_array_equal(store.features[key], expected[key])


def test_integer_row_and_array_protocol(store_path):
    path, features = store_path
    store = open_store(path)
    np.testing.assert_array_equal(store.features[-1], features[-1])
    np.testing.assert_array_equal(np.asarray(store.features), features)
    with pytest.raises(IndexError):
        store.features[len(features)]


def test_missing_chunk_is_refused_on_open(store_path):
    path, _ = store_path
    (path / shared.store.FEATURES / "c" / "1" / "0").unlink()
    with pytest.raises(StoreError) as error:
        open_store(path)
    message = str(error.value)
    assert "is damaged: features chunk 1 (file features/c/1/0, frames 16-31): missing" in message
    assert "python -m preprocess verify" in message and "--overwrite" in message
    assert shared.store.check_chunks(path, deep=False) == [
        "features chunk 1 (file features/c/1/0, frames 16-31): missing"
    ]


def test_truncated_chunk_is_refused_on_open_and_when_mapped(store_path):
    path, _ = store_path
    chunk = path / shared.store.FEATURES / "c" / "0" / "0"
    expected = chunk.stat().st_size
    store = open_store(path)
    chunk.write_bytes(chunk.read_bytes()[:100])
    with pytest.raises(StoreError, match=rf"features chunk 0 .*: 100 bytes, expected {expected}"):
        open_store(path)
    with pytest.raises(StoreError, match="has 100 bytes, expected"):
        store.read_features(0, 4)  # opened before the damage: the map refuses too


def test_all_zero_chunks_are_written(tmp_path):
    path = tmp_path / "zeros.zarr"
    root = zarr.open_group(path, mode="w", zarr_format=3)
    contact = root.create_array(
        "contact",
        shape=(32, 4),
        chunks=(16, 4),
        dtype="float32",
        fill_value=0,
        compressors=shared.store.store_compressors(),
        config=shared.store.ARRAY_CONFIG,
    )
    contact[:] = np.concatenate([np.ones((16, 4)), np.zeros((16, 4))])  # chunk 1: fill only
    assert (path / "contact" / "c" / "1" / "0").is_file()


def test_deep_check_names_checksum_and_non_finite_chunks(store_path):
    path, features = store_path
    assert shared.store.check_chunks(path, deep=True) == []
    chunk = path / shared.store.FEATURES / "c" / "2" / "0"
    raw = bytearray(chunk.read_bytes())
    values = np.frombuffer(raw[:-4], dtype="<f4").reshape(CHUNK_FRAMES, FEATURE_DIM).copy()
    values[5, 14] = np.nan  # frame 37, hp[2]
    chunk.write_bytes(values.tobytes() + bytes(raw[-4:]))
    assert shared.store.check_chunks(path, deep=False) == []  # sizes still right
    assert shared.store.check_chunks(path, deep=True) == [
        (
            "features chunk 2 (file features/c/2/0, frames 32-47): checksum mismatch (the bytes "
            "changed after they were written)"
        )
    ]
    # The same NaN with a valid checksum (a build that wrote it): finiteness names it.
    root = zarr.open_group(path, mode="r+")
    rewritten = features.copy()
    rewritten[37, 14] = np.nan
    root[shared.store.FEATURES][32:48] = rewritten[32:48]
    assert shared.store.check_chunks(path, deep=True) == [
        (
            "features chunk 2 (file features/c/2/0, frames 32-47): 1 non-finite values, first nan "
            "at frame 37, dim 14 (hp[2])"
        )
    ]
    open_store(path)  # opening checks sizes only: fast at any store size


def test_check_chunks_on_a_compressed_store_and_a_v1_array(tmp_path):
    path = tmp_path / "zstd.zarr"
    write_store(path, zstd_level=3)
    assert shared.store.check_chunks(path, deep=True) == []
    chunk = path / shared.store.TIMESTAMP_NS / "c" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-1] + b"\x00")
    assert shared.store.check_chunks(path, deep=True) == [
        (
            "timestamp_ns chunk 0 (file timestamp_ns/c/0, frames 0-15): checksum mismatch (the "
            "bytes changed after they were written)"
        )
    ]
    root = zarr.open_group(path, mode="r+")
    stats = root[shared.store.STATS_GROUP]
    stats.create_array(
        shared.store.STATS_STD, shape=(FEATURE_DIM,), dtype="f8", compressors=None, overwrite=True
    )[:] = 1
    assert (
        "array stats/std has no crc32c checksums (codecs ['bytes'])"
        in shared.store.check_chunks(path, deep=False)
    )
    del root[shared.store.CONTACT]
    assert "array contact is missing" in shared.store.check_chunks(path, deep=False)
    assert shared.store.check_chunks(tmp_path / "nothing.zarr", deep=False) == [
        f"no Zarr store at {tmp_path / 'nothing.zarr'}"
    ]


def test_compressed_store_reads_through_zarr(tmp_path):
    path = tmp_path / "zstd.zarr"
    features = write_store(path, zstd_level=3)
    store = open_store(path)
    assert not store.is_memory_mapped
    assert isinstance(store.features, zarr.Array)
    np.testing.assert_array_equal(store.read_features(10, 50), features[10:50])
    np.testing.assert_array_equal(store.features[3:9], features[3:9])


def test_file_url_through_fsspec(store_path):
    path, features = store_path
    url = path.resolve().as_uri()
    assert url.startswith("file://")
    remote = open_store(url, memory_map=False)
    assert not remote.is_memory_mapped
    assert isinstance(remote.zarr_arrays[shared.store.FEATURES].store, zarr.storage.FsspecStore)
    np.testing.assert_array_equal(remote.read_features(5, 40), features[5:40])
    assert remote.url == url
    # A file:// URL is still local: memory mapping resolves it to the directory.
    mapped = open_store(url)
    assert mapped.is_memory_mapped
    np.testing.assert_array_equal(mapped.read_features(5, 40), features[5:40])
    assert remote.fingerprint == mapped.fingerprint == open_store(path).fingerprint


def test_check_chunks_on_a_listed_remote_store(store_path, monkeypatch):
    import fsspec

    path, _ = store_path
    fs, remote = fsspec.filesystem("memory"), f"/checks/{path.parent.name}/store.zarr"
    fs.put(str(path), remote, recursive=True)
    try:
        url = f"memory://{remote.lstrip('/')}"
        assert shared.store.check_chunks(url, deep=True) == []
        fs.rm(f"{remote}/contact/c/2/0")
        fs.pipe(f"{remote}/features/c/0/0", b"short")
        assert shared.store.check_chunks(url, deep=False) == [
            (
                f"features chunk 0 (file features/c/0/0, frames 0-15): 5 bytes, expected "
                f"{CHUNK_FRAMES * FEATURE_DIM * 4 + shared.store.CHECKSUM_BYTES}"
            ),
            "contact chunk 2 (file contact/c/2/0, frames 32-47): missing",
        ]
        with pytest.raises(StoreError, match=r"is damaged: features chunk 0 .* verify memory://"):
            open_store(url)
        listed = shared.store.check_chunks(url, deep=False)

        def cannot_list(*args, **kwargs):
            raise NotImplementedError("this server lists nothing")  # as some HTTP servers

        with monkeypatch.context() as patched:
            patched.setattr(fs, "find", cannot_list)
            assert shared.store.check_chunks(url, deep=False) == listed  # a size request each
    finally:
        fs.rm(remote, recursive=True)


def test_fingerprint_is_content_based(tmp_path):
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    write_store(a), write_store(b)
    assert open_store(a).fingerprint == open_store(b).fingerprint
    c = tmp_path / "c.zarr"
    write_store(c, lengths=(20, 8, 29))
    assert open_store(c).fingerprint != open_store(a).fingerprint


def test_pickles_by_reopening(store_path):
    path, features = store_path
    store = open_store(path)
    store.read_features(0, 5)
    clone = pickle.loads(pickle.dumps(store))
    assert clone.is_memory_mapped and clone.fingerprint == store.fingerprint
    np.testing.assert_array_equal(clone.read_features(0, 40), features[:40])
    mm = pickle.loads(pickle.dumps(store.features))
    np.testing.assert_array_equal(mm[30:40], features[30:40])


def test_refuses_incomplete_store(tmp_path):
    path = tmp_path / "partial.zarr"
    write_store(path, complete=False)
    with pytest.raises(StoreError, match=r"incomplete.*--resume"):
        open_store(path)


def test_refuses_unknown_schema_version(store_path):
    path, _ = store_path
    set_root_attrs(path, schema={"name": shared.store.SCHEMA_NAME, "version": 1})
    with pytest.raises(StoreError, match=r"schema version 1, this code reads version 2.*rebuild"):
        open_store(path)


def test_refuses_layout_mismatch(store_path):
    path, _ = store_path
    layout = layout_description()
    layout["fields"]["jr"] = [156, 295]
    set_root_attrs(path, feature_layout=layout)
    with pytest.raises(StoreError, match=r"feature layout.*shared\.layout.*rebuild"):
        open_store(path)


def test_refuses_other_zarr_group_and_missing_path(tmp_path):
    zarr.open_group(tmp_path / "other.zarr", mode="w")
    with pytest.raises(StoreError, match="is not a 'nymeria-motion-features' store"):
        open_store(tmp_path / "other.zarr")
    with pytest.raises(StoreError, match="no Zarr store at"):
        open_store(tmp_path / "missing.zarr")


@pytest.mark.parametrize("attrs", [{"fps": 60.0}, {"source_fps": 29.0}, {"stitching": {"gaps": 0}}])
def test_refuses_edited_root_attributes(store_path, attrs):
    path, _ = store_path
    set_root_attrs(path, **attrs)
    with pytest.raises(StoreError, match=r"root attributes \(fps, layout, \.\.\.\).*fingerprint"):
        open_store(path)


def test_descriptive_attributes_are_outside_the_fingerprint(store_path):
    path, _ = store_path
    fingerprint = open_store(path).fingerprint
    set_root_attrs(path, created="another day", build_config={"out": "/elsewhere"})
    assert open_store(path).fingerprint == fingerprint


def test_refuses_tampered_sequence_table(store_path):
    path, _ = store_path
    meta_path = path / shared.store.SEQUENCES_GROUP / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"][shared.store.ATTR_TABLE]["split"][0] = "val"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="fingerprint"):
        open_store(path)


def test_reader_imports_no_hdf5():
    import subprocess

    code = (
        "import sys; import shared.store; "
        "bad = [m for m in ('h5py', 'hdf5plugin') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the check on first use (what `train fit` runs in its loader workers) ----------------------


def _flip_to_huge(path: Path) -> None:
    """Overwrite one float of a chunk file with 3.2e38, leaving its checksum stale."""
    raw = bytearray(path.read_bytes())
    raw[4 * 300 : 4 * 301] = np.float32(3.2e38).tobytes()
    path.write_bytes(bytes(raw))


def _swap(a: Path, b: Path) -> None:
    """Swap two whole chunk files: each keeps its own, valid, checksum."""
    tmp = a.with_name("swap")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)


DAMAGE = {
    "flipped byte with a stale checksum": (
        lambda root: _flip_to_huge(root / "features/c/1/0"),
        "features chunk 1 (file features/c/1/0, frames 16-31): checksum mismatch",
    ),
    "swapped chunks": (
        lambda root: _swap(root / "features/c/2/0", root / "features/c/3/0"),
        (
            "features chunk 2 (file features/c/2/0, frames 32-47): frame 32 does not continue "
            "frame 31 of its sequence"
        ),
    ),
    "zeroed chunk file": (
        lambda root: (root / "features/c/2/0").write_bytes(
            bytes((root / "features/c/2/0").stat().st_size)
        ),
        "features chunk 2 (file features/c/2/0, frames 32-47): checksum mismatch",
    ),
    "NaN in contact, valid checksum": (
        lambda root: zarr.open_group(root, mode="r+")[shared.store.CONTACT].set_basic_selection(
            (40, 2), np.nan
        ),
        (
            "contact chunk 2 (file contact/c/2/0, frames 32-47): 1 non-finite values, first nan at "
            "frame 40, column 2"
        ),
    ),
}


def test_check_on_first_use_passes_every_chunk_of_a_good_store(store_path):
    path, features = store_path
    store = open_store(path, check_chunks_on_use=True)
    np.testing.assert_array_equal(store.read_features(0, store.num_frames), features)
    assert store.features._checked == set(range(store.features.num_chunks))


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_check_on_first_use_names_damage_the_open_checks_cannot_see(store_path, damage):
    path, _ = store_path
    make_damage, expected = DAMAGE[damage]
    make_damage(path)
    unchecked = open_store(path)  # sizes are right: only the content tells
    unchecked.read_features(0, unchecked.num_frames)
    store = open_store(path, check_chunks_on_use=True)
    with pytest.raises(ChunkDamageError) as raised:
        for start in range(0, store.num_frames, 8):  # windows, as training reads them
            store.read_features(start, min(start + 8, store.num_frames))
    message = str(raised.value)
    assert expected in message and len(message.splitlines()) == 1
    assert f"store {path} is damaged" in message and "preprocess verify" in message


def test_each_chunk_is_checked_once_per_process(store_path, monkeypatch):
    path, _ = store_path
    store = open_store(path, check_chunks_on_use=True, memory_map=True)
    store.features.max_maps = 1  # every chunk change remaps
    checked = []
    real = ChunkMemmapArray.verify_chunk
    monkeypatch.setattr(
        ChunkMemmapArray, "verify_chunk", lambda self, i: checked.append(i) or real(self, i)
    )
    for _ in range(2):
        store.read_features(0, store.num_frames)
    assert sorted(checked) == sorted([0, 1, 2, 3] * 3)  # features, timestamp_ns, contact: once each
    clone = pickle.loads(pickle.dumps(store))  # another process checks again
    assert clone.features._checked == set()


def test_checksum_of_chunk_bytes(store_path):
    path, _ = store_path
    raw = (path / "features/c/0/0").read_bytes()
    assert shared.store.chunk_checksum_ok(raw)
    assert not shared.store.chunk_checksum_ok(raw[:-1] + bytes([raw[-1] ^ 1]))
    assert not shared.store.chunk_checksum_ok(b"abc")
