"""Faults around the trainer's files: damaged or hostile checkpoints, a full disk while saving
a checkpoint or writing latents. The full disk is real: the commands run in a subprocess under a
file size limit (RLIMIT_FSIZE), so the kernel fails their writes with EFBIG, as it fails them
with ENOSPC on a full disk."""

from __future__ import annotations

import os
import pickle
import re
import resource
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tests.train.conftest import TINY_MODEL
from train.checkpoint import CheckpointError, load_checkpoint
from train.cli import main
from train.model import MotionVAE, MotionVAEConfig

SIDE_EFFECT = "pwned-by-checkpoint"


class _RunsCode:
    """Unpickling this creates a file: proof that a pickle executed code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _hostile_checkpoints(tmp_path: Path) -> dict[str, Path]:
    marker = tmp_path / SIDE_EFFECT
    good = tmp_path / "good.pt"
    torch.save({"format": 1, "model": {"w": torch.zeros(1000)}}, good)
    files = {
        "garbage": os.urandom(4096),
        "empty": b"",
        "truncated": good.read_bytes()[: good.stat().st_size // 2],
        "legacy pickle that runs code": pickle.dumps({"format": 1, "x": _RunsCode(marker)}),
        "json": b'{"format": 1}',
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name.replace(' ', '_')}.pt"
        paths[name].write_bytes(data)
    evil_pickle = pickle.dumps({"format": 1, "x": _RunsCode(marker)}, protocol=2)
    edits = {  # real torch zip archives with one member replaced
        "zip whose pickle runs code": lambda item, data: (
            evil_pickle if item.endswith("data.pkl") else data
        ),
        "zip with a short tensor": lambda item, data: (
            data[:100] if item.endswith("data/0") else data
        ),
    }
    for name, edit in edits.items():
        paths[name] = tmp_path / f"{name.replace(' ', '_')}.pt"
        with zipfile.ZipFile(good) as source, zipfile.ZipFile(paths[name], "w") as edited:
            for item in source.namelist():
                edited.writestr(item, edit(item, source.read(item)))
    paths["other format"] = tmp_path / "other_format.pt"
    torch.save({"format": 7}, paths["other format"])
    paths["fields missing"] = good  # format 1, but not a Checkpoint's fields
    return paths


def test_damaged_or_hostile_checkpoints_are_one_line_errors_and_never_run_code(
    feature_store, tmp_path
):
    expected = {
        "garbage": "not a checkpoint", "empty": "not a checkpoint", "truncated": "not a checkpoint",
        "legacy pickle that runs code": "not a checkpoint", "json": "not a checkpoint",
        "zip whose pickle runs code": "cannot be loaded safely",
        "zip with a short tensor": "cannot be loaded safely",
        "other format": "found format 7",
        "fields missing": "checkpoint fields differ",
    }  # fmt: skip
    for name, path in _hostile_checkpoints(tmp_path).items():
        with pytest.raises(CheckpointError, match=expected[name]):
            load_checkpoint(path)
        result = CliRunner().invoke(
            main,
            [
                "eval",
                "--ckpt",
                str(path),
                "--store",
                str(feature_store),
                "--out",
                str(tmp_path / "eval"),
            ],
        )
        assert result.exit_code == 1, (name, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and str(path) in lines[0], (
            name,
            lines,
        )
        assert expected[name] in lines[0] and "Traceback" not in result.output
        assert "weights_only" not in result.output  # torch advises loading it unsafely
    assert not (tmp_path / SIDE_EFFECT).exists()


def _limited(limit_bytes: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return apply


def _run(args: list[str], limit_bytes: int | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "train", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=None if limit_bytes is None else _limited(limit_bytes),
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _error_lines(stderr: str) -> list[str]:
    """The CLI's error lines (a progress bar may share the terminal line)."""
    return re.findall(r"Error: [^\r\n]*", stderr)


@pytest.mark.slow
def test_disk_full_at_the_first_checkpoint_keeps_the_run_and_encode_leaves_nothing(
    feature_store, tmp_path
):
    run = tmp_path / "run"
    fit = [
        "fit",
        "--store",
        str(feature_store),
        "--out",
        str(run),
        "--num-workers",
        "0",
        "--val-windows",
        "4",
        *TINY_MODEL,
        "--steps",
        "6",
        "--val-every",
        "3",
        "--batch-size",
        "4",
        "--device",
        "cpu",
    ]
    # Room for the model alone (the step-0 checkpoint), not for model + Adam state (step 3).
    tiny = MotionVAEConfig(hidden_dim=32, latent_dim=16, blocks_per_stage=1)  # TINY_MODEL
    params = 4 * MotionVAE(tiny).num_parameters()  # bytes of the TINY_MODEL parameters
    full = _run(fit, limit_bytes=2 * params)
    assert full.returncode == 1, full.stderr
    assert "Traceback" not in full.stderr, full.stderr
    (line,) = _error_lines(full.stderr)
    assert line.startswith("Error: saving the checkpoint of step 3: the file size limit"), line
    last = run / "checkpoints" / "last.pt"
    assert f"writing {last}" in line and "--resume" in line
    needs = re.search(r"needs about ([\d.]+) MB free", line)
    # model + 2 Adam moments, rounded to 0.1 MB
    assert needs and 2.5 * params <= float(needs[1]) * 1e6 < 4 * params, line
    assert load_checkpoint(last).step == 0  # the run is still there, resumable
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.pt"]  # no temp file left

    resumed = CliRunner().invoke(main, [*fit, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert load_checkpoint(last).step == 6
    best = run / "checkpoints" / "best.pt"
    assert load_checkpoint(best).step in (3, 6)
    if load_checkpoint(best).step == 6:
        assert best.samefile(last)  # a hard link: no second copy on disk

    out = tmp_path / "latents.zarr"
    encode = [
        "encode",
        "--ckpt",
        str(last),
        "--store",
        str(feature_store),
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    failed = _run(encode, limit_bytes=20_000)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    (line,) = _error_lines(failed.stderr)
    assert line.startswith(
        f"Error: writing {out}: the file size limit (`ulimit -f`) was reached"
    ), line
    assert "needs about" in line and "nothing was written" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "run"
    ]  # neither out nor its partial directory
