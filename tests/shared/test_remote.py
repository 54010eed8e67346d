"""shared.remote.normalize_location: the one spelling of a store's or directory's location."""

from __future__ import annotations

from pathlib import Path

from shared.remote import normalize_location


def test_paths_and_file_urls_become_one_absolute_path_and_urls_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "s.zarr").mkdir()
    (tmp_path / "link.zarr").symlink_to(tmp_path / "s.zarr")
    want = str((tmp_path / "s.zarr").resolve())
    given = ["s.zarr", Path("s.zarr"), "~/s.zarr", f"file://{tmp_path}/s.zarr", "link.zarr"]
    assert [normalize_location(g) for g in given] == [want] * len(given)
    for url in ("s3://team/s.zarr", "gs://team/s.zarr", "https://host/s.zarr"):
        assert normalize_location(url) == url
