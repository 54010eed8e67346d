"""`train fit --store s3://...` against moto's S3 server on 127.0.0.1: the first run pulls the
store into the cache and memory-maps it, the second uses the cache without downloading a chunk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import zarr
from click.testing import CliRunner

from shared.remote_layout import version_prefix
from shared.store import FRAME_ARRAYS, open_store
from shared.transfer import push
from tests.remote_servers import S3_ENV, s3_filesystem, s3_server
from tests.train.conftest import TINY_MODEL
from train.cli import main


def _losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["train/total"] for r in rows if "train/total" in r]


def test_fit_from_s3_pulls_once_then_uses_the_cache(feature_store, tmp_path, monkeypatch):
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    cache = tmp_path / "cache"
    with s3_server() as options:
        fs = s3_filesystem(options)
        fs.mkdir("team")
        url = "s3://team/nymeria.zarr"
        push(feature_store, url, storage_options=options, progress=False)

        def fit(run: Path) -> None:
            args = ["fit", "--store", url, "--storage-options", json.dumps(options),
                    "--cache-dir", str(cache), "--out", str(run), "--num-workers", "0",
                    "--val-windows", "8", "--steps", "3", "--log-every", "1", "--val-every", "3",
                    "--seq-len", "32", *TINY_MODEL]  # fmt: skip
            result = CliRunner().invoke(main, args)
            assert result.exit_code == 0, result.output

        fit(tmp_path / "first")
        fingerprint = open_store(feature_store).fingerprint
        cached = open_store(cache / f"{fingerprint}.zarr")
        assert cached.is_memory_mapped
        assert (cached.features[:] == open_store(feature_store).features[:]).all()

        # Without the frame arrays' chunks at the URL, only the cached copy can feed the run.
        fs.invalidate_cache()
        for name in FRAME_ARRAYS:
            fs.rm(f"team/nymeria.zarr/{version_prefix(fingerprint)}/{name}/c", recursive=True)
        fit(tmp_path / "second")

        # encode reads the cached copy and writes its latents to the bucket; decode reads them.
        ckpt = str(tmp_path / "second" / "checkpoints" / "last.pt")
        s3 = ["--storage-options", json.dumps(options)]
        latents = "s3://team/latents.zarr"
        encode = ["encode", "--ckpt", ckpt, "--store", url, "--cache-dir", str(cache),
                  "--out", latents, *s3]  # fmt: skip
        result = CliRunner().invoke(main, encode)
        assert result.exit_code == 0, result.output
        decoded = tmp_path / "decoded.zarr"
        decode = ["decode", "--ckpt", ckpt, "--latents", latents, "--out", str(decoded), *s3]
        result = CliRunner().invoke(main, decode)
        assert result.exit_code == 0, result.output
        assert zarr.open_group(decoded, mode="r")["features"].shape == cached.features.shape
    first = _losses(tmp_path / "first")
    assert len(first) == 3
    assert _losses(tmp_path / "second") == pytest.approx(first)
    run_info = json.loads((tmp_path / "second" / "run_info.json").read_text())
    assert run_info["store"]["fingerprint"] == fingerprint
