"""Training configuration: frozen dataclasses whose field docs are the CLI help.

`python -m train fit` takes its configuration in the sections of `RUN_SECTIONS`
(`shared.cli.ConfigSections`): `model` (`MotionVAEConfig`) and `train` (`TrainConfig`) say
what a run computes, `runtime` (`RuntimeConfig`) how it runs. Every field is a `--option`;
`--config FILE` (JSON, TOML or YAML, the same sections) sets them in bulk, and explicit
options win over the file. A resumed run may change `runtime` only.
"""

from __future__ import annotations

import dataclasses
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from shared.cli import ConfigSections, Section
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
    """What a training run computes: optimisation, data and loss (docs/design.md "Training").
    Resuming a run with any of these changed is refused; how it runs is `RuntimeConfig`."""

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
    val_windows: int = 256
    """Size of the fixed validation window set."""
    precision: Precision = "auto"
    """'32': float32 throughout; 'bf16-mixed': the model's forward under bfloat16 autocast on
    the training device (weights, optimizer and loss in float32); 'auto': bf16-mixed on CUDA,
    else 32."""
    loss: Loss = "world"
    """'features': per-group MSE on normalised features + KL, world motion decoded from the
    absolute head pose (the seed design's loss, exactly; 'seed' is its old name). 'world': the
    same plus the position and velocity error of world joints and head in metres, world motion
    decoded with head_blend (chosen by `python -m benchmarks quality`, see BENCHMARKS.md)."""
    world_position_weight: float = 0.3
    """'world' loss: weight of the mean world joint + head position error (metres). The four
    metre terms' defaults (0.3, 3, 3, 3) are three times their first values (0.1, 1, 1, 1): the
    feature MSE weighs less against them (`python -m benchmarks quality --data real`, see
    BENCHMARKS.md)."""
    world_velocity_weight: float = 3.0
    """'world' loss: weight of the mean world joint + head velocity error (metres/frame)."""
    head_frame_weight: float = 3.0
    """'world' loss: weight of the mean error of the joints in the head frame (metres); keeps the
    head's orientation right, which the world terms alone trade against the joints."""
    foot_contact_weight: float = 3.0
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
    speed_prob: float = 0.0
    """Probability that a training window is played at another speed, drawn log-uniformly in
    [1 / speed_max, speed_max] (resampled: train.data.resample_speeds), per window and step; 0
    trains on the windows as recorded."""
    speed_max: float = 1.25
    """The fastest speed `speed_prob` plays a window at, and 1 / speed_max the slowest (>= 1);
    windows are read speed_max times as long, so sequences shorter than that pad."""
    head_blend: float = 0.95
    """'world' loss: weight of the integrated head deltas (hp_dot, hr_dot) against the absolute
    head pose (hp, hr) when decoding the head trajectory; 0 absolute, 1 pure integration
    (shared.features.head_pose)."""

    def __post_init__(self) -> None:
        """Every bad value is refused here, so the command line (exit 2, naming the option), a
        --config file and a resumed run's config are all checked alike."""
        if self.loss in LOSS_ALIASES:
            object.__setattr__(self, "loss", LOSS_ALIASES[self.loss])
        _at_least_one(self, ("batch_size", "val_windows"))
        for name in ("lr", "grad_clip"):
            if not getattr(self, name) > 0:  # also refuses NaN
                raise ValueError(f"TrainConfig.{name} must be > 0, found {getattr(self, name)!r}")
        for name in (
            "weight_decay",
            "warmup_steps",
            "seed",
            "world_position_weight",
            "world_velocity_weight",
            "head_frame_weight",
            "foot_contact_weight",
            "head_orientation_weight",
            "world_acceleration_weight",
        ):
            if not getattr(self, name) >= 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, found {getattr(self, name)!r}")
        if not self.speed_max >= 1.0:
            raise ValueError(f"TrainConfig.speed_max must be >= 1, found {self.speed_max!r}")
        for name in ("min_lr_ratio", "mirror_prob", "speed_prob", "head_blend"):
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


def _at_least_one(config: Any, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(config, name) < 1:
            raise ValueError(
                f"{type(config).__name__}.{name} must be >= 1, found {getattr(config, name)!r}"
            )


@dataclass(frozen=True)
class RuntimeConfig:
    """How a training run runs: its length, schedules of validation, checkpoints and logs,
    device, loader and store checks. Any of these may change when the run is resumed (a new
    `steps` stretches the cosine schedule from there on: warned)."""

    steps: int = 20_000
    """Optimizer steps to run in total."""
    val_every: int = 500
    """Validate every N steps (and at the end), then write a checkpoint."""
    ckpt_every: int = 500
    """Also write a checkpoint every N steps, validation or not."""
    log_every: int = 50
    """Write a metrics line every N steps (more often in a run of fewer than 20 N steps: at
    least 20 lines)."""
    num_workers: int = 2
    """DataLoader worker processes (0 loads in the main process)."""
    device: Device = "auto"
    """Training device; auto picks CUDA, then MPS, then CPU."""
    compile: bool = False
    """torch.compile the model (the first steps are slower while it compiles)."""
    chunk_check: bool = True
    """Check each store chunk the first time a loader worker reads it: its crc32c, that its
    values are finite, that it continues its neighbours (a damaged store stops the run)."""
    cache_max_gb: float | None = None
    """With --store URL: size limit in GB of the local chunk cache the store is read through
    (least recently used chunks are evicted); no limit when not given."""

    def __post_init__(self) -> None:
        _at_least_one(self, ("steps", "val_every", "ckpt_every", "log_every"))
        if not self.num_workers >= 0:
            raise ValueError(f"RuntimeConfig.num_workers must be >= 0, found {self.num_workers!r}")
        if self.cache_max_gb is not None and not self.cache_max_gb > 0:
            raise ValueError(f"RuntimeConfig.cache_max_gb must be > 0, found {self.cache_max_gb!r}")


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
    "speed_prob": 0.0,
}


# Model fields added after runs were saved: a model from before `linear_path` has none, one
# from before `linear_decoder_kernel` decodes each latent's 4 frames from that latent alone,
# one from before `decoder_out_kernel` projects each frame's last hidden state alone.
ADDED_MODEL_FIELDS = {"linear_path": False, "linear_decoder_kernel": 1, "decoder_out_kernel": 1}


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


# The sections of `train fit`'s configuration (and of config.json, a checkpoint's config).
RUN_SECTIONS = ConfigSections(
    Section("model", MotionVAEConfig, computes=True, skip=("input_dim",)),
    Section("train", TrainConfig, computes=True),
    Section("runtime", RuntimeConfig, computes=False),
)


@dataclass(frozen=True)
class RunConfig:
    """A run's whole configuration, one field per section of `RUN_SECTIONS`."""

    model: MotionVAEConfig = field(default_factory=MotionVAEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> RunConfig:
        """From sections (or an older shape: `RUN_SECTIONS.sectioned`); ValueError names
        `source` and what is wrong."""
        values = RUN_SECTIONS.sectioned(data, source)
        return cls(**{s.name: s.cls(**values[s.name]) for s in RUN_SECTIONS.sections})
