"""Per-file results persisted as they finish, so an interrupted build resumes where it stopped.

One `.clip` file per source file in `<build dir>/clips/`, named by a hash of the file's path
relative to the source root, written atomically (`shared.atomic`: a killed build leaves either a
whole result or none). Each holds a JSON header (a `meta` record: path, size and mtime of the
source file when read, sequence name, participant, problem, discrepancies; and the name, dtype
and shape of each array) followed by the clip's motion arrays as raw C-order bytes. (`.npz`
would do, but costs ~10x more to load, which the build does twice per file.) A result is reused
only while the source file's size and mtime are unchanged; problems that depend on the machine
rather than on the file (`RETRY_KINDS`) are retried.

Once every file is read, `save_index` writes the small part of every result (the `meta` record
and the timestamps) to one index file: a resumed build plans from it without opening the
per-file results, which the build deletes as soon as the store holds their frames (see
preprocess.build).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from preprocess.motion import MOTION_FIELDS, Motion
from preprocess.read_clip import (
    DEFAULT_ROTATION_ATOL,
    RETRY_KINDS,
    ClipOutcome,
    Discrepancy,
    Problem,
    read_clip,
)
from shared.atomic import atomic_path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedClip:
    """What the build keeps in memory about one finished file (motion stays on disk)."""

    file: str
    size_bytes: int
    mtime_ns: int
    sequence_name: str | None
    participant: str | None
    timestamp_ns: np.ndarray | None  # (T,) int64 for usable clips
    problem: Problem | None
    discrepancies: tuple[Discrepancy, ...] = ()

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def num_frames(self) -> int:
        return 0 if self.timestamp_ns is None else len(self.timestamp_ns)


def entry_of(result: ClipOutcome) -> CachedClip:
    return CachedClip(
        result.file,
        result.size_bytes,
        result.mtime_ns,
        result.sequence_name,
        result.participant,
        None if result.motion is None else result.motion.timestamp_ns,
        result.problem,
        result.discrepancies,
    )


_MAGIC = b"NYMERIA-CLIP-RESULT-1\n"
_HEADER_LENGTH_BYTES = 8
_PREFIX_BYTES = len(_MAGIC) + _HEADER_LENGTH_BYTES
_TIMESTAMPS = "timestamp_ns"


class DamagedResultError(ValueError):
    """A result file that cannot be parsed (e.g. cut short by a crash)."""


class NotVisibleOnWorker(RuntimeError):
    """A worker cannot see a path the build process can: the cluster's file systems differ."""

    def __init__(self, path: str, host: str) -> None:
        super().__init__(path, host)
        self.path, self.host = path, host

    def __str__(self) -> str:
        return f"{self.path} does not exist on worker host {self.host!r}"


def encode_record(meta: Mapping, arrays: Mapping[str, np.ndarray]) -> bytes:
    """Magic, a JSON header (`meta` and each array's name, dtype and shape), raw array bytes."""
    arrays = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    specs = [[name, a.dtype.str, list(a.shape)] for name, a in arrays.items()]
    header = json.dumps({"meta": meta, "arrays": specs}).encode()
    return b"".join(
        [_MAGIC, len(header).to_bytes(_HEADER_LENGTH_BYTES, "little"), header]
        + [a.tobytes() for a in arrays.values()]
    )


def _parse_header(prefix_and_header: bytes) -> tuple[dict, int]:
    """(header, offset of the first array) from the start of a record."""
    if not prefix_and_header.startswith(_MAGIC):
        raise DamagedResultError("not a clip result (bad magic)")
    length = int.from_bytes(prefix_and_header[len(_MAGIC) : _PREFIX_BYTES], "little")
    try:
        header = json.loads(prefix_and_header[_PREFIX_BYTES : _PREFIX_BYTES + length])
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DamagedResultError(f"bad header: {error}") from None
    return header, _PREFIX_BYTES + length


def _array_spans(header: dict, offset: int) -> Iterable[tuple[str, np.dtype, list, int, int]]:
    for name, dtype, shape in header["arrays"]:
        dtype = np.dtype(dtype)
        end = offset + int(np.prod(shape)) * dtype.itemsize
        yield name, dtype, shape, offset, end
        offset = end


def decode_record(
    data: bytes, with_arrays: Iterable[str] | None
) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays) of `encode_record` bytes; only the arrays in `with_arrays` (all if None)."""
    header, offset = _parse_header(data)
    wanted = None if with_arrays is None else set(with_arrays)
    arrays = {}
    for name, dtype, shape, start, end in _array_spans(header, offset):
        if end > len(data):
            raise DamagedResultError(f"array {name!r} is cut short")
        if wanted is None or name in wanted:
            arrays[name] = np.frombuffer(data, dtype, (end - start) // dtype.itemsize, start)
            arrays[name] = arrays[name].reshape(shape)
    return header["meta"], arrays


def read_record(path: Path, with_arrays: Iterable[str]) -> tuple[dict, dict[str, np.ndarray]]:
    """`decode_record` of a file, reading only its header and the wanted arrays."""
    wanted = set(with_arrays)
    with open(path, "rb") as handle:
        prefix = handle.read(_PREFIX_BYTES)
        if len(prefix) < _PREFIX_BYTES:
            raise DamagedResultError("cut short before its header")
        length = int.from_bytes(prefix[len(_MAGIC) :], "little")
        header, offset = _parse_header(prefix + handle.read(length))
        size = handle.seek(0, 2)
        arrays = {}
        for name, dtype, shape, start, end in _array_spans(header, offset):
            if end > size:
                raise DamagedResultError(f"array {name!r} is cut short")
            if name in wanted:
                handle.seek(start)
                arrays[name] = np.frombuffer(handle.read(end - start), dtype).reshape(shape)
    return header["meta"], arrays


def _meta_of(entry: CachedClip | ClipOutcome) -> dict:
    return {
        "file": entry.file,
        "size_bytes": entry.size_bytes,
        "mtime_ns": entry.mtime_ns,
        "sequence_name": entry.sequence_name,
        "participant": entry.participant,
        "problem": None if entry.problem is None else entry.problem.to_json(),
        "discrepancies": [d.to_json() for d in entry.discrepancies],
    }


def _entry_of_meta(meta: dict, timestamp_ns: np.ndarray | None) -> CachedClip:
    problem = None if meta["problem"] is None else Problem(**meta["problem"])
    return CachedClip(
        meta["file"],
        int(meta["size_bytes"]),
        int(meta["mtime_ns"]),
        meta["sequence_name"],
        meta["participant"],
        timestamp_ns if problem is None else None,
        problem,
        tuple(Discrepancy(**d) for d in meta.get("discrepancies", ())),
    )


def _reusable(entry: CachedClip, root: Path) -> bool:
    """Whether a recorded result still describes `root / entry.file`."""
    try:
        stat = (root / entry.file).stat()
    except OSError:
        return False
    if (stat.st_size, stat.st_mtime_ns) != (entry.size_bytes, entry.mtime_ns):
        logger.info("%s changed since it was read; reading it again", entry.file)
        return False
    return entry.problem is None or entry.problem.kind not in RETRY_KINDS


class ClipCache:
    """The `clips/` directory of a build."""

    INDEX_NAME = "entries.index"

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @property
    def index_path(self) -> Path:
        return self.directory / self.INDEX_NAME

    def path_of(self, file: str) -> Path:
        return self.directory / (hashlib.sha256(os.fsencode(file)).hexdigest()[:32] + ".clip")

    def has_result(self, file: str) -> bool:
        return self.path_of(file).exists()

    def save(self, result: ClipOutcome) -> None:
        arrays = {} if result.motion is None else result.motion.arrays()
        self.directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path_of(result.file)) as tmp:
            tmp.write_bytes(encode_record(_meta_of(result), arrays))

    def load_motion(self, file: str) -> Motion:
        _, arrays = decode_record(self.path_of(file).read_bytes(), MOTION_FIELDS)
        return Motion(**{name: arrays[name] for name in MOTION_FIELDS})

    def discard(self, files: Iterable[str]) -> None:
        """Delete the per-file results of `files` (their frames are safely in the store)."""
        for file in files:
            self.path_of(file).unlink(missing_ok=True)

    def load_entries(self, root: Path, files: Iterable[str]) -> dict[str, CachedClip]:
        """Reusable results for `files` (paths relative to `root`): from the index when it
        describes exactly these files, else from the per-file results."""
        files = list(files)
        indexed = self._load_index(files)
        if indexed is not None:
            return {f: e for f, e in indexed.items() if _reusable(e, root)}
        entries: dict[str, CachedClip] = {}
        for file in files:
            path = self.path_of(file)
            if not path.exists():
                continue
            entry = self._load_entry(path)
            if entry is not None and entry.file == file and _reusable(entry, root):
                entries[file] = entry
        return entries

    def save_index(self, entries: Mapping[str, CachedClip]) -> None:
        """Write the entries of every file (in `entries`' order), atomically."""
        metas = [_meta_of(e) for e in entries.values()]
        for meta, entry in zip(metas, entries.values(), strict=True):
            meta["frames"] = entry.num_frames
        empty = np.zeros(0, dtype=np.int64)
        stamps = [e.timestamp_ns if e.timestamp_ns is not None else empty for e in entries.values()]
        timestamps = np.concatenate([empty, *stamps]).astype(np.int64)
        with atomic_path(self.index_path) as tmp:
            tmp.write_bytes(encode_record({"entries": metas}, {_TIMESTAMPS: timestamps}))

    def _load_index(self, files: list[str]) -> dict[str, CachedClip] | None:
        if not self.index_path.exists():
            return None
        try:
            meta, arrays = decode_record(self.index_path.read_bytes(), (_TIMESTAMPS,))
            metas = meta["entries"]
            bounds = np.cumsum([0] + [int(m["frames"]) for m in metas])
            timestamps = arrays[_TIMESTAMPS]
            if [m["file"] for m in metas] != files or bounds[-1] != len(timestamps):
                return None
        except (OSError, DamagedResultError, KeyError, TypeError) as error:
            logger.warning("ignoring damaged index %s (%s)", self.index_path, error)
            return None
        return {
            m["file"]: _entry_of_meta(m, timestamps[bounds[i] : bounds[i + 1]])
            for i, m in enumerate(metas)
        }

    @staticmethod
    def _load_entry(path: Path) -> CachedClip | None:
        try:
            meta, arrays = read_record(path, (_TIMESTAMPS,))
        except (OSError, DamagedResultError) as error:
            logger.warning(
                "ignoring damaged result %s (%s); the file will be read again", path, error
            )
            return None
        return _entry_of_meta(meta, arrays.get(_TIMESTAMPS))


def read_and_persist(
    root: Path,
    files: list[str],
    results_dir: Path | None,
    rotation_atol: float = DEFAULT_ROTATION_ATOL,
) -> list[CachedClip]:
    """Stage-1 task: read clips, persist each result (unless `results_dir` is None: a plan),
    return only the small entries.

    Runs on the workers, so the motion arrays go to disk there and never through the
    scheduler (with `--scheduler ADDRESS`, the build directory must be on a file system the
    workers share, as DATA must be). A file or directory the build process listed but this
    process cannot see raises `NotVisibleOnWorker` (an environment error that stops the
    build) instead of becoming a per-file problem.
    """
    results = ClipCache(results_dir) if results_dir is not None else None
    if results is not None and not results.directory.is_dir():
        raise NotVisibleOnWorker(str(results.directory), socket.gethostname())
    entries = []
    for file in files:
        if not os.path.lexists(Path(root) / file):
            raise NotVisibleOnWorker(str(Path(root) / file), socket.gethostname())
        result = read_clip(root, file, rotation_atol)
        if results is not None:
            results.save(result)
        entries.append(entry_of(result))
    return entries
