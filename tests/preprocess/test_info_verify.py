"""`info` and `verify` on real builds of synthetic data."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from store_testing import feature_chunk_files, synchronous_build

import shared.store
from preprocess import nymeria_format
from preprocess.cli import main
from shared.layout import FEATURE_DIM
from train.cli import main as train_main

REPO_ROOT = Path(__file__).resolve().parents[2]
CHUNK_FRAMES = 1000


@pytest.fixture(scope="module")
def built(synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data copy, store built from it): tests that modify either take their own copies."""
    base = tmp_path_factory.mktemp("info")
    data = base / "data"
    shutil.copytree(synthetic_dataset, data)
    out = base / "store.zarr"
    synchronous_build(data, out, chunk_frames=CHUNK_FRAMES)
    return data, out


def test_info_json(built):
    _, out = built
    result = CliRunner().invoke(main, ["info", str(out), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["schema"] == {
        "name": shared.store.SCHEMA_NAME,
        "version": shared.store.SCHEMA_VERSION,
    }
    assert info["frames"] == sum(s["frames"] for s in info["splits"].values()) > 0
    assert info["fps"] == pytest.approx(30.0)
    assert info["hours"] == pytest.approx(info["frames"] / 30.0 / 3600)
    assert info["sequences"] == 6 and info["participants"] == 4
    assert set(info["splits"]) == set(shared.store.SPLITS)
    for split in info["splits"].values():
        assert split["sequences"] >= 1 and split["frames"] > 0 and len(split["participants"]) >= 1
    assert info["problems"] == []
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert info["size_bytes"] == size
    assert info["bytes_per_frame"] == pytest.approx(size / info["frames"])
    # Raw chunks: each frame costs at least its 294 float32 features.
    assert info["bytes_per_frame"] >= FEATURE_DIM * 4
    assert info["codecs"] == ["bytes", "crc32c"] and info["chunk_frames"] == CHUNK_FRAMES


def test_info_text_through_subprocess(built):
    _, out = built
    result = subprocess.run(
        [sys.executable, "-m", "preprocess", "info", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"nymeria-motion-features v{shared.store.SCHEMA_VERSION}" in result.stdout
    assert "6 from 4 participants" in result.stdout and "bytes/frame" in result.stdout


def copy_with_root_attrs(store: Path, copy: Path, **updates: object) -> Path:
    """A copy of `store` with some root attributes replaced (by editing its zarr.json)."""
    shutil.copytree(store, copy)
    meta = json.loads((copy / "zarr.json").read_text())
    meta["attributes"].update(updates)
    (copy / "zarr.json").write_text(json.dumps(meta))
    return copy


def test_info_refuses_incomplete_store(built, tmp_path: Path):
    _, out = built
    copy = copy_with_root_attrs(out, tmp_path / "copy.zarr", **{shared.store.ATTR_COMPLETE: False})
    result = CliRunner().invoke(main, ["info", str(copy)])
    assert result.exit_code == 1 and "incomplete" in result.output and "--resume" in result.output


def test_verify_passes_on_a_faithful_store(built):
    data, out = built
    args = ["verify", str(out), "--data", str(data), "--sample", "3", "--seed", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "recomputed 3 sequences" in result.output and "verify passed" in result.output
    assert "checked every chunk's checksum and values: 0 problems" in result.output


def test_verify_detects_tampered_features(built, tmp_path: Path):
    data, out = built
    copy = tmp_path / "tampered.zarr"
    shutil.copytree(out, copy)
    root = zarr.open_group(copy, mode="r+")
    features = root[shared.store.FEATURES][:CHUNK_FRAMES]
    features[3, 14] += 0.5  # hp z of frame 3
    # Through zarr, so the checksum is right: a wrong value the build itself might have written.
    root[shared.store.FEATURES][:CHUNK_FRAMES] = features
    result = CliRunner().invoke(main, ["verify", str(copy), "--data", str(data), "--sample", "6"])
    assert result.exit_code == 1
    assert "features differ at 1 values" in result.output
    assert "frame 3 (store frame 3), dim 14 (hp[2])" in result.output


def test_verify_detects_changed_sources(built, tmp_path: Path):
    data, out = built
    changed = tmp_path / "data"
    shutil.copytree(data, changed)
    victim = min(changed.glob("*.h5"))
    with h5py.File(victim, "r+") as f:
        cpf = f[nymeria_format.KEY_CPF_TRANSLATION][()]
        del f[nymeria_format.KEY_CPF_TRANSLATION]
        f.create_dataset(nymeria_format.KEY_CPF_TRANSLATION, data=cpf + np.float32(0.01))
    result = CliRunner().invoke(main, ["verify", str(out), "--data", str(changed), "--sample", "6"])
    assert result.exit_code == 1
    assert "PROBLEM" in result.output and "features differ" in result.output


def test_verify_detects_wrong_stats(built, tmp_path: Path):
    data, out = built
    copy = tmp_path / "stats.zarr"
    shutil.copytree(out, copy)
    # Rewrite mean (and the fingerprint, so the store still opens): a plausible-looking lie.
    root = zarr.open_group(copy, mode="r+")
    mean = root[shared.store.STATS_GROUP][shared.store.STATS_MEAN][:]
    mean[20] += 0.1
    root[shared.store.STATS_GROUP][shared.store.STATS_MEAN][:] = mean
    std = root[shared.store.STATS_GROUP][shared.store.STATS_STD][:]
    table = root[shared.store.SEQUENCES_GROUP].attrs[shared.store.ATTR_TABLE]
    fingerprint = shared.store.compute_fingerprint(
        root.attrs.asdict(), table, mean, std, root[shared.store.STATS_GROUP].attrs.asdict()
    )
    root.attrs[shared.store.ATTR_FINGERPRINT] = fingerprint
    result = CliRunner().invoke(main, ["verify", str(copy), "--data", str(data), "--sample", "1"])
    assert result.exit_code == 1
    assert "stats: mean differs" in result.output and "dim 20 (jp[2])" in result.output


# --- a damaged store is caught before it trains (issue 10, reported cases) ---------------------


def _train_cli(store: Path, run: Path):
    args = [
        "fit",
        "--store",
        str(store),
        "--out",
        str(run),
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--num-workers",
        "0",
    ]
    return CliRunner().invoke(train_main, args)


def test_deleted_features_chunk_is_refused_before_training(built, tmp_path: Path):
    _, out = built
    copy = tmp_path / "deleted.zarr"
    shutil.copytree(out, copy)
    feature_chunk_files(copy)[1].unlink()
    result = _train_cli(copy, tmp_path / "run")
    assert result.exit_code == 1
    assert f"features chunk 1 (file features/c/1/0, frames {CHUNK_FRAMES}-" in result.output
    assert "missing" in result.output and "python -m preprocess verify" in result.output
    assert not (tmp_path / "run" / "checkpoints").exists()
    info = CliRunner().invoke(main, ["info", str(copy)])
    assert info.exit_code == 1 and "features chunk 1" in info.output


def test_nan_written_into_a_chunk_fails_verify_naming_the_chunk(built, tmp_path: Path):
    _, out = built
    copy = tmp_path / "nan.zarr"
    shutil.copytree(out, copy)
    chunk = feature_chunk_files(copy)[1]
    raw = bytearray(chunk.read_bytes())
    raw[4 * (7 * FEATURE_DIM + 20) : 4 * (7 * FEATURE_DIM + 21)] = np.float32(np.nan).tobytes()
    chunk.write_bytes(bytes(raw))
    result = CliRunner().invoke(main, ["verify", str(copy), "--no-progress"])
    assert result.exit_code == 1
    first = CHUNK_FRAMES
    assert (
        f"PROBLEM features chunk 1 (file features/c/1/0, frames {first}-{first + CHUNK_FRAMES - 1}"
        f"): checksum mismatch" in result.output
    )
    assert "verify failed: 1 problem\n" in result.output
    # Written with a valid checksum (as a faulty build would): the finiteness check names it.
    features = zarr.open_group(out, mode="r")[shared.store.FEATURES][first : first + CHUNK_FRAMES]
    features[7, 20] = np.inf
    root = zarr.open_group(copy, mode="r+")
    root[shared.store.FEATURES][first : first + CHUNK_FRAMES] = features
    result = CliRunner().invoke(main, ["verify", str(copy), "--no-progress"])
    assert result.exit_code == 1
    assert (
        f"features chunk 1 (file features/c/1/0, frames {first}-{first + CHUNK_FRAMES - 1}): 1 "
        f"non-finite values, first inf at frame {first + 7}, dim 20 (jp[2])" in result.output
    )


def test_verify_without_data_passes_on_a_good_store(built):
    _, out = built
    result = CliRunner().invoke(main, ["verify", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "recomputed stats" in result.output and "verify passed" in result.output


def test_edited_fps_is_refused(built, tmp_path: Path):
    _, out = built
    copy = copy_with_root_attrs(out, tmp_path / "fps.zarr", **{shared.store.ATTR_FPS: 60.0})
    result = _train_cli(copy, tmp_path / "run")
    assert result.exit_code == 1
    assert "do not match the fingerprint recorded at build time" in result.output
    verify = CliRunner().invoke(main, ["verify", str(copy), "--no-progress"])
    assert verify.exit_code == 1 and verify.output.startswith(f"Error: store {copy}")


def _edit_metadata(store: Path, node: str, edit) -> None:
    path = store / node / "zarr.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def _with_frames(frames: int):
    def edit(meta: dict) -> dict:
        return {**meta, "shape": [frames, *meta["shape"][1:]]}

    return edit


@pytest.mark.slow
def test_verify_refuses_untrusted_metadata_in_one_line_before_reading_chunks(built, tmp_path: Path):
    """It used to crash with a traceback on a truncated root zarr.json or a negative shape, and
    to grow memory without bound on a declared 1e12 frames (it listed every chunk first): now
    it runs `open_store`'s metadata checks first. Each case runs in a subprocess limited to
    2 GB of address space, with a timeout."""
    _, out = built
    cases = {
        "truncated root": lambda s: (s / "zarr.json").write_bytes(
            (s / "zarr.json").read_bytes()[:40]
        ),
        "negative shape": lambda s: _edit_metadata(s, shared.store.FEATURES, _with_frames(-5)),
        "1e12 frames": lambda s: [
            _edit_metadata(s, name, _with_frames(10**12)) for name in shared.store.FRAME_ARRAYS
        ],
    }

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))

    for name, damage in cases.items():
        store = tmp_path / f"{len(list(tmp_path.iterdir()))}.zarr"
        shutil.copytree(out, store)
        damage(store)
        try:
            result = subprocess.run(
                [sys.executable, "-m", "preprocess", "verify", str(store), "--no-progress"],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=60,
                preexec_fn=limit,
                check=False,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name}: verify still running after 60 s")
        assert result.returncode == 1, (name, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, (name, result.stderr[-2000:])
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"Error: store {store}"), (name, lines)
        assert result.stdout == "", name  # refused before any chunk was read
