"""The training loop: store -> causal motion VAE, single process or DDP under torchrun.

Reproducibility contract: weights are seeded by `seed`; batch `i` of rank `r` is a pure
function of `(seed, r, i)` (train.data); the sampling noise of step `i` comes from the
global torch RNG re-seeded from `(seed, r, i)` at the start of the step. A checkpoint
therefore needs only model, optimizer, scheduler and step to continue exactly as an
uninterrupted run would.

Stopping: SIGINT (Ctrl-C) or SIGTERM asks the loop to stop at the next step boundary, where
it writes a checkpoint and raises `TrainingInterrupted` naming the command that resumes; a
second signal aborts at once (the previous checkpoint stays). A damaged store chunk
(`ChunkDamageError`), a non-finite loss or one far above the recent median
(`TrainingDiverged`) stop the run before the step that met it changes the model.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import signal
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from shared.atomic import remove_dead_temp_files
from shared.errors import InputError, MissingInputError, OutputExistsError, UserError
from shared.features import resample_input_frames
from shared.layout import field_of_dim
from shared.provenance import git_revision, package_version
from shared.store import ChunkDamageError, FeatureStore, open_store
from train.checkpoint import Checkpoint, link_checkpoint, load_checkpoint, save_checkpoint
from train.config import RUN_SECTIONS, RunConfig
from train.data import (
    DamagedWindows,
    Normalizer,
    TrainWindows,
    WindowBatch,
    WindowIndex,
    make_loader,
    mirror_some,
    prepare_batch,
    read_windows,
    resample_speeds,
)
from train.device import resolve_device
from train.evaluate import evaluate_batch
from train.inference import config_from_checkpoint
from train.loss import KL, RECON, TOTAL, WORLD_TERMS, total_of, training_loss
from train.metrics import RECON_LOSS, contact_speed_m_per_frame, pool
from train.model import MotionVAE

logger = logging.getLogger(__name__)

# Errors logged at validation (the full set is `train eval`'s job).
VAL_ERRORS = ("mpjpe_head_mm", "mpjpe_world_mm")
# A step loss above this many times the median of the last LOSS_HISTORY_STEPS steps stops the
# run as exploded (once LOSS_MIN_HISTORY steps are known: the first steps fall fast).
LOSS_EXPLOSION_FACTOR = 100.0
LOSS_HISTORY_STEPS = 200
LOSS_MIN_HISTORY = 20


class TrainingDiverged(UserError, RuntimeError):
    """A non-finite or exploding loss; the message names the step, every loss term and the
    batch's store frames."""


class TrainingInterrupted(UserError, RuntimeError):
    """SIGINT/SIGTERM stopped the run; the message says what was saved and how to resume.
    `exit_code` is the shell's for the signal (128 + its number)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _non_finite_input(batch: WindowBatch, store_url: str) -> str:
    """Where the batch read non-finite features from the store (a damaged store, not
    divergence), or "" when its input was finite."""
    bad = ~torch.isfinite(batch.features)
    if not bool(bad.any()):
        return ""
    window, frame, dim = (int(i) for i in bad.nonzero()[0])
    store_frame = int(batch.start_frame[window]) + frame
    return (
        f"; the input itself is not finite: store frame {store_frame}, dim {dim} "
        f"({field_of_dim(dim)}): the store is "
        f"damaged or was built from bad data, not a divergence: `python -m preprocess verify "
        f"{store_url}` names every bad chunk"
    )


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(
        int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0"))
    )
    device = resolve_device(device_name, info.local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


# A warm-up never takes more than this share of a run: a short run (e.g. 20 steps with the
# default 500-step warm-up) still reaches the peak learning rate and decays from it.
MAX_WARMUP_SHARE = 0.5


def warmup_of(warmup_steps: int, total_steps: int) -> int:
    """The warm-up a run uses: `warmup_steps`, capped at MAX_WARMUP_SHARE of the run."""
    return min(warmup_steps, int(MAX_WARMUP_SHARE * total_steps))


# A run logs at least this many training lines: a short one still draws a loss curve.
MIN_LOG_LINES = 20


def log_interval(log_every: int, total_steps: int) -> int:
    """Steps between training metrics lines: `log_every`, shorter when the run would
    otherwise log fewer than MIN_LOG_LINES lines."""
    return max(1, min(log_every, total_steps // MIN_LOG_LINES))


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1 (capped by `warmup_of`), then cosine decay to `min_ratio` at
    `total_steps`."""
    warmup = warmup_of(warmup_steps, total_steps)
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; weight decay on conv/linear weights only (not biases or norm gains)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))


def _step_seed(seed: int, rank: int, step: int) -> int:
    """Independent seeds for every (seed, rank, step), as the window sampler draws them."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0] >> 1)


@dataclass(frozen=True)
class ValidationSet:
    """The fixed validation windows of a store, evenly spaced over its val split."""

    store: FeatureStore
    index: WindowIndex
    windows: torch.Tensor  # (N,) window numbers of `index`

    @classmethod
    def of(cls, store: FeatureStore, config: RunConfig) -> ValidationSet | None:
        """None when the store has no validation sequences."""
        sequences = store.split("val")
        if not sequences:
            return None
        index = WindowIndex(sequences, config.model.seq_len)
        return cls(store, index, torch.from_numpy(index.evenly_spaced(config.train.val_windows)))


@torch.no_grad()
def validate(
    model: MotionVAE,
    val: ValidationSet,
    normalizer: Normalizer,
    config: RunConfig,
    device: torch.device,
) -> dict[str, float]:
    """Loss terms and MPJPE (mm) over the fixed validation windows, model in eval mode.

    Pooled exactly as `train eval` pools them (`evaluate_batch`).
    """
    was_training = model.training
    model.eval()
    speed_m_per_frame = contact_speed_m_per_frame(val.store.fps)
    batches = []
    for chunk in val.windows.split(config.train.batch_size):
        windows = read_windows(val.store, val.index, chunk.numpy()).to(device)
        prep = prepare_batch(windows, normalizer)
        batches.append(evaluate_batch(model, prep, normalizer, config, speed_m_per_frame)[0])
    model.train(was_training)
    pooled = pool(batches)
    logged = VAL_ERRORS + (RECON_LOSS, KL, *WORLD_TERMS)
    means = {k: float(v.mean()) for k, v in pooled.items() if k in logged or k.startswith("mse/")}
    means[RECON] = means.pop(RECON_LOSS)
    means[TOTAL] = total_of(means, config)
    return {f"val/{key}": value for key, value in means.items()}


class MetricsLog:
    """JSON lines in RUN_DIR/metrics.jsonl, mirrored to TensorBoard when it is installed."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.info("tensorboard not installed; metrics go to %s only", self.path)
        else:
            self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(key, value, step)

    def truncate_after(self, step: int) -> None:
        """Drop lines past `step` (written by a run that died before its next checkpoint)."""
        if not (self.enabled and self.path.exists()):
            return
        lines = [ln for ln in self.path.read_text().splitlines() if json.loads(ln)["step"] <= step]
        self.path.write_text("".join(ln + "\n" for ln in lines))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def fit(
    config: RunConfig,
    store: str | FeatureStore,
    run_dir: Path,
    resume: bool = False,
    notify: Callable[[str], None] = logger.info,
    store_source: str | None = None,
) -> dict[str, float]:
    """Train per `config` on the train split of `store` (a path, opened here, or an opened
    store such as `shared.chunk_cache.open_cached_store`'s); returns the last validation metrics.

    `notify` gets the notes a user at the console should see (the step a resumed run starts
    at, a signal received); `store_source` is the store as the user named it (a URL whose local
    copy or cache `store` is), recorded in run_info.json for `--resume`.
    """
    run = config.runtime
    info, device = init_distributed(run.device)
    run_dir = Path(run_dir)
    if not isinstance(store, FeatureStore):
        store = open_store(store, check_chunks_on_use=run.chunk_check)
    _warn_if_stats_window_differs(store, config)
    _warn_if_warmup_capped(config)
    resumed = _checkpoint_to_resume(run_dir, resume, config, store)
    if resumed is not None and info.is_main:
        notify(f"resuming at step {resumed.step} of {run.steps} ({run_dir})")
    state = TrainState.start(config, device, resumed)
    train_model = _wrap_for_training(state.model, info, device, run.compile)
    normalizer = Normalizer(store.stats, device)
    val = ValidationSet.of(store, config)
    if info.is_main:
        if val is None:
            logger.warning("store has no validation sequences; training without validation")
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_run_files(run_dir, config, store, info, device, store_source)
    log = MetricsLog(run_dir, enabled=info.is_main)
    log.truncate_after(state.step)
    batches = TrainBatches(store, config, info, state.step, device)
    saver = Checkpointer(run_dir / "checkpoints", state, config, store, enabled=info.is_main)
    if resumed is None:
        # A run is resumable from its first moment, and a disk too full for a checkpoint is
        # found before any training time is spent (the model alone: optimizer state is empty).
        saver.save()
    stop = StopSignals(notify if info.is_main else logger.info)
    try:
        with stop:
            return _train_loop(
                train_model, state, batches, normalizer, val, config, info, saver, log, stop
            )
    except KeyboardInterrupt:  # a second signal: abort at once, the last checkpoint stays
        if stop.received is None:
            raise
        raise TrainingInterrupted(
            f"aborted at once by a second {stop.name} during step {state.step + 1} of "
            f"{run.steps}: {saver.last} holds step {saver.saved_step}; resume with: "
            f"{resume_command(run_dir, info)}",
            128 + stop.received,
        ) from None
    finally:
        log.close()


def _train_loop(
    train_model: nn.Module,
    state: TrainState,
    batches: TrainBatches,
    normalizer: Normalizer,
    val: ValidationSet | None,
    config: RunConfig,
    info: DistInfo,
    saver: Checkpointer,
    log: MetricsLog,
    stop: StopSignals,
) -> dict[str, float]:
    """Steps until `config.runtime.steps`, validating, logging and saving on their schedules;
    raises `TrainingInterrupted` at the step boundary after a signal."""
    run = config.runtime
    last_val: dict[str, float] = {}
    log_every = log_interval(run.log_every, run.steps)
    throughput = Throughput()
    watch = LossWatch()
    # `with`: a failing step closes the bar first, so its error starts on a line of its own.
    with tqdm(
        total=run.steps, initial=state.step, disable=not info.is_main, desc="train", unit="step"
    ) as bar:
        train_model.train()
        while state.step < run.steps:
            t0 = time.perf_counter()
            terms, grad_norm, stopping = _train_step(
                train_model, state, batches, normalizer, config, info, saver, watch, stop
            )
            windows = config.train.batch_size * info.world_size
            throughput.add(windows, batches.take_wait_s(), time.perf_counter() - t0)
            if state.step % log_every == 0 or state.step == run.steps:
                _log_train(
                    log, bar, _train_values(terms, grad_norm, state, throughput.take()), state
                )
            checked = _validate_and_save(
                state, val, normalizer, config, batches, info, saver, log, bar
            )
            last_val = checked or last_val
            bar.update(1)
            if stopping:
                break
    if state.step < run.steps:
        _stop_interrupted(state, run.steps, saver, info, stop)
    _finish(saver.directory.parent, info)
    return last_val


def _log_train(log: MetricsLog, bar: tqdm, values: dict[str, float], state: TrainState) -> None:
    log.write(state.step, values)
    bar.set_postfix(
        loss=f"{values['train/total']:.4f}",
        win_s=f"{values['perf/windows_per_s']:.0f}",
        wait=f"{100 * values['perf/data_wait_share']:.1f}%",
    )


def _validate_and_save(
    state: TrainState,
    val: ValidationSet | None,
    normalizer: Normalizer,
    config: RunConfig,
    batches: TrainBatches,
    info: DistInfo,
    saver: Checkpointer,
    log: MetricsLog,
    bar: tqdm,
) -> dict[str, float] | None:
    """At a validation step: validate (rank 0), log and print its line and checkpoint (`best`
    too when it improved); at a checkpoint step: checkpoint. Returns the validation's values."""
    run = config.runtime
    if state.step % run.val_every == 0 or state.step == run.steps:
        if val is not None and info.is_main:
            values = validate(state.model, val, normalizer, config, batches.device)
            log.write(state.step, values)
            bar.write(validation_line(state.step, run.steps, values))
            saver.save(is_best=state.record_val(values["val/total"]))
            return values
        saver.save()
    elif state.step % run.ckpt_every == 0:
        saver.save()
    return None


def _stop_interrupted(
    state: TrainState, steps: int, saver: Checkpointer, info: DistInfo, stop: StopSignals
) -> NoReturn:
    """The step boundary after a signal: checkpoint (unless this step's is saved), then end
    the run with the command that resumes it."""
    if saver.saved_step != state.step:
        saver.save()
    _finish(saver.directory.parent, info)
    raise TrainingInterrupted(
        f"interrupted by {stop.name} after step {state.step} of {steps}: checkpoint "
        f"saved to {saver.last}; resume with: {resume_command(saver.directory.parent, info)}",
        128 + (stop.received or signal.SIGINT),
    )


def resume_command(run_dir: Path, info: DistInfo) -> str:
    """The command that continues the run in `run_dir` (everything else is in the run)."""
    launcher = [sys.executable, "-m"]
    if info.world_size > 1:
        launcher = ["torchrun", f"--nproc_per_node={info.world_size}", "-m"]
    return shlex.join([*launcher, "train", "fit", "--resume", str(run_dir)])


class StopSignals:
    """While entered (in the main thread): the first SIGINT or SIGTERM is recorded in
    `received` for the loop to stop at the next step boundary; a second one raises
    KeyboardInterrupt at once. The previous handlers come back on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, notify: Callable[[str], None]) -> None:
        self.notify = notify
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else "a signal"

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, _frame: object) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        self.notify(
            f"{self.name}: stopping after this step to write a checkpoint (send it again to abort "
            f"at once)"
        )


class LossWatch:
    """The running median of recent finite step losses, to tell an exploding loss."""

    def __init__(self) -> None:
        self.recent: deque[float] = deque(maxlen=LOSS_HISTORY_STEPS)

    def exploded(self, loss: float) -> float | None:
        """The median `loss` exceeds LOSS_EXPLOSION_FACTOR times, or None (and `loss` is
        recorded) when it does not or too few steps are known."""
        if len(self.recent) >= LOSS_MIN_HISTORY:
            median = statistics.median(self.recent)
            if loss > LOSS_EXPLOSION_FACTOR * median:
                return median
        self.recent.append(loss)
        return None


@dataclass
class TrainState:
    """What a checkpoint holds and a step advances: model, optimizer, schedule, step, best val."""

    model: MotionVAE
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    step: int = 0
    best_val: float = math.inf

    @classmethod
    def start(
        cls, config: RunConfig, device: torch.device, resumed: Checkpoint | None
    ) -> TrainState:
        """A fresh run seeded by `config.train.seed`, or the state `resumed` saved."""
        cfg = config.train
        torch.manual_seed(cfg.seed)
        model = MotionVAE(config.model).to(device)
        optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: lr_factor(s, cfg.warmup_steps, config.runtime.steps, cfg.min_lr_ratio),
        )
        state = cls(model, optimizer, scheduler)
        if resumed is not None:
            model.load_state_dict(resumed.model)
            optimizer.load_state_dict(resumed.optimizer)
            scheduler.load_state_dict(resumed.scheduler)
            state.step, state.best_val = resumed.step, resumed.best_val
        return state

    def record_val(self, total: float) -> bool:
        """Note a validation loss; True when it is the best so far."""
        is_best = total < self.best_val
        self.best_val = min(self.best_val, total)
        return is_best


class Checkpointer:
    """Writes DIR/last.pt (what --resume needs) and, for the best validation, DIR/best.pt."""

    def __init__(
        self,
        directory: Path,
        state: TrainState,
        config: RunConfig,
        store: FeatureStore,
        enabled: bool,
    ) -> None:
        self.directory = directory
        self.last, self.best = directory / "last.pt", directory / "best.pt"
        self.state, self.config, self.store, self.enabled = state, config, store, enabled
        self.saved_step = state.step  # what `last` holds (a new run saves step 0 at once)
        if enabled:  # a process killed while writing left its temp file (maybe a whole copy)
            for path in (self.last, self.best):
                remove_dead_temp_files(path)

    def save(self, is_best: bool = False) -> None:
        # last.pt first: it is what --resume needs, so a disk with room for one more file
        # spends it there; best.pt is then the same file (a hard link where possible).
        if not self.enabled:
            return
        s = self.state
        save_checkpoint(
            self.last,
            Checkpoint.capture(
                s.model, s.optimizer, s.scheduler, s.step, s.best_val, self.config, self.store
            ),
        )
        self.saved_step = s.step
        if is_best:
            link_checkpoint(self.last, self.best)


class Throughput:
    """Windows per second of training and the share of it spent waiting for data."""

    def __init__(self) -> None:
        self.wait_s = self.busy_s = 0.0
        self.windows = 0

    def add(self, windows: int, wait_s: float, busy_s: float) -> None:
        self.windows += windows
        self.wait_s += wait_s
        self.busy_s += busy_s

    def take(self) -> dict[str, float]:
        """The rates since the last take."""
        busy = max(self.busy_s, 1e-9)
        rates = {
            "perf/windows_per_s": self.windows / busy,
            "perf/data_wait_share": self.wait_s / busy,
        }
        self.wait_s = self.busy_s = 0.0
        self.windows = 0
        return rates


def validation_line(step: int, steps: int, values: dict[str, float]) -> str:
    """The console line of one validation (printed above the progress bar)."""
    return (
        f"step {step}/{steps}: val loss {values[f'val/{TOTAL}']:.4g}, MPJPE world "
        f"{values['val/mpjpe_world_mm']:.1f} mm, head frame {values['val/mpjpe_head_mm']:.1f} mm"
    )


def _warn_if_warmup_capped(config: RunConfig) -> None:
    cfg = config.train
    warmup = warmup_of(cfg.warmup_steps, config.runtime.steps)
    if warmup < cfg.warmup_steps:
        logger.warning(
            "--warmup-steps %d is more than %d%% of the %d-step run: warming up for %d steps, "
            "then the cosine decay",
            cfg.warmup_steps,
            round(100 * MAX_WARMUP_SHARE),
            config.runtime.steps,
            warmup,
        )


def _warn_if_stats_window_differs(store: FeatureStore, config: RunConfig) -> None:
    if store.stats.window_frames != config.model.seq_len:
        logger.warning(
            "store statistics were computed over %d-frame windows, training uses %d",
            store.stats.window_frames,
            config.model.seq_len,
        )


def _checkpoint_to_resume(
    run_dir: Path, resume: bool, config: RunConfig, store: FeatureStore
) -> Checkpoint | None:
    """The checkpoint --resume continues (checked against `config`), None for a new run."""
    path = run_dir / "checkpoints" / "last.pt"
    if not resume:
        if path.exists():  # every rank stops here, not only rank 0
            raise OutputExistsError(
                f"{run_dir} already holds a run; pass --resume to continue it or choose a new --out"
            )
        return None
    if not path.exists():
        raise MissingInputError(f"--resume: no checkpoint at {path}; start without --resume")
    resumed = load_checkpoint(path)
    _check_resumable(resumed, config, store)
    logger.info("resumed %s at step %d", run_dir, resumed.step)
    return resumed


def _wrap_for_training(
    model: MotionVAE, info: DistInfo, device: torch.device, compile_model: bool
) -> nn.Module:
    """The module the loop calls: DDP across ranks, compiled on request."""
    wrapped: nn.Module = model
    if info.world_size > 1:
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return torch.compile(wrapped) if compile_model else wrapped


class TrainBatches:
    """This rank's training batches from step `first_step` on, on the device; counts the time
    spent waiting for them."""

    def __init__(
        self,
        store: FeatureStore,
        config: RunConfig,
        info: DistInfo,
        first_step: int,
        device: torch.device,
    ) -> None:
        cfg = config.train
        read_frames = config.model.seq_len
        if cfg.speed_prob > 0:  # read long enough to play the window faster
            read_frames = resample_input_frames(read_frames, cfg.speed_max)
        dataset = TrainWindows(
            store,
            "train",
            read_frames,
            cfg.batch_size,
            cfg.seed,
            info.rank,
            first_batch=first_step,
            check_chunks=config.runtime.chunk_check,
        )
        self.loader = iter(
            make_loader(dataset, config.runtime.num_workers, pin_memory=device.type == "cuda")
        )
        self.device, self.store_url = device, store.url
        self.sequences = store.split("train")
        self.contact_speed_m_per_frame = contact_speed_m_per_frame(store.fps)
        self.wait_s = 0.0
        self.autocast = cfg.autocast(device)

    def next(self) -> WindowBatch:
        """The next batch; `ChunkDamageError` when its windows read a damaged chunk."""
        t0 = time.perf_counter()
        batch = next(self.loader)
        if isinstance(batch, DamagedWindows):
            raise ChunkDamageError(batch.problem)
        batch = batch.to(self.device, non_blocking=True)
        self.wait_s += time.perf_counter() - t0
        return batch

    def describe(self, batch: WindowBatch, worst: int) -> str:
        """The store frames of a batch's windows, window `worst` first with its sequence."""
        windows = list(zip(batch.start_frame.tolist(), batch.mask.sum(1).tolist()))
        first, n = windows[worst]
        name = self.sequences[int(batch.sequence[worst])].name
        others = ", ".join(f"{s}-{s + k - 1}" for s, k in sorted(set(windows) - {windows[worst]}))
        worst_span = f"{first}-{first + n - 1} (sequence {name}, the worst window)"
        return f"store frames {worst_span}, then {others}"

    def take_wait_s(self) -> float:
        """Seconds spent waiting for batches since the last call."""
        wait_s, self.wait_s = self.wait_s, 0.0
        return wait_s


def _train_step(
    train_model: nn.Module,
    state: TrainState,
    batches: TrainBatches,
    normalizer: Normalizer,
    config: RunConfig,
    info: DistInfo,
    saver: Checkpointer,
    watch: LossWatch,
    stop: StopSignals,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, bool]:
    """One optimizer step (state.step += 1); returns the loss terms, the gradient norm and
    whether a rank received a stop signal (the loop then stops after this step).

    A non-finite or exploding loss on any rank saves the last good state (this step has not
    changed it) and raises TrainingDiverged.
    """
    cfg = config.train
    batch = batches.next()
    torch.manual_seed(_step_seed(cfg.seed, info.rank, state.step))
    batch = resample_speeds(batch, cfg.speed_prob, cfg.speed_max, config.model.seq_len)
    prep = prepare_batch(mirror_some(batch, cfg.mirror_prob), normalizer)
    with batches.autocast:
        out = train_model(prep.x)
    terms = training_loss(out, prep, normalizer, config, batches.contact_speed_m_per_frame)
    loss = float(terms[TOTAL].detach())
    median = watch.exploded(loss) if math.isfinite(loss) else None
    bad = not math.isfinite(loss) or median is not None
    bad, stopping = _any_rank_flags((bad, stop.received is not None), batches.device, info)
    if bad:
        saver.save()
        described = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
        what = "a non-finite or exploding loss on another rank"
        if not math.isfinite(loss):
            what = "non-finite loss"
        elif median is not None:
            what = (
                f"exploding loss ({loss:.4g} > {LOSS_EXPLOSION_FACTOR:g} x the median "
                f"{median:.4g} of the last {len(watch.recent)} steps)"
            )
        error = (out["recon"].detach().float() - prep.x) ** 2  # (B, T, D)
        worst = int(error.mean((1, 2)).nan_to_num(math.inf).argmax())
        raise TrainingDiverged(
            f"{what} at step {state.step} ({described}); the batch: "
            f"{batches.describe(batch, worst)}; last good state saved to "
            f"{saver.last}{_non_finite_input(batch, batches.store_url)}"
        )
    state.optimizer.zero_grad(set_to_none=True)
    terms[TOTAL].backward()
    grad_norm = nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip)
    state.optimizer.step()
    state.scheduler.step()
    if batches.device.type == "cuda":
        torch.cuda.synchronize(batches.device)
    state.step += 1
    return terms, grad_norm, stopping


def _train_values(
    terms: dict[str, torch.Tensor],
    grad_norm: torch.Tensor,
    state: TrainState,
    rates: dict[str, float],
) -> dict[str, float]:
    """The metrics line of a training step."""
    values = {f"train/{k}": float(v.detach()) for k, v in terms.items()}
    values |= {"train/grad_norm": float(grad_norm), "train/lr": state.scheduler.get_last_lr()[0]}
    return values | rates


def _finish(run_dir: Path, info: DistInfo) -> None:
    if info.is_main:
        from train.plots import plot_loss_curves

        plot_loss_curves(run_dir / "metrics.jsonl", run_dir / "loss_curve.png")
    if info.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()


def _any_rank_flags(
    flags: tuple[bool, ...], device: torch.device, info: DistInfo
) -> tuple[bool, ...]:
    """Each flag true when it is true on any rank (one all-reduce), so that all ranks take the
    same branch."""
    if info.world_size == 1:
        return flags
    reduced = torch.tensor(flags, dtype=torch.int32, device=device)
    dist.all_reduce(reduced, op=dist.ReduceOp.MAX)
    return tuple(bool(f) for f in reduced.tolist())


def _check_resumable(ckpt: Checkpoint, config: RunConfig, store: FeatureStore) -> None:
    """Refuses a resume that changes what the run computes (the sections of `RUN_SECTIONS`
    that compute, and the store); how it runs may change."""
    # Through config_from_checkpoint: a run from before `--loss` existed resumes as `--loss seed`.
    saved = config_from_checkpoint(ckpt)
    differences = RUN_SECTIONS.computing_changes(saved.to_dict(), config.to_dict())
    if ckpt.store_fingerprint != store.fingerprint:
        differences.append(
            f"store fingerprint: {ckpt.store_fingerprint} ({ckpt.store_url}) -> "
            f"{store.fingerprint} ({store.url})"
        )
    if saved.runtime.steps != config.runtime.steps:
        logger.warning(
            "resuming with steps %d instead of %d: the cosine schedule is stretched from here on, "
            "so this run will not match one started with the new step count",
            config.runtime.steps,
            saved.runtime.steps,
        )
    if differences:
        raise InputError(
            "cannot resume: the checkpoint was trained with a different setup:\n  "
            + "\n  ".join(differences)
            + "\nstart a new run (--out elsewhere) or resume with the original settings"
        )


def _write_run_files(
    run_dir: Path,
    config: RunConfig,
    store: FeatureStore,
    info: DistInfo,
    device: torch.device,
    store_source: str | None,
) -> None:
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    run_info = {
        "package_version": package_version(),
        "git_revision": git_revision(),
        "torch_version": torch.__version__,
        "device": str(device),
        "world_size": info.world_size,
        "store": {
            "url": store.url,
            "source": store_source or store.url,
            "fingerprint": store.fingerprint,
        },
    }
    (run_dir / "run_info.json").write_text(json.dumps(run_info, indent=2) + "\n")
