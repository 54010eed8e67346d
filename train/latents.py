"""Feature store <-> latent store: the latents a downstream (diffusion) model trains on.

Both directions run `train.codec.MotionCodec`, the same code a researcher calls from Python:
every sequence is cut into windows of the training length (or `--window`), each window
canonicalised at its own first frame and normalised as in training, the last window padded
by repeating the sequence's last frame (`PADDING_RULE`); decoding maps every window back to
the world through its canonical frame and reassembles whole sequences (`OVERLAP_RULE`).

Latent store (Zarr v3 group, schema `LATENT_SCHEMA` version 2; version 1 held one causal
pass per whole sequence and is refused):

    <latents>/
      zarr.json     root attributes (ATTR_* below); `complete` is written last
      mean          (N_windows, K, latent_dim) float32: posterior means, K = window / 4 latents
                    per window, the windows of all sequences in order
      logvar        (N_windows, K, latent_dim) float32: log-variances (only with --logvar)
      windows/      one row per window: sequence (int64, row of sequences/), first_frame and
                    valid_frames (int64, frames in the sequence; the rest of the window is
                    padding), R_canon_world (N, 3, 3) and offset_world (N, 3) float32, the
                    window's canonical transform, its heading and origin
                    (p_canon = R_canon_world @ (p_world - offset_world))
      sequences/    one row per sequence: name, participant, split (str); num_frames,
                    store_start_frame, first_window, num_windows (int64)
      latent_stats/ mean, std (latent_dim,) float64 per-channel moments of the valid latents
                    (any of their 4 frames valid) of `mean` over the sequences of split
                    attribute `split` (train when encoded, else all)

Decoded store (schema `DECODED_SCHEMA`): `features` (N_frames, 294) world features, or with
`world=True` the world motion arrays `cpf_translation` (N, 3), `cpf_orientation` (N, 3, 3),
`joint_translation` (N, 23, 3), `joint_orientation` (N, 23, 3, 3); and `sequences/` with name,
participant, split, first_frame, num_frames.

Both stores are written so that a failed run leaves nothing that looks usable at `out`
(`_new_output_group`): a local `out` is written in a sibling `<out>.partial-<pid>-<token>`
directory and renamed into place once `complete` is set, and removed on any error, so the next
run starts clean. A remote fsspec URL (object stores have no atomic directory rename) is written
in place with `complete` last; a failed run leaves an incomplete store there, which readers
refuse and which must be removed before writing `out` again.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import zarr
from tqdm import tqdm

from shared.chunked_writer import ChunkedRowWriter
from shared.diskspace import disk_full_error
from shared.features import CanonicalFrame
from shared.layout import FEATURE_DIM
from shared.moments import Moments
from shared.provenance import git_revision, package_version
from shared.remote import url_options
from shared.skeleton import NUM_JOINTS
from shared.store import open_store
from train.codec import OVERLAP_RULE, PADDING_RULE, MotionCodec, MotionLatents, WindowPlan
from train.inference import file_sha256, warn_if_other_store
from train.model import FRAMES_PER_LATENT

logger = logging.getLogger(__name__)

LATENT_SCHEMA = "nymeria-motion-latents"
DECODED_SCHEMA = "nymeria-motion-decoded"
SCHEMA_VERSION = 2

# --- node names -------------------------------------------------------------------------------
MEAN = "mean"
LOGVAR = "logvar"
WINDOWS = "windows"
SEQUENCES = "sequences"
LATENT_STATS = "latent_stats"
FEATURES = "features"
WORLD_ARRAYS = ("cpf_translation", "cpf_orientation", "joint_translation", "joint_orientation")

# --- root attributes --------------------------------------------------------------------------
ATTR_SCHEMA = "schema"  # {"name": ..., "version": SCHEMA_VERSION}
ATTR_LATENT_DIM = "latent_dim"
ATTR_FRAMES_PER_LATENT = "frames_per_latent"
ATTR_WINDOW_FRAMES = "window_frames"
ATTR_HOP_FRAMES = "hop_frames"
ATTR_LATENTS_PER_WINDOW = "latents_per_window"
ATTR_FPS = "fps"  # latents per second (latents) / frames per second (decoded)
ATTR_FRAME_FPS = "frame_fps"  # frame rate of the feature store
ATTR_CHECKPOINT = "checkpoint"  # {"path", "sha256", "step"}
ATTR_FEATURE_STORE = "feature_store"  # {"url", "fingerprint"}
ATTR_SPLIT = "split"  # all | train | val | test: which sequences were encoded
ATTR_HAS_LOGVAR = "has_logvar"
ATTR_PADDING = "padding"  # PADDING_RULE
ATTR_OVERLAP = "overlap"  # OVERLAP_RULE
ATTR_LATENTS = "latents"  # decoded store: {"url", "checkpoint_sha256"}
ATTR_KIND = "kind"  # decoded store: "features" | "world"
ATTR_PACKAGE_VERSION = "package_version"
ATTR_GIT_REVISION = "git_revision"
ATTR_COMPLETE = "complete"

WINDOW_CHUNK_ROWS = 32  # windows per chunk of mean/logvar: 32 x 38 x 768 float32 = 3.7 MB
FRAME_CHUNK_ROWS = 4096

Split = Literal["all", "train", "val", "test"]


# --- writing ----------------------------------------------------------------------------------


def _local_path(out: str | Path) -> Path | None:
    """`out` as a local path, or None for a remote fsspec URL (`scheme://...`, not file://)."""
    text = str(out)
    if text.startswith("file://"):
        return Path(text.removeprefix("file://"))
    return None if "://" in text else Path(text)


def _refuse_existing(out: str | Path) -> FileExistsError:
    return FileExistsError(f"{out} already exists; remove it or choose another output path")


@contextmanager
def _new_output_group(
    out: str | Path, needed_bytes: int, storage_options: dict | None = None
) -> Iterator[zarr.Group]:
    """A new Zarr v3 group that becomes `out` when the block ends without an error; an existing
    store at `out` is never overwritten.

    Local `out`: the group lives in a sibling `<out>.partial-<pid>-<token>` directory, renamed
    to `out` after the block (which writes `complete` last); on any error, interrupts included,
    the directory is removed and `out` is left untouched, and a full disk is reported as a
    `DiskFullError` naming `out` and `needed_bytes` (roughly the arrays' size). Remote URL:
    written in place (no atomic rename on object stores), so a failed run leaves an incomplete
    store at `out`.
    """
    local = _local_path(out)
    if local is None:
        try:
            options = url_options(out, storage_options)
            root = zarr.open_group(str(out), mode="w-", zarr_format=3, storage_options=options)
        except (FileExistsError, zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError):
            raise _refuse_existing(out) from None
        yield root
        return
    if local.exists():
        raise _refuse_existing(out)
    staging = local.with_name(f"{local.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield zarr.open_group(str(staging), mode="w-", zarr_format=3)
        if local.exists():  # created by someone else while we were writing
            raise _refuse_existing(out)
        os.rename(staging, local)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        full = disk_full_error(error, local, needed_bytes, f"writing {out}", "nothing was written")
        if full is not None:
            raise full from error
        raise


def _write_table(group: zarr.Group, columns: dict[str, np.ndarray]) -> None:
    for name, values in columns.items():
        array = group.create_array(
            name, shape=values.shape, dtype=values.dtype if values.dtype.kind != "U" else str
        )
        if values.size:
            array[...] = values


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
        raise ValueError(f"store {store.url} has no sequences in split {split!r}")
    plans = [codec.plan(r.length, window_frames, hop_frames) for r in records]
    num_windows = np.array([plan.num_windows for plan in plans], dtype=np.int64)
    first_window = np.concatenate([[0], np.cumsum(num_windows)[:-1]]).astype(np.int64)
    total, K, L = int(num_windows.sum()), plans[0].latents_per_window, codec.model.config.latent_dim

    arrays_bytes = total * K * L * 4 * (2 if logvar else 1)
    with _new_output_group(out, arrays_bytes, storage_options) as root:
        chunks = (min(WINDOW_CHUNK_ROWS, total), K, L)
        writer = ChunkedRowWriter(
            {name: root.create_array(name, shape=(total, K, L), dtype="float32", chunks=chunks)
             for name in ((MEAN, LOGVAR) if logvar else (MEAN,))}
        )  # fmt: skip
        stats_split = "train" if any(r.split == "train" for r in records) else split
        moments = Moments.empty(L)
        R_canon_world = np.empty((total, 3, 3), dtype=np.float32)
        offset_world = np.empty((total, 3), dtype=np.float32)
        for i, record in enumerate(tqdm(records, desc="encode", unit="seq")):
            features = np.array(store.read_features(record.start, record.stop))
            latents = codec.encode_features(features, plans[i].window_frames, plans[i].hop_frames)
            mean = latents.mean.float().cpu().numpy()  # (W, K, L)
            writer.append(
                {MEAN: mean, LOGVAR: latents.logvar.float().cpu().numpy()}
                if logvar
                else {MEAN: mean}
            )
            rows = slice(first_window[i], first_window[i] + num_windows[i])
            R_canon_world[rows] = latents.frame.R_canon_world.cpu().numpy()
            offset_world[rows] = latents.frame.offset_world.cpu().numpy()
            if stats_split in ("all", record.split):  # Chan merge: no sum-of-squares cancellation
                moments = moments.merge(Moments.of(mean[plans[i].latent_valid()]))
        writer.close()

        _write_table(
            root.create_group(WINDOWS),
            {
                "sequence": np.repeat(np.arange(len(records), dtype=np.int64), num_windows),
                "first_frame": np.concatenate([plan.first_frame for plan in plans]),
                "valid_frames": np.concatenate([plan.valid_frames for plan in plans]),
                "R_canon_world": R_canon_world,
                "offset_world": offset_world,
            },
        )
        _write_table(
            root.create_group(SEQUENCES),
            {
                "name": np.array([r.name for r in records], dtype=str),
                "participant": np.array([r.participant for r in records], dtype=str),
                "split": np.array([r.split for r in records], dtype=str),
                "num_frames": np.array([r.length for r in records], dtype=np.int64),
                "store_start_frame": np.array([r.start for r in records], dtype=np.int64),
                "first_window": first_window,
                "num_windows": num_windows,
            },
        )
        channel_mean, channel_std = moments.mean_std(std_floor=0.0)
        stats = root.create_group(
            LATENT_STATS, attributes={"count": moments.count, "split": stats_split}
        )
        _write_table(stats, {"mean": channel_mean, "std": channel_std})

        checkpoint = {"path": str(Path(ckpt_path).resolve()), "sha256": file_sha256(ckpt_path),
                      "step": codec.checkpoint.step}  # fmt: skip
        root.attrs.update(
            {
                ATTR_SCHEMA: {"name": LATENT_SCHEMA, "version": SCHEMA_VERSION},
                ATTR_LATENT_DIM: L,
                ATTR_FRAMES_PER_LATENT: FRAMES_PER_LATENT,
                ATTR_WINDOW_FRAMES: plans[0].window_frames,
                ATTR_HOP_FRAMES: plans[0].hop_frames,
                ATTR_LATENTS_PER_WINDOW: K,
                ATTR_FPS: store.fps / FRAMES_PER_LATENT,
                ATTR_FRAME_FPS: store.fps,
                ATTR_CHECKPOINT: checkpoint,
                ATTR_FEATURE_STORE: {"url": store.url, "fingerprint": store.fingerprint},
                ATTR_SPLIT: split,
                ATTR_HAS_LOGVAR: logvar,
                ATTR_PADDING: PADDING_RULE,
                ATTR_OVERLAP: OVERLAP_RULE,
                ATTR_PACKAGE_VERSION: package_version(),
                ATTR_GIT_REVISION: git_revision(),
            }
        )
        root.attrs[ATTR_COMPLETE] = True
    logger.info(
        "encoded %d sequences into %d windows of %d latents at %s", len(records), total, K, out
    )
    return zarr.open_group(str(out), mode="r", storage_options=url_options(out, storage_options))


# --- reading ----------------------------------------------------------------------------------


def check_latent_attrs(attrs: Mapping[str, Any], url: str | Path) -> None:
    """Raise a ValueError unless `attrs` are the root attributes of a complete latent store.

    The feature store has its own checker (`shared.store`); its messages tell how to build a
    feature store, these tell how to encode one.
    """
    schema = attrs.get(ATTR_SCHEMA)
    if not isinstance(schema, Mapping) or schema.get("name") != LATENT_SCHEMA:
        raise ValueError(
            f"{url}: expected a {LATENT_SCHEMA!r} store of version {SCHEMA_VERSION}, found schema "
            f"{schema!r}; write one with `train encode`"
        )
    if schema.get("version") != SCHEMA_VERSION:
        old = " (one pass per whole sequence, out of the model's training distribution)"
        raise ValueError(
            f"{url}: latent store of schema version {schema.get('version')!r}"
            f"{old if schema.get('version') == 1 else ''}, this code reads version "
            f"{SCHEMA_VERSION} (latents per training window); encode the feature store again "
            f"with `train encode`"
        )
    if attrs.get(ATTR_COMPLETE) is not True:
        raise ValueError(
            f"{url} is incomplete (the run that wrote it was interrupted); write it again"
        )


def open_latents(url: str | Path, storage_options: dict | None = None) -> zarr.Group:
    """A complete latent store, or a ValueError saying what is wrong with it."""
    try:
        options = url_options(url, storage_options)
        group = zarr.open_group(str(url), mode="r", storage_options=options)
    except FileNotFoundError:
        raise FileNotFoundError(f"no Zarr store at {url}") from None
    check_latent_attrs(group.attrs.asdict(), url)
    return group


def read_latent_table(group: zarr.Group) -> list[LatentSequence]:
    table = group[SEQUENCES]
    columns = [table[f.name][:] for f in fields(LatentSequence)]
    return [
        LatentSequence(str(n), str(p), str(s), int(t), int(a), int(f), int(w))
        for n, p, s, t, a, f, w in zip(*columns, strict=True)
    ]


def read_sequence_latents(
    group: zarr.Group, sequence: LatentSequence, plan: WindowPlan
) -> MotionLatents:
    """The windows of one sequence of a latent store, as `MotionCodec.decode_*` take them."""
    if plan.num_windows != sequence.num_windows:
        raise ValueError(
            f"latent store: sequence {sequence.name!r} has {sequence.num_windows} windows, but "
            f"{sequence.num_frames} frames in windows of {plan.window_frames} every "
            f"{plan.hop_frames} frames make {plan.num_windows}"
        )
    rows = slice(sequence.first_window, sequence.first_window + sequence.num_windows)
    windows = group[WINDOWS]
    frame = CanonicalFrame(
        torch.as_tensor(windows["R_canon_world"][rows]),
        torch.as_tensor(windows["offset_world"][rows]),
    )
    logvar = torch.as_tensor(group[LOGVAR][rows]) if LOGVAR in group else None
    return MotionLatents(torch.as_tensor(group[MEAN][rows]), logvar, frame, plan)


def decode_store(
    ckpt_path: Path, latents_url: str | Path, out: str | Path, world: bool = False,
    device: str = "auto", storage_options: dict | None = None,
) -> zarr.Group:  # fmt: skip
    """Decode the mean latents of a latent store into world features (or world motion) at `out`;
    `storage_options` (fsspec) apply to both when they are URLs."""
    latents = open_latents(latents_url, storage_options)
    recorded = latents.attrs[ATTR_CHECKPOINT]["sha256"]
    found = file_sha256(ckpt_path)
    if recorded != found:
        raise ValueError(
            f"{latents_url} was encoded with checkpoint {latents.attrs[ATTR_CHECKPOINT]['path']} "
            f"(sha256 {recorded[:12]}), but {ckpt_path} has sha256 {found[:12]}; decode with the "
            f"checkpoint that encoded it"
        )
    codec = MotionCodec.from_checkpoint(ckpt_path, device)
    window, hop = latents.attrs[ATTR_WINDOW_FRAMES], latents.attrs[ATTR_HOP_FRAMES]
    sequences = read_latent_table(latents)
    num_frames = np.array([s.num_frames for s in sequences], dtype=np.int64)
    total = int(num_frames.sum())

    if world:
        shapes = {"cpf_translation": (3,), "cpf_orientation": (3, 3),
                  "joint_translation": (NUM_JOINTS, 3), "joint_orientation": (NUM_JOINTS, 3, 3)}  # fmt: skip
    else:
        shapes = {FEATURES: (FEATURE_DIM,)}
    arrays_bytes = total * 4 * sum(int(np.prod(s)) for s in shapes.values())
    with _new_output_group(out, arrays_bytes, storage_options) as root:
        chunk = min(FRAME_CHUNK_ROWS, max(total, 1))
        writer = ChunkedRowWriter(
            {name: root.create_array(name, shape=(total, *s), dtype="float32", chunks=(chunk, *s))
             for name, s in shapes.items()}
        )  # fmt: skip
        for seq in tqdm(sequences, desc="decode", unit="seq"):
            windows = read_sequence_latents(latents, seq, WindowPlan(seq.num_frames, window, hop))
            if world:
                motion = codec.decode_world(windows)
                writer.append({name: getattr(motion, name).cpu().numpy() for name in WORLD_ARRAYS})
            else:
                writer.append({FEATURES: codec.decode_features(windows).cpu().numpy()})
        writer.close()

        _write_table(
            root.create_group(SEQUENCES),
            {
                "name": np.array([s.name for s in sequences], dtype=str),
                "participant": np.array([s.participant for s in sequences], dtype=str),
                "split": np.array([s.split for s in sequences], dtype=str),
                "first_frame": np.concatenate([[0], np.cumsum(num_frames)[:-1]]).astype(np.int64),
                "num_frames": num_frames,
            },
        )
        root.attrs.update(
            {
                ATTR_SCHEMA: {"name": DECODED_SCHEMA, "version": SCHEMA_VERSION},
                ATTR_KIND: "world" if world else "features",
                ATTR_FPS: latents.attrs[ATTR_FRAME_FPS],
                ATTR_LATENTS: {"url": str(latents_url), "checkpoint_sha256": found},
                ATTR_PADDING: PADDING_RULE,
                ATTR_OVERLAP: OVERLAP_RULE,
                ATTR_PACKAGE_VERSION: package_version(),
                ATTR_GIT_REVISION: git_revision(),
            }
        )
        root.attrs[ATTR_COMPLETE] = True
    logger.info("decoded %d sequences (%d frames) to %s", len(sequences), total, out)
    return zarr.open_group(str(out), mode="r", storage_options=url_options(out, storage_options))
