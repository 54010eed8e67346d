"""Per-file results persisted as they finish, so an interrupted build resumes where it stopped.

One `.clip` file per source file in `<build dir>/clips/`, named by a hash of the file's path
relative to the source root, written atomically (`shared.atomic`: a killed build leaves either a
whole result or none). Each holds a JSON header (a `meta` record: path, size and mtime of the
source file when read, sequence name, participant, problem, discrepancies; and the name, dtype
and shape of each array) followed by the clip's motion arrays as raw C-order bytes. (`.npz` would do, but costs ~10x
more to load, which the build does twice per file.) A result is reused only while the source
file's size and mtime are unchanged; problems that depend on the machine rather than on the file
(`RETRY_KINDS`) are retried.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
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


class DamagedResultError(ValueError):
    """A result file that cannot be parsed (e.g. cut short by a crash)."""


def _encode(meta: dict, arrays: dict[str, np.ndarray]) -> bytes:
    arrays = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    specs = [[name, a.dtype.str, list(a.shape)] for name, a in arrays.items()]
    header = json.dumps({"meta": meta, "arrays": specs}).encode()
    return b"".join(
        [_MAGIC, len(header).to_bytes(_HEADER_LENGTH_BYTES, "little"), header]
        + [a.tobytes() for a in arrays.values()]
    )


def _decode(data: bytes, with_arrays: Iterable[str] | None) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays); only the arrays named in `with_arrays` (all if None)."""
    if not data.startswith(_MAGIC):
        raise DamagedResultError("not a clip result (bad magic)")
    offset = len(_MAGIC) + _HEADER_LENGTH_BYTES
    header_length = int.from_bytes(data[len(_MAGIC) : offset], "little")
    try:
        header = json.loads(data[offset : offset + header_length])
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DamagedResultError(f"bad header: {error}") from None
    offset += header_length
    wanted = None if with_arrays is None else set(with_arrays)
    arrays = {}
    for name, dtype, shape in header["arrays"]:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        end = offset + count * dtype.itemsize
        if end > len(data):
            raise DamagedResultError(f"array {name!r} is cut short")
        if wanted is None or name in wanted:
            arrays[name] = np.frombuffer(data, dtype, count, offset).reshape(shape)
        offset = end
    return header["meta"], arrays


class ClipCache:
    """The `clips/` directory of a build."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path_of(self, file: str) -> Path:
        return self.directory / (hashlib.sha256(file.encode()).hexdigest()[:32] + ".clip")

    def save(self, result: ClipOutcome) -> None:
        meta = {
            "file": result.file,
            "size_bytes": result.size_bytes,
            "mtime_ns": result.mtime_ns,
            "sequence_name": result.sequence_name,
            "participant": result.participant,
            "problem": None if result.problem is None else result.problem.to_json(),
            "discrepancies": [d.to_json() for d in result.discrepancies],
        }
        arrays = {} if result.motion is None else result.motion.arrays()
        self.directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path_of(result.file)) as tmp:
            tmp.write_bytes(_encode(meta, arrays))

    def load_motion(self, file: str) -> Motion:
        _, arrays = _decode(self.path_of(file).read_bytes(), MOTION_FIELDS)
        return Motion(**{name: arrays[name] for name in MOTION_FIELDS})

    def load_entries(self, root: Path, files: Iterable[str]) -> dict[str, CachedClip]:
        """Reusable results for `files` (paths relative to `root`)."""
        entries: dict[str, CachedClip] = {}
        for file in files:
            path = self.path_of(file)
            if not path.exists():
                continue
            entry = self._load_entry(path)
            if entry is None or entry.file != file:
                continue
            try:
                stat = (root / file).stat()
            except OSError:
                continue
            if (stat.st_size, stat.st_mtime_ns) != (entry.size_bytes, entry.mtime_ns):
                logger.info("%s changed since it was read; reading it again", file)
                continue
            if entry.problem is not None and entry.problem.kind in RETRY_KINDS:
                continue
            entries[file] = entry
        return entries

    @staticmethod
    def _load_entry(path: Path) -> CachedClip | None:
        try:
            meta, arrays = _decode(path.read_bytes(), ("timestamp_ns",))
        except (OSError, DamagedResultError) as error:
            logger.warning(
                "ignoring damaged result %s (%s); the file will be read again", path, error
            )
            return None
        problem = None if meta["problem"] is None else Problem(**meta["problem"])
        return CachedClip(
            meta["file"],
            int(meta["size_bytes"]),
            int(meta["mtime_ns"]),
            meta["sequence_name"],
            meta["participant"],
            arrays.get("timestamp_ns") if problem is None else None,
            problem,
            tuple(Discrepancy(**d) for d in meta.get("discrepancies", ())),
        )


def read_and_persist(
    root: Path, files: list[str], results_dir: Path, rotation_atol: float = DEFAULT_ROTATION_ATOL
) -> list[CachedClip]:
    """Stage-1 task: read clips, persist each result, return only the small entries.

    Runs on the workers, so the motion arrays go to disk there and never through the
    scheduler (with `--scheduler ADDRESS`, the build directory must be on a file system the
    workers share, as DATA must be).
    """
    results = ClipCache(results_dir)
    entries = []
    for file in files:
        result = read_clip(root, file, rotation_atol)
        results.save(result)
        entries.append(entry_of(result))
    return entries
