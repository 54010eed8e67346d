"""Read and validate the motion of one Nymeria clip file: the per-file work of a build.

`read_clip` is a pure function of the file (path in, arrays or a problem out) that any
executor runs. It opens only the motion datasets the features need; `egoview_RGB` (the video,
optional) is never opened, and neither are `root_translation`/`root_orientation`, which the
features do not use.

No file can make it raise: every way a file can be unusable (not HDF5, damaged metadata or
data, a dangling or external link, a declared size the file does not store, wrong
shape/dtype, NaN/Inf, absurd positions, non-rotations, timestamps that do not increase, an
implausible frame rate) becomes a `Problem` naming the file, the key and the frame where known;
anything else raised while reading one file (an HDF5 failure not seen before, or a bug) is
logged with its traceback and recorded as an `unexpected_error` problem, so one file never
stops a build.
Sizes are checked against what the file really stores before anything is allocated.
The attributes `start_idx`, `end_idx`, `num_frames` are descriptions, not checks: where they
disagree with each other or with the frames the file holds, a `Discrepancy` is recorded and the
clip is used (the exporter skips frames it fails to extract; timestamps are the truth).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import h5py
import hdf5plugin  # noqa: F401  (registers the LZ4 filter the clips are written with)
import numpy as np

from preprocess import nymeria_format
from preprocess.motion import Motion
from shared.rotations import is_rotation

logger = logging.getLogger(__name__)

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
ROTATION_KEYS: tuple[str, ...] = (
    nymeria_format.KEY_CPF_ORIENTATION,
    nymeria_format.KEY_JOINT_ORIENTATION,
)
POSITION_KEYS: tuple[str, ...] = (
    nymeria_format.KEY_CPF_TRANSLATION,
    nymeria_format.KEY_JOINT_TRANSLATION,
)
DEFAULT_ROTATION_ATOL = 1e-3
"""Largest |R^T R - I| entry and |det R - 1| accepted for a rotation matrix."""
MAX_ABS_POSITION_M = 1e5
"""Largest |coordinate| accepted for a position (100 km from the world origin). Bounded
positions and proper rotations keep every feature finite in float32 (3e38 m would not)."""
SOURCE_FPS_RANGE = (1.0, 1000.0)
"""Frame rates (of the median timestamp step) a clip may have; outside, its times are garbage."""
MAX_EXPANSION = 1100
"""Largest ratio of a dataset's declared bytes to the bytes the file stores for it: above what
any HDF5 compression filter reaches on real data (deflate's maximum is ~1032)."""
ALWAYS_READABLE_BYTES = 64 * 2**20
"""A dataset this small may be read whatever it stores (unwritten chunks read as fill values)."""

# What h5py raises for damaged files, depending on where the damage is (metadata, B-tree,
# chunk data, attribute encoding): converted into a Problem for the file, never caught around
# code that does not touch the file.
HDF5_ERRORS: tuple[type[Exception], ...] = (
    OSError, KeyError, RuntimeError, ValueError, TypeError, IndexError, OverflowError,
)  # fmt: skip

# HDF5 file signature; it sits at byte 0 or, after a user block, at 512 * 2^k.
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

PROBLEM_KINDS: tuple[str, ...] = (
    "not_hdf5",
    "unreadable",
    "filter_unavailable",
    "missing_attribute",
    "bad_sequence_name",
    "missing_key",
    "bad_link",
    "bad_shape",
    "bad_dtype",
    "bad_size",
    "frame_count_mismatch",
    "empty_clip",
    "non_finite",
    "out_of_range",
    "not_rotation",
    "timestamps_not_increasing",
    "frame_rate",
    "unexpected_error",
)
# Problems that depend on the machine (or on this code) rather than on the file: retried by
# `--resume`.
RETRY_KINDS: frozenset[str] = frozenset({"unreadable", "filter_unavailable", "unexpected_error"})
DISCREPANCY_KINDS: tuple[str, ...] = (
    "num_frames_attribute",  # num_frames (or the index range) vs the frames held
    "index_range",  # end_idx - start_idx + 1 vs num_frames
    "bad_attribute",  # an int attribute missing or not an integer
    "missing_frames",  # holes in timestamp_ns (found when stitching, preprocess.stitch)
    "other_frame_rate",  # a clip at another rate than the others, resampled with --fps
)


@dataclass(frozen=True)
class Problem:
    """Why one file was not used."""

    file: str  # relative to the source root
    kind: str  # one of PROBLEM_KINDS
    reason: str  # human-readable, names file, key and frame where they apply
    key: str | None = None  # dataset or attribute concerned, where known
    frame: int | None = None  # first frame concerned, where known

    def to_json(self) -> dict[str, str | int | None]:
        return {
            "file": self.file, "kind": self.kind, "reason": self.reason,
            "key": self.key, "frame": self.frame,
        }  # fmt: skip


@dataclass(frozen=True)
class Discrepancy:
    """Something in a used file that disagrees with what it declares; recorded, not fatal."""

    file: str
    kind: str  # one of DISCREPANCY_KINDS
    reason: str
    count: int | None = None  # frames concerned (signed: declared minus held, for attributes)
    frame: int | None = None  # first frame concerned, where known

    def to_json(self) -> dict[str, str | int | None]:
        return {
            "file": self.file, "kind": self.kind, "reason": self.reason,
            "count": self.count, "frame": self.frame,
        }  # fmt: skip


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
    discrepancies: tuple[Discrepancy, ...] = ()

    @property
    def ok(self) -> bool:
        return self.problem is None


class _ClipProblem(Exception):
    def __init__(self, kind: str, reason: str, key: str | None = None, frame: int | None = None):
        super().__init__(reason)
        self.kind, self.reason, self.key, self.frame = kind, reason, key, frame


def read_clip(root: Path, file: str, rotation_atol: float = DEFAULT_ROTATION_ATOL) -> ClipOutcome:
    """Read and validate `root / file`; never raises for a bad file, returns its problem."""
    path = Path(root) / file
    try:
        stat = path.stat()
    except OSError as error:
        problem = Problem(file, "unreadable", f"{file}: cannot stat file: {error}")
        return ClipOutcome(file, -1, -1, None, None, None, problem)
    size, mtime = stat.st_size, stat.st_mtime_ns
    # What the file really occupies: a sparse file can claim a size it does not store.
    stored_bytes = min(size, getattr(stat, "st_blocks", size // 512 + 1) * 512)
    try:
        sequence_name, participant, motion, discrepancies = _read_validated(
            path, file, size, stored_bytes, rotation_atol
        )
    except _ClipProblem as error:
        problem = Problem(file, error.kind, error.reason, error.key, error.frame)
        return ClipOutcome(file, size, mtime, None, None, None, problem)
    except Exception as error:  # one file must not stop a build, even by a bug
        logger.exception("unexpected error reading %s", path)
        reason = (
            f"{file}: unexpected {type(error).__name__} while reading: {error} (an HDF5 failure "
            f"this reader does not know, or a bug: please report it with the file)"
        )
        return ClipOutcome(
            file, size, mtime, None, None, None, Problem(file, "unexpected_error", reason)
        )
    return ClipOutcome(
        file, size, mtime, sequence_name, participant, motion, None, tuple(discrepancies)
    )


def _has_hdf5_signature(path: Path, size: int) -> bool:
    offsets = [0] + [512 * 2**k for k in range(32) if 512 * 2**k + 8 <= size]
    with open(path, "rb") as handle:
        for offset in offsets:
            handle.seek(offset)
            if handle.read(8) == _HDF5_SIGNATURE:
                return True
    return False


@contextmanager
def _hdf5_errors(file: str, key: str | None, doing: str) -> Iterator[None]:
    """Turn what h5py raises for a damaged file into the file's problem."""
    try:
        yield
    except HDF5_ERRORS as error:
        where = "" if key is None else f"{key!r}: "
        raise _ClipProblem(
            "unreadable", f"{file}: {where}{doing}: {type(error).__name__}: {error}", key
        ) from None


def _read_validated(
    path: Path, file: str, size: int, stored_bytes: int, rotation_atol: float
) -> tuple[str, str, Motion, list[Discrepancy]]:
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
    with _hdf5_errors(file, None, "cannot open as HDF5 (unreadable or truncated)"):
        handle = h5py.File(path, "r")
    with _hdf5_errors(file, None, "HDF5 error (damaged file)"), handle:
        sequence_name = _sequence_name(handle, file)
        participant = _participant(sequence_name, file)
        declared, discrepancies = _declared_frames(handle, file)
        datasets = {
            key: _dataset(handle, key, file, size, stored_bytes)
            for key in DATASET_OF_FIELD.values()
        }
        num_frames = _check_frame_counts(datasets, file)
        arrays = {key: _read(ds, key, file) for key, ds in datasets.items()}
    if declared is not None and declared != num_frames:
        discrepancies.append(
            Discrepancy(
                file,
                "num_frames_attribute",
                f"{file}: the attributes declare {declared} frames, the datasets hold "
                f"{num_frames} ({declared - num_frames:+d} declared but not held; the exporter "
                f"skips frames it fails to extract)",
                count=declared - num_frames,
            )
        )
    _check_values(arrays, file, rotation_atol)
    motion = Motion(**{field: arrays[key] for field, key in DATASET_OF_FIELD.items()})
    return sequence_name, participant, motion, discrepancies


def _participant(sequence_name: str, file: str) -> str:
    try:
        return nymeria_format.participant_from_sequence_name(sequence_name)
    except ValueError as error:
        raise _ClipProblem(
            "bad_sequence_name",
            f"{file}: attribute {nymeria_format.ATTR_SEQUENCE_NAME!r}: {error}; the participant "
            f"(and so the split) cannot be assigned",
            nymeria_format.ATTR_SEQUENCE_NAME,
        ) from None


def _sequence_name(handle: h5py.File, file: str) -> str:
    key = nymeria_format.ATTR_SEQUENCE_NAME
    with _hdf5_errors(file, key, "attribute cannot be read"):
        present = key in handle.attrs
        value = handle.attrs[key] if present else None
    if not present:
        raise _ClipProblem("missing_attribute", f"{file}: missing file attribute {key!r}", key)
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        raise _ClipProblem(
            "missing_attribute",
            f"{file}: attribute {key!r} must be a string, found {_describe(value)}",
            key,
        )
    return value


def _describe(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _int_attribute(
    handle: h5py.File, key: str, file: str, discrepancies: list[Discrepancy]
) -> int | None:
    """An int attribute, or None (recorded as a discrepancy) when missing or not an integer."""
    try:
        # Not attrs.get(): h5py raises KeyError for some damaged attributes too, not "missing".
        value = None
        if key in handle.attrs:
            value = handle.attrs[key]
    except HDF5_ERRORS as error:
        reason = f"cannot be read ({type(error).__name__}: {error})"
    else:
        array = np.asarray(value) if value is not None else None
        if array is not None and array.dtype.kind in "iu" and array.size == 1:
            return int(array.reshape(-1)[0])
        reason = "missing" if value is None else f"is {_describe(value)}, expected an integer"
    discrepancies.append(
        Discrepancy(file, "bad_attribute", f"{file}: attribute {key!r} {reason}; ignored")
    )
    return None


def _declared_frames(handle: h5py.File, file: str) -> tuple[int | None, list[Discrepancy]]:
    """Frames the attributes declare (num_frames, else the inclusive index range), and the
    discrepancies among them."""
    discrepancies: list[Discrepancy] = []
    start, end, num_frames = (
        _int_attribute(handle, key, file, discrepancies) for key in nymeria_format.INT_ATTRS
    )
    covered = None
    if start is not None and end is not None:
        covered = nymeria_format.num_frames_of_index_range(start, end)
        if num_frames is not None and covered != num_frames:
            discrepancies.append(
                Discrepancy(
                    file,
                    "index_range",
                    f"{file}: attributes start_idx={start}, end_idx={end} cover {covered} frames "
                    f"(both inclusive), num_frames says {num_frames}",
                    count=covered - num_frames,
                )
            )
    return (num_frames if num_frames is not None else covered), discrepancies


def _dataset(handle: h5py.File, key: str, file: str, size: int, stored_bytes: int) -> h5py.Dataset:
    """The dataset `key`, with its link, shape, dtype, filters and size checked (no data read)."""
    spec = nymeria_format.MOTION_DATASETS[key]
    with _hdf5_errors(file, key, "cannot open dataset"):
        try:
            ds = handle[key]  # the common case first: inspecting links costs ~0.3 ms
        except KeyError:
            ds = None
        external = ds is not None and ds.file.id != handle.id
        if ds is None or external:
            link = handle.get(key, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                raise _ClipProblem(
                    "bad_link",
                    f"{file}: {key!r} is an external link to {link.filename}:{link.path}; a "
                    f"clip file must hold its motion itself",
                    key,
                )
            if isinstance(link, h5py.SoftLink):
                raise _ClipProblem(
                    "bad_link", f"{file}: {key!r} is a dangling soft link to {link.path!r}", key
                )
            raise _ClipProblem("missing_key", f"{file}: missing dataset {key!r}", key)
    if not isinstance(ds, h5py.Dataset):
        raise _ClipProblem(
            "missing_key", f"{file}: {key!r} is a {type(ds).__name__}, expected a dataset", key
        )
    with _hdf5_errors(file, key, "cannot read dataset metadata"):
        shape, dtype = ds.shape, ds.dtype
        plist = ds.id.get_create_plist()
        external = ds.is_virtual or plist.get_external_count() > 0
        filters = [plist.get_filter(index) for index in range(plist.get_nfilters())]
        storage = ds.id.get_storage_size()
    expected_shape = "(" + ", ".join(["N", *map(str, spec.frame_shape)]) + ")"
    if shape is None or len(shape) != 1 + len(spec.frame_shape) or shape[1:] != spec.frame_shape:
        raise _ClipProblem(
            "bad_shape",
            f"{file}: dataset {key!r} has shape {shape}, expected {expected_shape}",
            key,
        )
    if not spec.accepts_dtype(dtype):
        expected = "a floating type" if spec.dtype_kind == "float" else spec.dtype_kind
        raise _ClipProblem(
            "bad_dtype", f"{file}: dataset {key!r} has dtype {dtype}, expected {expected}", key
        )
    if external:
        raise _ClipProblem(
            "bad_link",
            f"{file}: dataset {key!r} keeps its data in other files (virtual or external "
            f"storage); a clip file must hold its motion itself",
            key,
        )
    for filter_id, _flags, _values, name in filters:
        if not h5py.h5z.filter_avail(filter_id):
            label = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
            raise _ClipProblem(
                "filter_unavailable",
                f"{file}: dataset {key!r} is compressed with HDF5 filter {filter_id} "
                f"({label or 'unnamed'}): HDF5 filter not available; is hdf5plugin installed?",
                key,
            )
    declared = math.prod(shape) * dtype.itemsize
    if storage > size:
        raise _ClipProblem(
            "bad_size",
            f"{file}: dataset {key!r} claims {storage} bytes of storage, more than the whole "
            f"file's {size} bytes (damaged metadata)",
            key,
        )
    if declared > max(MAX_EXPANSION * min(storage, stored_bytes), ALWAYS_READABLE_BYTES):
        raise _ClipProblem(
            "bad_size",
            f"{file}: dataset {key!r} declares {shape[0]} frames ({declared} bytes) but the file "
            f"stores {storage} bytes of it ({stored_bytes} bytes on disk): damaged or never "
            f"written; not read",
            key,
        )
    return ds


def _check_frame_counts(datasets: dict[str, h5py.Dataset], file: str) -> int:
    counts = {key: int(ds.shape[0]) for key, ds in datasets.items()}
    if len(set(counts.values())) != 1:
        raise _ClipProblem(
            "frame_count_mismatch",
            f"{file}: datasets disagree on the number of frames: {counts}",
        )
    num_frames = next(iter(counts.values()))
    if num_frames == 0:
        raise _ClipProblem("empty_clip", f"{file}: clip has 0 frames")
    return num_frames


def _read(ds: h5py.Dataset, key: str, file: str) -> np.ndarray:
    with _hdf5_errors(file, key, "dataset cannot be read (damaged or truncated)"):
        return ds[()]


def _check_values(arrays: dict[str, np.ndarray], file: str, rotation_atol: float) -> None:
    for key, values in arrays.items():
        finite = np.isfinite(values).reshape(len(values), -1).all(axis=1)
        if not finite.all():
            frame = int(np.argmin(finite))
            raise _ClipProblem(
                "non_finite",
                f"{file}: dataset {key!r}, frame {frame}: NaN or Inf "
                f"({int((~finite).sum())} of {len(values)} frames affected)",
                key,
                frame,
            )
    for key in POSITION_KEYS:
        largest = np.abs(arrays[key]).reshape(len(arrays[key]), -1).max(axis=1)
        if (largest > MAX_ABS_POSITION_M).any():
            frame = int(np.argmax(largest > MAX_ABS_POSITION_M))
            raise _ClipProblem(
                "out_of_range",
                f"{file}: dataset {key!r}, frame {frame}: coordinate {float(largest[frame]):.3g} m "
                f"is beyond {MAX_ABS_POSITION_M:g} m of the origin (not a position; its features "
                f"would overflow)",
                key,
                frame,
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
            nymeria_format.KEY_TIMESTAMP_NS,
            frame,
        )
    if len(steps):
        median_ns = float(np.median(steps))
        fps, (low, high) = 1e9 / median_ns, SOURCE_FPS_RANGE
        if not low <= fps <= high:
            raise _ClipProblem(
                "frame_rate",
                f"{file}: dataset {nymeria_format.KEY_TIMESTAMP_NS!r}: median step "
                f"{median_ns:.6g} ns is {fps:.3g} fps, outside [{low:g}, {high:g}] fps",
                nymeria_format.KEY_TIMESTAMP_NS,
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
                key,
                frame,
            )
