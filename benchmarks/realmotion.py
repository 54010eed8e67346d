"""Real motion capture for the quality benchmark: a feature store built once from the real BVH
recordings handed to the team beside the checkout (`../shared/realmotion/`), cached.

The data is not in the repository (Bandai Namco Research Motion Dataset 2, CC BY-NC 4.0, 1,125
BVH recordings, 2.1 h at 30 fps, 7 styles x 10 contents). `../shared/realmotion/make_clips.py`
turns it into exporter-format clip files whose participant token is the style, so the build's
split by participant holds out whole styles. On top of that, this module holds out whole
*contents*: every clip of the recordings in HELD_OUT_CONTENT (running, and raising a hand or
both: a faster locomotion and an arm gesture found nowhere else in the data) is relabelled to
the participant token HELD_OUT_PARTICIPANT, and the split seed is chosen so that this token and
one style make up the test split. One training then serves two evaluations:

- **unseen style**: test sequences of the held-out style (contents seen in training);
- **unseen content**: every held-out-content sequence (running and raising hands, never seen in
  training, of every style).

Steps (each skipped when its output is there and complete): unpack the archive, make the clips,
relabel the held-out contents, build the store (`preprocess build`, synchronous).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import h5py
import numpy as np

from preprocess.nymeria_format import clip_file_name, parse_clip_file_name
from preprocess.split import assign_splits
from shared.store import FeatureStore, SequenceRecord, StoreError, open_store

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = REPO.parent / "shared" / "realmotion"
DEFAULT_CACHE = REPO / "data" / "bench_real"
ARCHIVE = "bandai2-bvh.tar.xz"
MAKE_CLIPS = "make_clips.py"

HELD_OUT_CONTENT = ("run", "raise-up-both-hands", "raise-up-left-hand", "raise-up-right-hand")
HELD_OUT_PARTICIPANT = "heldout_content"
STYLES = ("active", "elderly", "exhausted", "feminine", "masculine", "normal", "youthful")
# 8 participants (7 styles + the held-out contents): 5 train styles, 1 val style, and a test
# split of the held-out contents and one style.
SPLIT = (0.625, 0.125, 0.25)

HOW_TO_GET = (
    f"real motion data not found: expected {{source}}/{ARCHIVE} and {{source}}/{MAKE_CLIPS} "
    "(the team's ../shared/realmotion beside the checkout; pass --real-source DIR)"
)


class RealDataMissing(RuntimeError):
    """The real recordings are not beside the checkout; the message says where they go."""


def split_seed() -> int:
    """The smallest split seed whose test split is the held-out contents plus one style."""
    participants = [*STYLES, HELD_OUT_PARTICIPANT]
    for seed in range(1000):
        splits = assign_splits(participants, SPLIT, seed)
        if splits[HELD_OUT_PARTICIPANT] == "test":
            return seed
    raise AssertionError("no split seed puts the held-out contents in test")


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def _unpack(source: Path, cache: Path) -> Path:
    bvh = cache / "bvh"
    if not (cache / "bvh.done").exists():
        shutil.rmtree(bvh, ignore_errors=True)
        with tarfile.open(source / ARCHIVE) as archive:
            archive.extractall(cache, filter="data")
        (cache / "bvh.done").touch()
    return bvh


def _relabel(clip: Path) -> Path:
    """Give a held-out-content clip the participant token HELD_OUT_PARTICIPANT (attribute and
    file name); other clips are left as they are."""
    with h5py.File(clip, "r+") as f:
        # make_clips.py keeps the BVH file's name: dataset-2_<content>_<style>_<k>.bvh
        if str(f.attrs["source_bvh"]).split("_")[1] not in HELD_OUT_CONTENT:
            return clip
        name = str(f.attrs["sequence_name"])
        date, session, *rest = name.split("_")
        act = next(i for i, token in enumerate(rest) if token.startswith("act"))
        new_name = "_".join([date, session, HELD_OUT_PARTICIPANT, *rest[act:]])
        f.attrs["sequence_name"] = new_name
    _, datapoint = parse_clip_file_name(clip)
    target = clip.with_name(clip_file_name(new_name, datapoint))
    clip.rename(target)
    return target


def _make_clips(source: Path, bvh: Path, cache: Path) -> Path:
    clips = cache / "clips"
    if not (cache / "clips.done").exists():
        shutil.rmtree(clips, ignore_errors=True)
        _run(
            [
                sys.executable,
                str(source / MAKE_CLIPS),
                str(clips),
                "--bvh-dir",
                str(bvh),
                "--video",
                "0",
            ]
        )
        for clip in sorted(clips.glob("*.h5")):
            _relabel(clip)
        (cache / "clips.done").touch()
    return clips


def real_store(source: Path = DEFAULT_SOURCE, cache: Path = DEFAULT_CACHE) -> Path:
    """The real-motion feature store, built into `cache` on first use (a few minutes)."""
    store = cache / "store.zarr"
    try:
        open_store(store)
        return store
    except (StoreError, FileNotFoundError):
        pass
    if not (source / ARCHIVE).is_file() or not (source / MAKE_CLIPS).is_file():
        raise RealDataMissing(HOW_TO_GET.format(source=source))
    cache.mkdir(parents=True, exist_ok=True)
    clips = _make_clips(source, _unpack(source, cache), cache)
    split = ",".join(str(f) for f in SPLIT)
    _run(
        [
            sys.executable,
            "-m",
            "preprocess",
            "build",
            str(clips),
            "--out",
            str(store),
            "--split",
            split,
            "--split-seed",
            str(split_seed()),
            "--scheduler",
            "synchronous",
            "--no-progress",
            "--overwrite",
        ]
    )
    return store


def evaluation_sets(store: FeatureStore) -> dict[str, list[SequenceRecord]]:
    """The test sequences of each evaluation: unseen style, unseen content."""
    test = store.split("test")
    return {
        "unseen style": [r for r in test if r.participant != HELD_OUT_PARTICIPANT],
        "unseen content": [r for r in test if r.participant == HELD_OUT_PARTICIPANT],
    }


def subset_windows(
    records: tuple[SequenceRecord, ...],
    subset: list[SequenceRecord],
    window_frames: int,
    max_windows: int,
) -> np.ndarray:
    """At most `max_windows` evenly spaced window numbers of `WindowIndex(records, ...)` whose
    windows lie in the sequences of `subset`."""
    from train.data import WindowIndex

    index = WindowIndex(records, window_frames)
    names = {r.name for r in subset}
    in_subset = np.array([r.name in names for r in records])
    numbers = np.arange(index.num_windows)
    sequence, _, _ = index.locate(numbers)
    numbers = numbers[in_subset[sequence]]
    picks = np.linspace(0, len(numbers) - 1, min(max_windows, len(numbers))).round().astype(int)
    return np.unique(numbers[picks])


# --- what real motion has that the synthetic generator may lack ---------------------------------

MOTION_STATS = (  # (key, label, format)
    ("head_speed_median", "head speed median (m/s)", "{:.2f}"),
    ("head_speed_p95", "head speed p95 (m/s)", "{:.2f}"),
    ("still_share", "frames with head < 0.1 m/s", "{:.0%}"),
    ("yaw_rate_p95", "head yaw rate p95 (deg/s)", "{:.0f}"),
    ("turn_in_place_share", "turning > 30 deg/s at < 0.3 m/s", "{:.1%}"),
    ("hand_above_head_share", "a hand above the head", "{:.1%}"),
    ("hand_speed_p95", "hand speed in head frame p95 (m/s)", "{:.2f}"),
    ("head_height_median", "head height median (m)", "{:.2f}"),
    ("head_height_p5", "head height p5 (m)", "{:.2f}"),
    ("joint_accel_rms", "joint accel. RMS, head frame (mm/frame^2)", "{:.2f}"),
)


def motion_statistics(store: FeatureStore, max_frames: int = 200_000) -> dict[str, float]:
    """What the motion of a store is like, from its features: head speed and stillness,
    turning in place, hands raised, hand speed, head height, joint acceleration (jitter's
    scale). Frames are taken evenly over the whole store (at most `max_frames`)."""
    from shared.layout import HP, HP_DOT, HR, HR_DOT, JP, JV
    from shared.rotations import rot6d_to_matrix
    from shared.skeleton import JOINT_INDEX

    n = store.num_frames
    step = max(1, n // max_frames)
    block = step * 8192  # read a block at a time: memory bounded by max_frames, not the store
    x = np.concatenate(
        [store.read_features(s, min(s + block, n))[::step] for s in range(0, n, block)]
    ).astype(np.float64)
    fps = store.fps
    speed = np.linalg.norm(x[:, HP_DOT], axis=-1) * fps
    D = rot6d_to_matrix(x[:, HR_DOT])
    yaw_rate = np.degrees(np.abs(np.arctan2(D[:, 0, 2] - D[:, 2, 0], D[:, 0, 0] + D[:, 2, 2])))
    yaw_rate *= fps  # about the head's up axis (CPF Y): a good proxy of turning
    jp = x[:, JP].reshape(len(x), -1, 3)  # head frame (CPF: X left, Y up, Z forward)
    hands = [JOINT_INDEX["RightHand"], JOINT_INDEX["LeftHand"]]
    R = rot6d_to_matrix(x[:, HR])
    hand_world_up = np.einsum("nij,nkj->nki", R, jp[:, hands])[..., 2]
    hand_speed = np.linalg.norm(x[:, JV].reshape(len(x), -1, 3)[:, hands], axis=-1) * fps
    jv = x[:, JV].reshape(len(x), -1, 3)
    accel = np.linalg.norm(np.diff(jv, axis=0), axis=-1) * 1000  # across store frames
    return {
        "head_speed_median": float(np.median(speed)),
        "head_speed_p95": float(np.percentile(speed, 95)),
        "still_share": float(np.mean(speed < 0.1)),
        "yaw_rate_p95": float(np.percentile(yaw_rate, 95)),
        "turn_in_place_share": float(np.mean((yaw_rate > 30) & (speed < 0.3))),
        "hand_above_head_share": float(np.mean(hand_world_up.max(axis=1) > 0)),
        "hand_speed_p95": float(np.percentile(hand_speed, 95)),
        "head_height_median": float(np.median(x[:, HP][:, 2])),
        "head_height_p5": float(np.percentile(x[:, HP][:, 2], 5)),
        "joint_accel_rms": float(np.sqrt(np.mean(accel**2))) if step == 1 else float("nan"),
    }


def format_statistics(columns: dict[str, dict[str, float]]) -> str:
    """Side by side: one column per store."""
    width = max(len(label) for _, label, _ in MOTION_STATS) + 2
    lines = [f"{'':<{width}}" + "".join(f"{name:>14}" for name in columns)]
    for key, label, fmt in MOTION_STATS:
        cells = "".join(f"{fmt.format(stats[key]):>14}" for stats in columns.values())
        lines.append(f"{label:<{width}}" + cells)
    return "\n".join(lines)
