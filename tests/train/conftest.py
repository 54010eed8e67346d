"""Fixtures for trainer tests: a real feature store built by the real preprocess CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from preprocess import synth


@pytest.fixture(scope="session")
def feature_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A feature store from 6 synthetic recordings x 4 clips (4 participants), built with
    `python -m preprocess build --scheduler synchronous`. Read-only for the session."""
    root = tmp_path_factory.mktemp("train_store")
    synth.generate_dataset(root / "hdf5", recordings=6, seed=1, clips_per_recording=4)
    store = root / "nymeria.zarr"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "preprocess",
            "build",
            str(root / "hdf5"),
            "--out",
            str(store),
            "--scheduler",
            "synchronous",
        ],
        check=True,
        capture_output=True,
    )
    return store


TINY_MODEL = ["--hidden-dim", "32", "--latent-dim", "16", "--blocks-per-stage", "1"]
