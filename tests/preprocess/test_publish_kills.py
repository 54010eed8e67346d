"""A build killed at every step of publishing an `--overwrite` replacement: STORE holds a
complete store (old or new) throughout, and the next build finishes the publication, leaves
nothing behind and, run with `--resume`, says the build is finished (exit 0).

The build runs in a subprocess that SIGKILLs itself right after the named step
(`preprocess.build.publish._publish_step`), once with the atomic exchange of the two stores and once
with it made unavailable (the fallback of two renames)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from store_testing import cli_build, synchronous_build
from test_resume import REPO_ROOT

from preprocess import synth
from preprocess.build import BuildPaths
from shared.store import open_store

SPLIT = ("--split", "1,0,0")
OLD = ("--max-fill-frames", "2")  # another stitching setting: another fingerprint

KILLING_BUILD = """
import os, signal, sys
import preprocess.build.publish
import shared.store.write
from preprocess.cli import main

step, mode = sys.argv[1], sys.argv[2]
if mode == "fallback":
    shared.store.write.exchange_paths = lambda a, b: False
publish_step = preprocess.build.publish._publish_step

def killing_step(name):
    publish_step(name)
    if name == step:
        os.kill(os.getpid(), signal.SIGKILL)

preprocess.build.publish._publish_step = killing_step
main(sys.argv[3:], prog_name="preprocess")
"""

STEPS = [("exchange", step) for step in ("marked", "exchanged", "old deleted")] + [
    ("fallback", step) for step in ("marked", "moved aside", "renamed in", "old deleted")
]


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str, str]:
    """(data, old store, old fingerprint, fingerprint of the store a default build makes)."""
    base = tmp_path_factory.mktemp("publish")
    data = base / "data"
    synth.generate_dataset(data, recordings=3, clips_per_recording=1, seed=3, video_size=4)
    old, new = base / "old.zarr", base / "new.zarr"
    synchronous_build(data, old, split=(1.0, 0.0, 0.0), max_fill_frames=2)
    synchronous_build(data, new, split=(1.0, 0.0, 0.0))
    old_fingerprint, new_fingerprint = open_store(old).fingerprint, open_store(new).fingerprint
    assert old_fingerprint != new_fingerprint
    return data, old, old_fingerprint, new_fingerprint


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".build" in p.name or "replaced" in p.name]


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "step"), STEPS)
def test_a_build_killed_while_publishing_leaves_a_store_and_is_finished_next(
    stores, tmp_path: Path, mode: str, step: str
):
    data, old, old_fingerprint, new_fingerprint = stores
    out = tmp_path / "store.zarr"
    shutil.copytree(old, out)
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            KILLING_BUILD,
            step,
            mode,
            "build",
            str(data),
            "--out",
            str(out),
            "--scheduler",
            "synchronous",
            "--no-progress",
            "--overwrite",
            *SPLIT,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    if (mode, step) == ("fallback", "moved aside"):
        assert not out.exists()  # no atomic exchange: missing between the two renames ...
    else:  # ... else always a complete store, old or new
        expected = old_fingerprint if step == "marked" else new_fingerprint
        assert open_store(out).fingerprint == expected

    resumed = cli_build(data, out, "--resume", *SPLIT)
    assert resumed.exit_code == 0, resumed.output
    assert "was finished: its store is published; nothing to resume" in resumed.output
    assert open_store(out).fingerprint == new_fingerprint
    assert not _leftovers(tmp_path) and not BuildPaths(out).lock.exists()


def test_resume_of_a_finished_build_says_so_and_older_leftovers_are_cleaned(stores, tmp_path):
    """`--resume` on a published store used to refuse it (exit 1); a store older versions left
    at `STORE.replaced-<pid>` (killed between their two renames) stayed forever."""
    data, old, old_fingerprint, _ = stores
    out = tmp_path / "store.zarr"
    shutil.copytree(old, tmp_path / "store.zarr.replaced-4242")  # and nothing at STORE
    resumed = cli_build(data, out, "--resume", *OLD, *SPLIT)
    assert resumed.exit_code == 0, resumed.output
    assert f"{out} is already built (fingerprint {old_fingerprint[:12]}): nothing to resume" in (
        resumed.output
    )
    assert open_store(out).fingerprint == old_fingerprint and not _leftovers(tmp_path)

    shutil.copytree(old, tmp_path / "store.zarr.replaced-4243")  # beside a store: deleted
    rebuilt = cli_build(data, out, "--overwrite", *SPLIT)
    assert rebuilt.exit_code == 0, rebuilt.output
    assert not _leftovers(tmp_path)
