"""Read and validate the motion of one Nymeria clip file: the per-file work of a build.

`read_clip` is a pure function of the file (path in, arrays or a problem out) that any
executor runs. It opens only the motion datasets the features need; `egoview_RGB` (the video,
optional) is never opened, and neither are `root_translation`/`root_orientation`, which the
features do not use.

No file can make it raise: every way a file can be unusable (not HDF5, damaged metadata or
data, a dangling or external link, a declared size the file does not store, chunks never
written (HDF5 would read them as zeros), wrong shape/dtype, NaN/Inf (also after the cast to the
float32 the store holds), absurd positions, joints moving faster than any body can, non-rotations,
timestamps out of range or that do not increase, an implausible step or frame rate) becomes a
`Problem` naming the file, the key and the frame where known;
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
from collections import Counter
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
"""A dataset this small may be read whatever it stores (its chunks are then checked to be
written: HDF5 reads an unwritten chunk as fill values)."""
MAX_SPEED_M_PER_S = 30.0
"""Fastest a joint or the head may move between two frames (a thrown ball's speed; no body part
gets near it): beyond, positions jump, and the velocity features would be garbage."""
MAX_TIMESTAMP_NS = 2**62
"""Largest timestamp accepted (146 years of nanoseconds): sums and differences of timestamps
stay far from int64's wrap-around."""
MAX_TIMESTAMP_STEP_NS = 3600 * 10**9
"""Longest step between two frames of one clip (an atomic action lasts seconds): beyond, the
timestamps are garbage, not a hole."""
STORED_FLOAT = np.dtype(np.float32)
"""The dtype the store holds every float value in (features, contact)."""

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
    "unwritten_data",
    "non_finite",
    "out_of_range",
    "implausible_motion",
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
            "file": self.file,
            "kind": self.kind,
            "reason": self.reason,
            "key": self.key,
            "frame": self.frame,
        }


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
            "file": self.file,
            "kind": self.kind,
            "reason": self.reason,
            "count": self.count,
            "frame": self.frame,
        }


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
    ds = _open_dataset(handle, key, file)
    with _hdf5_errors(file, key, "cannot read dataset metadata"):
        shape, dtype = ds.shape, ds.dtype
        plist = ds.id.get_create_plist()
        external = ds.is_virtual or plist.get_external_count() > 0
        filters = [plist.get_filter(index) for index in range(plist.get_nfilters())]
        storage = ds.id.get_storage_size()
    _check_layout(file, key, spec, shape, dtype, external, filters)
    _check_size(file, key, shape, dtype, storage, size, stored_bytes)
    with _hdf5_errors(file, key, "cannot read dataset chunk metadata"):
        unwritten = _first_unwritten_frame(ds, plist, shape)
    if unwritten is not None:
        raise _ClipProblem(
            "unwritten_data",
            f"{file}: dataset {key!r}, frame {unwritten}: never written (HDF5 reports its "
            f"storage unallocated and would read it as {ds.fillvalue!r}); the file is incomplete",
            key,
            unwritten,
        )
    return ds


def _open_dataset(handle: h5py.File, key: str, file: str) -> h5py.Dataset:
    """The dataset `key` of this file: a missing key, a link out of the file or a group is a
    problem."""
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
    return ds


def _check_layout(
    file: str,
    key: str,
    spec: nymeria_format.DatasetSpec,
    shape: tuple | None,
    dtype: np.dtype,
    external: bool,
    filters: list,
) -> None:
    """Shape and dtype as `spec` says, data inside the file, every filter available."""
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


def _check_size(
    file: str, key: str, shape: tuple, dtype: np.dtype, storage: int, size: int, stored_bytes: int
) -> None:
    """The dataset's storage fits in the file, and its declared size is no implausible multiple
    of what the file stores of it."""
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


def _first_unwritten_frame(
    ds: h5py.Dataset, plist: h5py.h5p.PropDCID, shape: tuple[int, ...]
) -> int | None:
    """First frame of `ds` (of creation properties `plist`) whose storage HDF5 never allocated
    (reads would give fill values), or None when every frame is written. Compact data is always
    written; contiguous data is allocated whole or not at all; chunked data chunk by chunk."""
    layout = plist.get_layout()
    if math.prod(shape) == 0 or layout == h5py.h5d.COMPACT:
        return None
    if layout != h5py.h5d.CHUNKED:
        allocated = ds.id.get_space_status() == h5py.h5d.SPACE_STATUS_ALLOCATED
        return None if allocated else 0
    chunks = plist.get_chunk()
    grid = [-(-n // c) for n, c in zip(shape, chunks, strict=True)]
    written = ds.id.get_num_chunks()
    if written >= math.prod(grid):
        return None
    # Chunks written at each first frame; a chunk row of the frame axis holds prod(grid[1:]).
    at_frame = Counter(ds.id.get_chunk_info(i).chunk_offset[0] for i in range(written))
    per_row = math.prod(grid[1:])
    return next(f for f in range(0, shape[0], chunks[0]) if at_frame[f] < per_row)


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
    _check_finite(arrays, file)
    _check_positions(arrays, file)
    _check_timestamps(arrays[nymeria_format.KEY_TIMESTAMP_NS], file)
    _check_speed(arrays, file)
    _check_rotations(arrays, file, rotation_atol)


def _first_bad_frame(bad: np.ndarray) -> int:
    """First frame (row) of `bad` (frames, ...) with any True."""
    return int(np.argmax(bad.reshape(len(bad), -1).any(axis=1)))


def _check_finite(arrays: dict[str, np.ndarray], file: str) -> None:
    """Every value finite as read, and still finite once cast to the float32 the store holds
    (a float64 1e39 is finite, its float32 is inf)."""
    for key, values in arrays.items():
        bad = ~np.isfinite(values)
        if bad.any():
            frame = _first_bad_frame(bad)
            raise _ClipProblem(
                "non_finite",
                f"{file}: dataset {key!r}, frame {frame}: NaN or Inf "
                f"({int(bad.reshape(len(bad), -1).any(axis=1).sum())} of {len(values)} frames "
                f"affected)",
                key,
                frame,
            )
    for key, values in arrays.items():
        if values.dtype.kind != "f" or values.dtype.itemsize <= STORED_FLOAT.itemsize:
            continue
        with np.errstate(over="ignore"):
            bad = ~np.isfinite(values.astype(STORED_FLOAT))
        if bad.any():
            frame = _first_bad_frame(bad)
            value = float(values[frame][bad[frame]].reshape(-1)[0])
            raise _ClipProblem(
                "out_of_range",
                f"{file}: dataset {key!r}, frame {frame}: value {value:.3g} overflows "
                f"{STORED_FLOAT} (the stored dtype, largest {np.finfo(STORED_FLOAT).max:.3g})",
                key,
                frame,
            )


def _check_positions(arrays: dict[str, np.ndarray], file: str) -> None:
    for key in POSITION_KEYS:
        largest = np.abs(arrays[key]).reshape(len(arrays[key]), -1).max(axis=1).astype(float)
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


def _check_timestamps(timestamp_ns: np.ndarray, file: str) -> None:
    """In [0, MAX_TIMESTAMP_NS] (so no difference wraps around), strictly increasing, no step
    longer than MAX_TIMESTAMP_STEP_NS, a median step of a plausible frame rate."""
    key = nymeria_format.KEY_TIMESTAMP_NS
    outside = (timestamp_ns < 0) | (timestamp_ns > MAX_TIMESTAMP_NS)
    if outside.any():
        frame = int(np.argmax(outside))
        raise _ClipProblem(
            "out_of_range",
            f"{file}: dataset {key!r}, frame {frame}: timestamp {int(timestamp_ns[frame])} ns is "
            f"outside [0, 2^62] ns (negative, or wrapped around int64)",
            key,
            frame,
        )
    steps = np.diff(timestamp_ns)  # cannot wrap: every timestamp is in [0, 2^62]
    if (steps <= 0).any():
        frame = int(np.argmax(steps <= 0)) + 1
        raise _ClipProblem(
            "timestamps_not_increasing",
            f"{file}: dataset {key!r}, frame {frame}: timestamp "
            f"{int(timestamp_ns[frame])} ns does not increase on frame {frame - 1} "
            f"({int(timestamp_ns[frame - 1])} ns)",
            key,
            frame,
        )
    if (steps > MAX_TIMESTAMP_STEP_NS).any():
        frame = int(np.argmax(steps > MAX_TIMESTAMP_STEP_NS)) + 1
        raise _ClipProblem(
            "frame_rate",
            f"{file}: dataset {key!r}, frame {frame}: {int(steps[frame - 1]) / 1e9:.6g} s after "
            f"frame {frame - 1}, more than {MAX_TIMESTAMP_STEP_NS / 1e9:g} s between two frames "
            f"of one clip",
            key,
            frame,
        )
    if len(steps):
        median_ns = float(np.median(steps))
        fps, (low, high) = 1e9 / median_ns, SOURCE_FPS_RANGE
        if not low <= fps <= high:
            raise _ClipProblem(
                "frame_rate",
                f"{file}: dataset {key!r}: median step "
                f"{median_ns:.6g} ns is {fps:.3g} fps, outside [{low:g}, {high:g}] fps",
                key,
            )


def _check_speed(arrays: dict[str, np.ndarray], file: str) -> None:
    """No joint (nor the head) faster than MAX_SPEED_M_PER_S between two frames."""
    seconds = np.diff(arrays[nymeria_format.KEY_TIMESTAMP_NS]) / 1e9
    for key in POSITION_KEYS:
        positions = arrays[key].astype(np.float64).reshape(len(seconds) + 1, -1, 3)
        distance = np.linalg.norm(np.diff(positions, axis=0), axis=-1)  # (T - 1, joints)
        speed = distance / seconds[:, None]
        fast = speed > MAX_SPEED_M_PER_S
        if fast.any():
            step, joint = np.unravel_index(int(np.argmax(fast)), fast.shape)
            where = "" if positions.shape[1] == 1 else f", joint {int(joint)}"
            raise _ClipProblem(
                "implausible_motion",
                f"{file}: dataset {key!r}, frame {int(step) + 1}{where}: moves "
                f"{float(distance[step, joint]):.3g} m in {float(seconds[step]):.3g} s since frame "
                f"{int(step)} ({float(speed[step, joint]):.3g} m/s, faster than "
                f"{MAX_SPEED_M_PER_S:g} m/s); {int(fast.any(axis=1).sum())} such steps in the clip",
                key,
                int(step) + 1,
            )


def _check_rotations(arrays: dict[str, np.ndarray], file: str, rotation_atol: float) -> None:
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
