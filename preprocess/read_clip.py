"""Read and validate the motion of one Nymeria clip file: the per-file work of a build.

`read_clip` is a pure function of the file (path in, arrays or a problem out) that any
executor runs. It opens only the motion datasets the features need; `egoview_RGB` (the video)
is never opened, and neither are `root_translation`/`root_orientation`, which the features do
not use. Every way a file can be unusable becomes a `Problem` naming the file, the key and the
frame; programming errors are not caught.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import h5py
import hdf5plugin  # noqa: F401  (registers the LZ4 filter the clips are written with)
import numpy as np

from preprocess import nymeria_format
from preprocess.motion import Motion
from shared.rotations import is_rotation

# Motion field -> dataset key in the clip file (the datasets read, in this order).
DATASET_OF_FIELD: MappingProxyType[str, str] = MappingProxyType(
    {
        "timestamp_ns": nymeria_format.KEY_TIMESTAMP_NS,
        "cpf_translation": nymeria_format.KEY_CPF_TRANSLATION,
        "cpf_orientation": nymeria_format.KEY_CPF_ORIENTATION,
        "joint_translation": nymeria_format.KEY_JOINT_TRANSLATION,
        "joint_orientation": nymeria_format.KEY_JOINT_ORIENTATION,
        "contact": nymeria_format.KEY_CONTACT_INFORMATION,
    }
)
ROTATION_KEYS: tuple[str, ...] = (nymeria_format.KEY_CPF_ORIENTATION, nymeria_format.KEY_JOINT_ORIENTATION)
DEFAULT_ROTATION_ATOL = 1e-3
"""Largest |R^T R - I| entry and |det R - 1| accepted for a rotation matrix."""

# HDF5 file signature; it sits at byte 0 or, after a user block, at 512 * 2^k.
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

PROBLEM_KINDS: tuple[str, ...] = (
    "not_hdf5",
    "unreadable",
    "filter_unavailable",
    "missing_attribute",
    "bad_sequence_name",
    "missing_key",
    "bad_shape",
    "bad_dtype",
    "frame_count_mismatch",
    "empty_clip",
    "non_finite",
    "not_rotation",
    "timestamps_not_increasing",
)
# Problems that depend on the machine rather than on the file: retried by `--resume`.
RETRY_KINDS: frozenset[str] = frozenset({"unreadable", "filter_unavailable"})


@dataclass(frozen=True)
class Problem:
    """Why one file was skipped."""

    file: str  # relative to the source root
    kind: str  # one of PROBLEM_KINDS
    reason: str  # human-readable, names file, key and frame where they apply

    def to_json(self) -> dict[str, str]:
        return {"file": self.file, "kind": self.kind, "reason": self.reason}


@dataclass(frozen=True)
class ClipOutcome:
    """Outcome of reading one clip: its motion, or the problem that made it unusable."""

    file: str  # path relative to the source root, POSIX separators
    size_bytes: int  # of the file when read; with mtime_ns, identifies the version read
    mtime_ns: int
    sequence_name: str | None
    participant: str | None
    motion: Motion | None
    problem: Problem | None

    @property
    def ok(self) -> bool:
        return self.problem is None


class _ClipProblem(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def read_clip(root: Path, file: str, rotation_atol: float = DEFAULT_ROTATION_ATOL) -> ClipOutcome:
    """Read and validate `root / file`; never raises for a bad file, returns its problem."""
    path = Path(root) / file
    try:
        stat = path.stat()
    except OSError as error:
        problem = Problem(file, "unreadable", f"{file}: cannot stat file: {error}")
        return ClipOutcome(file, -1, -1, None, None, None, problem)
    size, mtime = stat.st_size, stat.st_mtime_ns
    try:
        sequence_name, participant, motion = _read_validated(path, file, rotation_atol)
    except _ClipProblem as problem:
        return ClipOutcome(
            file, size, mtime, None, None, None, Problem(file, problem.kind, problem.reason)
        )
    return ClipOutcome(file, size, mtime, sequence_name, participant, motion, None)


def _has_hdf5_signature(path: Path, size: int) -> bool:
    offsets = [0] + [512 * 2**k for k in range(32) if 512 * 2**k + 8 <= size]
    with open(path, "rb") as handle:
        for offset in offsets:
            handle.seek(offset)
            if handle.read(8) == _HDF5_SIGNATURE:
                return True
    return False


def _read_validated(path: Path, file: str, rotation_atol: float) -> tuple[str, str, Motion]:
    size = os.path.getsize(path)
    if size == 0:
        raise _ClipProblem("not_hdf5", f"{file}: file is empty (0 bytes), expected HDF5")
    try:
        signed = _has_hdf5_signature(path, size)
    except OSError as error:
        raise _ClipProblem("unreadable", f"{file}: cannot read file: {error}") from None
    if not signed:
        raise _ClipProblem(
            "not_hdf5", f"{file}: not an HDF5 file (no HDF5 signature in its {size} bytes)"
        )
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise _ClipProblem(
            "unreadable", f"{file}: cannot open as HDF5 (unreadable or truncated): {error}"
        ) from None
    try:
        with handle:
            sequence_name = _sequence_name(handle, file)
            participant = _participant(sequence_name, file)
            datasets = {key: _dataset(handle, key, file) for key in DATASET_OF_FIELD.values()}
            _check_frame_counts(handle, datasets, file)
            arrays = {key: _read(ds, key, file) for key, ds in datasets.items()}
    except OSError as error:  # damaged metadata surfaces as OSError from h5py
        raise _ClipProblem("unreadable", f"{file}: HDF5 read error: {error}") from None
    _check_values(arrays, file, rotation_atol)
    motion = Motion(**{field: arrays[key] for field, key in DATASET_OF_FIELD.items()})
    return sequence_name, participant, motion


def _participant(sequence_name: str, file: str) -> str:
    try:
        return nymeria_format.participant_from_sequence_name(sequence_name)
    except ValueError as error:
        raise _ClipProblem(
            "bad_sequence_name",
            f"{file}: attribute {nymeria_format.ATTR_SEQUENCE_NAME!r}: {error}; the participant (and so "
            f"the split) cannot be assigned",
        ) from None


def _sequence_name(handle: h5py.File, file: str) -> str:
    if nymeria_format.ATTR_SEQUENCE_NAME not in handle.attrs:
        raise _ClipProblem(
            "missing_attribute", f"{file}: missing file attribute {nymeria_format.ATTR_SEQUENCE_NAME!r}"
        )
    value = handle.attrs[nymeria_format.ATTR_SEQUENCE_NAME]
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        raise _ClipProblem(
            "missing_attribute",
            f"{file}: attribute {nymeria_format.ATTR_SEQUENCE_NAME!r} must be a string, found "
            f"{type(value).__name__} {value!r}",
        )
    return value


def _dataset(handle: h5py.File, key: str, file: str) -> h5py.Dataset:
    """The dataset `key`, with its shape, dtype and filters checked (no data read)."""
    spec = nymeria_format.MOTION_DATASETS[key]
    if key not in handle:
        raise _ClipProblem("missing_key", f"{file}: missing dataset {key!r}")
    ds = handle[key]
    if not isinstance(ds, h5py.Dataset):
        raise _ClipProblem(
            "missing_key", f"{file}: {key!r} is a {type(ds).__name__}, expected a dataset"
        )
    expected_shape = "(" + ", ".join(["N", *map(str, spec.frame_shape)]) + ")"
    if ds.ndim != 1 + len(spec.frame_shape) or tuple(ds.shape[1:]) != spec.frame_shape:
        raise _ClipProblem(
            "bad_shape",
            f"{file}: dataset {key!r} has shape {ds.shape}, expected {expected_shape}",
        )
    if not spec.accepts_dtype(ds.dtype):
        expected = "a floating type" if spec.dtype_kind == "float" else spec.dtype_kind
        raise _ClipProblem(
            "bad_dtype", f"{file}: dataset {key!r} has dtype {ds.dtype}, expected {expected}"
        )
    plist = ds.id.get_create_plist()
    for index in range(plist.get_nfilters()):
        filter_id, _flags, _values, name = plist.get_filter(index)
        if not h5py.h5z.filter_avail(filter_id):
            label = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
            raise _ClipProblem(
                "filter_unavailable",
                f"{file}: dataset {key!r} is compressed with HDF5 filter {filter_id} "
                f"({label or 'unnamed'}): HDF5 filter not available; is hdf5plugin installed?",
            )
    return ds


def _check_frame_counts(handle: h5py.File, datasets: dict[str, h5py.Dataset], file: str) -> None:
    counts = {key: int(ds.shape[0]) for key, ds in datasets.items()}
    if len(set(counts.values())) != 1:
        raise _ClipProblem(
            "frame_count_mismatch",
            f"{file}: datasets disagree on the number of frames: {counts}",
        )
    num_frames = next(iter(counts.values()))
    if nymeria_format.ATTR_NUM_FRAMES in handle.attrs:
        declared = int(np.asarray(handle.attrs[nymeria_format.ATTR_NUM_FRAMES]))
        if declared != num_frames:
            raise _ClipProblem(
                "frame_count_mismatch",
                f"{file}: attribute {nymeria_format.ATTR_NUM_FRAMES!r} is {declared}, but the datasets "
                f"have {num_frames} frames",
            )
    if num_frames == 0:
        raise _ClipProblem("empty_clip", f"{file}: clip has 0 frames")


def _read(ds: h5py.Dataset, key: str, file: str) -> np.ndarray:
    try:
        return ds[()]
    except OSError as error:
        raise _ClipProblem(
            "unreadable", f"{file}: dataset {key!r} cannot be read (damaged or truncated): {error}"
        ) from None


def _check_values(arrays: dict[str, np.ndarray], file: str, rotation_atol: float) -> None:
    for key, values in arrays.items():
        finite = np.isfinite(values).reshape(len(values), -1).all(axis=1)
        if not finite.all():
            frame = int(np.argmin(finite))
            raise _ClipProblem(
                "non_finite",
                f"{file}: dataset {key!r}, frame {frame}: NaN or Inf "
                f"({int((~finite).sum())} of {len(values)} frames affected)",
            )
    timestamp_ns = arrays[nymeria_format.KEY_TIMESTAMP_NS]
    steps = np.diff(timestamp_ns)
    if (steps <= 0).any():
        frame = int(np.argmax(steps <= 0)) + 1
        raise _ClipProblem(
            "timestamps_not_increasing",
            f"{file}: dataset {nymeria_format.KEY_TIMESTAMP_NS!r}, frame {frame}: timestamp "
            f"{int(timestamp_ns[frame])} ns does not increase on frame {frame - 1} "
            f"({int(timestamp_ns[frame - 1])} ns)",
        )
    for key in ROTATION_KEYS:
        R = arrays[key].astype(np.float64)
        ok = is_rotation(R, atol=rotation_atol)
        if not ok.all():
            bad = np.unravel_index(int(np.argmin(ok.reshape(-1))), ok.shape)
            frame, where = int(bad[0]), "" if len(bad) == 1 else f", joint {int(bad[1])}"
            R_bad = R[bad]
            det = float(np.linalg.det(R_bad))
            ortho_err = float(np.abs(R_bad.T @ R_bad - np.eye(3)).max())
            raise _ClipProblem(
                "not_rotation",
                f"{file}: dataset {key!r}, frame {frame}{where}: not a rotation matrix "
                f"(det {det:.6g}, max |R^T R - I| {ortho_err:.3g}; tolerance {rotation_atol:g}); "
                f"{int((~ok).sum())} bad matrices in the clip",
            )
