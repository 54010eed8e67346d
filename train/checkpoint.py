"""Self-contained checkpoints: everything eval and export need, loadable with weights_only=True.

A checkpoint holds model, optimizer and scheduler state, the step, the resolved
configs, the feature layout, the normalisation statistics and the store's fingerprint.
Sampling needs no saved RNG state: windows and noise are pure functions of
(seed, rank, step) (see train.fit).
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.atomic import atomic_path
from shared.diskspace import disk_full_cause, disk_full_error
from shared.errors import InputError
from shared.layout import layout_description
from shared.provenance import package_version
from shared.store import FeatureStore, NormStats

CHECKPOINT_FORMAT = 1
# os.link fails with these where hard links are not available (FAT, some network file systems).
LINK_UNSUPPORTED_ERRNOS = frozenset({errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EMLINK})


class CheckpointError(InputError):
    """A file that is not a loadable checkpoint (missing, unreadable, damaged, foreign, unsafe)."""


@dataclass(frozen=True)
class Checkpoint:
    step: int
    best_val: float
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    config: dict  # RunConfig.to_dict()
    layout: dict
    stats_mean: torch.Tensor  # (294,)
    stats_std: torch.Tensor  # (294,)
    stats_count: int
    stats_window_frames: int
    store_url: str
    store_fingerprint: str
    package_version: str

    @classmethod
    def capture(
        cls,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        step: int,
        best_val: float,
        config: Any,
        store: FeatureStore,
    ) -> Checkpoint:
        return cls(
            step=step,
            best_val=float(best_val),
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            config=config.to_dict(),
            layout=layout_description(),
            stats_mean=torch.as_tensor(store.stats.mean),
            stats_std=torch.as_tensor(store.stats.std),
            stats_count=int(store.stats.count),
            stats_window_frames=int(store.stats.window_frames),
            store_url=store.url,
            store_fingerprint=store.fingerprint,
            package_version=package_version(),
        )

    @property
    def stats(self) -> NormStats:
        return NormStats(
            mean=self.stats_mean.cpu().numpy(),
            std=self.stats_std.cpu().numpy(),
            count=self.stats_count,
            window_frames=self.stats_window_frames,
        )


def payload_bytes(value: Any) -> int:
    """Bytes of the tensors in a (nested) checkpoint payload: roughly its size on disk."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(payload_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(payload_bytes(v) for v in value)
    return 0


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    """Write atomically: a temp file in the same directory, fsynced, then renamed over `path`.

    On a full disk the previous file at `path` is untouched, the temp file is removed and a
    `DiskFullError` names the path and the space the checkpoint needs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, **ckpt.__dict__}
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            # A Python file object, not a path: torch's own writer reports a full disk as a bare
            # RuntimeError, while writes through `handle` keep the OSError (and its errno).
            torch.save(payload, handle)
    except (OSError, RuntimeError) as error:
        full = disk_full_error(
            error,
            path,
            payload_bytes(payload),
            f"saving the checkpoint of step {ckpt.step}",
            f"{path} still holds the previous checkpoint (if any): free space, then continue "
            f"with --resume",
        )
        if full is None:
            raise
        raise full from error


def link_checkpoint(source: Path, target: Path) -> None:
    """Make `target` an atomic copy of the checkpoint `source` (a hard link where the file
    system has them: no extra space, and replacing `source` later leaves `target` as it is)."""
    source, target = Path(source), Path(target)
    try:
        with atomic_path(target) as tmp:
            os.link(source, tmp)
        return
    except OSError as error:
        if disk_full_cause(error) is None and error.errno not in LINK_UNSUPPORTED_ERRNOS:
            raise
    try:
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
    except OSError as error:
        full = disk_full_error(
            error,
            target,
            source.stat().st_size,
            f"copying the checkpoint {source}",
            f"{target} still holds its previous content (if any)",
        )
        if full is None:
            raise
        raise full from error


def _refusal(path: Path, error: Exception) -> str:
    """One line on why torch refused `path`, in our words: torch's own message for a pickle that
    needs more than tensors and plain values advises re-running `torch.load` with
    `weights_only=False`, i.e. running the file's code; only its specific reason is kept."""
    lines = (line.strip() for line in str(error).splitlines())
    reasons = [line for line in lines if line and not _TORCH_ADVICE.search(line)]
    reason = (reasons or [type(error).__name__])[0][:200]
    if isinstance(error, pickle.UnpicklingError):
        return (
            f"{path} cannot be loaded safely as a checkpoint: it holds more than tensors and plain "
            f"values ({reason}); loading it would run code from the file, so it is refused"
        )
    return f"{path} cannot be loaded safely as a checkpoint ({type(error).__name__}: {reason})"


# Sentences of torch's load errors that advise loading with weights_only=False (unsafe).
_TORCH_ADVICE = re.compile(r"weights_only|torch\.load|trusted source", re.IGNORECASE)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load with `weights_only=True` (no pickled code ever runs); a missing, unreadable,
    damaged or foreign file raises `CheckpointError` with one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    # torch.save writes zip archives; refusing anything else keeps torch's legacy reader (which
    # trusts sizes declared in the file) away from arbitrary bytes.
    try:
        is_zip = zipfile.is_zipfile(path)
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error.strerror or error}") from None
    if not is_zip:
        raise CheckpointError(
            f"{path} is not a checkpoint (not a torch zip archive: truncated, damaged or another "
            f"kind of file)"
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001  (untrusted bytes: any failure means "unusable")
        raise CheckpointError(_refusal(path, error)) from None
    fmt = payload.pop("format", None) if isinstance(payload, dict) else None
    if fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: not a nymeria-mvae checkpoint of format {CHECKPOINT_FORMAT} (found format "
            f"{fmt!r})"
        )
    expected = {f.name for f in fields(Checkpoint)}
    if set(payload) != expected:
        missing, extra = sorted(expected - set(payload)), sorted(set(payload) - expected)
        raise CheckpointError(
            f"{path}: checkpoint fields differ from format {CHECKPOINT_FORMAT} (missing "
            f"{missing}, unexpected {extra}); it is damaged or from another version"
        )
    return Checkpoint(**payload)
