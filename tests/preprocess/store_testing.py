"""Helpers for the build tests: raw clip access with h5py, clip variants, store comparison."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (the synthetic clips are LZ4-compressed)
import numpy as np
from click.testing import CliRunner, Result

import shared.store
from preprocess import nymeria_format
from preprocess.build import BuildConfig, BuildSummary, build
from preprocess.cli import main
from shared.features import world_to_features

MOTION_KEYS = (
    nymeria_format.KEY_TIMESTAMP_NS,
    nymeria_format.KEY_CPF_TRANSLATION,
    nymeria_format.KEY_CPF_ORIENTATION,
    nymeria_format.KEY_JOINT_TRANSLATION,
    nymeria_format.KEY_JOINT_ORIENTATION,
    nymeria_format.KEY_CONTACT_INFORMATION,
)
UNREGISTERED_FILTER_ID = 32099  # no HDF5 filter is registered under this id


def read_raw(path: Path) -> dict:
    """Motion datasets and the sequence name of one clip, straight from h5py."""
    with h5py.File(path, "r") as f:
        raw = {key: f[key][()] for key in MOTION_KEYS}
        raw["sequence_name"] = str(f.attrs[nymeria_format.ATTR_SEQUENCE_NAME])
    return raw


def raw_recordings(data: Path) -> dict[str, list[dict]]:
    """Recording name -> its clips (raw dicts, with `file`), ordered by first timestamp."""
    recordings = defaultdict(list)
    for path in sorted(data.rglob("*.h5")):
        raw = read_raw(path)
        raw["file"] = path.relative_to(data).as_posix()
        recordings[raw["sequence_name"]].append(raw)
    return {
        name: sorted(clips, key=lambda c: int(c[nymeria_format.KEY_TIMESTAMP_NS][0]))
        for name, clips in sorted(recordings.items())
    }


def stitched(clips: list[dict]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([c[key] for c in clips]) for key in MOTION_KEYS}


def reference_features(raw: Mapping[str, np.ndarray]) -> np.ndarray:
    """world_to_features of stitched raw arrays, float64."""
    return world_to_features(
        raw[nymeria_format.KEY_CPF_TRANSLATION].astype(np.float64),
        raw[nymeria_format.KEY_CPF_ORIENTATION].astype(np.float64),
        raw[nymeria_format.KEY_JOINT_TRANSLATION].astype(np.float64),
        raw[nymeria_format.KEY_JOINT_ORIENTATION].astype(np.float64),
    )


def write_variant(
    source: Path,
    target: Path,
    datasets: Mapping[str, np.ndarray | None] | None = None,
    attrs: Mapping[str, object] | None = None,
    filtered: tuple[str, ...] = (),
) -> None:
    """Copy clip `source` to `target` with some datasets replaced (None: removed), some
    attributes replaced (None: removed), and the datasets in `filtered` stored with an HDF5
    filter that is not registered (reading their data fails; their metadata reads fine)."""
    datasets, attrs = dict(datasets or {}), dict(attrs or {})
    target.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(source, "r") as src, h5py.File(target, "w") as dst:
        for key, value in src.attrs.items():
            if attrs.get(key, value) is not None:
                dst.attrs[key] = attrs.get(key, value)
        for key in src:
            if key in datasets and datasets[key] is None:
                continue
            shape, dtype = src[key].shape, src[key].dtype
            if key in filtered:
                _write_unreadable(dst, key, shape, dtype)
            elif key in datasets:
                dst.create_dataset(key, data=datasets[key])
            elif key == nymeria_format.KEY_EGOVIEW:
                dst.create_dataset(key, shape=shape, dtype=dtype, chunks=(1, *shape[1:]))
            else:
                dst.create_dataset(key, data=src[key][()])


def _write_unreadable(dst: h5py.File, key: str, shape: tuple, dtype: np.dtype) -> None:
    ds = dst.create_dataset(
        key,
        shape=shape,
        dtype=dtype,
        chunks=shape if shape[0] else None,
        compression=UNREGISTERED_FILTER_ID,
        allow_unknown_filter=True,
    )
    if shape[0]:
        ds.id.write_direct_chunk((0,) * len(shape), b"not a compressed chunk" * 8)


def copy_dataset(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def synchronous_build(data: Path, out: Path, **options: object) -> BuildSummary:
    config = BuildConfig(data=data, out=out, scheduler="synchronous", **options)
    return build(config, progress=False)


def cli_build(data: Path, out: Path, *extra: str) -> Result:
    """`preprocess build DATA --out OUT --scheduler synchronous --no-progress EXTRA...`."""
    args = ["build", str(data), "--out", str(out), "--scheduler", "synchronous", "--no-progress"]
    return CliRunner().invoke(main, [*args, *extra])


def content_files(store: Path) -> dict[str, bytes]:
    """Bytes of everything in a store that must not depend on when or how it was built: chunk
    files, array metadata, sequence table and stats (the root attributes hold the build time
    and options, so they are compared separately)."""
    files = {}
    for path in sorted(store.rglob("*")):
        rel = path.relative_to(store).as_posix()
        if path.is_file() and rel != "zarr.json":
            files[rel] = path.read_bytes()
    return files


def root_attrs(store: Path) -> dict:
    return json.loads((store / "zarr.json").read_text())["attributes"]


def feature_chunk_files(store: Path) -> list[Path]:
    files = [p for p in (store / shared.store.FEATURES / "c").rglob("*") if p.is_file()]
    return sorted(files, key=lambda p: int(p.parent.name))
