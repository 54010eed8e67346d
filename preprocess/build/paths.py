"""Where a build keeps things for `--out STORE` (`BuildPaths`, see the package doc), how much disk
it still needs (`SpaceEstimate`), and the messages that tell the user which of these paths to
use when the environment stops a build."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import shared.store
from preprocess.build.config import BuildConfig
from preprocess.clip_cache import NotVisibleOnWorker
from shared.layout import FEATURE_DIM


@dataclass(frozen=True)
class BuildPaths:
    out: Path

    @property
    def lock(self) -> Path:
        return self.out.with_name(self.out.name + ".lock")

    @property
    def build_dir(self) -> Path:
        return self.out.with_name(self.out.name + ".build")

    @property
    def clips(self) -> Path:
        return self.build_dir / "clips"

    @property
    def work_json(self) -> Path:
        return self.build_dir / "work.json"

    @property
    def staging(self) -> Path:
        return self.build_dir / "store.zarr"

    @property
    def progress(self) -> Path:
        return self.build_dir / "progress.record"

    @property
    def publishing(self) -> Path:
        return self.build_dir / "publishing"


# Bytes per frame of the raw store: features (294 float32), timestamp (int64), contact (4
# float32); the per-file results of float32 source clips take about as much.
STORE_BYTES_PER_FRAME = FEATURE_DIM * 4 + 8 + shared.store.NUM_CONTACTS * 4


@dataclass
class SpaceEstimate:
    """Rough disk needs of a build, refined as it learns the data (for disk-full messages)."""

    chunk_frames: int
    files: int = 0
    files_read: int = 0
    frames_read: int = 0
    planned_frames: int | None = None

    def needed_bytes(self, build_dir: Path) -> int | None:
        """Bytes still to be written at the peak. Per-file results are deleted as the store
        grows, so the peak is about one store's worth (or one set of results) in all."""
        if self.planned_frames is not None:
            frames = self.planned_frames
        elif self.files_read:
            frames = self.frames_read * self.files // self.files_read
        else:
            return None
        used = sum(f.stat().st_size for f in build_dir.rglob("*") if f.is_file())
        return max(frames * STORE_BYTES_PER_FRAME - used, self.chunk_frames * STORE_BYTES_PER_FRAME)


def resume_hint(paths: BuildPaths) -> str:
    if paths.build_dir.exists():
        return f"; finished work is kept in {paths.build_dir} for --resume"
    return ""


def not_visible_message(error: NotVisibleOnWorker, data: Path, paths: BuildPaths | None) -> str:
    """`paths` None: a plan (nothing to resume)."""
    again = "rerun with --resume" if paths is not None else "run it again"
    here = Path(error.path).exists()
    if not here:
        return f"{error.path} disappeared during the build; {again} (the file list is taken again)"
    on_data = paths is None or Path(error.path).is_relative_to(data)
    shared_dir, where = ("DATA", data) if on_data else (f"{paths.build_dir}", paths.build_dir)
    return (
        f"a Dask worker cannot see a file this process can: {error}. Workers must see "
        f"{shared_dir} at the same path ({where}): mount it there on every worker host, then "
        f"{again}"
    )


def disk_full_advice(paths: BuildPaths, config: BuildConfig) -> str:
    kept = f"{paths.out} is untouched" if paths.out.exists() else "nothing was published"
    again = "--overwrite --resume" if paths.out.exists() and config.overwrite else "--resume"
    return (
        f"{kept}; temporary files were removed and the finished work stays in "
        f"{paths.build_dir}: free space, then rerun with {again}"
    )
