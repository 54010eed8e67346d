"""`train fit` against damage and interruption: a damaged store chunk or an exploding loss stops
the run with one line; Ctrl-C/SIGTERM checkpoint and print the command that resumes; leftovers
of killed checkpoint writes go; hostile checkpoints are refused in our own words."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import shared.store
from preprocess import synth
from shared.atomic import temp_path_for
from shared.store import open_store
from tests.shared.test_store import _flip_to_huge, _swap
from tests.train.conftest import TINY_MODEL
from tests.train.test_disk_and_checkpoint_faults import SIDE_EFFECT, _hostile_checkpoints
from train.checkpoint import load_checkpoint
from train.cli import main
from train.data import WindowIndex

CHUNK_FRAMES = 64
SEQ_LEN = 32


@pytest.fixture(scope="module")
def chunked_store(tmp_path_factory: pytest.TempPathFactory, build_store) -> Path:
    """A store of 4 synthetic recordings in 64-frame chunks (a few dozen chunks, train sequences
    spanning many), built by the real CLI. Read-only: tests damage copies."""
    root = tmp_path_factory.mktemp("chunked_store")
    synth.generate_dataset(root / "hdf5", recordings=4, seed=1, clips_per_recording=4)
    return build_store(root / "hdf5", root / "store.zarr", "--chunk-frames", str(CHUNK_FRAMES))


def _fit_args(store: Path | None, run: Path, *extra: str) -> list[str]:
    store_args = [] if store is None else ["--store", str(store)]
    return [
        "fit",
        *store_args,
        "--out",
        str(run),
        "--val-windows",
        "8",
        "--seq-len",
        str(SEQ_LEN),
        "--batch-size",
        "8",
        *TINY_MODEL,
        *extra,
    ]


def _inner_train_chunk(store: Path) -> int:
    """A features chunk whose frames and both seams lie inside one train sequence."""
    opened = open_store(store)
    for record in opened.split("train"):
        first = -(-record.start // CHUNK_FRAMES) + 1
        if (first + 2) * CHUNK_FRAMES < record.stop:
            return first
    raise AssertionError("no train sequence spans three chunks; make the store longer")


def _copy(store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "damaged.zarr"
    shutil.copytree(store, copy)
    return copy


def _zero(path: Path) -> None:
    path.write_bytes(bytes(path.stat().st_size))


def _nan_in_contact(store: Path, frame: int) -> None:
    contact = zarr.open_group(store, mode="r+")[shared.store.CONTACT]
    contact[frame, 1] = np.nan  # through zarr: the checksum is valid, the value is not


DAMAGE = {
    "flipped byte, stale checksum (3.2e38)": lambda s, k: _flip_to_huge(s / f"features/c/{k}/0"),
    "swapped chunks": lambda s, k: _swap(s / f"features/c/{k}/0", s / f"features/c/{k + 1}/0"),
    "NaN in contact": lambda s, k: _nan_in_contact(s, k * CHUNK_FRAMES + 5),
    "zeroed chunk": lambda s, k: _zero(s / f"features/c/{k}/0"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_chunk_stops_fit_with_one_line(chunked_store, tmp_path, damage):
    store = _copy(chunked_store, tmp_path)
    k = _inner_train_chunk(store)
    DAMAGE[damage](store, k)
    run = tmp_path / "run"
    # One loader worker: the check runs there and its finding crosses to the training process.
    result = CliRunner().invoke(
        main, _fit_args(store, run, "--steps", "200", "--val-every", "1000", "--num-workers", "1")
    )
    assert result.exit_code == 1, result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "Traceback" not in result.output, result.output
    array = "contact" if "contact" in damage else "features"
    frames = f"frames {k * CHUNK_FRAMES}-{(k + 1) * CHUNK_FRAMES - 1}"
    assert re.search(rf"{array} chunk {k} \(file {array}/c/{k}/0, {frames}\)", error[0]), error
    assert f"store {store} is damaged" in error[0] and "preprocess verify" in error[0]
    assert load_checkpoint(run / "checkpoints" / "last.pt").step == 0  # the run is resumable


def test_no_chunk_check_trains_on_the_damage(chunked_store, tmp_path):
    store = _copy(chunked_store, tmp_path)
    DAMAGE["swapped chunks"](store, _inner_train_chunk(store))  # finite, plausible values
    args = _fit_args(
        store, tmp_path / "run", "--steps", "20", "--num-workers", "0", "--no-chunk-check"
    )
    assert CliRunner().invoke(main, args).exit_code == 0


def test_exploding_loss_stops_naming_the_batch_frames(chunked_store, tmp_path):
    """A chunk whose values are 1000x too large but consistent (valid checksum, finite, seams
    checked off) makes a finite loss explode when a batch first reads it."""
    store = _copy(chunked_store, tmp_path)
    opened = open_store(store)
    index = WindowIndex(opened.split("train"), SEQ_LEN)
    k, seed, step = _chunk_first_read_late(index, batch_size=8)
    features = zarr.open_group(store, mode="r+")[shared.store.FEATURES]
    rows = slice(k * CHUNK_FRAMES, (k + 1) * CHUNK_FRAMES)
    features[rows] = features[rows] * 1000
    run = tmp_path / "run"
    args = _fit_args(
        store,
        run,
        "--steps",
        str(step + 5),
        "--val-every",
        "1000",
        "--seed",
        str(seed),
        "--num-workers",
        "0",
        "--no-chunk-check",
    )
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    error = next(line for line in result.output.splitlines() if line.startswith("Error:"))
    assert "exploding loss" in error and f"at step {step} " in error, error
    spans = re.search(r"store frames (\d+)-(\d+) \(sequence ", error)
    first, last = int(spans[1]), int(spans[2])
    assert first <= (k + 1) * CHUNK_FRAMES - 1 and last >= k * CHUNK_FRAMES, error  # the culprit
    assert load_checkpoint(run / "checkpoints" / "last.pt").step == step  # before the bad update


def _chunk_first_read_late(index: WindowIndex, batch_size: int) -> tuple[int, int, int]:
    """(chunk, seed, step): a train chunk the seed's batches first read at a step in [25, 60)
    (after the loss history fills) and no earlier batch touches."""
    for seed in range(50):
        first_read: dict[int, int] = {}
        for step in range(60):
            _, start, valid = index.locate(index.sample(seed, 0, step, batch_size))
            for s, n in zip(start.tolist(), valid.tolist()):
                for chunk in range(s // CHUNK_FRAMES, (s + n - 1) // CHUNK_FRAMES + 1):
                    first_read.setdefault(chunk, step)
        late = [(step, chunk) for chunk, step in first_read.items() if 25 <= step]
        if late:
            step, chunk = min(late)
            return chunk, seed, step
    raise AssertionError("no seed reads a chunk late; use smaller batches")


def test_ckpt_every_saves_between_validations(chunked_store, tmp_path, monkeypatch):
    import train.fit as fit_module

    saved = []
    real_save = fit_module.save_checkpoint
    monkeypatch.setattr(
        fit_module,
        "save_checkpoint",
        lambda path, ckpt: saved.append(ckpt.step) or real_save(path, ckpt),
    )
    args = _fit_args(
        chunked_store,
        tmp_path / "run",
        "--steps",
        "7",
        "--val-every",
        "6",
        "--ckpt-every",
        "2",
        "--num-workers",
        "0",
    )
    assert CliRunner().invoke(main, args).exit_code == 0
    assert saved == [0, 2, 4, 6, 7]  # step 0 at the start, 6 by validation, 7 at the end


def _start(args: list[str], stderr: Path) -> subprocess.Popen:
    """`python -m train ARGS` in its own process group (a terminal's Ctrl-C reaches the group:
    the loader workers too)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with stderr.open("w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "train", *args],
            env=env,
            stderr=err,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert proc.poll() is None, f"the run exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _training(run: Path) -> bool:
    metrics = run / "metrics.jsonl"
    return metrics.exists() and metrics.read_text().count("\n") >= 2


def _resume_command(stderr: str) -> list[str]:
    found = re.search(r"resume with: (.+)$", stderr, re.MULTILINE)
    assert found, stderr[-2000:]
    return shlex.split(found[1])


@pytest.mark.slow
def test_ctrl_c_then_sigterm_checkpoint_and_print_the_resume_command(chunked_store, tmp_path):
    run, err = tmp_path / "run", tmp_path / "stderr.txt"
    args = _fit_args(
        chunked_store,
        run,
        "--steps",
        "100000",
        "--val-every",
        "100000",
        "--log-every",
        "1",
        "--num-workers",
        "1",
    )
    proc = _start(args, err)
    _wait_for(lambda: _training(run), proc, "training started")
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole process group
    assert proc.wait(timeout=120) == 128 + signal.SIGINT
    stderr = err.read_text()
    stopped = re.search(r"interrupted by SIGINT after step (\d+) of 100000", stderr)
    assert stopped, stderr[-2000:]
    assert load_checkpoint(run / "checkpoints" / "last.pt").step == int(stopped[1]) > 0
    command = _resume_command(stderr)
    assert command[-2:] == ["--resume", str(run)] and "--store" not in command

    # The printed command alone continues, store and settings from the run directory.
    assert command[:3] == [sys.executable, "-m", "train"]
    proc = _start(command[3:], err)
    resuming = f"resuming at step {stopped[1]} of 100000"
    _wait_for(lambda: resuming in err.read_text(), proc, "the resumed run's first line")
    first_lines = (run / "metrics.jsonl").read_text().count("\n")
    _wait_for(
        lambda: (run / "metrics.jsonl").read_text().count("\n") > first_lines,
        proc,
        "a resumed step",
    )
    proc.send_signal(signal.SIGTERM)  # a scheduler's stop: this process only
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    stderr = err.read_text()
    again = re.search(r"interrupted by SIGTERM after step (\d+) of 100000", stderr)
    assert again and int(again[1]) > int(stopped[1]), stderr[-2000:]
    assert load_checkpoint(run / "checkpoints" / "last.pt").step == int(again[1])
    assert _resume_command(stderr) == command
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".partial")]


@pytest.mark.slow
def test_a_second_signal_aborts_at_once_and_keeps_the_last_checkpoint(chunked_store, tmp_path):
    run, err = tmp_path / "run", tmp_path / "stderr.txt"
    never = "100000"
    args = _fit_args(
        chunked_store,
        run,
        "--steps",
        never,
        "--val-every",
        never,
        "--ckpt-every",
        never,
        "--log-every",
        "1",
        "--num-workers",
        "0",
    )
    proc = _start(args, err)
    _wait_for(lambda: _training(run), proc, "training started")
    os.kill(proc.pid, signal.SIGINT)
    os.kill(proc.pid, signal.SIGTERM)  # both reach the handlers before the step ends
    assert proc.wait(timeout=120) == 128 + signal.SIGINT
    stderr = err.read_text()
    assert re.search(
        r"aborted at once by a second SIGINT during step \d+ of 100000: \S+ holds "
        r"step 0; resume with: ",
        stderr,
    ), stderr[-2000:]
    assert load_checkpoint(run / "checkpoints" / "last.pt").step == 0


def test_resume_without_store_uses_the_runs_store_and_cleans_dead_temp_files(
    chunked_store, tmp_path
):
    run = tmp_path / "run"
    args = _fit_args(chunked_store, run, "--steps", "2", "--num-workers", "0")
    assert CliRunner().invoke(main, args).exit_code == 0
    checkpoints = run / "checkpoints"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    live = temp_path_for(checkpoints / "last.pt")  # this process's: alive
    live.write_bytes(b"x")
    leftovers = [
        live.with_name(re.sub(r"\.\d+\.(\w+)\.partial$", rf".{dead}.\1.partial", live.name)),
        checkpoints / f".best.pt.{dead}.0123abcd.partial",  # named before hosts were recorded
    ]
    os.link(checkpoints / "last.pt", leftovers[0])  # a whole old checkpoint, hard-linked
    leftovers[1].write_bytes(b"half")

    result = CliRunner().invoke(main, ["fit", "--resume", str(run), "--steps", "3"])
    assert result.exit_code == 0, result.output
    assert "resuming at step 2 of 3" in result.output
    assert load_checkpoint(checkpoints / "last.pt").step == 3
    assert live.exists() and not any(p.exists() for p in leftovers)


def test_resume_and_out_must_name_the_same_run(tmp_path):
    result = CliRunner().invoke(
        main, ["fit", "--resume", str(tmp_path / "a"), "--out", str(tmp_path / "b")]
    )
    assert result.exit_code == 2 and "--resume" in result.output and "--out" in result.output
    result = CliRunner().invoke(main, ["fit"])
    assert result.exit_code == 2 and "--out" in result.output


def test_hostile_checkpoint_is_refused_without_torchs_unsafe_advice(chunked_store, tmp_path):
    run = tmp_path / "run"
    assert (
        CliRunner()
        .invoke(main, _fit_args(chunked_store, run, "--steps", "1", "--num-workers", "0"))
        .exit_code
        == 0
    )
    hostile = _hostile_checkpoints(tmp_path)["zip whose pickle runs code"]
    assert zipfile.is_zipfile(hostile)
    shutil.copyfile(hostile, run / "checkpoints" / "last.pt")
    result = CliRunner().invoke(main, ["fit", "--resume", str(run), "--steps", "2"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    assert "weights_only" not in result.output and "torch.load" not in result.output
    assert "posix.system" in lines[0] and "refused" in lines[0]
    assert not (tmp_path / SIDE_EFFECT).exists()
