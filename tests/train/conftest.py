"""Fixtures for trainer tests: a real feature store built by the real preprocess CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from preprocess import synth


def cli_build(data: Path, out: Path, *extra: str) -> Path:
    """`python -m preprocess build DATA --out OUT --scheduler synchronous EXTRA...`, the real
    CLI in a subprocess; returns OUT."""
    build = [sys.executable, "-m", "preprocess", "build", str(data), "--out", str(out)]
    subprocess.run([*build, "--scheduler", "synchronous", *extra], check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def build_store():
    """`cli_build`, for the test modules that build stores of their own."""
    return cli_build


@pytest.fixture(scope="session")
def feature_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A feature store from 6 synthetic recordings x 4 clips (4 participants), built with
    `python -m preprocess build --scheduler synchronous`. Read-only for the session."""
    root = tmp_path_factory.mktemp("train_store")
    synth.generate_dataset(root / "hdf5", recordings=6, seed=1, clips_per_recording=4)
    store = cli_build(root / "hdf5", root / "nymeria.zarr")
    return store


TINY_MODEL = ["--hidden-dim", "32", "--latent-dim", "16", "--blocks-per-stage", "1"]
