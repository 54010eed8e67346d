"""Whole sequences <-> latents: the latent store a downstream (diffusion) model trains on.

Encoding is causal over each *whole* sequence: the sequence is canonicalised relative to its
own first frame, normalised with the checkpoint's statistics and passed through
`MotionVAE.encode_sequence`, which right-pads the tail to a multiple of 4 frames by
repeating the last frame (only a sequence's last latent reads padded frames). Decoding runs
`decode_sequence` on the mean latents, drops the padded frames, denormalises and undoes the
canonicalisation with the stored frame, giving world features again.

Latent store (Zarr v3 group, schema `LATENT_SCHEMA` version 1):

    <latents>/
      zarr.json     root attributes (ATTR_* below); `complete` is written last
      mean          (N_latents, latent_dim) float32: posterior means, all sequences concatenated
      logvar        (N_latents, latent_dim) float32: posterior log-variances (only with --logvar)
      sequences/    one row per sequence: name, participant, split (str); first_latent,
                    num_latents, num_frames, store_start_frame (int64); R_canon_world (S, 3, 3)
                    and offset_world (S, 3) float32, the canonical frame of the sequence
                    (p_canon = R_canon_world @ (p_world - offset_world))
      latent_stats/ mean, std (latent_dim,) float64 per-channel moments of `mean` over the
                    sequences of split attribute `split` (train when encoded, else all)

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
import math
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import zarr
from tqdm import tqdm

from shared.chunked_writer import ChunkedRowWriter
from shared.features import CanonicalFrame, features_to_world
from shared.layout import FEATURE_DIM
from shared.moments import Moments
from shared.provenance import git_revision, package_version
from shared.skeleton import NUM_JOINTS
from shared.store import open_store
from train.inference import (
    decode_world_features,
    encode_world_features,
    file_sha256,
    load_for_inference,
    resolve_device,
    warn_if_other_store,
)
from train.model import FRAMES_PER_LATENT

logger = logging.getLogger(__name__)

LATENT_SCHEMA = "nymeria-motion-latents"
DECODED_SCHEMA = "nymeria-motion-decoded"
SCHEMA_VERSION = 1

# --- node names -------------------------------------------------------------------------------
MEAN = "mean"
LOGVAR = "logvar"
SEQUENCES = "sequences"
LATENT_STATS = "latent_stats"
FEATURES = "features"
WORLD_ARRAYS = ("cpf_translation", "cpf_orientation", "joint_translation", "joint_orientation")

# --- root attributes --------------------------------------------------------------------------
ATTR_SCHEMA = "schema"  # {"name": ..., "version": SCHEMA_VERSION}
ATTR_LATENT_DIM = "latent_dim"
ATTR_FRAMES_PER_LATENT = "frames_per_latent"
ATTR_FPS = "fps"  # latents per second (latents) / frames per second (decoded)
ATTR_FRAME_FPS = "frame_fps"  # frame rate of the feature store
ATTR_CHECKPOINT = "checkpoint"  # {"path", "sha256", "step"}
ATTR_FEATURE_STORE = "feature_store"  # {"url", "fingerprint"}
ATTR_SPLIT = "split"  # all | train | val | test: which sequences were encoded
ATTR_HAS_LOGVAR = "has_logvar"
ATTR_TAIL = "tail"
ATTR_LATENTS = "latents"  # decoded store: {"url", "checkpoint_sha256"}
ATTR_KIND = "kind"  # decoded store: "features" | "world"
ATTR_PACKAGE_VERSION = "package_version"
ATTR_GIT_REVISION = "git_revision"
ATTR_COMPLETE = "complete"

TAIL_TREATMENT = (
    "encode_sequence right-pads each sequence to a multiple of 4 frames by repeating its last "
    "frame; only the last latent of a sequence reads padded frames; decode drops them"
)

LATENT_CHUNK_ROWS = 1024
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
def _new_output_group(out: str | Path) -> Iterator[zarr.Group]:
    """A new Zarr v3 group that becomes `out` when the block ends without an error; an existing
    store at `out` is never overwritten.

    Local `out`: the group lives in a sibling `<out>.partial-<pid>-<token>` directory, renamed
    to `out` after the block (which writes `complete` last); on any error, interrupts included,
    the directory is removed and `out` is left untouched. Remote URL: written in place (no
    atomic rename on object stores), so a failed run leaves an incomplete store at `out`.
    """
    local = _local_path(out)
    if local is None:
        try:
            root = zarr.open_group(str(out), mode="w-", zarr_format=3)
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
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_table(group: zarr.Group, columns: dict[str, np.ndarray]) -> None:
    for name, values in columns.items():
        array = group.create_array(name, shape=values.shape, dtype=values.dtype if values.dtype.kind != "U" else str)
        if values.size:
            array[...] = values


@dataclass(frozen=True)
class LatentSequence:
    """One row of a latent store's sequence table."""

    name: str
    participant: str
    split: str
    first_latent: int
    num_latents: int
    num_frames: int
    store_start_frame: int


def encode_store(
    ckpt_path: Path,
    store_url: str,
    out: str | Path,
    split: Split = "all",
    logvar: bool = False,
    device: str = "auto",
) -> zarr.Group:
    """Encode every sequence of `split` of the store into a new latent store at `out`."""
    torch_device = resolve_device(device)
    ckpt, model, normalizer = load_for_inference(ckpt_path, torch_device)
    store = open_store(store_url)
    warn_if_other_store(ckpt, store)
    records = store.sequences if split == "all" else store.split(split)
    if not records:
        raise ValueError(f"store {store.url} has no sequences in split {split!r}")
    num_latents = np.array([math.ceil(r.length / FRAMES_PER_LATENT) for r in records], dtype=np.int64)
    first_latent = np.concatenate([[0], np.cumsum(num_latents)[:-1]]).astype(np.int64)
    total, L = int(num_latents.sum()), model.config.latent_dim

    with _new_output_group(out) as root:
        chunks = (min(LATENT_CHUNK_ROWS, total), L)
        writer = ChunkedRowWriter(
            {name: root.create_array(name, shape=(total, L), dtype="float32", chunks=chunks)
             for name in ((MEAN, LOGVAR) if logvar else (MEAN,))}
        )  # fmt: skip

        stats_split = "train" if any(r.split == "train" for r in records) else split
        moments = Moments.empty(L)
        R_canon_world = np.empty((len(records), 3, 3), dtype=np.float32)
        offset_world = np.empty((len(records), 3), dtype=np.float32)
        for i, record in enumerate(tqdm(records, desc="encode", unit="seq")):
            features = torch.as_tensor(np.array(store.read_features(record.start, record.stop)), device=torch_device)
            mean, log_var, frame = encode_world_features(model, normalizer, features)
            mean_np = mean.float().cpu().numpy()
            writer.append({MEAN: mean_np, LOGVAR: log_var.float().cpu().numpy()} if logvar else {MEAN: mean_np})
            R_canon_world[i] = frame.R_canon_world.cpu().numpy()
            offset_world[i] = frame.offset_world.cpu().numpy()
            if stats_split in ("all", record.split):
                moments = moments.merge(Moments.of(mean_np))  # Chan merge: no sum-of-squares cancellation
        writer.close()

        _write_table(
            root.create_group(SEQUENCES),
            {
                "name": np.array([r.name for r in records], dtype=str),
                "participant": np.array([r.participant for r in records], dtype=str),
                "split": np.array([r.split for r in records], dtype=str),
                "first_latent": first_latent,
                "num_latents": num_latents,
                "num_frames": np.array([r.length for r in records], dtype=np.int64),
                "store_start_frame": np.array([r.start for r in records], dtype=np.int64),
                "R_canon_world": R_canon_world,
                "offset_world": offset_world,
            },
        )
        channel_mean, channel_std = moments.mean_std(std_floor=0.0)
        stats = root.create_group(LATENT_STATS, attributes={"count": moments.count, "split": stats_split})
        _write_table(stats, {"mean": channel_mean, "std": channel_std})

        root.attrs.update(
            {
                ATTR_SCHEMA: {"name": LATENT_SCHEMA, "version": SCHEMA_VERSION},
                ATTR_LATENT_DIM: L,
                ATTR_FRAMES_PER_LATENT: FRAMES_PER_LATENT,
                ATTR_FPS: store.fps / FRAMES_PER_LATENT,
                ATTR_FRAME_FPS: store.fps,
                ATTR_CHECKPOINT: {"path": str(Path(ckpt_path).resolve()), "sha256": file_sha256(ckpt_path), "step": ckpt.step},
                ATTR_FEATURE_STORE: {"url": store.url, "fingerprint": store.fingerprint},
                ATTR_SPLIT: split,
                ATTR_HAS_LOGVAR: logvar,
                ATTR_TAIL: TAIL_TREATMENT,
                ATTR_PACKAGE_VERSION: package_version(),
                ATTR_GIT_REVISION: git_revision(),
            }
        )
        root.attrs[ATTR_COMPLETE] = True
    logger.info("encoded %d sequences into %d latents at %s", len(records), total, out)
    return zarr.open_group(str(out), mode="r")


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
        raise ValueError(
            f"{url}: latent store of schema version {schema.get('version')!r}, this code reads "
            f"version {SCHEMA_VERSION}; encode it again with this code"
        )
    if attrs.get(ATTR_COMPLETE) is not True:
        raise ValueError(f"{url} is incomplete (the run that wrote it was interrupted); write it again")


def open_latents(url: str | Path) -> zarr.Group:
    """A complete latent store, or a ValueError saying what is wrong with it."""
    try:
        group = zarr.open_group(str(url), mode="r")
    except FileNotFoundError:
        raise FileNotFoundError(f"no Zarr store at {url}") from None
    check_latent_attrs(group.attrs.asdict(), url)
    return group


def read_latent_table(group: zarr.Group) -> list[LatentSequence]:
    table = group[SEQUENCES]
    columns = {name: table[name][:] for name in ("name", "participant", "split", "first_latent",
                                                 "num_latents", "num_frames", "store_start_frame")}  # fmt: skip
    return [
        LatentSequence(str(n), str(p), str(s), int(f), int(k), int(t), int(a))
        for n, p, s, f, k, t, a in zip(*columns.values(), strict=True)
    ]


def decode_store(
    ckpt_path: Path, latents_url: str | Path, out: str | Path, world: bool = False, device: str = "auto"
) -> zarr.Group:
    """Decode the mean latents of a latent store into world features (or world motion) at `out`."""
    torch_device = resolve_device(device)
    latents = open_latents(latents_url)
    recorded = latents.attrs[ATTR_CHECKPOINT]["sha256"]
    found = file_sha256(ckpt_path)
    if recorded != found:
        raise ValueError(
            f"{latents_url} was encoded with checkpoint {latents.attrs[ATTR_CHECKPOINT]['path']} "
            f"(sha256 {recorded[:12]}), but {ckpt_path} has sha256 {found[:12]}; decode with the "
            f"checkpoint that encoded it"
        )
    _, model, normalizer = load_for_inference(ckpt_path, torch_device)
    sequences = read_latent_table(latents)
    R_canon_world = latents[SEQUENCES]["R_canon_world"][:]
    offset_world = latents[SEQUENCES]["offset_world"][:]
    num_frames = np.array([s.num_frames for s in sequences], dtype=np.int64)
    total = int(num_frames.sum())

    with _new_output_group(out) as root:
        chunk = min(FRAME_CHUNK_ROWS, max(total, 1))
        if world:
            shapes = {"cpf_translation": (3,), "cpf_orientation": (3, 3),
                      "joint_translation": (NUM_JOINTS, 3), "joint_orientation": (NUM_JOINTS, 3, 3)}  # fmt: skip
        else:
            shapes = {FEATURES: (FEATURE_DIM,)}
        writer = ChunkedRowWriter(
            {name: root.create_array(name, shape=(total, *s), dtype="float32", chunks=(chunk, *s))
             for name, s in shapes.items()}
        )  # fmt: skip
        mean_array = latents[MEAN]
        for i, seq in enumerate(tqdm(sequences, desc="decode", unit="seq")):
            z = torch.as_tensor(mean_array[seq.first_latent : seq.first_latent + seq.num_latents], device=torch_device)
            frame = CanonicalFrame(
                torch.as_tensor(R_canon_world[i], device=torch_device),
                torch.as_tensor(offset_world[i], device=torch_device),
            )
            features = decode_world_features(model, normalizer, z, frame, seq.num_frames)
            if world:
                motion = features_to_world(features)
                writer.append({name: getattr(motion, name).cpu().numpy() for name in WORLD_ARRAYS})
            else:
                writer.append({FEATURES: features.cpu().numpy()})
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
                ATTR_TAIL: TAIL_TREATMENT,
                ATTR_PACKAGE_VERSION: package_version(),
                ATTR_GIT_REVISION: git_revision(),
            }
        )
        root.attrs[ATTR_COMPLETE] = True
    logger.info("decoded %d sequences (%d frames) to %s", len(sequences), total, out)
    return zarr.open_group(str(out), mode="r")

