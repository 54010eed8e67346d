"""Which files under DATA a build reads, and every candidate it does not (with the reason).

The tree is walked once, following symbolic links: a linked directory is entered the first
time its real directory is met and listed as ignored on any later meeting (a loop when it
links to one of its own ancestors), so no file is read twice through links and no loop runs
forever. Clip files are the regular files whose name ends in `.h5`
(`nymeria_format.CLIP_SUFFIX`, case-sensitive, as the exporter writes them; a file named just
`.h5` too). Candidates that are not used and are listed with a reason: files with another
HDF5-like extension (`.hdf5`, `.H5`, ...), directories named like a clip file, dangling links,
link loops, directories already walked through another link, entries that cannot be read, and
entries whose name is not valid UTF-8 (a store records file names as UTF-8 text; the listing
shows the undecodable bytes as `\\xNN`). Other files (videos beside the clips, notes) are only
counted, by extension.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from preprocess import nymeria_format

HDF5_LIKE_SUFFIXES: frozenset[str] = frozenset({".h5", ".hdf5", ".hdf", ".he5", ".h5py"})
"""Lower-case suffixes of files that are probably HDF5: listed when not read."""
_NOT_UTF8 = "name is not valid UTF-8 (a store records file names as text); rename it to read it"


@dataclass(frozen=True)
class Ignored:
    """A candidate the build does not read."""

    path: str  # relative to DATA, POSIX separators
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class Discovery:
    files: list[str]  # clip files to read, relative to DATA, POSIX separators, sorted
    ignored: list[Ignored]  # sorted by path
    other_files: dict[str, int] = field(default_factory=dict)  # suffix (or "") -> count


def _extension(name: str) -> str:
    """The last `.suffix` of a file name, including a whole name such as `.h5` (which
    `Path.suffix` takes for a hidden file without one); "" when there is no dot."""
    dot = name.rfind(".")
    return name[dot:] if dot >= 0 else ""


def printable(path: str) -> str:
    """`path` as UTF-8 text: bytes of a name that is not valid UTF-8 (which Python holds as
    surrogate escapes) shown as `\\xNN`."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _wrong_extension(rel: str, suffix: str) -> Ignored:
    reason = (
        f"extension {suffix!r}: only '{nymeria_format.CLIP_SUFFIX}' files are read; "
        f"rename it to include it"
    )
    return Ignored(rel, reason)


def discover_clip_files(data: Path) -> Discovery:
    """Walk `data` (see the module doc)."""
    data = Path(data)
    files: list[str] = []
    ignored: list[Ignored] = []
    other: Counter[str] = Counter()
    root_real = os.path.realpath(data)
    walked: dict[str, str] = {root_real: "."}  # real directory -> the path it was walked as

    def walk(directory: Path, relative: str, ancestors: frozenset[str]) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as error:
            ignored.append(Ignored(relative, f"directory cannot be listed: {error.strerror}"))
            return
        for entry in entries:
            rel = entry.name if relative == "." else f"{relative}/{entry.name}"
            if not _is_utf8(entry.name):
                ignored.append(Ignored(printable(rel), _NOT_UTF8))
                continue
            suffix = _extension(entry.name)
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
                is_file = not is_dir and entry.is_file(follow_symlinks=True)
                is_link = entry.is_symlink()
            except OSError as error:
                ignored.append(Ignored(rel, f"cannot be inspected: {error.strerror}"))
                continue
            if is_dir:
                real = os.path.realpath(entry.path)
                if real in ancestors:
                    ignored.append(Ignored(rel, f"link loop: leads back to {walked[real]}"))
                elif real in walked:
                    ignored.append(Ignored(rel, f"same directory as {walked[real]}, already read"))
                else:
                    if suffix.lower() in HDF5_LIKE_SUFFIXES:
                        reason = "a directory, not a clip file (its contents are read)"
                        ignored.append(Ignored(rel, reason))
                    walked[real] = rel
                    walk(Path(entry.path), rel, ancestors | {real})
            elif is_file and suffix == nymeria_format.CLIP_SUFFIX:
                files.append(rel)
            elif is_file and suffix.lower() in HDF5_LIKE_SUFFIXES:
                ignored.append(_wrong_extension(rel, suffix))
            elif is_link and not os.path.exists(entry.path):
                target = os.readlink(entry.path)
                ignored.append(Ignored(rel, f"dangling link to {printable(target)}"))
            elif is_file:
                other[suffix] += 1
            else:
                ignored.append(Ignored(rel, "not a regular file"))

    walk(data, ".", frozenset({root_real}))
    ignored.sort(key=lambda i: i.path)
    return Discovery(sorted(files), ignored, dict(sorted(other.items())))
