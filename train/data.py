"""Training windows from the feature store: uniform over valid starts, memory-mapped, stateless.

Batch `i` of rank `r` is a pure function of `(seed, r, i)`, so a resumed run draws
exactly the windows an uninterrupted run would have drawn, DataLoader workers split
batch indices round-robin without coordinating, and there is no sampler state to save
beyond the step.

Windows are read as world features; canonicalisation and normalisation happen batched
on the training device (`prepare_batch`), never in the workers.
"""

from __future__ import annotations

import math
import os
import signal
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from itertools import count
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shared.errors import InputError
from shared.features import CanonicalFrame, canonicalize, mirror_features, resample_features
from shared.layout import FEATURE_DIM
from shared.store import FeatureStore, NormStats, SequenceRecord, StoreError, open_store


class WindowBatch(NamedTuple):
    """A batch of world-feature windows; a NamedTuple so DataLoader collation and pinning keep
    it."""

    features: (
        torch.Tensor
    )  # (B, T, 294) float32, world frame; padded frames repeat the last valid one
    mask: torch.Tensor  # (B, T) bool, True on real frames
    start_frame: torch.Tensor  # (B,) int64, first frame in the store's concatenated frame axis
    sequence: torch.Tensor  # (B,) int64, index into the split's sequence list

    def to(self, device: torch.device | str, non_blocking: bool = False) -> WindowBatch:
        return WindowBatch(*(t.to(device, non_blocking=non_blocking) for t in self))


@dataclass(frozen=True)
class WindowIndex:
    """Every valid window start of a set of sequences, addressable by one integer.

    A sequence of length L >= T has L - T + 1 starts; a shorter one has a single start
    whose window is padded and masked.
    """

    sequences: tuple[SequenceRecord, ...]
    window_frames: int

    def __post_init__(self) -> None:
        if not self.sequences:
            raise InputError("WindowIndex needs at least one sequence; the split is empty")

    # Per-sequence arrays, derived once: locate() runs for every batch, and a real dataset
    # has thousands of sequences.
    @cached_property
    def _seq_start(self) -> np.ndarray:
        return np.array([s.start for s in self.sequences], dtype=np.int64)

    @cached_property
    def _seq_length(self) -> np.ndarray:
        return np.array([s.length for s in self.sequences], dtype=np.int64)

    @cached_property
    def starts_per_sequence(self) -> np.ndarray:
        return np.maximum(self._seq_length - self.window_frames + 1, 1)

    @cached_property
    def _cum_starts(self) -> np.ndarray:
        return np.cumsum(self.starts_per_sequence)

    @cached_property
    def num_windows(self) -> int:
        return int(self._cum_starts[-1])

    def locate(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Window numbers (N,) -> (sequence index, first store frame, valid frames), each (N,)."""
        cum = self._cum_starts
        if np.any((k < 0) | (k >= cum[-1])):
            raise IndexError(
                f"window numbers must be in [0, {cum[-1]}), found {k.min()}..{k.max()}"
            )
        seq = np.searchsorted(cum, k, side="right")
        offset = k - (cum[seq] - self.starts_per_sequence[seq])
        return (
            seq,
            self._seq_start[seq] + offset,
            np.minimum(self._seq_length[seq], self.window_frames),
        )

    def number(self, sequence: np.ndarray, offset: np.ndarray) -> np.ndarray:
        """The inverse of `locate`: window numbers of the windows `offset` frames into
        `sequence`."""
        sequence, offset = np.asarray(sequence, dtype=np.int64), np.asarray(offset, dtype=np.int64)
        starts = self.starts_per_sequence[sequence]
        if np.any((offset < 0) | (offset >= starts)):
            raise IndexError(
                "window offsets must be within each sequence's "
                f"{self.window_frames}-frame window starts"
            )
        return self._cum_starts[sequence] - starts + offset

    def sample(self, seed: int, rank: int, batch_index: int, batch_size: int) -> np.ndarray:
        """Uniform window numbers of batch `batch_index` for `rank`: a pure function of its args."""
        rng = np.random.default_rng([seed, rank, batch_index])
        return rng.integers(0, self.num_windows, size=batch_size)

    def evenly_spaced(self, max_windows: int) -> np.ndarray:
        """A fixed, spread-out set of at most `max_windows` window numbers (for validation)."""
        n = min(max_windows, self.num_windows)
        return np.unique(np.linspace(0, self.num_windows - 1, n).round().astype(np.int64))


def read_windows(
    store: FeatureStore, index: WindowIndex, k: np.ndarray, located: tuple | None = None
) -> WindowBatch:
    """Copy the windows numbered `k` out of the store (one memcpy per window when memory-mapped).

    The windows' chunks are first announced to the store (`prefetch_features`: a store read
    through a chunk cache fetches them in parallel), unless the caller did and passes
    `located`, its `index.locate(k)`."""
    T = index.window_frames
    if located is None:
        located = index.locate(k)
        store.prefetch_features(*located[1:])
    seq, first, valid = located
    features = np.empty((len(k), T, FEATURE_DIM), dtype=np.float32)
    for b, (start, n) in enumerate(zip(first.tolist(), valid.tolist())):
        store.read_features_into(features[b, :n], start)
        if n < T:
            features[b, n:] = features[
                b, n - 1
            ]  # edge padding keeps rotations valid for canonicalize
    mask = np.arange(T) < valid[:, None]
    return WindowBatch(
        torch.from_numpy(features),
        torch.from_numpy(mask),
        torch.from_numpy(first),
        torch.from_numpy(seq),
    )


class DamagedWindows(NamedTuple):
    """What the stream yields, in place of a batch, when its windows read a damaged chunk (the
    stream then ends): the error crosses the worker boundary as one line, not a traceback."""

    problem: str


READ_AHEAD_BATCHES = 4
"""Batches whose chunks a worker asks the store to fetch ahead (a store read through a chunk
cache fetches them in the background; a local store ignores it)."""


class TrainWindows(IterableDataset):
    """Endless stream of batches from one split; each worker takes every `num_workers`-th batch.

    `store` is a path, opened inside each worker (memory maps are per process; with
    `check_chunks` each chunk is checked the first time the worker reads it:
    `open_store(check_chunks_on_use=True)`), or an opened store (pickled into spawned workers,
    which reopen it; inherited by forked ones). Damage ends the stream with `DamagedWindows`. A
    worker announces the windows of its next READ_AHEAD_BATCHES batches to the store before
    reading (a store read through a chunk cache fetches them in the background).
    """

    def __init__(
        self,
        store: str | Path | FeatureStore,
        split: str,
        window_frames: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        first_batch: int = 0,
        check_chunks: bool = False,
    ) -> None:
        self.store, self.split = store, split
        self.window_frames, self.batch_size = window_frames, batch_size
        self.seed, self.rank, self.first_batch = seed, rank, first_batch
        self.check_chunks = check_chunks

    def __iter__(self) -> Iterator[WindowBatch | DamagedWindows]:
        store = self.store
        if not isinstance(store, FeatureStore):
            store = open_store(store, check_chunks_on_use=self.check_chunks)
        index = WindowIndex(store.split(self.split), self.window_frames)
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        numbers, upcoming = count(self.first_batch + worker, num_workers), deque()
        while True:
            while len(upcoming) <= READ_AHEAD_BATCHES:
                k = index.sample(self.seed, self.rank, next(numbers), self.batch_size)
                located = index.locate(k)
                store.prefetch_features(*located[1:])
                upcoming.append((k, located))
            try:
                batch = read_windows(store, index, *upcoming.popleft())
            except StoreError as error:  # a damaged local chunk, or a remote one (chunk cache)
                yield DamagedWindows(str(error))
                return
            yield batch


def _leave_signals_to_training(_worker_id: int) -> None:
    """Loader workers leave SIGINT (a Ctrl-C reaches the whole process group) to the training
    process, which stops at a step boundary; SIGTERM, which torch itself sends to stop a worker,
    ends a worker quietly (exit status 0: not reported as a crash), so a SIGTERM sent to the
    whole group also leaves the stop to the training process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: os._exit(0))


def make_loader(dataset: TrainWindows, num_workers: int, pin_memory: bool) -> DataLoader:
    """DataLoader over pre-batched windows; worker order keeps batch indices in sequence."""
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if num_workers else None,
        persistent_workers=False,
        worker_init_fn=_leave_signals_to_training,
    )


class Normalizer:
    """Per-dimension standardisation with the store's statistics, on the training device."""

    def __init__(self, stats: NormStats, device: torch.device | str) -> None:
        self.mean = torch.as_tensor(stats.mean, dtype=torch.float32, device=device)
        self.std = torch.as_tensor(stats.std, dtype=torch.float32, device=device)

    def normalize(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.std

    def denormalize(self, features: torch.Tensor) -> torch.Tensor:
        return features * self.std + self.mean


class PreparedBatch(NamedTuple):
    x: torch.Tensor  # (B, T, 294) normalised canonical features: the model's input and target
    mask: torch.Tensor  # (B, T) bool
    canonical: torch.Tensor  # (B, T, 294) canonical features, physical units
    frame: CanonicalFrame  # per-window transform back to the world


def mirror_some(batch: WindowBatch, probability: float) -> WindowBatch:
    """Each window replaced by its left/right mirror image with `probability`, drawn from
    torch's global generator (which the training step seeds per step and rank)."""
    if probability <= 0:
        return batch
    x = batch.features
    flip = torch.rand(x.shape[0], device=x.device) < probability
    return batch._replace(features=torch.where(flip[:, None, None], mirror_features(x), x))


def resample_speeds(
    batch: WindowBatch, probability: float, speed_max: float, window_frames: int
) -> WindowBatch:
    """Windows read `resample_input_frames(window_frames, speed_max)` long -> `window_frames`
    long, each played, with `probability`, at a speed drawn log-uniformly in [1 / speed_max,
    speed_max] (`shared.features.resample_features`: a spline, velocities differenced afresh),
    else at its own speed. Draws from torch's global generator, like `mirror_some`; a frame is
    valid if the input frames it reads are. `probability` 0: the batch as read."""
    if probability <= 0:
        return batch
    x = batch.features
    draw = torch.rand(x.shape[0], device=x.device) < probability
    log_speed = (2 * torch.rand(x.shape[0], device=x.device) - 1) * math.log(speed_max)
    speed = torch.where(draw, log_speed.exp(), torch.ones_like(log_speed))
    times = 1 + speed[:, None] * torch.arange(1, window_frames + 1, device=x.device)
    last_read = (times.floor().long() + 2).clamp(max=x.shape[1] - 1)  # the spline's last frame
    mask = batch.mask.gather(1, last_read)  # valid frames are a prefix
    return batch._replace(features=resample_features(x, speed, window_frames), mask=mask)


def prepare_batch(batch: WindowBatch, normalizer: Normalizer) -> PreparedBatch:
    """World windows (already on the device) -> canonical, normalised model input."""
    canonical, frame = canonicalize(batch.features)
    return PreparedBatch(normalizer.normalize(canonical), batch.mask, canonical, frame)
