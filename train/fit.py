"""The training loop: store -> causal motion VAE, single process or DDP under torchrun.

Reproducibility contract: weights are seeded by `seed`; batch `i` of rank `r` is a pure
function of `(seed, r, i)` (train.data); the sampling noise of step `i` comes from the
global torch RNG re-seeded from `(seed, r, i)` at the start of the step. A checkpoint
therefore needs only model, optimizer, scheduler and step to continue exactly as an
uninterrupted run would.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from shared.layout import field_of_dim
from shared.provenance import git_revision, package_version
from shared.store import FeatureStore, open_store
from train.checkpoint import Checkpoint, link_checkpoint, load_checkpoint, save_checkpoint
from train.config import RunConfig, diff_configs
from train.data import (
    Normalizer,
    TrainWindows,
    WindowBatch,
    WindowIndex,
    make_loader,
    prepare_batch,
    read_windows,
)
from train.evaluate import evaluate_batch
from train.inference import config_from_checkpoint, resolve_device
from train.loss import KL, RECON, TOTAL, WORLD_POSITION, WORLD_VELOCITY, total_of, training_loss
from train.metrics import CONTACT_SPEED_M_S, RECON_LOSS, pool
from train.model import MotionVAE

logger = logging.getLogger(__name__)

# Fields that may change when a run is resumed: they do not alter what the run computes.
# Errors logged at validation (the full set is `train eval`'s job).
VAL_ERRORS = ("mpjpe_head_mm", "mpjpe_world_mm")
RESUMABLE_CHANGES = {
    "train.steps",
    "train.num_workers",
    "train.device",
    "train.log_every",
    "train.val_every",
    "train.compile",
}


class TrainingDiverged(RuntimeError):
    """A non-finite loss; the message names the step and every loss term."""


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


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to `min_ratio` at `total_steps`."""
    warmup = min(warmup_steps, total_steps)
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


@torch.no_grad()
def validate(
    model: MotionVAE,
    store: FeatureStore,
    index: WindowIndex,
    windows: torch.Tensor,
    normalizer: Normalizer,
    config: RunConfig,
    device: torch.device,
) -> dict[str, float]:
    """Loss terms and MPJPE (mm) over the fixed validation windows, model in eval mode.

    Pooled exactly as `train eval` pools them (`evaluate_batch`).
    """
    was_training = model.training
    model.eval()
    speed_m_per_frame = CONTACT_SPEED_M_S / store.fps
    batches = []
    for chunk in windows.split(config.train.batch_size):
        prep = prepare_batch(read_windows(store, index, chunk.numpy()).to(device), normalizer)
        batches.append(evaluate_batch(model, prep, normalizer, config, speed_m_per_frame)[0])
    model.train(was_training)
    pooled = pool(batches)
    logged = VAL_ERRORS + (RECON_LOSS, KL, WORLD_POSITION, WORLD_VELOCITY)
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


def fit(config: RunConfig, store_url: str, run_dir: Path, resume: bool = False) -> dict[str, float]:
    """Train per `config` on the store's train split; returns the last validation metrics."""
    cfg = config.train
    info, device = init_distributed(cfg.device)
    run_dir = Path(run_dir)
    store = open_store(store_url)
    if store.stats.window_frames != config.model.seq_len:
        logger.warning(
            "store statistics were computed over %d-frame windows, training uses %d",
            store.stats.window_frames,
            config.model.seq_len,
        )
    ckpt_path = run_dir / "checkpoints" / "last.pt"
    resumed: Checkpoint | None = None
    if resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(
                f"--resume: no checkpoint at {ckpt_path}; start without --resume"
            )
        resumed = load_checkpoint(ckpt_path)
        _check_resumable(resumed, config, store)
    elif ckpt_path.exists():  # every rank stops here, not only rank 0
        raise FileExistsError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose a new --out"
        )

    torch.manual_seed(cfg.seed)
    model = MotionVAE(config.model).to(device)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    )
    start_step, best_val = 0, math.inf
    if resumed is not None:
        model.load_state_dict(resumed.model)
        optimizer.load_state_dict(resumed.optimizer)
        scheduler.load_state_dict(resumed.scheduler)
        start_step, best_val = resumed.step, resumed.best_val
        logger.info("resumed %s at step %d", run_dir, start_step)

    train_model: nn.Module = model
    if info.world_size > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        train_model = torch.compile(train_model)

    normalizer = Normalizer(store.stats, device)
    val_split = store.split("val")
    val_index = WindowIndex(val_split, config.model.seq_len) if val_split else None
    val_windows = torch.from_numpy(val_index.evenly_spaced(cfg.val_windows)) if val_index else None
    if val_index is None and info.is_main:
        logger.warning("store has no validation sequences; training without validation")

    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_run_files(run_dir, config, store, info, device)
    log = MetricsLog(run_dir, enabled=info.is_main)
    log.truncate_after(start_step)

    dataset = TrainWindows(
        store.url,
        "train",
        config.model.seq_len,
        cfg.batch_size,
        cfg.seed,
        info.rank,
        first_batch=start_step,
    )
    loader = iter(make_loader(dataset, cfg.num_workers, pin_memory=device.type == "cuda"))
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda" and cfg.bf16
        else nullcontext()
    )

    def checkpoint(step: int, is_best: bool = False) -> None:
        # last.pt first: it is what --resume needs, so a disk with room for one more file
        # spends it there; best.pt is then the same file (a hard link where possible).
        if info.is_main:
            save_checkpoint(
                ckpt_path,
                Checkpoint.capture(model, optimizer, scheduler, step, best_val, config, store),
            )
            if is_best:
                link_checkpoint(ckpt_path, run_dir / "checkpoints" / "best.pt")

    if resumed is None:
        # A run is resumable from its first moment, and a disk too full for a checkpoint is
        # found before any training time is spent (the model alone: optimizer state is empty).
        checkpoint(0)

    last_val: dict[str, float] = {}
    wait_s = busy_s = 0.0
    windows_seen = 0
    bar = tqdm(
        total=cfg.steps, initial=start_step, disable=not info.is_main, desc="train", unit="step"
    )
    train_model.train()
    for step in range(start_step, cfg.steps):
        t0 = time.perf_counter()
        batch = next(loader).to(device, non_blocking=True)
        t1 = time.perf_counter()
        torch.manual_seed(_step_seed(cfg.seed, info.rank, step))
        prep = prepare_batch(batch, normalizer)
        with autocast:
            out = train_model(prep.x)
        terms = training_loss(out, prep, normalizer, config)
        if _any_rank(~torch.isfinite(terms["total"]), info):
            checkpoint(step)
            described = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
            raise TrainingDiverged(
                f"non-finite loss at step {step} ({described}); last good state saved to {ckpt_path}"
                f"{_non_finite_input(batch, store.url)}"
            )
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t2 = time.perf_counter()
        wait_s, busy_s = wait_s + (t1 - t0), busy_s + (t2 - t0)
        windows_seen += cfg.batch_size * info.world_size
        done = step + 1

        if done % cfg.log_every == 0 or done == cfg.steps:
            values = {f"train/{k}": float(v.detach()) for k, v in terms.items()}
            values |= {
                "train/grad_norm": float(grad_norm),
                "train/lr": scheduler.get_last_lr()[0],
                "perf/windows_per_s": windows_seen / busy_s,
                "perf/data_wait_share": wait_s / busy_s,
            }
            log.write(done, values)
            bar.set_postfix(
                loss=f"{values['train/total']:.4f}",
                win_s=f"{values['perf/windows_per_s']:.0f}",
                wait=f"{100 * values['perf/data_wait_share']:.1f}%",
            )
            wait_s = busy_s = 0.0
            windows_seen = 0
        if done % cfg.val_every == 0 or done == cfg.steps:
            if val_index is not None and info.is_main:
                last_val = validate(
                    model, store, val_index, val_windows, normalizer, config, device
                )
                log.write(done, last_val)
                is_best = last_val["val/total"] < best_val
                best_val = min(best_val, last_val["val/total"])
                checkpoint(done, is_best)
            else:
                checkpoint(done)
        bar.update(1)
    bar.close()
    log.close()
    if info.is_main:
        from train.plots import plot_loss_curves

        plot_loss_curves(run_dir / "metrics.jsonl", run_dir / "loss_curve.png")
    if info.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return last_val


def _any_rank(flag: torch.Tensor, info: DistInfo) -> bool:
    """True when `flag` is true on any rank, so that all ranks take the same branch."""
    if info.world_size > 1:
        flag = flag.to(torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag)


def _check_resumable(ckpt: Checkpoint, config: RunConfig, store: FeatureStore) -> None:
    # Through config_from_checkpoint: a run from before `--loss` existed resumes as `--loss seed`.
    saved = config_from_checkpoint(ckpt).to_dict()
    differences = [
        d for d in diff_configs(saved, config.to_dict()) if d.split(":")[0] not in RESUMABLE_CHANGES
    ]
    if ckpt.store_fingerprint != store.fingerprint:
        differences.append(
            f"store fingerprint: {ckpt.store_fingerprint} ({ckpt.store_url}) -> {store.fingerprint} ({store.url})"
        )
    if ckpt.config["train"]["steps"] != config.train.steps:
        logger.warning(
            "resuming with steps %d instead of %d: the cosine schedule is stretched from here on, "
            "so this run will not match one started with the new step count",
            config.train.steps,
            ckpt.config["train"]["steps"],
        )
    if differences:
        raise ValueError(
            "cannot resume: the checkpoint was trained with a different setup:\n  "
            + "\n  ".join(differences)
            + "\nstart a new run (--out elsewhere) or resume with the original settings"
        )


def _write_run_files(
    run_dir: Path, config: RunConfig, store: FeatureStore, info: DistInfo, device: torch.device
) -> None:
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    run_info = {
        "package_version": package_version(),
        "git_revision": git_revision(),
        "torch_version": torch.__version__,
        "device": str(device),
        "world_size": info.world_size,
        "store": {"url": store.url, "fingerprint": store.fingerprint},
    }
    (run_dir / "run_info.json").write_text(json.dumps(run_info, indent=2) + "\n")
