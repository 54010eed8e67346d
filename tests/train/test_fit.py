"""End-to-end training on a real synthetic store: CLI, checkpoints, resume, DDP."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

import shared.store
from tests.train.conftest import TINY_MODEL
from train.checkpoint import load_checkpoint, save_checkpoint
from train.cli import main
from train.fit import log_interval, lr_factor, warmup_of
from train.model import MotionVAE, MotionVAEConfig

VALIDATION_LINE = (
    r"(?m)step \d+/\d+: val loss [\d.e+-]+, MPJPE world [\d.]+ mm, head frame [\d.]+ mm$"
)


def _fit_args(store: Path, run: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "--store",
        str(store),
        "--out",
        str(run),
        "--num-workers",
        "0",
        "--val-windows",
        "8",
        *TINY_MODEL,
        *extra,
    ]


def _train_losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/total"] for r in rows if "train/total" in r}


def test_short_fit_lowers_the_loss_and_writes_a_loadable_checkpoint(feature_store, tmp_path):
    run = tmp_path / "run"
    args = _fit_args(
        feature_store,
        run,
        "--steps",
        "300",
        "--batch-size",
        "16",
        "--lr",
        "5e-3",
        "--hidden-dim",
        "64",
        "--seq-len",
        "32",
        "--warmup-steps",
        "10",
        "--log-every",
        "10",
        "--val-every",
        "150",
    )
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "MPJPE head frame" in result.output
    losses = list(_train_losses(run).values())
    assert len(losses) == 30
    assert sum(losses[-3:]) < 0.75 * sum(losses[:3]), losses
    for name in (
        "config.json",
        "run_info.json",
        "loss_curve.png",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
    ):
        assert (run / name).exists(), name
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt.step == 300 and ckpt.config["model"]["hidden_dim"] == 64
    assert ckpt.stats_mean.shape == (294,) and ckpt.layout["dim"] == 294
    model = MotionVAE(MotionVAEConfig(**ckpt.config["model"]))
    model.load_state_dict(ckpt.model)
    run_info = json.loads((run / "run_info.json").read_text())
    assert run_info["store"]["fingerprint"] == ckpt.store_fingerprint
    assert run_info["git_revision"]


def test_each_validation_prints_a_line_and_a_short_run_warms_up_decays_and_logs(
    feature_store, tmp_path, caplog
):
    run = tmp_path / "run"
    args = _fit_args(
        feature_store,
        run,
        "--steps",
        "6",
        "--val-every",
        "3",
        "--batch-size",
        "2",
        "--seq-len",
        "32",
        "--device",
        "cpu",
    )
    # --warmup-steps 500 and --log-every 50 by default: longer than the run.
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    # CliRunner gives stdout (these lines) after stderr (the bar), without a newline between.
    printed = re.findall(VALIDATION_LINE, result.output)
    assert [ln.split(":")[0] for ln in printed] == ["step 3/6", "step 6/6"], result.output
    assert "warming up for 3 steps, then the cosine decay" in caplog.text
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    lr = [r["train/lr"] for r in rows if "train/lr" in r]
    assert len(lr) == 6  # every step logged: a short run still draws a loss curve
    peak = max(lr)
    assert peak == pytest.approx(1e-4) and lr.index(peak) < 3  # warmed up in half the run
    assert lr[-1] == pytest.approx(1e-6)  # and decayed to the floor (min_lr_ratio 0.01)
    for line, row in zip(printed, [r for r in rows if "val/total" in r], strict=True):
        assert f"MPJPE world {row['val/mpjpe_world_mm']:.1f} mm" in line
        assert f"head frame {row['val/mpjpe_head_mm']:.1f} mm" in line


def test_warm_up_and_log_interval_adapt_to_short_runs_only():
    assert warmup_of(500, 20_000) == 500 and warmup_of(500, 1000) == 500
    assert warmup_of(500, 20) == 10 and warmup_of(500, 1) == 0
    factors = [lr_factor(s, 500, 20, 0.01) for s in range(21)]
    assert factors[9] == pytest.approx(1.0) and factors[20] == pytest.approx(0.01)
    assert lr_factor(0, 500, 1, 0.01) == pytest.approx(1.0)  # a 1-step run: no warm-up at all
    assert log_interval(50, 20_000) == 50 and log_interval(50, 1000) == 50
    assert log_interval(50, 240) == 12 and log_interval(50, 6) == 1


def test_missing_store_says_how_to_build_one(tmp_path):
    result = CliRunner().invoke(
        main, ["fit", "--store", str(tmp_path / "nope.zarr"), "--out", str(tmp_path / "r")]
    )
    assert result.exit_code != 0
    assert "make preprocess DATA=" in result.output


def test_existing_run_needs_resume_and_incompatible_resume_says_what_differs(
    feature_store, tmp_path
):
    run = tmp_path / "run"
    args = _fit_args(feature_store, run, "--steps", "2", "--val-every", "2")
    assert CliRunner().invoke(main, args).exit_code == 0
    again = CliRunner().invoke(main, args)
    assert again.exit_code != 0 and "--resume" in again.output
    changed = CliRunner().invoke(main, [*args, "--resume", "--lr", "0.5", "--steps", "4"])
    assert changed.exit_code != 0
    assert "train.lr: 0.0001 -> 0.5" in changed.output
    # A --config file sits on top of the resumed run's config: only what it sets differs.
    config = tmp_path / "lr.toml"
    config.write_text("[train]\nlr = 0.5\n")
    bare = ["fit", "--store", str(feature_store), "--out", str(run), "--resume"]
    from_file = CliRunner().invoke(main, [*bare, "--config", str(config)])
    assert from_file.exit_code != 0 and "train.lr: 0.0001 -> 0.5" in from_file.output
    assert "hidden_dim" not in from_file.output and "val_windows" not in from_file.output


def _before_runtime_section(config: dict) -> dict:
    """A run's config as saved before the `runtime` section: its fields under `train`."""
    return {"model": config["model"], "train": {**config["train"], **config["runtime"]}}


def test_a_run_saved_before_the_runtime_section_resumes_and_may_change_how_it_runs(
    feature_store, tmp_path
):
    run = tmp_path / "run"
    assert CliRunner().invoke(main, _fit_args(feature_store, run, "--steps", "2")).exit_code == 0
    saved = run / "config.json"
    saved.write_text(json.dumps(_before_runtime_section(json.loads(saved.read_text()))))
    for path in (run / "checkpoints").glob("*.pt"):
        ckpt = load_checkpoint(path)
        save_checkpoint(path, replace(ckpt, config=_before_runtime_section(ckpt.config)))
    config = tmp_path / "runtime.toml"
    config.write_text("[runtime]\nlog_every = 1\nckpt_every = 1\n")
    resume = ["fit", "--resume", str(run), "--config", str(config)]
    resumed = CliRunner().invoke(main, [*resume, "--steps", "3", "--val-every", "3"])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming at step 2 of 3" in resumed.output
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt.step == 3 and ckpt.config["runtime"]["log_every"] == 1
    assert ckpt.config["runtime"]["steps"] == 3 and "steps" not in ckpt.config["train"]
    # What the run computes may not change, from a file as from an option.
    config.write_text("[train]\nbatch_size = 8\n")
    changed = CliRunner().invoke(main, [*resume, "--steps", "4", "--hidden-dim", "16"])
    assert changed.exit_code != 0
    assert "train.batch_size: 32 -> 8" in changed.output
    assert "model.hidden_dim: 32 -> 16" in changed.output and "steps" not in changed.output


def test_non_finite_loss_stops_with_checkpoint_and_names_step(feature_store, tmp_path, monkeypatch):
    import train.fit as fit_module

    real_loss = fit_module.training_loss

    def loss_that_explodes_at_step_3(*args, **kwargs):
        terms = real_loss(*args, **kwargs)
        if loss_that_explodes_at_step_3.calls == 3:
            terms["mse/head_3D"] = terms["mse/head_3D"] * float("nan")
            terms["total"] = terms["total"] + terms["mse/head_3D"]
        loss_that_explodes_at_step_3.calls += 1
        return terms

    loss_that_explodes_at_step_3.calls = 0
    monkeypatch.setattr(fit_module, "training_loss", loss_that_explodes_at_step_3)
    run = tmp_path / "run"
    result = CliRunner().invoke(
        main, _fit_args(feature_store, run, "--steps", "10", "--val-every", "100")
    )
    assert result.exit_code != 0
    assert "non-finite loss at step 3" in result.output and "mse/head_3D=nan" in result.output
    assert load_checkpoint(run / "checkpoints" / "last.pt").step == 3


def test_non_finite_store_features_are_not_blamed_on_divergence(feature_store, tmp_path):
    store = tmp_path / "nan.zarr"
    shutil.copytree(feature_store, store)
    features = zarr.open_group(store, mode="r+")[shared.store.FEATURES]
    features[:] = np.full(features.shape, np.nan, np.float32)  # valid checksums: a bad build
    # Without the chunk check (which names the chunk first: test_fit_reliability.py).
    args = _fit_args(store, tmp_path / "run", "--steps", "3", "--no-chunk-check")
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert "non-finite loss at step 0" in result.output
    # The progress bar is closed first: the error starts on a line of its own.
    assert any(line.startswith("Error: non-finite") for line in result.output.splitlines())
    assert "the input itself is not finite: store frame" in result.output
    assert "dim 0 (hr[0])" in result.output and "python -m preprocess verify" in result.output


def test_killed_run_resumes_to_the_same_losses(feature_store, tmp_path):
    common = [
        "--steps",
        "60",
        "--val-every",
        "15",
        "--log-every",
        "1",
        "--batch-size",
        "4",
        "--warmup-steps",
        "10",
        "--mirror-prob",  # the augmentations draw from the per-step seed: resumable too
        "0.5",
        "--speed-prob",
        "0.5",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "train"]
    reference = tmp_path / "reference"
    subprocess.run(
        [*cmd, *_fit_args(feature_store, reference, *common)],
        check=True,
        capture_output=True,
        env=env,
    )

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [*cmd, *_fit_args(feature_store, killed, *common)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = killed / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    step0 = last.stat().st_ino if last.exists() else None  # written before training starts
    while (
        last.exists()
        and last.stat().st_ino == step0
        and proc.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = load_checkpoint(last).step
    assert 0 < stopped_at < 60, "the run finished before it could be killed; make it longer"
    subprocess.run(
        [*cmd, *_fit_args(feature_store, killed, *common), "--resume"],
        check=True,
        capture_output=True,
        env=env,
    )

    expected, resumed = _train_losses(reference), _train_losses(killed)
    assert sorted(resumed) == list(range(1, 61))
    for step in range(1, 61):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-9), step
    final_a = load_checkpoint(reference / "checkpoints" / "last.pt").model
    final_b = load_checkpoint(killed / "checkpoints" / "last.pt").model
    for key in final_a:
        torch.testing.assert_close(final_a[key], final_b[key], rtol=1e-6, atol=1e-7)


def test_ddp_two_processes_on_cpu(feature_store, tmp_path):
    run = tmp_path / "ddp"
    fit = _fit_args(
        feature_store,
        run,
        "--steps",
        "6",
        "--val-every",
        "3",
        "--log-every",
        "1",
        "--batch-size",
        "4",
        "--device",
        "cpu",
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "train",
        *fit,
    ]
    out = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
        check=False,  # the assertion below shows the stderr
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((run / "run_info.json").read_text())["world_size"] == 2
    losses = _train_losses(run)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]  # rank 0 alone writes metrics: one line per step
    assert load_checkpoint(run / "checkpoints" / "last.pt").step == 6


def _two_steps(feature_store: Path, run: Path, *extra: str) -> dict[int, float]:
    args = _fit_args(
        feature_store,
        run,
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--seq-len",
        "32",
        "--log-every",
        "1",
        "--val-every",
        "2",
        "--device",
        "cpu",
        *extra,
    )
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return _train_losses(run)


def test_bf16_mixed_precision_trains_on_cpu(feature_store, tmp_path):
    """--precision bf16-mixed runs the forward under bfloat16 autocast on the CPU too: the same
    run's losses move by bf16 rounding, not more; a run saved with the old `bf16` flag resumes
    with the precision it had."""
    full = _two_steps(feature_store, tmp_path / "32", "--precision", "32")
    mixed = _two_steps(feature_store, tmp_path / "bf16", "--precision", "bf16-mixed")
    assert list(full) == list(mixed) == [1, 2]
    for step, loss in full.items():
        assert mixed[step] != loss and mixed[step] == pytest.approx(loss, rel=0.05)
    saved = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert saved["train"]["precision"] == "bf16-mixed"

    from train.config import RunConfig, saved_config

    for bf16, precision in ((True, "auto"), (False, "32")):
        old = {**saved, "train": {**saved["train"], "bf16": bf16}}
        del old["train"]["precision"]
        assert RunConfig.from_dict(saved_config(old)).train.precision == precision


@pytest.mark.slow
def test_compile_trains_on_cpu_with_the_eager_losses(feature_store, tmp_path, monkeypatch):
    """--compile runs the model through torch.compile and gives the eager run's losses to float32
    rounding. The backend is AOTAutograd without code generation (`aot_eager`): the graphs fit
    builds are those inductor would compile, and inductor's own C++ compile of even the tiny
    model took minutes on the shared 2-core machine."""
    import functools

    import train.fit

    monkeypatch.setattr(
        train.fit.torch, "compile", functools.partial(torch.compile, backend="aot_eager")
    )
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager = _two_steps(feature_store, tmp_path / "eager", "--precision", "32")
    compiled = _two_steps(feature_store, tmp_path / "compiled", "--precision", "32", "--compile")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it did compile
    assert list(compiled) == [1, 2]
    for step, loss in eager.items():
        assert compiled[step] == pytest.approx(loss, rel=1e-4)
    torch._dynamo.reset()
