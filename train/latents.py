"""Feature store <-> latent store: the latents a downstream (diffusion) model trains on.

Both directions run `train.codec.MotionCodec`, the same code a researcher calls from Python:
every sequence is cut into windows of the training length (or `--window`), each window
canonicalised at its own first frame and normalised as in training, the last window padded
by repeating the sequence's last frame (`PADDING_RULE`); decoding maps every window back to
the world through its canonical frame and reassembles whole sequences (`OVERLAP_RULE`).

Latent store (Zarr v3 group, schema `LATENT_SCHEMA` version 3; version 1 held one causal
pass per whole sequence, version 2 its sequence table as string arrays; both are refused):

    <latents>/
      zarr.json     root attributes (ATTR_* below and shared.store.write's schema, fps, split,
                    window_frames, package_version, git_revision, created); `complete` last
      mean          (N_windows, K, latent_dim) float32: posterior means, K = window / 4 latents
                    per window, the windows of all sequences in order
      logvar        (N_windows, K, latent_dim) float32: log-variances (only with --logvar)
      windows/      one row per window: sequence (int64, row of sequences/), first_frame and
                    valid_frames (int64, frames in the sequence; the rest of the window is
                    padding), R_canon_world (N, 3, 3) and offset_world (N, 3) float32, the
                    window's canonical transform, its heading and origin
                    (p_canon = R_canon_world @ (p_world - offset_world))
      sequences/    attribute `table`, the sequence table as the feature store holds its own
                    (shared.store.write.write_table), one row per sequence: name, participant,
                    split, num_frames, store_start_frame, first_window, num_windows
      latent_stats/ mean, std (latent_dim,) float64 per-channel moments of the valid latents
                    (any of their 4 frames valid) of `mean` over the sequences of split
                    attribute `split` (train when encoded, else all); attribute `count`

Every array of both stores is created by `shared.store.create_store_array` (zstd level
`ZSTD_LEVEL`, then crc32c) as the feature store's are; a damaged chunk is named when read
(stores written before have no crc32c and still read).

Decoded store (schema `DECODED_SCHEMA`): `features` (N_frames, 294) world features, or with
`world=True` the world motion arrays `cpf_translation` (N, 3), `cpf_orientation` (N, 3, 3),
`joint_translation` (N, 23, 3), `joint_orientation` (N, 23, 3, 3); and the sequence table
`sequences/` with name, participant, split, first_frame, num_frames.

Both stores are written through `shared.store.write.staged_store`, so a failed run leaves
nothing that looks usable at a local `out` (a remote URL, which has no atomic rename, is left
incomplete, and readers refuse it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import zarr
from tqdm import tqdm

from shared.chunked_writer import ChunkedRowWriter
from shared.errors import InputError, MissingInputError
from shared.features import CanonicalFrame
from shared.layout import FEATURE_DIM
from shared.moments import Moments
from shared.remote import store_size_bytes, url_options
from shared.skeleton import NUM_JOINTS
from shared.store import (
    ATTR_CREATED,
    ATTR_FPS,
    ATTR_GIT_REVISION,
    ATTR_PACKAGE_VERSION,
    ATTR_SCHEMA,
    ATTR_SPLIT,
    ATTR_WINDOW_FRAMES,
    DECODED_SCHEMA_NAME,
    LATENT_SCHEMA_NAME,
    STATS_ATTR_COUNT,
    STORE_KINDS,
    FeatureStore,
    Schema,
    SequenceRecord,
    check_root_attrs,
    create_store_array,
    describe_schema,
    is_checksum_error,
    open_store,
    read_metadata,
    read_table,
)
from shared.store.write import mark_complete, provenance_attrs, staged_store, utc_now, write_table
from train.codec import OVERLAP_RULE, PADDING_RULE, MotionCodec, MotionLatents, WindowPlan
from train.inference import file_sha256, warn_if_other_store
from train.model import FRAMES_PER_LATENT

logger = logging.getLogger(__name__)

# zarr's default compression (zstd level 0), then a crc32c of every chunk as the feature store
# has: a damaged chunk fails to decode and is named (`read_sequence_latents`), never read as
# numbers.
ZSTD_LEVEL = 0

LATENT_SCHEMA = LATENT_SCHEMA_NAME
DECODED_SCHEMA = DECODED_SCHEMA_NAME
SCHEMA_VERSION = 3  # v3: sequence tables as the feature store's (JSON); v2: latents per window
LATENTS = Schema(
    LATENT_SCHEMA,
    SCHEMA_VERSION,
    about_version="latents per training window, the sequence table as JSON",
    how_to_write="write one with `train encode`",
    how_to_upgrade="encode the feature store again with `train encode`",
    old_versions={
        1: " (one pass per whole sequence, out of the model's training distribution)",
        2: " (its sequence table in string arrays)",
    },
)
DECODED = Schema(
    DECODED_SCHEMA,
    SCHEMA_VERSION,
    about_version="the sequence table as JSON",
    how_to_write="write one with `train decode`",
    how_to_upgrade="decode the latents again with `train decode`",
)

# --- node names -------------------------------------------------------------------------------
MEAN = "mean"
LOGVAR = "logvar"
WINDOWS = "windows"
LATENT_STATS = "latent_stats"
FEATURES = "features"
DECODED_COLUMNS = ("name", "participant", "split", "first_frame", "num_frames")
WORLD_SHAPES = {"cpf_translation": (3,), "cpf_orientation": (3, 3),
                "joint_translation": (NUM_JOINTS, 3),
                "joint_orientation": (NUM_JOINTS, 3, 3)}  # fmt: skip
WORLD_ARRAYS = tuple(WORLD_SHAPES)

# --- root attributes (and shared.store.write's) ------------------------------------------------
ATTR_LATENT_DIM = "latent_dim"
ATTR_FRAMES_PER_LATENT = "frames_per_latent"
ATTR_HOP_FRAMES = "hop_frames"
ATTR_LATENTS_PER_WINDOW = "latents_per_window"
ATTR_FRAME_FPS = "frame_fps"  # frame rate of the feature store
ATTR_CHECKPOINT = "checkpoint"  # {"path", "sha256", "step"}
ATTR_FEATURE_STORE = "feature_store"  # {"url", "fingerprint"}
ATTR_HAS_LOGVAR = "has_logvar"
ATTR_PADDING = "padding"  # PADDING_RULE
ATTR_OVERLAP = "overlap"  # OVERLAP_RULE
ATTR_LATENTS = "latents"  # decoded store: {"url", "checkpoint_sha256"}
ATTR_KIND = "kind"  # decoded store: "features" | "world"

WINDOW_CHUNK_ROWS = 32  # windows per chunk of mean/logvar: 32 x 38 x 768 float32 = 3.7 MB
FRAME_CHUNK_ROWS = 4096

Split = Literal["all", "train", "val", "test"]


# --- writing ----------------------------------------------------------------------------------


def _write_arrays(group: zarr.Group, arrays: dict[str, np.ndarray]) -> None:
    """One array per column of a numeric table (windows, latent statistics)."""
    for name, values in arrays.items():
        array = _create_array(group, name, values.shape, "auto", values.dtype)
        if values.size:
            array[...] = values


def _create_array(
    group: zarr.Group, name: str, shape: tuple[int, ...], chunks: Any, dtype: Any = "float32"
) -> zarr.Array:
    """An array of a latent or decoded store: `shared.store.create_store_array` at `ZSTD_LEVEL`;
    `chunks` may be "auto" (zarr's choice, for the small tables)."""
    return create_store_array(
        group,
        name,
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        dimension_names=None,
        zstd_level=ZSTD_LEVEL,
    )


def _row_writer(
    root: zarr.Group, shapes: Mapping[str, tuple[int, ...]], rows: int, chunk_rows: int
) -> ChunkedRowWriter:
    """A writer of new float32 arrays of `rows` rows of each shape, `chunk_rows` to a chunk."""
    return ChunkedRowWriter(
        {
            name: _create_array(root, name, (rows, *shape), (chunk_rows, *shape))
            for name, shape in shapes.items()
        }
    )


@dataclass(frozen=True)
class LatentSequence:
    """One row of a latent store's sequence table."""

    name: str
    participant: str
    split: str
    num_frames: int
    store_start_frame: int
    first_window: int
    num_windows: int


def encode_store(
    ckpt_path: Path,
    store_url: str,
    out: str | Path,
    split: Split = "all",
    logvar: bool = False,
    device: str = "auto",
    window_frames: int | None = None,
    hop_frames: int | None = None,
    storage_options: dict | None = None,
) -> zarr.Group:
    """Encode every sequence of `split` of the store, window by window, into a new latent store
    at `out`. Window defaults to the checkpoint's training window, hop to the window.
    `storage_options` (fsspec) apply to both when they are URLs."""
    codec = MotionCodec.from_checkpoint(ckpt_path, device)
    store = open_store(store_url, storage_options=storage_options)
    warn_if_other_store(codec.checkpoint, store)
    records = store.sequences if split == "all" else store.split(split)
    if not records:
        raise InputError(f"store {store.url} has no sequences in split {split!r}")
    plans = [codec.plan(r.length, window_frames, hop_frames) for r in records]
    num_windows = np.array([plan.num_windows for plan in plans], dtype=np.int64)
    total, K, L = int(num_windows.sum()), plans[0].latents_per_window, codec.model.config.latent_dim
    arrays_bytes = total * K * L * 4 * (2 if logvar else 1)
    with staged_store(out, arrays_bytes, storage_options) as root:
        stats_split = "train" if any(r.split == "train" for r in records) else split
        moments, frame = _encode_windows(root, codec, store, records, plans, logvar, stats_split)
        _write_windows(root, plans, frame)
        _write_latent_table(root, records, num_windows)
        channel_mean, channel_std = moments.mean_std(std_floor=0.0)
        stats = root.create_group(
            LATENT_STATS, attributes={STATS_ATTR_COUNT: moments.count, ATTR_SPLIT: stats_split}
        )
        _write_arrays(stats, {"mean": channel_mean, "std": channel_std})
        root.attrs.update(_latent_attrs(ckpt_path, codec, store, plans[0], split, logvar))
        mark_complete(root)
    logger.info(
        "encoded %d sequences into %d windows of %d latents at %s", len(records), total, K, out
    )
    return zarr.open_group(str(out), mode="r", storage_options=url_options(out, storage_options))


def _encode_windows(
    root: zarr.Group,
    codec: MotionCodec,
    store: FeatureStore,
    records: list[SequenceRecord],
    plans: list[WindowPlan],
    logvar: bool,
    stats_split: str,
) -> tuple[Moments, CanonicalFrame]:
    """Write `mean` (and `logvar`) of every window of `records`; the moments of the valid mean
    latents of `stats_split` and every window's canonical frame."""
    total = sum(plan.num_windows for plan in plans)
    K, L = plans[0].latents_per_window, codec.model.config.latent_dim
    names = (MEAN, LOGVAR) if logvar else (MEAN,)
    writer = _row_writer(root, dict.fromkeys(names, (K, L)), total, min(WINDOW_CHUNK_ROWS, total))
    moments, rotations, offsets = Moments.empty(L), [], []
    for record, plan in zip(tqdm(records, desc="encode", unit="seq"), plans, strict=True):
        features = np.array(store.read_features(record.start, record.stop))
        latents = codec.encode_features(features, plan.window_frames, plan.hop_frames)
        blocks = {MEAN: latents.mean.float().cpu().numpy()}  # (W, K, L)
        if logvar:
            blocks[LOGVAR] = latents.logvar.float().cpu().numpy()
        writer.append(blocks)
        rotations.append(latents.frame.R_canon_world.cpu().numpy())
        offsets.append(latents.frame.offset_world.cpu().numpy())
        if stats_split in ("all", record.split):  # Chan merge: no sum-of-squares cancellation
            moments = moments.merge(Moments.of(blocks[MEAN][plan.latent_valid()]))
    writer.close()
    frame = CanonicalFrame(
        np.concatenate(rotations).astype(np.float32), np.concatenate(offsets).astype(np.float32)
    )
    return moments, frame


def _write_windows(root: zarr.Group, plans: list[WindowPlan], frame: CanonicalFrame) -> None:
    """The window table: sequence, first and valid frames, canonical transform."""
    num_windows = [plan.num_windows for plan in plans]
    _write_arrays(
        root.create_group(WINDOWS),
        {
            "sequence": np.repeat(np.arange(len(plans), dtype=np.int64), num_windows),
            "first_frame": np.concatenate([plan.first_frame for plan in plans]),
            "valid_frames": np.concatenate([plan.valid_frames for plan in plans]),
            "R_canon_world": frame.R_canon_world,
            "offset_world": frame.offset_world,
        },
    )


def _write_latent_table(
    root: zarr.Group, records: list[SequenceRecord], num_windows: np.ndarray
) -> None:
    first_window = np.concatenate([[0], np.cumsum(num_windows)[:-1]]).astype(np.int64)
    table = [
        LatentSequence(r.name, r.participant, r.split, r.length, r.start, int(first), int(n))
        for r, first, n in zip(records, first_window, num_windows, strict=True)
    ]
    write_table(
        root, {f.name: [getattr(row, f.name) for row in table] for f in fields(LatentSequence)}
    )


def _latent_attrs(
    ckpt_path: Path,
    codec: MotionCodec,
    store: FeatureStore,
    plan: WindowPlan,
    split: str,
    logvar: bool,
) -> dict[str, Any]:
    """Root attributes of a latent store (`complete` aside)."""
    checkpoint = {
        "path": str(Path(ckpt_path).resolve()),
        "sha256": file_sha256(ckpt_path),
        "step": codec.checkpoint.step,
    }
    return {
        **LATENTS.attrs(),
        ATTR_LATENT_DIM: codec.model.config.latent_dim,
        ATTR_FRAMES_PER_LATENT: FRAMES_PER_LATENT,
        ATTR_WINDOW_FRAMES: plan.window_frames,
        ATTR_HOP_FRAMES: plan.hop_frames,
        ATTR_LATENTS_PER_WINDOW: plan.latents_per_window,
        ATTR_FPS: store.fps / FRAMES_PER_LATENT,
        ATTR_FRAME_FPS: store.fps,
        ATTR_CHECKPOINT: checkpoint,
        ATTR_FEATURE_STORE: {"url": store.url, "fingerprint": store.fingerprint},
        ATTR_SPLIT: split,
        ATTR_HAS_LOGVAR: logvar,
        ATTR_PADDING: PADDING_RULE,
        ATTR_OVERLAP: OVERLAP_RULE,
        **provenance_attrs(utc_now()),
    }


# --- reading ----------------------------------------------------------------------------------


def check_latent_attrs(attrs: Mapping[str, Any], url: str | Path) -> None:
    """Raise a `StoreError` (a ValueError) unless `attrs` are the root attributes of a complete
    latent store."""
    check_root_attrs(attrs, url, LATENTS, "write it again with `train encode`")


def _open_group(url: str | Path, storage_options: dict | None) -> zarr.Group:
    """The root group of a latent or decoded store; its zarr.json is untrusted input, so
    what its parsing raises is one `StoreError` (`read_metadata`)."""
    hint = "write it again with `train encode` (a decoded store: `train decode`)"
    return read_metadata(str(url), "zarr.json", partial(_zarr_group, url, storage_options), hint)


def _zarr_group(url: str | Path, storage_options: dict | None) -> zarr.Group:
    try:
        options = url_options(url, storage_options)
        return zarr.open_group(str(url), mode="r", storage_options=options)
    except FileNotFoundError:
        raise MissingInputError(f"no Zarr store at {url}") from None


def open_latents(url: str | Path, storage_options: dict | None = None) -> zarr.Group:
    """A complete latent store, or a ValueError saying what is wrong with it."""
    group = _open_group(url, storage_options)
    check_latent_attrs(group.attrs.asdict(), url)
    return group


def read_latent_table(group: zarr.Group) -> list[LatentSequence]:
    """The sequence table of a latent store opened with `open_latents`."""
    columns = [f.name for f in fields(LatentSequence)]
    table = read_table(group, columns, "latent store", LATENTS.how_to_upgrade)
    return [LatentSequence(*row) for row in zip(*table.values(), strict=True)]


def read_decoded_table(group: zarr.Group) -> dict[str, list]:
    """The sequence table of a decoded store, {column: values} (DECODED_COLUMNS)."""
    return read_table(group, DECODED_COLUMNS, "decoded store", DECODED.how_to_upgrade)


def read_sequence_latents(
    group: zarr.Group, sequence: LatentSequence, plan: WindowPlan
) -> MotionLatents:
    """The windows of one sequence of a latent store, as `MotionCodec.decode_*` take them."""
    if plan.num_windows != sequence.num_windows:
        raise InputError(
            f"latent store: sequence {sequence.name!r} has {sequence.num_windows} windows, but "
            f"{sequence.num_frames} frames in windows of {plan.window_frames} every "
            f"{plan.hop_frames} frames make {plan.num_windows}"
        )
    rows = slice(sequence.first_window, sequence.first_window + sequence.num_windows)

    def read(path: str) -> torch.Tensor:
        try:
            return torch.as_tensor(group[path][rows])
        except ValueError as e:
            if not is_checksum_error(e):
                raise
            raise InputError(
                f"latent store: array {path!r}, windows {rows.start}..{rows.stop - 1} (sequence "
                f"{sequence.name!r}): a chunk failed its checksum, the store is damaged; write it "
                f"again with `train encode`"
            ) from None

    frame = CanonicalFrame(read(f"{WINDOWS}/R_canon_world"), read(f"{WINDOWS}/offset_world"))
    logvar = read(LOGVAR) if LOGVAR in group else None
    mean = read(MEAN)
    if tuple(mean.shape[:2]) != (plan.num_windows, plan.latents_per_window):
        raise InputError(
            f"latent store: array {MEAN!r} of sequence {sequence.name!r} holds latents of shape "
            f"{tuple(mean.shape)}, but its plan is {plan.num_windows} windows of "
            f"{plan.latents_per_window} latents; write it again with `train encode`"
        )
    return MotionLatents(mean, logvar, frame, plan)


def decode_store(
    ckpt_path: Path,
    latents_url: str | Path,
    out: str | Path,
    world: bool = False,
    device: str = "auto",
    storage_options: dict | None = None,
) -> zarr.Group:
    """Decode the mean latents of a latent store into world features (or world motion) at `out`;
    `storage_options` (fsspec) apply to both when they are URLs."""
    latents = open_latents(latents_url, storage_options)
    found = _check_decoding_checkpoint(latents, latents_url, ckpt_path)
    codec = MotionCodec.from_checkpoint(ckpt_path, device)
    sequences = read_latent_table(latents)
    num_frames = np.array([s.num_frames for s in sequences], dtype=np.int64)
    total = int(num_frames.sum())
    shapes = WORLD_SHAPES if world else {FEATURES: (FEATURE_DIM,)}
    arrays_bytes = total * 4 * sum(int(np.prod(s)) for s in shapes.values())
    with staged_store(out, arrays_bytes, storage_options) as root:
        writer = _row_writer(root, shapes, total, min(FRAME_CHUNK_ROWS, max(total, 1)))
        window, hop = latents.attrs[ATTR_WINDOW_FRAMES], latents.attrs[ATTR_HOP_FRAMES]
        for seq in tqdm(sequences, desc="decode", unit="seq"):
            windows = read_sequence_latents(latents, seq, WindowPlan(seq.num_frames, window, hop))
            if world:
                motion = codec.decode_world(windows)
                writer.append({name: getattr(motion, name).cpu().numpy() for name in WORLD_ARRAYS})
            else:
                writer.append({FEATURES: codec.decode_features(windows).cpu().numpy()})
        writer.close()
        _write_decoded_table(root, sequences)
        root.attrs.update(
            {
                **DECODED.attrs(),
                ATTR_KIND: "world" if world else "features",
                ATTR_FPS: latents.attrs[ATTR_FRAME_FPS],
                ATTR_LATENTS: {"url": str(latents_url), "checkpoint_sha256": found},
                ATTR_PADDING: PADDING_RULE,
                ATTR_OVERLAP: OVERLAP_RULE,
                **provenance_attrs(utc_now()),
            }
        )
        mark_complete(root)
    logger.info("decoded %d sequences (%d frames) to %s", len(sequences), total, out)
    return zarr.open_group(str(out), mode="r", storage_options=url_options(out, storage_options))


def _check_decoding_checkpoint(
    latents: zarr.Group, latents_url: str | Path, ckpt_path: Path
) -> str:
    """The sha256 of `ckpt_path`, which must be the checkpoint that encoded `latents`."""
    recorded = latents.attrs[ATTR_CHECKPOINT]["sha256"]
    found = file_sha256(ckpt_path)
    if recorded != found:
        raise InputError(
            f"{latents_url} was encoded with checkpoint {latents.attrs[ATTR_CHECKPOINT]['path']} "
            f"(sha256 {recorded[:12]}), but {ckpt_path} has sha256 {found[:12]}; decode with the "
            f"checkpoint that encoded it"
        )
    return found


def _write_decoded_table(root: zarr.Group, sequences: list[LatentSequence]) -> None:
    first_frame = np.concatenate([[0], np.cumsum([s.num_frames for s in sequences])[:-1]])
    columns = (
        [s.name for s in sequences],
        [s.participant for s in sequences],
        [s.split for s in sequences],
        [int(f) for f in first_frame],
        [s.num_frames for s in sequences],
    )
    write_table(root, dict(zip(DECODED_COLUMNS, columns, strict=True)))


# --- describing (`train info`) -----------------------------------------------------------------


def store_info(url: str | Path, storage_options: dict | None = None) -> dict:
    """JSON-ready summary of a complete latent or decoded store; a ValueError says what is wrong
    with anything else (of a feature store: which command describes it)."""
    group = _open_group(url, storage_options)
    attrs = group.attrs.asdict()
    schema = attrs.get(ATTR_SCHEMA)
    if isinstance(schema, Mapping) and schema.get("name") == DECODED_SCHEMA:
        check_root_attrs(attrs, url, DECODED, "write it again with `train decode`")
        info = _decoded_info(group)
    else:
        check_latent_attrs(attrs, url)
        info = _latent_info(group)
    return {
        "url": str(url),
        "schema": attrs[ATTR_SCHEMA],
        "created": attrs.get(ATTR_CREATED),
        "package_version": attrs.get(ATTR_PACKAGE_VERSION),
        "git_revision": attrs.get(ATTR_GIT_REVISION),
        **info,
        "padding": attrs.get(ATTR_PADDING),
        "overlap": attrs.get(ATTR_OVERLAP),
        "size_bytes": store_size_bytes(str(url), url_options(url, storage_options)),
    }


def _latent_info(group: zarr.Group) -> dict:
    attrs, table, mean = group.attrs, read_latent_table(group), group[MEAN]
    splits = {
        split: {
            "sequences": len(rows),
            "windows": sum(r.num_windows for r in rows),
            "frames": sum(r.num_frames for r in rows),
        }
        for split in dict.fromkeys(r.split for r in table)
        for rows in [[r for r in table if r.split == split]]
    }
    return {
        "kind": STORE_KINDS[LATENT_SCHEMA][0],
        "checkpoint": attrs[ATTR_CHECKPOINT],
        "feature_store": attrs[ATTR_FEATURE_STORE],
        "split": attrs[ATTR_SPLIT],
        "sequences": len(table),
        "frames": sum(r.num_frames for r in table),
        "splits": splits,
        "windows": mean.shape[0],
        "window_frames": attrs[ATTR_WINDOW_FRAMES],
        "hop_frames": attrs[ATTR_HOP_FRAMES],
        "latents_per_window": mean.shape[1],
        "latent_dim": mean.shape[2],
        "fps": attrs[ATTR_FPS],
        "frame_fps": attrs[ATTR_FRAME_FPS],
        "has_logvar": LOGVAR in group,
        "latent_stats": dict(group[LATENT_STATS].attrs),
    }


def _decoded_info(group: zarr.Group) -> dict:
    attrs, table = group.attrs, read_decoded_table(group)
    arrays = WORLD_ARRAYS if attrs[ATTR_KIND] == "world" else (FEATURES,)
    return {
        "kind": STORE_KINDS[DECODED_SCHEMA][0],
        "contents": attrs[ATTR_KIND],
        "latents": attrs[ATTR_LATENTS],
        "sequences": len(table["name"]),
        "frames": sum(table["num_frames"]),
        "fps": attrs[ATTR_FPS],
        "arrays": {name: list(group[name].shape) for name in arrays},
    }


def format_store_info(info: dict) -> str:
    """`store_info` as text, one property a line."""
    lines = [f"store        {info['url']} ({info['kind']})", describe_schema(info)]
    if info["kind"] == STORE_KINDS[LATENT_SCHEMA][0]:
        lines += _format_latent_info(info)
    else:
        lines += [
            (
                f"latents      {info['latents']['url']} (checkpoint sha256 "
                f"{info['latents']['checkpoint_sha256'][:12]})"
            ),
            f"sequences    {info['sequences']}, {info['frames']} frames at {info['fps']:g} fps",
            f"{info['contents']:<13}"
            + ", ".join(f"{name} {tuple(shape)}" for name, shape in info["arrays"].items()),
        ]
    return "\n".join([*lines, f"on disk      {info['size_bytes'] / 1e6:.2f} MB"])


def _format_latent_info(info: dict) -> list[str]:
    ckpt, features, stats = info["checkpoint"], info["feature_store"], info["latent_stats"]
    logvar = "means and log-variances" if info["has_logvar"] else "means (no log-variances)"
    return [
        f"checkpoint   {ckpt['path']} (step {ckpt['step']}, sha256 {ckpt['sha256'][:12]})",
        f"features     {features['url']} (fingerprint {features['fingerprint'][:16]})",
        f"sequences    {info['sequences']} of split {info['split']}, {info['frames']} frames",
        *(
            f"  {split:<6}     {v['sequences']} sequences, {v['windows']} windows, "
            f"{v['frames']} frames"
            for split, v in info["splits"].items()
        ),
        (
            f"windows      {info['windows']} of {info['window_frames']} frames every "
            f"{info['hop_frames']} -> {info['latents_per_window']} latents x {info['latent_dim']} "
            f"channels each ({info['fps']:g} latents/s, frames at {info['frame_fps']:g} fps)"
        ),
        f"latents      {logvar}",
        (
            f"stats        per-channel mean/std of {stats.get(STATS_ATTR_COUNT)} latents of split "
            f"{stats.get(ATTR_SPLIT)}"
        ),
    ]
