"""Reconstruction quality in the world, on participants the model never saw.

    python -m benchmarks quality [--steps 1500 --hidden 128 --latent 64 --rows seed,world,...|all]

Builds a synthetic store (`preprocess synth` + `preprocess build`, 40 recordings of 10
participants; the split by participant holds one participant out for val and one for
test), trains every row under the same budget (the same number of steps, batch, width and
learning rate, through the real `train.fit.fit`), evaluates the test split with the real
`train.evaluate.evaluate` and prints one table. Rows:

  seed             the non-causal seed architecture (benchmarks.bench_train_step's
                   ReferenceMotionVAE) with the seed loss
  causal_seed      the causal MotionVAE with the seed loss (the default before `--loss world`)
  world_blend0/1   + world position/velocity terms (weights 1/10), head decoded from the
                   absolute hp/hr (0) or integrated from hp_dot/hr_dot from the canonical start (1)
  world            + world terms 1/10, head a complementary filter of both (blend 0.95)
  world_w03, _w01  the same with the world weights at 0.3/3, 0.1/1
  world_head       world terms 1/10 + the head-frame joint position term (weight 1)
  world_w01_head   world terms 0.1/1 + the head-frame term 1 (the previous default)
  ..._foot, _foot3 + the foot-contact term (weight 1, 3); world_w03_head_foot at 0.3/3
  ..._rot          + the head-orientation term (world_w01_head_foot_rot: foot 1 + rot 0.3)
  *_linear         the model with `linear_path` (causal_seed_linear: with the seed loss);
                   world_w01_head_foot_linear is an earlier default
  ..._mirror       + left/right mirroring of half the training windows (`--mirror-prob 0.5`):
                   world_w01_head_foot_linear_mirror is the previous default
  ..._mirror_join  + the linear decoder reading the previous latent as well as its own
                   (`linear_decoder_kernel` 2), so the 4-frame blocks join: the default
  ..._join3        the same with kernel 3 (the previous two latents)
  ..._acc          + the world acceleration term (`--world-acceleration-weight 1`)

`--data real` trains and evaluates on real motion capture instead (benchmarks.realmotion: built
once from ../shared/realmotion into data/bench_real; skipped with a message without it), and
reports every row on the unseen style and on the unseen content.

`--seams` trains nothing: it prints, for each row's last checkpoint in --workdir, the jerk by
the place in its latent's 4-frame block (where a decoder whose blocks do not join jumps).

Without --rows, the rows of the decision (DEFAULT_ROWS) run, as many at once as there are
cores; `--rows all` runs every row.

The budget is fixed in steps, not seconds, so a contended machine changes the wall time
but not the numbers; wall and CPU time per row are printed. Jitter and foot skating are
ratios to ground truth on the same windows; "world / head" is world MPJPE over head-frame
MPJPE (1 would mean the head trajectory adds no error). A learning-curve picture of
validation world and head-frame MPJPE goes to --curves.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from tqdm import tqdm

from benchmarks import realmotion
from benchmarks.bench_train_step import ReferenceMotionVAE
from shared.features import decoded_to_world, features_to_world
from shared.store import open_store
from train.config import (
    ADDED_MODEL_FIELDS,
    ADDED_TRAIN_FIELDS,
    RunConfig,
    RuntimeConfig,
    TrainConfig,
)
from train.data import WindowIndex, prepare_batch, read_windows
from train.evaluate import evaluate
from train.fit import fit
from train.inference import config_from_checkpoint, load_for_inference
from train.metrics import MM_PER_M, finite_difference, joints_in_head_frame
from train.model import FRAMES_PER_LATENT, MotionVAEConfig


@dataclass(frozen=True)
class Row:
    name: str
    train: dict = field(default_factory=dict)
    reference_model: bool = False
    # MotionVAEConfig fields besides the width; pinned like the loss settings.
    model: dict = field(default_factory=lambda: {"linear_path": False})


# Every row pins the loss settings it was measured with, so that moving a default never
# changes what a row means (rows not setting a field train with today's default).
_OFF = {"head_frame_weight": 0.0}
_NEW_TERMS_OFF = {"foot_contact_weight": 0.0, "head_orientation_weight": 0.0}
_W1_10 = {
    "loss": "world", "world_position_weight": 1.0, "world_velocity_weight": 10.0, **_OFF,
    **_NEW_TERMS_OFF,
}  # fmt: skip
_W01 = {
    "loss": "world", "world_position_weight": 0.1, "world_velocity_weight": 1.0,
    **_NEW_TERMS_OFF,
}  # fmt: skip
_W01_HEAD = {**_W01, "head_frame_weight": 1.0, "head_blend": 0.95}
# The kernel-2 default's loss and model, which the later rows vary.
_JOIN_TRAIN = {**_W01_HEAD, "foot_contact_weight": 1.0, "mirror_prob": 0.5}
_JOIN_MODEL = {"linear_path": True, "linear_decoder_kernel": 2}
ROWS = {
    "seed": Row("seed design (non-causal, seed loss)", {"loss": "features"}, reference_model=True),
    "causal_seed": Row("causal, seed loss", {"loss": "features"}),
    "world_blend0": Row("causal, world loss 1/10, blend 0", {**_W1_10, "head_blend": 0.0}),
    "world_blend1": Row("causal, world loss 1/10, blend 1", {**_W1_10, "head_blend": 1.0}),
    "world": Row("causal, world loss 1/10, blend 0.95", {**_W1_10, "head_blend": 0.95}),
    "world_w03": Row(
        "causal, world loss 0.3/3, blend 0.95",
        {**_W1_10, "world_position_weight": 0.3, "world_velocity_weight": 3.0},
    ),
    "world_w01": Row("causal, world loss 0.1/1, blend 0.95", {**_W01, **_OFF}),
    "world_head": Row(
        "causal, world loss 1/10 + head-frame 1, blend 0.95",
        {**_W1_10, "head_frame_weight": 1.0},
    ),
    "world_w01_head": Row("causal, world loss 0.1/1 + head-frame 1, blend 0.95", _W01_HEAD),
    "world_w01_head_foot": Row(
        "causal, world loss 0.1/1 + head-frame 1 + foot contact 1, blend 0.95",
        {**_W01_HEAD, "foot_contact_weight": 1.0},
    ),
    "world_w03_head_foot": Row(
        "causal, world loss 0.3/3 + head-frame 1 + foot contact 1, blend 0.95",
        {**_W01_HEAD, "world_position_weight": 0.3, "world_velocity_weight": 3.0}
        | {"foot_contact_weight": 1.0},
    ),
    "world_w01_head_rot": Row(
        "causal, world loss 0.1/1 + head-frame 1 + head orientation 1, blend 0.95",
        {**_W01_HEAD, "head_orientation_weight": 1.0},
    ),
    "world_w01_head_foot3": Row(
        "causal, world loss 0.1/1 + head-frame 1 + foot contact 3, blend 0.95",
        {**_W01_HEAD, "foot_contact_weight": 3.0},
    ),
    "causal_seed_linear": Row(
        "causal + linear path, seed loss", {"loss": "features"}, model={"linear_path": True}
    ),
    "world_w01_head_linear": Row(
        "causal + linear path, world loss 0.1/1 + head-frame 1, blend 0.95",
        _W01_HEAD,
        model={"linear_path": True},
    ),
    "world_w01_head_foot_linear": Row(
        "causal + linear path, world loss 0.1/1 + head-frame 1 + foot contact 1 (earlier default)",
        {**_W01_HEAD, "foot_contact_weight": 1.0},
        model={"linear_path": True},
    ),
    "world_w03_head_foot_linear": Row(
        "causal + linear path, world loss 0.3/3 + head-frame 1 + foot contact 1, blend 0.95",
        {**_W01_HEAD, "world_position_weight": 0.3, "world_velocity_weight": 3.0}
        | {"foot_contact_weight": 1.0},
        model={"linear_path": True},
    ),
    "world_w01_head_foot_linear_mirror": Row(
        "the same + left/right mirroring 0.5 (previous default)",
        {**_W01_HEAD, "foot_contact_weight": 1.0, "mirror_prob": 0.5},
        model={"linear_path": True},
    ),
    "world_w01_head_foot_linear_mirror_acc": Row(
        "the same + world acceleration 1",
        {
            **_W01_HEAD,
            "foot_contact_weight": 1.0,
            "mirror_prob": 0.5,
            "world_acceleration_weight": 1.0,
        },
        model={"linear_path": True},
    ),
    "world_w01_head_foot_linear_mirror_join": Row(
        "the same + linear decoder reading the previous latent too, kernel 2 (previous default)",
        {**_W01_HEAD, "foot_contact_weight": 1.0, "mirror_prob": 0.5},
        model={"linear_path": True, "linear_decoder_kernel": 2},
    ),
    "world_w01_head_foot_linear_mirror_join3": Row(
        "the same with the linear decoder reading the 2 previous latents too (kernel 3)",
        {**_W01_HEAD, "foot_contact_weight": 1.0, "mirror_prob": 0.5},
        model={"linear_path": True, "linear_decoder_kernel": 3},
    ),
    "world_w01_head_foot_linear_mirror_join_acc": Row(
        "the same + world acceleration 1",
        {
            **_W01_HEAD,
            "foot_contact_weight": 1.0,
            "mirror_prob": 0.5,
            "world_acceleration_weight": 1.0,
        },
        model={"linear_path": True, "linear_decoder_kernel": 2},
    ),
    "world_w03_head_foot_linear_mirror_join": Row(
        "the default with world loss 0.3/3",
        {
            **_W01_HEAD,
            "world_position_weight": 0.3,
            "world_velocity_weight": 3.0,
            "foot_contact_weight": 1.0,
            "mirror_prob": 0.5,
        },
        model={"linear_path": True, "linear_decoder_kernel": 2},
    ),
    "world_w01_head_foot_linear_mirror_join_speed": Row(
        "the default + speed changes 0.5 (resampled, 0.8-1.25x)",
        {**_JOIN_TRAIN, "speed_prob": 0.5},
        model=_JOIN_MODEL,
    ),
    "world_w01_head_foot_linear_mirror_join_out4": Row(
        "the default + decoder output projection reading 4 frames",
        _JOIN_TRAIN,
        model={**_JOIN_MODEL, "decoder_out_kernel": 4},
    ),
    "world_w01_head3_foot_linear_mirror_join": Row(
        "the default with head-frame weight 3",
        {**_JOIN_TRAIN, "head_frame_weight": 3.0},
        model=_JOIN_MODEL,
    ),
    "world_w01_head_foot_linear_mirror_join_wd01": Row(
        "the default with weight decay 0.1",
        {**_JOIN_TRAIN, "weight_decay": 0.1},
        model=_JOIN_MODEL,
    ),
    "world_w01_head3_foot_linear_mirror_join_out4": Row(
        "the default with head-frame weight 3 and the output projection reading 4 frames",
        {**_JOIN_TRAIN, "head_frame_weight": 3.0},
        model={**_JOIN_MODEL, "decoder_out_kernel": 4},
    ),
    "world_w03_head3_foot3_linear_mirror_join_kl3": Row(
        "the default with every metre term and the KL x 3 (the feature MSE / 3)",
        {
            **_W01_HEAD,
            "world_position_weight": 0.3,
            "world_velocity_weight": 3.0,
            "head_frame_weight": 3.0,
            "foot_contact_weight": 3.0,
            "mirror_prob": 0.5,
        },
        model={**_JOIN_MODEL, "lambda_kl": 3e-4},
    ),
    "world_w03_head3_foot3_linear_mirror_join": Row(
        "the same with every metre term x 3 (default)",
        {
            **_W01_HEAD,
            "world_position_weight": 0.3,
            "world_velocity_weight": 3.0,
            "head_frame_weight": 3.0,
            "foot_contact_weight": 3.0,
            "mirror_prob": 0.5,
        },
        model=_JOIN_MODEL,
    ),
    "world_w01_head_foot_rot": Row(
        "causal, world loss 0.1/1 + head-frame 1 + foot contact 1 + head orientation 0.3",
        {**_W01_HEAD, "foot_contact_weight": 1.0, "head_orientation_weight": 0.3},
    ),
}
# Rows from before the augmentation existed train without it (today's default mirrors), and
# rows from before `linear_decoder_kernel` with the linear decoder reading its own latent only.
ROWS = {
    key: replace(
        row,
        train={"mirror_prob": 0.0, "world_acceleration_weight": 0.0, "speed_prob": 0.0} | row.train,
        model={"linear_decoder_kernel": 1, **row.model},
    )
    for key, row in ROWS.items()
}

# What `make bench` runs: the baselines, the previous defaults and today's default.
DEFAULT_ROWS = ("seed", "causal_seed", "world_w01_head_foot_linear_mirror_join",
                "world_w03_head3_foot3_linear_mirror_join")  # fmt: skip

COLUMNS = (  # (metrics key or derived name, header, format)
    ("mpjpe_head_mm", "MPJPE head", "{:.1f}"),
    ("mpjpe_world_mm", "MPJPE world", "{:.1f}"),
    ("world_over_head", "world/head", "{:.2f}x"),
    ("pa_mpjpe_mm", "PA-MPJPE", "{:.1f}"),
    ("head_pos_error_mm", "head pos", "{:.1f}"),
    ("head_rot_error_deg", "head rot deg", "{:.2f}"),
    ("accel_error_mm_per_frame2", "accel err", "{:.2f}"),
    ("jitter_ratio", "jitter/GT", "{:.2f}x"),
    ("skating_ratio", "skate/GT", "{:.2f}x"),
)


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def build_store(workdir: Path, recordings: int, participants: int, seed: int) -> Path:
    data, store = workdir / "hdf5", workdir / "store.zarr"
    py = [sys.executable, "-m", "preprocess"]
    _run(
        py
        + [
            "synth",
            str(data),
            "--recordings",
            str(recordings),
            "--participants",
            str(participants),
            "--seed",
            str(seed),
        ]
    )
    _run(
        py
        + ["build", str(data), "--out", str(store), "--scheduler", "synchronous", "--no-progress"]
    )
    return store


def derived(metrics: dict) -> dict:
    out = dict(metrics)
    out["world_over_head"] = metrics["mpjpe_world_mm"] / metrics["mpjpe_head_mm"]
    out["jitter_ratio"] = metrics["jitter_pred_mm_per_frame3"] / metrics["jitter_gt_mm_per_frame3"]
    skate_gt = metrics["foot_skating_gt_mm_per_frame"]
    out["skating_ratio"] = (
        metrics["foot_skating_pred_mm_per_frame"] / skate_gt if skate_gt else None
    )
    return out


@torch.no_grad()
def seam_jerk(
    run_dir: Path, store_path: Path, windows: np.ndarray | None, max_windows: int
) -> dict[str, list[float]]:
    """Mean jerk (mm/frame^3, over joints and windows) of a row's last checkpoint on the
    evaluation windows, by the place in its latent's 4-frame block of the last of the 4 frames
    each third difference reads: at place 3 all four frames come from one latent, at 0-2 the
    difference straddles a seam between blocks. Rows "model", "conv stack" (the decoder
    without its linear path) and "ground truth", each in the head frame and in the world."""
    checkpoint = run_dir / "checkpoints" / "last.pt"
    ckpt, model, normalizer = load_for_inference(checkpoint, torch.device("cpu"))
    blend = config_from_checkpoint(ckpt).train.decode_head_blend
    store = open_store(store_path)
    index = WindowIndex(store.split("test"), model.config.seq_len)
    if windows is None:
        windows = index.evenly_spaced(max_windows)
    sums: dict[str, torch.Tensor] = {}
    for start in range(0, len(windows), 32):
        prep = prepare_batch(read_windows(store, index, windows[start : start + 32]), normalizer)
        z, _ = model.encode(prep.x)
        decoded = {"model": model.decode(z), "conv stack": model.decoder(z)}
        rows = {name: normalizer.denormalize(y.float()) for name, y in decoded.items()}
        rows["ground truth"] = prep.canonical
        for name, features in rows.items():
            truth = name == "ground truth"
            world = features_to_world(features) if truth else decoded_to_world(features, blend)
            spaces = {
                "head frame": joints_in_head_frame(features),
                "world": world.joint_translation,
            }
            for space, points in spaces.items():
                label = f"{name}, {space}"
                sums[label] = sums.get(label, 0) + _jerk_by_place(points, prep.mask)
    return {label: (total[0] / total[1]).tolist() for label, total in sums.items()}


def _jerk_by_place(points: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, J, 3) points -> (2, 4): jerk sums (mm/frame^3, mean over joints) and counts by
    the block place of the last frame each third difference reads."""
    jerk, valid = finite_difference(points, mask, 3)  # entry t reads frames t .. t + 3
    mm = (jerk.norm(dim=-1).mean(-1) * MM_PER_M).double()  # (B, T - 3)
    place = (torch.arange(mm.shape[1]) + 3) % FRAMES_PER_LATENT
    total = torch.zeros(2, FRAMES_PER_LATENT, dtype=torch.float64)
    total[0].index_add_(0, place, torch.where(valid, mm, 0.0).sum(0))
    total[1].index_add_(0, place, valid.double().sum(0))
    return total


def print_seams(keys: list[str], store: Path, workdir: Path, args: argparse.Namespace) -> None:
    """`--seams`: `seam_jerk` of each row's last checkpoint on the first evaluation set."""
    for key in keys:
        row_dir = workdir / key
        label, windows = next(iter(evaluation_windows(store, args, read_seq_len(row_dir)).items()))
        print(f"{key}: jerk (mm/frame^3) by the block place of the last frame read, {label}")
        for name, values in seam_jerk(row_dir, store, windows, args.max_windows).items():
            print(f"  {name:<26}" + "".join(f"{v:8.2f}" for v in values))


def print_gap(keys: list[str], store: Path, workdir: Path, args: argparse.Namespace) -> None:
    """`--gap`: each row's last checkpoint on evenly spaced windows of the motion it trained on
    (train split), of the val split and on the evaluation sets, side by side: what the model
    fits against what it generalises to."""
    print(f"{'row / windows':<44}" + "".join(f"{h:>13}" for _, h, _ in COLUMNS))
    for key in keys:
        run_dir = workdir / key
        sets = {"train split": None, "val split": None}
        sets |= evaluation_windows(store, args, read_seq_len(run_dir))
        print(key)
        for label, windows in sets.items():
            split = label.removesuffix(" split") if label.endswith(" split") else "test"
            with mock.patch("train.evaluate.tqdm", lambda it, **k: it):
                metrics = evaluate(
                    run_dir / "checkpoints" / "last.pt",
                    str(store),
                    split,
                    run_dir / "eval_gap" / label.replace(" ", "_"),
                    max_windows=args.max_windows,
                    device="cpu",
                    windows=windows,
                )
            metrics = derived(metrics)
            cells = (
                "n/a" if metrics.get(k) is None else fmt.format(metrics[k]) for k, _, fmt in COLUMNS
            )
            print(f"  {label:<42}" + "".join(f"{c:>13}" for c in cells), flush=True)


def read_seq_len(run_dir: Path) -> int:
    """The training window of the run in `run_dir` (its config.json)."""
    return json.loads((run_dir / "config.json").read_text())["model"]["seq_len"]


def run_row(key: str, row: Row, store: Path, workdir: Path, args: argparse.Namespace) -> dict:
    model = MotionVAEConfig(hidden_dim=args.hidden, latent_dim=args.latent, **row.model)
    train = TrainConfig(
        batch_size=args.batch,
        lr=args.lr,
        warmup_steps=args.warmup,
        val_windows=64,
        seed=args.seed,
        **row.train,
    )
    runtime = RuntimeConfig(
        steps=args.steps,
        val_every=max(1, args.steps // 8),
        log_every=max(1, args.steps // 20),
        num_workers=0,
        device="cpu",
    )
    run_dir = workdir / key
    shutil.rmtree(run_dir, ignore_errors=True)
    # The seed row swaps the architecture for the non-causal reference; everything else
    # (data, loss, optimiser, evaluation) is the same code.
    swap = (
        mock.patch.multiple("train.fit", MotionVAE=ReferenceMotionVAE)
        if row.reference_model
        else nullcontext()
    )
    swap_eval = (
        mock.patch("train.inference.MotionVAE", ReferenceMotionVAE)
        if row.reference_model
        else nullcontext()
    )
    quiet = mock.patch("train.fit.tqdm", lambda *a, **k: tqdm(*a, **{**k, "disable": True}))
    wall0, cpu0 = time.perf_counter(), time.process_time()
    with swap, quiet:
        fit(RunConfig(model=model, train=train, runtime=runtime), str(store), run_dir)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    by_set = _evaluate_row(run_dir, store, args, model.seq_len, swap_eval)
    curve = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [c for c in curve if "val/mpjpe_world_mm" in c]
    return {
        "name": row.name,
        "train": row.train,
        "model": row.model,
        "wall_s": wall,
        "cpu_s": cpu,
        "metrics": next(iter(by_set.values())),
        "metrics_by_set": by_set,
        "curve": curve,
    }


def _evaluate_row(
    run_dir: Path, store: Path, args: argparse.Namespace, seq_len: int, swap_eval
) -> dict[str, dict]:
    """The row's last checkpoint on each evaluation set: derived metrics by set label."""
    by_set = {}
    for label, windows in evaluation_windows(store, args, seq_len).items():
        with swap_eval, mock.patch("train.evaluate.tqdm", lambda it, **k: it):
            metrics = evaluate(
                run_dir / "checkpoints" / "last.pt",
                str(store),
                "test",
                run_dir / "eval" / label.replace(" ", "_"),
                max_windows=args.max_windows,
                device="cpu",
                windows=windows,
            )
        by_set[label] = derived(metrics)
    return by_set


def evaluation_windows(
    store: Path, args: argparse.Namespace, seq_len: int
) -> dict[str, np.ndarray | None]:
    """What each row is evaluated on: the test split's unseen participants (synthetic), or the
    unseen style and the unseen content (real, `benchmarks.realmotion`); None = evenly spaced
    windows of the whole test split."""
    if args.data == "synth":
        return {"unseen participant": None}
    opened = open_store(store)
    records = opened.split("test")
    return {
        label: realmotion.subset_windows(records, subset, seq_len, args.max_windows)
        for label, subset in realmotion.evaluation_sets(opened).items()
        if subset
    }


def run_rows_in_processes(
    keys: list[str], workdir: Path, args: argparse.Namespace
) -> dict[str, dict]:
    """Each row in a `python -m benchmarks.bench_quality --rows KEY` child on the shared store."""
    shared_options = ("steps", "batch", "lr", "warmup", "hidden", "latent", "recordings",
                      "participants", "seed", "max_windows", "threads", "data", "real_source",
                      "real_cache")  # fmt: skip
    passed = [
        x
        for name in shared_options
        for x in (f"--{name.replace('_', '-')}", str(getattr(args, name)))
    ]
    pending, running, results = list(keys), {}, {}
    while pending or running:
        while pending and len(running) < args.parallel:
            key = pending.pop(0)
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.bench_quality",
                *passed,
                "--rows",
                key,
                "--workdir",
                str(workdir),
                "--json",
                str(workdir / f"{key}.json"),
                "--curves",
                str(workdir / f"{key}.png"),
            ]
            running[key] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        for key, proc in list(running.items()):
            if proc.poll() is not None:
                del running[key]
                if proc.returncode:
                    raise RuntimeError(f"row {key} failed with exit status {proc.returncode}")
                results[key] = json.loads((workdir / f"{key}.json").read_text())["results"][key]
                print(
                    f"  {ROWS[key].name}: done in {results[key]['wall_s'] / 60:.1f} min", flush=True
                )
        time.sleep(1)
    return {key: results[key] for key in keys}


def collect_rows(keys: list[str], workdir: Path) -> dict[str, dict]:
    """The results rows left in WORKDIR/ROW.json, named as today when run with today's settings."""
    missing = [k for k in keys if not (workdir / f"{k}.json").exists()]
    if missing:
        raise SystemExit(f"--collect: no results for rows {missing} in {workdir} (ROW.json)")
    results = {k: json.loads((workdir / f"{k}.json").read_text())["results"][k] for k in keys}
    for key, result in results.items():
        # A row run before a setting existed ran without it (train.config's ADDED_* values).
        row = ROWS[key]
        train = {k: v for k, v in ADDED_TRAIN_FIELDS.items() if k in row.train} | result["train"]
        model = {k: v for k, v in ADDED_MODEL_FIELDS.items() if k in row.model}
        if train == row.train and model | result.get("model", {}) == row.model:
            result["name"] = row.name
    return results


def format_table(results: dict[str, dict]) -> str:
    """One table per evaluation set (synthetic: the unseen participant; real: unseen style and
    unseen content)."""
    sets = next(iter(results.values())).get("metrics_by_set") or {"test": None}
    width = max(len(r["name"]) for r in results.values()) + 2
    tables = []
    for label in sets:
        head = f"{label:<{width}}" + "".join(f"{h:>13}" for _, h, _ in COLUMNS)
        lines = [head + f"{'wall min':>10}"]
        for r in results.values():
            metrics = r.get("metrics_by_set", {}).get(label, r["metrics"])
            cells = []
            for key, _, fmt in COLUMNS:
                value = metrics.get(key)
                cells.append(f"{'n/a' if value is None else fmt.format(value):>13}")
            lines.append(f"{r['name']:<{width}}" + "".join(cells) + f"{r['wall_s'] / 60:>10.1f}")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def plot_curves(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4 + 0.22 * len(results)))
    for r in results.values():
        steps = [c["step"] for c in r["curve"]]
        axes[0].plot(
            steps, [c["val/mpjpe_world_mm"] for c in r["curve"]], marker="o", label=r["name"]
        )
        axes[1].plot(
            steps, [c["val/mpjpe_head_mm"] for c in r["curve"]], marker="o", label=r["name"]
        )
    for ax, title in zip(axes, ("world MPJPE (mm), val", "head-frame MPJPE (mm), val")):
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    # Below the panels: the best curves end in the corner a legend inside would cover.
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06 * len(results) / 2 + 0.02, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def print_motion_comparison(real: Path, workdir: Path, args: argparse.Namespace) -> None:
    """What the real motion is like next to the synthetic generator's (a store of
    --recordings / --participants built in the work dir)."""
    synth = workdir / "synth_compare" / "store.zarr"
    if not synth.exists():
        synth = build_store(synth.parent, args.recordings, args.participants, args.seed)
    columns = {
        name: realmotion.motion_statistics(open_store(path))
        for name, path in (("real", real), ("synthetic", synth))
    }
    print("motion statistics, real vs synthetic (benchmarks.realmotion.motion_statistics):")
    print(realmotion.format_statistics(columns), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    for flag in ("collect", "seams", "gap"):
        if getattr(args, flag) and args.workdir is None:
            parser.error(f"--{flag} reads the rows' results from --workdir: give it")
    if args.rows == "all":
        args.rows = ",".join(ROWS)
    unknown = set(args.rows.split(",")) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; choose from {list(ROWS)}")
    torch.set_num_threads(args.threads)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_quality_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        store = _store(args, workdir)
        if store is None:
            return
        keys = args.rows.split(",")
        if args.seams:
            print_seams(keys, store, workdir, args)
            return
        if args.gap:
            print_gap(keys, store, workdir, args)
            return
        if args.data == "real" and not args.collect:
            print_motion_comparison(store, workdir, args)
        _print_header(args, store, workdir)
        if args.collect:
            results = collect_rows(keys, workdir)
        elif args.parallel > 1 and len(keys) > 1:
            results = run_rows_in_processes(keys, workdir, args)
        else:
            results = {key: _run_and_save_row(key, store, workdir, args) for key in keys}
        print(format_table(results))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(
                json.dumps(
                    {"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                    indent=1,
                )
                + "\n"
            )
        plot_curves(results, args.curves)
        print(
            f"learning curves in {args.curves}" + (f", results in {args.json}" if args.json else "")
        )
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    """Where the motion comes from: synthetic recordings or real motion capture."""
    parser.add_argument(
        "--data",
        choices=("synth", "real"),
        default="synth",
        help="synth: `preprocess synth` recordings; real: real motion capture "
        "from --real-source (benchmarks.realmotion) [synth]",
    )
    parser.add_argument(
        "--real-source",
        type=Path,
        default=realmotion.DEFAULT_SOURCE,
        help="folder with bandai2-bvh.tar.xz and make_clips.py "
        "[../shared/realmotion beside the checkout]",
    )
    parser.add_argument(
        "--real-cache",
        type=Path,
        default=realmotion.DEFAULT_CACHE,
        help="where the real clips and store are built once [data/bench_real]",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500, help="training steps per row")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--lr",
        type=float,
        default=2e-3,
        help="peak learning rate of every row [2e-3; 1e-3 before the metre terms x 3: "
        "BENCHMARKS.md says which rows]",
    )
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--hidden", type=int, default=128, help="reduced width, same code path")
    parser.add_argument("--latent", type=int, default=64)
    parser.add_argument("--recordings", type=int, default=40)
    parser.add_argument("--participants", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-windows", type=int, default=256, help="test windows evaluated (per evaluation set)"
    )
    _add_data_options(parser)
    parser.add_argument(
        "--rows",
        default=",".join(DEFAULT_ROWS),
        help=f"comma list of {list(ROWS)}, or 'all' [{','.join(DEFAULT_ROWS)}]",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per row")
    parser.add_argument(
        "--parallel",
        type=int,
        default=os.cpu_count() or 1,
        help="rows trained at once, each in its own process (they then share "
        "the machine's load alike) [the number of cores]",
    )
    parser.add_argument("--workdir", type=Path, help="keep stores and runs here [temp dir]")
    parser.add_argument("--json", type=Path, help="also write every metric and curve here")
    parser.add_argument("--curves", type=Path, default=Path("docs/quality_curves.png"))
    parser.add_argument(
        "--collect",
        action="store_true",
        help="train nothing: print the table and curves of rows already run in --workdir "
        "(each row leaves WORKDIR/ROW.json), e.g. rows run on other machines or interrupted",
    )
    parser.add_argument(
        "--seams",
        action="store_true",
        help="train nothing: print the jerk of each row's last checkpoint in --workdir by the "
        "place in its 4-frame latent block (seam_jerk), on --max-windows windows",
    )
    parser.add_argument(
        "--gap",
        action="store_true",
        help="train nothing: each row's last checkpoint in --workdir on windows of the train "
        "and val splits beside the evaluation sets (fitting against generalising)",
    )
    return parser


def _store(args: argparse.Namespace, workdir: Path) -> Path | None:
    """The store the rows train on: the real one (None, said, when its data is missing) or a
    synthetic one built in `workdir` once."""
    store = workdir / "store.zarr"
    if args.data == "real":
        try:
            return realmotion.real_store(args.real_source, args.real_cache)
        except realmotion.RealDataMissing as error:
            print(f"quality --data real: skipped: {error}")
            return None
    if not store.exists() and not (args.collect or args.seams or args.gap):
        store = build_store(workdir, args.recordings, args.participants, args.seed)
    return store


def _print_header(args: argparse.Namespace, store: Path, workdir: Path) -> None:
    if args.collect:
        print(f"quality: rows collected from {workdir} (each row's settings are in its JSON)")
        return
    data = (
        f"real motion capture ({store})"
        if args.data == "real"
        else f"{args.recordings} recordings / {args.participants} participants"
    )
    print(
        f"quality: {data}, test = unseen participants; "
        f"each row {args.steps} steps x batch {args.batch}, "
        f"hidden {args.hidden}, latent {args.latent}, lr {args.lr}, CPU {args.threads} "
        "threads",
        flush=True,
    )


def _run_and_save_row(key: str, store: Path, workdir: Path, args: argparse.Namespace) -> dict:
    """Train and evaluate row `key` in this process; its results also in WORKDIR/KEY.json."""
    result = run_row(key, ROWS[key], store, workdir, args)
    row_json = {"args": {k: str(v) for k, v in vars(args).items()}, "results": {key: result}}
    (workdir / f"{key}.json").write_text(json.dumps(row_json, indent=1) + "\n")
    print(f"  {ROWS[key].name}: done in {result['wall_s'] / 60:.1f} min", flush=True)
    return result


if __name__ == "__main__":
    main()
