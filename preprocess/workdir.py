"""Per-file results persisted as they finish, so an interrupted build resumes where it stopped.

One `.npz` per source file in `<build dir>/clips/`, named by a hash of the file's path relative
to the source root, written to a temporary name and renamed into place (a killed build leaves
either a whole result or none). Each holds the clip's motion arrays (if usable) and a JSON
`meta` record: path, size and mtime of the source file when read, sequence name, participant,
problem. A result is reused only while the source file's size and mtime are unchanged; problems
that depend on the machine rather than on the file (`RETRY_KINDS`) are retried.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from preprocess.motion import MOTION_FIELDS, Motion
from preprocess.read_clip import RETRY_KINDS, ClipResult, Problem

logger = logging.getLogger(__name__)

_META = "meta"


@dataclass(frozen=True)
class ClipEntry:
    """What the build keeps in memory about one finished file (motion stays on disk)."""

    file: str
    size_bytes: int
    mtime_ns: int
    sequence_name: str | None
    participant: str | None
    timestamp_ns: np.ndarray | None  # (T,) int64 for usable clips
    problem: Problem | None

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def num_frames(self) -> int:
        return 0 if self.timestamp_ns is None else len(self.timestamp_ns)


def entry_of(result: ClipResult) -> ClipEntry:
    return ClipEntry(
        result.file,
        result.size_bytes,
        result.mtime_ns,
        result.sequence_name,
        result.participant,
        None if result.motion is None else result.motion.timestamp_ns,
        result.problem,
    )


class ClipResults:
    """The `clips/` directory of a build."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path_of(self, file: str) -> Path:
        return self.directory / (hashlib.sha256(file.encode()).hexdigest()[:32] + ".npz")

    def save(self, result: ClipResult) -> None:
        meta = {
            "file": result.file,
            "size_bytes": result.size_bytes,
            "mtime_ns": result.mtime_ns,
            "sequence_name": result.sequence_name,
            "participant": result.participant,
            "problem": None if result.problem is None else result.problem.to_json(),
        }
        arrays = {} if result.motion is None else result.motion.arrays()
        final = self.path_of(result.file)
        partial = final.with_suffix(".partial")
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as handle:
            np.savez(handle, **{_META: np.array(json.dumps(meta))}, **arrays)
        os.replace(partial, final)

    def load_motion(self, file: str) -> Motion:
        with np.load(self.path_of(file), allow_pickle=False) as data:
            return Motion(**{name: data[name] for name in MOTION_FIELDS})

    def load_entries(self, root: Path, files: Iterable[str]) -> dict[str, ClipEntry]:
        """Reusable results for `files` (paths relative to `root`)."""
        entries: dict[str, ClipEntry] = {}
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
    def _load_entry(path: Path) -> ClipEntry | None:
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data[_META]))
                timestamp_ns = data["timestamp_ns"] if meta["problem"] is None else None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            logger.warning("ignoring damaged result %s (%s); the file will be read again", path, error)
            return None
        problem = None if meta["problem"] is None else Problem(**meta["problem"])
        return ClipEntry(
            meta["file"],
            int(meta["size_bytes"]),
            int(meta["mtime_ns"]),
            meta["sequence_name"],
            meta["participant"],
            timestamp_ns,
            problem,
        )
