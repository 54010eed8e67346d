"""Self-contained checkpoints: everything eval and export need, loadable with weights_only=True.

A checkpoint holds model, optimizer and scheduler state, the step, the resolved
configs, the feature layout, the normalisation statistics and the store's fingerprint.
Sampling needs no saved RNG state: windows and noise are pure functions of
(seed, rank, step) (see train.fit).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.atomic import atomic_path
from shared.layout import layout_description
from shared.provenance import package_version
from shared.store import FeatureStore, NormStats

CHECKPOINT_FORMAT = 1


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


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    """Write atomically: a temp file in the same directory, fsynced, then renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, **ckpt.__dict__}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load with `weights_only=True`; a wrong file or format gets a message naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    payload = torch.load(path, map_location=map_location, weights_only=True)
    fmt = payload.pop("format", None) if isinstance(payload, dict) else None
    if fmt != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a nymeria-mvae checkpoint of format {CHECKPOINT_FORMAT} (found format {fmt!r})")
    return Checkpoint(**payload)
