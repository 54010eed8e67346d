import subprocess
import sys

import numpy as np
import pytest
import torch

from shared.features import HEAD_FORWARD_AXIS, WORLD_UP_AXIS
from shared.layout import FEATURE_DIM, HP, HP_DOT, HR
from shared.rotations import rot6d_to_matrix, yaw_of
from shared.store import SequenceRecord, open_store
from train.data import (
    Normalizer,
    TrainWindows,
    WindowIndex,
    make_loader,
    prepare_batch,
    read_windows,
)


def _seq(name, start, length):
    return SequenceRecord(name, "p", start, length, "train", ())


def test_window_index_counts_and_locates_every_start():
    index = WindowIndex((_seq("a", 0, 10), _seq("b", 10, 3), _seq("c", 13, 6)), window_frames=4)
    assert index.num_windows == 7 + 1 + 3  # L - T + 1, and one padded window for the short one
    seq, first, valid = index.locate(np.arange(index.num_windows))
    np.testing.assert_array_equal(seq, [0] * 7 + [1] + [2] * 3)
    np.testing.assert_array_equal(first, [0, 1, 2, 3, 4, 5, 6, 10, 13, 14, 15])
    np.testing.assert_array_equal(valid, [4] * 7 + [3] + [4] * 3)
    with pytest.raises(IndexError, match="window numbers must be in"):
        index.locate(np.array([11]))


def test_sampling_is_uniform_reaches_every_start_and_is_a_pure_function():
    index = WindowIndex((_seq("a", 0, 10), _seq("b", 10, 3)), window_frames=4)
    draws = np.concatenate(
        [index.sample(seed=0, rank=0, batch_index=i, batch_size=64) for i in range(200)]
    )
    counts = np.bincount(draws, minlength=index.num_windows)
    assert (counts > 0).all()
    assert counts.std() / counts.mean() < 0.1  # 8 starts, 12800 draws: uniform within noise
    np.testing.assert_array_equal(index.sample(0, 0, 5, 8), index.sample(0, 0, 5, 8))
    assert not np.array_equal(index.sample(0, 0, 5, 8), index.sample(0, 1, 5, 8))  # per rank
    assert not np.array_equal(index.sample(0, 0, 5, 8), index.sample(1, 0, 5, 8))  # per seed


def test_windows_equal_direct_slices_and_short_sequences_are_padded(feature_store):
    store = open_store(feature_store)
    assert store.is_memory_mapped
    train = store.split("train")
    long_seq = max(train, key=lambda s: s.length)
    T = 152
    # A fake short sequence: the first 50 frames of a real one.
    short = SequenceRecord("short", "p", long_seq.start, 50, "train", ())
    index = WindowIndex((long_seq, short), T)
    k = np.array([0, long_seq.length - T, index.num_windows - 1])
    batch = read_windows(store, index, k)
    direct = np.asarray(store.features[long_seq.start : long_seq.stop])
    np.testing.assert_array_equal(batch.features[0].numpy(), direct[:T])
    np.testing.assert_array_equal(batch.features[1].numpy(), direct[-T:])
    assert batch.mask[:2].all()
    np.testing.assert_array_equal(batch.mask[2].numpy(), np.arange(T) < 50)
    np.testing.assert_array_equal(batch.features[2, :50].numpy(), direct[:50])
    np.testing.assert_array_equal(
        batch.features[2, 50:].numpy(), np.broadcast_to(direct[49], (T - 50, direct.shape[1]))
    )


def test_loader_workers_yield_the_same_batches_as_the_main_process(feature_store):
    store = open_store(feature_store)
    ds = TrainWindows(store.url, "train", 152, batch_size=4, seed=3, rank=0, first_batch=2)
    main = [b for b, _ in zip(make_loader(ds, 0, False), range(4))]
    workers = [b for b, _ in zip(make_loader(ds, 2, False), range(4))]
    index = WindowIndex(store.split("train"), 152)
    for i, (a, b) in enumerate(zip(main, workers)):
        torch.testing.assert_close(a.features, b.features, rtol=0, atol=0)
        expected = index.locate(index.sample(3, 0, 2 + i, 4))[1]
        np.testing.assert_array_equal(a.start_frame.numpy(), expected)


def test_prepared_batch_is_canonical_and_normalised(feature_store):
    store = open_store(feature_store)
    index = WindowIndex(store.split("train"), 152)
    batch = read_windows(store, index, index.sample(0, 0, 0, 8))
    norm = Normalizer(store.stats, "cpu")
    prep = prepare_batch(batch, norm)
    torch.testing.assert_close(
        prep.canonical[:, 0, HP][:, :2], torch.zeros(8, 2), atol=1e-5, rtol=0
    )
    heading = yaw_of(rot6d_to_matrix(prep.canonical[:, 0, HR]), HEAD_FORWARD_AXIS, WORLD_UP_AXIS)
    torch.testing.assert_close(heading, torch.zeros(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(norm.denormalize(prep.x), prep.canonical, atol=1e-4, rtol=1e-5)


def test_compressed_store_over_a_url_gives_the_same_windows(feature_store, tmp_path):
    """A zstd store opened through an fsspec URL is read with zarr, not memory maps, and
    yields exactly the windows of the memory-mapped uncompressed store."""
    local = open_store(feature_store)
    source = local.attrs["source"]["root"]
    compressed = tmp_path / "zstd.zarr"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "preprocess",
            "build",
            source,
            "--out",
            str(compressed),
            "--compression",
            "zstd",
            "--scheduler",
            "synchronous",
            "--no-progress",
        ],
        check=True,
        capture_output=True,
    )
    remote = open_store(compressed.as_uri())
    assert not remote.is_memory_mapped and local.is_memory_mapped
    assert remote.fingerprint == local.fingerprint
    index = WindowIndex(local.split("train"), 152)
    k = index.sample(seed=0, rank=0, batch_index=0, batch_size=6)
    a, b = read_windows(local, index, k), read_windows(remote, index, k)
    torch.testing.assert_close(a.features, b.features, rtol=0, atol=0)
    torch.testing.assert_close(a.mask, b.mask, rtol=0, atol=0)


def test_mirror_some_flips_a_seeded_subset_of_windows_into_their_mirror_image(feature_store):
    from shared.features import mirror_features
    from train.data import mirror_some

    store = open_store(feature_store)
    index = WindowIndex(store.split("train"), 32)
    batch = read_windows(store, index, np.arange(0, index.num_windows, 7)[:16])
    assert mirror_some(batch, 0.0) is batch
    mirrored = mirror_features(batch.features)
    torch.manual_seed(3)
    half = mirror_some(batch, 0.5)
    flipped = (half.features == mirrored).flatten(1).all(1)
    kept = (half.features == batch.features).flatten(1).all(1)
    assert (flipped ^ kept).all() and 0 < int(flipped.sum()) < len(flipped)
    torch.manual_seed(3)
    assert torch.equal(mirror_some(batch, 0.5).features, half.features)  # seeded: resumable
    assert torch.equal(mirror_some(batch, 1.0).features, mirrored)
    assert torch.equal(half.mask, batch.mask) and torch.equal(half.sequence, batch.sequence)


def test_resample_speeds_plays_a_seeded_subset_of_windows_at_other_speeds(feature_store):
    from shared.features import resample_input_frames
    from train.data import resample_speeds

    store = open_store(feature_store)
    read = resample_input_frames(32, 1.5)
    index = WindowIndex(store.split("train"), read)
    batch = read_windows(store, index, np.arange(0, index.num_windows, 7)[:16])
    assert resample_speeds(batch, 0.0, 1.5, 32) is batch
    torch.manual_seed(3)
    half = resample_speeds(batch, 0.5, 1.5, 32)
    assert half.features.shape == (16, 32, FEATURE_DIM) and half.mask.shape == (16, 32)
    # A window left at its speed is input frames 2..33 (velocities differenced again: rounding).
    as_read = (half.features - batch.features[:, 2:34]).abs().flatten(1).amax(1) < 1e-5
    assert 0 < int(as_read.sum()) < 16
    # A resampled one is still motion: its velocities are the differences of its positions.
    played = half.features[~as_read]
    torch.testing.assert_close(
        played[:, 1:, HP_DOT], played[:, 1:, HP] - played[:, :-1, HP], rtol=0, atol=1e-5
    )
    torch.manual_seed(3)
    assert torch.equal(resample_speeds(batch, 0.5, 1.5, 32).features, half.features)  # seeded
    assert torch.equal(half.sequence, batch.sequence)


def test_resample_speeds_masks_frames_that_read_past_a_short_sequence(feature_store):
    from shared.features import resample_input_frames
    from train.data import resample_speeds

    store = open_store(feature_store)
    sequences = store.split("train")
    longest = max(s.length for s in sequences)
    index = WindowIndex(sequences, resample_input_frames(longest, 1.5))  # every window padded
    batch = read_windows(store, index, np.arange(min(index.num_windows, 8)))
    # At speed 1 output frame j is input frame j + 2; its spline reads up to input frame j + 4.
    same_speed = resample_speeds(batch, 1.0, 1.0, longest)
    torch.testing.assert_close(same_speed.mask.sum(1), (batch.mask.sum(1) - 4).clamp(max=longest))
    torch.manual_seed(0)
    played = resample_speeds(batch, 1.0, 1.5, longest)
    assert (played.mask.sum(1) > 0).all()
    assert (played.mask[:, :-1] >= played.mask[:, 1:]).all()  # still a prefix
