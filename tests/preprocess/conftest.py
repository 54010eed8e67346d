"""Fixtures shared by the preprocess tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from preprocess import synth

SYNTHETIC_RECORDINGS = 6
SYNTHETIC_CLIPS_PER_RECORDING = 3
SYNTHETIC_SEED = 0


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of synthetic Nymeria clip files (flat): 6 recordings x 3 clips, seed 0, so
    4 participants and 18 `*.h5` files. Shared by the whole session: treat it as read-only."""
    root = tmp_path_factory.mktemp("synthetic_nymeria")
    synth.generate_dataset(
        root,
        recordings=SYNTHETIC_RECORDINGS,
        seed=SYNTHETIC_SEED,
        clips_per_recording=SYNTHETIC_CLIPS_PER_RECORDING,
    )
    return root
