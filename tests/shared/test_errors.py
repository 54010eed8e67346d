"""One error family, caught once per command-line group: a `UserError` of any kind ends a
command as one line, `Error: MESSAGE`, with the error's exit code; anything else is a bug and
keeps its traceback (issue 22)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import preprocess.cli
import shared.store.feature_store
import train.cli
from preprocess.build import BuildError
from preprocess.executor import ClusterError, TaskFailed
from preprocess.lock import LockError
from shared.chunk_cache import ChunkCacheError
from shared.diskspace import DiskFullError
from shared.errors import InputError, MissingInputError, OutputExistsError, UserError
from shared.layout import FEATURE_DIM, layout_description
from shared.remote import (
    MissingExtraError,
    RemoteObjectMissing,
    RemoteRequestError,
    RemoteUnavailableError,
    retrying,
)
from shared.remote_layout import LayoutError, NothingPublishedError
from shared.store import SEQUENCES_GROUP, STATS_GROUP, ChunkDamageError, StoreError, open_store
from shared.store.write import DestinationExistsError
from shared.transfer import TransferError
from tests.shared.test_store import write_store
from train.checkpoint import Checkpoint, CheckpointError, save_checkpoint
from train.fit import TrainingDiverged, TrainingInterrupted

# One of every kind a command may end with, as the code raises them.
USER_ERRORS = [
    InputError("store /s has no sequences in split 'val'"),
    MissingInputError("--resume: no checkpoint at run/checkpoints/last.pt"),
    OutputExistsError("run already holds a run; pass --resume"),
    StoreError("store /s is incomplete: finish it with `...`"),
    ChunkDamageError("store /s: features chunk c/3/0 failed its checksum"),
    ChunkCacheError("cache /c: chunk features/c/0/0 changed on the remote"),
    LayoutError("s3://b/x/CURRENT.json is not a pointer"),
    NothingPublishedError("nothing is published at s3://b/x"),
    DestinationExistsError("a store already exists at /s; pass --overwrite"),
    TransferError("s3://b/x/zarr.json: checksum mismatch"),
    DiskFullError("writing /s: 2.0 GB needed, 1.0 GB free", Path("/s")),
    MissingExtraError("s3://b/x needs `pip install nymeria-mvae[s3]`"),
    RemoteUnavailableError("s3://b/x: no answer after 3 attempts"),
    RemoteRequestError("s3://b/x: PermissionError: Forbidden"),
    RemoteObjectMissing("s3://b/x/MANIFEST.json: no such object"),
    LockError("another build (pid 7 on host) holds /s.lock"),
    BuildError("no usable clip file among the 3 under /data"),
    ClusterError("--scheduler tcp://127.0.0.1:1 did not answer in 10 s"),
    TaskFailed("a task killed 3 workers: files a.h5, b.h5"),
    CheckpointError("run/last.pt is not a checkpoint"),
    TrainingDiverged("non-finite loss at step 3"),
    TrainingInterrupted("interrupted by SIGTERM after step 3 of 9; resume with: ...", 143),
]

# Per group: a command, and the function it calls (replaced by one that raises).
COMMANDS = {
    "preprocess": (preprocess.cli, "list_versions", ["versions"]),
    "train": (train.cli, "store_info", ["info"]),
}


def _raising(error: BaseException):
    def call(*_args, **_kwargs):
        raise error

    return call


@pytest.mark.parametrize("group", COMMANDS)
@pytest.mark.parametrize("error", USER_ERRORS, ids=lambda e: type(e).__name__)
def test_every_user_error_is_one_line_with_its_exit_code(group, error, monkeypatch, tmp_path):
    module, function, command = COMMANDS[group]
    monkeypatch.setattr(module, function, _raising(error))
    result = CliRunner().invoke(module.main, [*command, str(tmp_path)])
    assert isinstance(error, UserError)
    assert isinstance(result.exception, SystemExit), result.exception
    assert (
        result.exit_code
        == error.exit_code
        == (143 if isinstance(error, TrainingInterrupted) else 1)
    )
    assert result.output == f"Error: {error}\n"


# A command whose code has a bug, run as a user runs it.
_BUGGY_RUN = """
import importlib, sys
cli = importlib.import_module(sys.argv[1])
def buggy(*args, **kwargs):
    raise {error!r}
setattr(cli, sys.argv[2], buggy)
cli.main(sys.argv[3:])
"""
BUGS = {
    "preprocess": IsADirectoryError(21, "Is a directory"),  # was one line: every OSError was
    "train": ValueError("operands could not be broadcast together with shapes (3,) (4,)"),
}


@pytest.mark.slow
@pytest.mark.parametrize("group", COMMANDS)
def test_a_bug_in_a_command_keeps_its_traceback(group, tmp_path):
    module, function, command = COMMANDS[group]
    error = BUGS[group]
    script = _BUGGY_RUN.format(error=error)
    args = [module.__name__, function, *command, str(tmp_path)]
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert "Traceback (most recent call last):" in lines, result.stderr
    assert lines[-1] == f"{type(error).__name__}: {error}", result.stderr
    assert not any(line.startswith("Error:") for line in lines), result.stderr


def test_an_os_error_naming_its_file_is_the_machine_not_a_bug_one_line(tmp_path):
    """A path under a regular file (or no permission, a read-only disk): one line naming the
    path, exit 1; an OSError without a file name is still a bug (above)."""
    regular = tmp_path / "a_file"
    regular.write_text("")
    result = CliRunner().invoke(
        preprocess.cli.main, ["synth", str(regular / "clips"), "--recordings", "1", "--no-video"]
    )
    assert result.exit_code == 1, result.output
    assert result.output == f"Error: [Errno 20] Not a directory: '{regular / 'clips'}'\n"


def test_a_remote_request_that_fails_for_good_is_a_user_error_naming_the_object():
    refused = PermissionError(13, "Forbidden")
    with pytest.raises(RemoteRequestError, match=r"^s3://b/x/CURRENT.json: PermissionError: "):
        retrying(_raising(refused), "s3://b/x/CURRENT.json")
    with pytest.raises(FileNotFoundError, match=r"^s3://b/x/zarr.json: no such object") as missing:
        retrying(_raising(FileNotFoundError(2, "No such key")), "s3://b/x/zarr.json")
    assert isinstance(missing.value, UserError)  # callers that expect absence still catch it


def test_a_checkpoint_of_a_newer_version_is_one_line_not_a_traceback(tmp_path):
    """Its config has a field this code does not know: the config's own ValueError, on
    untrusted values, is translated where the checkpoint is read."""
    newer = {"model": {"hidden_dim": 16, "warp_factor": 9}, "train": {}}
    zeros = torch.zeros(FEATURE_DIM)
    ckpt = Checkpoint(
        step=1,
        best_val=1.0,
        model={},
        optimizer={},
        scheduler={},
        config=newer,
        layout=layout_description(),
        stats_mean=zeros,
        stats_std=zeros + 1,
        stats_count=1,
        stats_window_frames=152,
        store_url="s.zarr",
        store_fingerprint="f",
        package_version="9.0",
    )
    save_checkpoint(tmp_path / "newer.pt", ckpt)
    args = ["eval", "--ckpt", tmp_path / "newer.pt", "--store", tmp_path, "--out", tmp_path / "e"]
    result = CliRunner().invoke(train.cli.main, [str(a) for a in args])
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "unknown keys ['warp_factor']" in lines[0], lines
    assert lines[0].startswith("Error: ") and "package '9.0'" in lines[0], lines


def _damage(store: Path, document: str) -> None:
    """Make one metadata document of `store` hostile: valid JSON, values of the wrong kind."""
    path = store / document / "zarr.json"
    meta = json.loads(path.read_text())
    if document == "features":
        meta["shape"] = "many"
    elif document == SEQUENCES_GROUP:
        table = meta["attributes"]["table"]
        table["start"] = ["the beginning"] * len(table["start"])
    else:
        meta["attributes"]["count"] = [1, 2]
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("document", ["features", SEQUENCES_GROUP, STATS_GROUP])
def test_hostile_metadata_is_one_store_error_naming_its_document(document, tmp_path):
    store = tmp_path / "store.zarr"
    write_store(store)
    _damage(store, document)
    with pytest.raises(StoreError, match=rf"malformed metadata \({document}"):
        open_store(store)
    result = CliRunner().invoke(preprocess.cli.main, ["info", str(store)])
    assert result.exit_code == 1 and result.output.startswith(f"Error: store {store} has"), result
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_a_bug_while_opening_a_store_is_not_reported_as_malformed_metadata(tmp_path, monkeypatch):
    """`_MALFORMED_METADATA` wrapped the whole constructor: any TypeError or KeyError of the
    code became "unreadable or malformed metadata". Only the parsing is wrapped now."""
    store = tmp_path / "store.zarr"
    write_store(store)
    bug = TypeError("unsupported operand type(s) for +: 'int' and 'str'")
    monkeypatch.setattr(shared.store.feature_store, "compute_fingerprint", _raising(bug))
    with pytest.raises(TypeError, match="unsupported operand"):
        open_store(store)
    result = CliRunner().invoke(preprocess.cli.main, ["info", str(store)])
    assert result.exception is bug and "Error:" not in result.output


def test_hostile_metadata_of_a_latent_store_is_one_line(tmp_path):
    store = tmp_path / "latents.zarr"
    store.mkdir()
    (store / "zarr.json").write_bytes(b'{"zarr_format": 3, "node_type": "gr')
    result = CliRunner().invoke(train.cli.main, ["info", str(store)])
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.exception
    assert result.output.startswith(f"Error: store {store} has unreadable or malformed metadata")
    assert "`train encode`" in result.output and len(result.output.splitlines()) == 1
