"""What a finished build reports: `BuildSummary`, made from the plan it executed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from preprocess.build.plan import BuildPlan
from preprocess.build.read import ReadStage
from preprocess.discover import Ignored
from preprocess.read_clip import Discrepancy, Problem
from preprocess.stitch import StitchReport


@dataclass(frozen=True)
class BuildSummary:
    store: Path
    files_found: int
    files_reused: int  # per-file results taken over from an interrupted build
    files_used: int
    problems: tuple[Problem, ...]
    discrepancies: tuple[Discrepancy, ...]  # of used files: recorded, not fatal
    ignored: tuple[Ignored, ...]  # candidates under DATA that were not read
    other_files: Mapping[str, int]  # files that are no candidates, by extension
    sequences: int
    frames: int
    fps: float
    source_fps: float
    stitch: StitchReport
    split_participants: Mapping[str, int]
    split_frames: Mapping[str, int]
    seconds: float
    plan: BuildPlan = field(repr=False)  # the plan the build executed, as `--plan` prints it
    read_frames_per_s: float = field(default=0.0)

    @staticmethod
    def of(plan: BuildPlan, read: ReadStage, store: Path, seconds: float) -> BuildSummary:
        """The summary of a build of `store` that executed `plan` after stage 1 `read`."""
        return BuildSummary(
            store=store,
            files_found=plan.files_found,
            files_reused=read.reused,
            files_used=len(plan.clips),
            problems=plan.problems,
            discrepancies=plan.discrepancies,
            ignored=tuple(plan.discovery.ignored),
            other_files=plan.discovery.other_files,
            sequences=len(plan.sequences),
            frames=plan.num_frames,
            fps=plan.fps,
            source_fps=plan.source_fps,
            stitch=plan.stitch,
            split_participants=plan.split_participants,
            split_frames=plan.split_frames,
            seconds=seconds,
            read_frames_per_s=read.frames_per_s,
            plan=plan,
        )
