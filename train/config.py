"""Training configuration: frozen dataclasses whose field docs are the CLI help.

`python -m train fit` turns every field of `TrainConfig` and of the model's
`MotionVAEConfig` into a `--option` (`shared.cli.dataclass_options`); `--config FILE` (JSON,
TOML or YAML, sections `model` and `train`) sets them in bulk, and explicit options win over
the file.
"""

from __future__ import annotations

import dataclasses
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from train.model import MotionVAEConfig

Device = Literal["auto", "cpu", "cuda", "mps"]
Loss = Literal["features", "world", "seed"]
LOSS_ALIASES = {"seed": "features"}
"""Old names of `TrainConfig.loss` values, read as the new one wherever a config comes from (a
--config file, a run's config.json, a checkpoint): 'seed' (the seed design's loss) read like a
random seed."""
Precision = Literal["auto", "32", "bf16-mixed"]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, data and logging settings of one training run (docs/design.md "Training")."""

    steps: int = 20_000
    """Optimizer steps to run in total."""
    batch_size: int = 32
    """Windows per step (per rank under DDP)."""
    lr: float = 1e-4
    """Peak AdamW learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup_steps: int = 500
    """Linear warm-up steps before the cosine decay."""
    min_lr_ratio: float = 0.01
    """Cosine decay floor, as a fraction of lr."""
    grad_clip: float = 1.0
    """Max global gradient norm."""
    seed: int = 0
    """Seed for weights, windows and sampling noise."""
    val_every: int = 500
    """Validate every N steps (and at the end), then write a checkpoint."""
    ckpt_every: int = 500
    """Also write a checkpoint every N steps, validation or not."""
    val_windows: int = 256
    """Size of the fixed validation window set."""
    log_every: int = 50
    """Write a metrics line every N steps (more often in a run of fewer than 20 N steps: at
    least 20 lines)."""
    num_workers: int = 2
    """DataLoader worker processes (0 loads in the main process)."""
    device: Device = "auto"
    """Training device; auto picks CUDA, then MPS, then CPU."""
    compile: bool = False
    """torch.compile the model (the first steps are slower while it compiles)."""
    precision: Precision = "auto"
    """'32': float32 throughout; 'bf16-mixed': the model's forward under bfloat16 autocast on
    the training device (weights, optimizer and loss in float32); 'auto': bf16-mixed on CUDA,
    else 32."""
    chunk_check: bool = True
    """Check each store chunk the first time a loader worker reads it: its crc32c, that its
    values are finite, that it continues its neighbours (a damaged store stops the run)."""
    cache_max_gb: float | None = None
    """With --store URL: size limit in GB of the local chunk cache the store is read through
    (least recently used chunks are evicted); no limit when not given."""
    loss: Loss = "world"
    """'features': per-group MSE on normalised features + KL, world motion decoded from the
    absolute head pose (the seed design's loss, exactly; 'seed' is its old name). 'world': the
    same plus the position and velocity error of world joints and head in metres, world motion
    decoded with head_blend (chosen by `python -m benchmarks quality`, see BENCHMARKS.md)."""
    world_position_weight: float = 0.1
    """'world' loss: weight of the mean world joint + head position error (metres)."""
    world_velocity_weight: float = 1.0
    """'world' loss: weight of the mean world joint + head velocity error (metres/frame)."""
    head_frame_weight: float = 1.0
    """'world' loss: weight of the mean error of the joints in the head frame (metres); keeps the
    head's orientation right, which the world terms alone trade against the joints."""
    foot_contact_weight: float = 1.0
    """'world' loss: weight of the mean world velocity error of the foot joints on the steps the
    true foot is planted (metres/frame); ties the head's motion to the legs, against skating."""
    head_orientation_weight: float = 0.0
    """'world' loss: weight of the mean angle of the decoded head orientation's error (radians,
    to first order); the heading the head's world velocity and the world joints rotate with."""
    world_acceleration_weight: float = 0.0
    """'world' loss: weight of the mean acceleration error (second differences, metres/frame^2)
    of the world joints and head: what jitter is made of."""
    mirror_prob: float = 0.5
    """Probability that a training window is replaced by its left/right mirror image (the world
    reflected, Left*/Right* segments swapped: shared.features.mirror_features), drawn per window
    and step; 0 trains on the windows as stored."""
    head_blend: float = 0.95
    """'world' loss: weight of the integrated head deltas (hp_dot, hr_dot) against the absolute
    head pose (hp, hr) when decoding the head trajectory; 0 absolute, 1 pure integration
    (shared.features.head_pose)."""

    def __post_init__(self) -> None:
        """Every bad value is refused here, so the command line (exit 2, naming the option), a
        --config file and a resumed run's config are all checked alike."""
        if self.loss in LOSS_ALIASES:
            object.__setattr__(self, "loss", LOSS_ALIASES[self.loss])
        for name in ("steps", "batch_size", "val_every", "ckpt_every", "val_windows", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, found {getattr(self, name)!r}")
        for name in ("lr", "grad_clip"):
            if not getattr(self, name) > 0:  # also refuses NaN
                raise ValueError(f"TrainConfig.{name} must be > 0, found {getattr(self, name)!r}")
        for name in (
            "weight_decay",
            "warmup_steps",
            "seed",
            "num_workers",
            "world_position_weight",
            "world_velocity_weight",
            "head_frame_weight",
            "foot_contact_weight",
            "head_orientation_weight",
            "world_acceleration_weight",
        ):
            if not getattr(self, name) >= 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, found {getattr(self, name)!r}")
        if self.cache_max_gb is not None and not self.cache_max_gb > 0:
            raise ValueError(f"TrainConfig.cache_max_gb must be > 0, found {self.cache_max_gb!r}")
        for name in ("min_lr_ratio", "mirror_prob", "head_blend"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(
                    f"TrainConfig.{name} must be in [0, 1], found {getattr(self, name)!r}"
                )

    def autocast(self, device: torch.device) -> AbstractContextManager:
        """The context the model's training forward runs in on `device`, for `precision`."""
        if self.precision == "bf16-mixed" or (self.precision == "auto" and device.type == "cuda"):
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return nullcontext()

    @property
    def decode_head_blend(self) -> float:
        """The head blend world motion is decoded with: 0 under the features loss."""
        return 0.0 if self.loss == "features" else self.head_blend


# Train fields added after runs were saved, with the value that reproduces those runs: a run
# from before `loss` trained with the features loss, one from before `head_frame_weight` (or
# a later term) without that term.
ADDED_TRAIN_FIELDS = {
    "loss": "features",
    "head_frame_weight": 0.0,
    "foot_contact_weight": 0.0,
    "head_orientation_weight": 0.0,
    "mirror_prob": 0.0,
    "world_acceleration_weight": 0.0,
}


# Model fields added after runs were saved: a model from before `linear_path` has none.
ADDED_MODEL_FIELDS = {"linear_path": False}


def saved_config(data: dict) -> dict:
    """A run's saved config (config.json, a checkpoint's) with the fields it predates filled in
    as it was trained, so that today's defaults never silently change an old run."""
    model, train = data.get("model", {}), dict(data.get("train", {}))
    if "bf16" in train:  # before `precision`: bf16 autocast on CUDA, or never
        train.setdefault("precision", "auto" if train.pop("bf16") else "32")
    return {
        **data,
        "model": {**ADDED_MODEL_FIELDS, **model},
        "train": {**ADDED_TRAIN_FIELDS, **train},
    }


@dataclass(frozen=True)
class RunConfig:
    model: MotionVAEConfig = field(default_factory=MotionVAEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> RunConfig:
        unknown = set(data) - {"model", "train"}
        if unknown:
            raise ValueError(
                f"{source}: unknown sections {sorted(unknown)}; expected 'model' and 'train'"
            )
        return cls(
            model=_build(MotionVAEConfig, data.get("model", {}), f"{source} [model]"),
            train=_build(TrainConfig, data.get("train", {}), f"{source} [train]"),
        )


def _build(cls: type, values: dict, source: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"{source}: unknown keys {sorted(unknown)}; valid keys: {sorted(names)}")
    return cls(**values)


def diff_configs(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Human-readable differences between two nested config dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "<missing>"), b.get(key, "<missing>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff_configs(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} -> {vb!r}")
    return out
