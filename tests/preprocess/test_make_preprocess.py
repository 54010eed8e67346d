"""`make preprocess` without DATA: a store from synthetic clips, written first if missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.store import open_store

ROOT = Path(__file__).resolve().parents[2]


def _make_preprocess(tmp_path: Path, *variables: str) -> subprocess.CompletedProcess:
    """`make preprocess` in this checkout with this interpreter's environment (never reinstalled),
    synthetic clips in tmp_path/synthetic, the store at tmp_path/store.zarr."""
    venv = Path(sys.prefix)
    env = {k: v for k, v in os.environ.items() if k not in ("DATA", "STORE", "SYNTH_DATA")}
    command = [
        "make",
        "--no-print-directory",
        "-C",
        str(ROOT),
        "-o",
        str(venv / ".installed"),
        "preprocess",
        f"VENV={venv}",
        f"SYNTH_DATA={tmp_path / 'synthetic'}",
        f"STORE={tmp_path / 'store.zarr'}",
        "SYNTH_ARGS=--recordings 3 --no-video",
        "WORKERS=1",
        *variables,
    ]
    return subprocess.run(
        command, check=False, capture_output=True, text=True, env=env, timeout=600
    )


@pytest.mark.slow
def test_make_preprocess_without_data_builds_from_synthetic_clips(tmp_path: Path):
    result = _make_preprocess(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no DATA given, so synthetic clips" in result.stdout
    assert "DATA=/path/to/nymeria/hdf5" in result.stdout
    assert len(list((tmp_path / "synthetic").rglob("*.h5"))) == 3 * 4  # 4 clips per recording
    store = open_store(tmp_path / "store.zarr")
    assert store.num_frames > 0 and len({r.name for r in store.sequences}) >= 3

    result = _make_preprocess(tmp_path / "again", f"DATA={tmp_path / 'missing'}")
    assert result.returncode != 0 and "no DATA given" not in result.stdout
    assert not (tmp_path / "again" / "synthetic").exists()
    assert "does not exist" in result.stderr and "missing" in result.stderr
