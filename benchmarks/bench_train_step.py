"""Training-step time and memory: the causal MotionVAE vs the non-causal seed design.

    python -m benchmarks.bench_train_step [--batch 32 --frames 152 --hidden 512 --steps 10
        --warmup 2 --rows ROW,ROW --profile N]

One step = forward + loss + backward + AdamW step, on random (batch, frames, 294) data.
Rows: the causal MotionVAE with the seed's loss (`vae_loss`), the same with the default
`--loss world` (plus `world_loss`: world joints and head decoded with the head blend, in
metres), that under `train fit --precision bf16-mixed` (bfloat16 autocast) and `--compile`
(torch.compile, inductor; its first, warm-up step compiles), and the non-causal seed design
with `vae_loss`. `--profile N` also prints the N operators of one step of each row that take
the most CPU time (torch.profiler). The models are built from the same
`MotionVAEConfig`; the seed design has no linear path (`linear_path`: 25.7M parameters against
29.3M, the conv stacks alike to within 0.01%); their steps are interleaved in
one process, rotating which goes first, so drift in machine load hits all alike. On a shared
machine the fastest steps, the per-round ratio (ours / reference within one round) and process
CPU time are the steadier numbers; the load average is printed so a contended run shows itself.

Peak memory is the rise of the process's peak RSS (Linux VmHWM) over its post-import
baseline, measured for each model in a fresh subprocess over 2 steps (weights,
gradients, AdamW state and activations all count).

Target (docs/design.md "Performance targets"): ours / reference <= 1.0.

The chunk check rows: what `train fit`'s loader workers add when they first read a chunk
(`open_store(check_chunks_on_use=True)`: crc32c and finiteness of the chunk of `features`,
`timestamp_ns` and `contact` holding its frames, and its two seams), timed on chunk files of
the default build size (8192 frames) with a warm page cache, beside the measured ours+world
step: for the worst step (a batch of 32 windows whose up to 64 chunks are all unseen, checked
by one worker) and averaged over a default run on the real dataset (~3,900 chunks, each
checked once by each of 2 workers, over 20,000 steps). Issue 20's target: <= 3% of a step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import zarr
from torch import nn

import shared.store
from shared.store import create_store_array, memmap_array, seam_problem
from train.config import RunConfig, TrainConfig
from train.loss import total_of, vae_terms, world_loss
from train.metrics import contact_speed_m_per_frame
from train.model import MotionVAE, MotionVAEConfig


class _RefBlock(nn.Module):
    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(32, channels)
        self.conv1 = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.norm2 = nn.GroupNorm(32, channels)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class _RefDownsample(nn.Module):
    """The seed's downsampler: left pad 3, kernel 4, stride 2 (drops the last frame)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size=4, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (3, 0)))


def _ref_upsample(channels: int) -> nn.Module:
    # The seed's upsampler: output frame 2i+1 reads step i+1, i.e. it looks ahead.
    return nn.ConvTranspose1d(channels, channels, kernel_size=4, stride=2, padding=1)


def _ref_stack(config: MotionVAEConfig, in_dim: int, out_dim: int, resample) -> nn.Sequential:
    C, K = config.hidden_dim, config.kernel_size
    layers: list[nn.Module] = [nn.Conv1d(in_dim, C, K, padding=K // 2)]
    for stage in range(3):
        if stage:
            layers.append(resample(C))
        layers.extend(_RefBlock(C, K) for _ in range(config.blocks_per_stage))
    layers += [nn.GroupNorm(32, C), nn.SiLU(), nn.Conv1d(C, out_dim, kernel_size=1)]
    return nn.Sequential(*layers)


class ReferenceMotionVAE(nn.Module):
    """The non-causal seed architecture at the size of MotionVAE, for timing only.

    GroupNorm (statistics over time), symmetric-padded convs, a left-pad-3 stride-2
    downsampler and a ConvTranspose1d upsampler; same widths, blocks and heads as ours.
    """

    def __init__(self, config: MotionVAEConfig):
        super().__init__()
        self.config = config
        self.encoder = _ref_stack(config, config.input_dim, 2 * config.latent_dim, _RefDownsample)
        self.decoder = _ref_stack(config, config.latent_dim, config.input_dim, _ref_upsample)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.encoder(x.transpose(1, 2)).transpose(1, 2)  # (B, T/4, 2L)
        mean, logvar = h.chunk(2, dim=-1)
        c = self.config.logvar_clamp
        logvar = logvar.clamp(-c, c)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        recon = self.decoder(z.transpose(1, 2)).transpose(1, 2)  # (B, T, D)
        return {"recon": recon, "mean": mean, "logvar": logvar, "z": z}


@dataclass(frozen=True)
class Row:
    """One row: a model, its loss ("features" is `vae_loss`, "world" adds the default world terms)
    and how `train fit` would run it (`--precision`, `--compile`)."""

    build: Callable[[MotionVAEConfig], nn.Module]
    loss: str
    precision: str = "32"
    compile: bool = False


ROWS: dict[str, Row] = {
    "ours": Row(MotionVAE, "features"),
    "ours+world": Row(MotionVAE, "world"),
    "ours+world bf16-mixed": Row(MotionVAE, "world", precision="bf16-mixed"),
    "ours+world compiled": Row(MotionVAE, "world", compile=True),
    "reference": Row(ReferenceMotionVAE, "features"),
}
RATIOS = (
    ("ours", "reference"),
    ("ours+world", "reference"),
    ("ours+world", "ours"),
    ("ours+world bf16-mixed", "ours+world"),
    ("ours+world compiled", "ours+world"),
)


_CONTACT_30FPS = contact_speed_m_per_frame(30.0)  # foot-contact threshold of a 30 fps store


def _loss(out: dict[str, torch.Tensor], x: torch.Tensor, loss: str) -> torch.Tensor:
    """The training loss `loss` with the default settings, totalled as training does."""
    config = RunConfig(train=TrainConfig(loss=loss))
    terms = vae_terms(out["recon"], x, out["mean"], out["logvar"])
    if loss == "world":  # unit statistics: the normalised features are the physical ones
        mask = torch.ones(x.shape[:2], dtype=torch.bool)
        terms |= world_loss(out["recon"], x, mask, config.train.head_blend, _CONTACT_30FPS)
    return total_of(terms, config)


def _make_step(model: nn.Module, x: torch.Tensor, row: Row) -> Callable[[], tuple[float, float]]:
    """One training step of `row` as a closure returning (wall seconds, process CPU seconds):
    the forward under the autocast `train fit --precision` uses, compiled as `--compile` does."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    forward = torch.compile(model) if row.compile else model
    autocast = TrainConfig(precision=row.precision).autocast(torch.device("cpu"))

    def step() -> tuple[float, float]:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        with autocast:
            out = forward(x)
        loss_value = _loss(out, x, row.loss)
        opt.zero_grad(set_to_none=True)
        loss_value.backward()
        opt.step()
        return time.perf_counter() - wall0, time.process_time() - cpu0

    return step


def _peak_rss_mib() -> float:
    # VmHWM, not getrusage's ru_maxrss: a child inherits the parent's ru_maxrss across
    # fork + exec, which would hide the child's own peak below the parent's.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status: peak-memory measurement needs Linux")


def _config(hidden: int) -> MotionVAEConfig:
    return MotionVAEConfig(hidden_dim=hidden)


def _measure_memory(name: str, batch: int, frames: int, hidden: int, steps: int) -> float:
    """Peak RSS rise (MiB) of `steps` training steps of one row, in this process."""
    baseline = _peak_rss_mib()
    torch.manual_seed(0)
    config = _config(hidden)
    row = ROWS[name]
    step = _make_step(row.build(config).train(), torch.randn(batch, frames, config.input_dim), row)
    for _ in range(steps):
        step()
    return _peak_rss_mib() - baseline


def _memory_in_subprocess(name: str, args: argparse.Namespace) -> float | None:
    """The row's peak RSS rise, or None for a compiled row (the compiler's own memory would
    count)."""
    if ROWS[name].compile:
        return None
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.bench_train_step",
        "--memory-of",
        name,
        "--batch",
        str(args.batch),
        "--frames",
        str(args.frames),
        "--hidden",
        str(args.hidden),
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    result = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return float(result.stdout.strip().splitlines()[-1])


def _profile(steps: dict[str, Callable[[], tuple[float, float]]], top: int) -> None:
    """torch.profiler over one more step of each row: the `top` operators by self CPU time,
    and the share of copies (weights converted between layouts, padding)."""
    for name, step in steps.items():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step()
        events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in events)
        print(f"profile of one step, {name}: {total / 1e6:.3f} s self CPU")
        for e in events[:top]:
            seconds = e.self_cpu_time_total / 1e6
            share = e.self_cpu_time_total / total
            print(f"  {e.key:<36} {seconds:8.3f} s {share:6.1%} {e.count:6d} calls")


DEFAULT_CHUNK_FRAMES = 8192  # preprocess.build's default (benchmarks do not import preprocess)
REAL_DATASET_CHUNKS = 3_900  # chunks of the real dataset's features (BENCHMARKS.md, loader)
DEFAULT_RUN = (20_000, 2)  # steps, loader workers of a default `train fit`
WORST_BATCH_CHUNKS = 2 * 32  # 32 windows of 152 frames, each in at most two chunks


def _chunk_check_s(chunks: int = 4) -> list[float]:
    """Seconds to check one frame chunk of the default size, as the loader's first read does
    (the three arrays' chunk files, then the seams), once per chunk of a fresh store."""
    rng = np.random.default_rng(0)
    frames = chunks * DEFAULT_CHUNK_FRAMES
    with tempfile.TemporaryDirectory() as tmp:
        root = zarr.open_group(Path(tmp) / "store.zarr", mode="w", zarr_format=3)
        arrays = {}
        for name, row, dtype in (
            (shared.store.FEATURES, (294,), np.float32),
            (shared.store.TIMESTAMP_NS, (), np.int64),
            (shared.store.CONTACT, (4,), np.float32),
        ):
            array = create_store_array(
                root,
                name,
                shape=(frames, *row),
                chunks=(DEFAULT_CHUNK_FRAMES, *row),
                dtype=dtype,
                dimension_names=None,
            )
            array[:] = rng.normal(size=(frames, *row)).astype(dtype)
            arrays[name] = memmap_array(array)
        times = []
        for index in range(chunks):
            t0 = time.perf_counter()
            for array in arrays.values():
                assert array.verify_chunk(index) is None
            for seam in (index * DEFAULT_CHUNK_FRAMES, (index + 1) * DEFAULT_CHUNK_FRAMES):
                seam_problem(arrays[shared.store.FEATURES], seam, frozenset())
            times.append(time.perf_counter() - t0)
    return times


def _print_chunk_check(step_s: float) -> None:
    check_s = statistics.median(_chunk_check_s())
    steps, workers = DEFAULT_RUN
    worst = WORST_BATCH_CHUNKS * check_s
    mean = REAL_DATASET_CHUNKS * workers * check_s / steps
    print(
        f"chunk check (loader workers, first read of each chunk; --no-chunk-check skips): "
        f"{1000 * check_s:.1f} ms per {DEFAULT_CHUNK_FRAMES}-frame chunk, warm page cache"
    )
    print(
        f"  worst step, {WORST_BATCH_CHUNKS} unseen chunks in one worker: {worst:.3f} s = "
        f"{100 * worst / step_s:.1f}% of the ours+world step ({step_s:.3f} s), overlapped "
        f"with it (the worker prepares batches ahead)"
    )
    print(
        f"  default run, {REAL_DATASET_CHUNKS:,} chunks x {workers} workers over {steps:,} "
        f"steps: {1000 * mean:.2f} ms per step = {100 * mean / step_s:.3f}% of a step "
        f"(target <= 3%)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.frames % 4:
        parser.error(f"--frames must be a multiple of 4, found {args.frames}")
    names = args.rows.split(",")
    if unknown := sorted(set(names) - set(ROWS)):
        parser.error(f"--rows: unknown {unknown}; rows are {', '.join(ROWS)}")

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_of:
        memory = _measure_memory(args.memory_of, args.batch, args.frames, args.hidden, steps=2)
        print(f"{memory:.1f}")
        return

    config = _config(args.hidden)
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.frames, config.input_dim)
    models = {name: ROWS[name].build(config).train() for name in names}
    steps = {name: _make_step(models[name], x, ROWS[name]) for name in names}
    wall: dict[str, list[float]] = {name: [] for name in models}
    cpu: dict[str, list[float]] = {name: [] for name in models}
    load_before = os.getloadavg()[0]
    for i in range(args.warmup + args.steps):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            wall_s, cpu_s = steps[name]()
            if i >= args.warmup:
                wall[name].append(wall_s)
                cpu[name].append(cpu_s)
    load_after = os.getloadavg()[0]
    memory = {name: _memory_in_subprocess(name, args) for name in models}

    print(
        f"train step: batch {args.batch} x {args.frames} frames, width {args.hidden}, forward "
        f"+ loss + backward + AdamW, CPU, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {args.steps} timed steps each after "
        f"{args.warmup} warm-up, interleaved; 1-min load average {load_before:.1f} before, "
        f"{load_after:.1f} after"
    )
    _print_table(models, wall, cpu, memory)
    if args.profile:
        _profile(steps, args.profile)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--frames", type=int, default=152)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model")
    parser.add_argument(
        "--hidden",
        type=int,
        default=MotionVAEConfig.hidden_dim,
        help="model width (default: the default model's)",
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows to run")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="also profile one step of each row: the top N operators",
    )
    parser.add_argument(
        "--memory-of", choices=sorted(ROWS), help="internal: print one row's peak RSS rise, MiB"
    )
    return parser


def _print_table(
    models: dict[str, nn.Module],
    wall: dict[str, list[float]],
    cpu: dict[str, list[float]],
    memory: dict[str, float | None],
) -> None:
    """One line per row, the ratios of `RATIOS` between the rows run, the chunk check's cost."""
    med = statistics.median
    print(
        f"{'row':<22} {'params':>12} {'median wall s':>14} {'min wall s':>11} "
        f"{'median CPU s':>13} {'peak RSS rise MiB':>18}"
    )
    for name, model in models.items():
        params = sum(p.numel() for p in model.parameters())
        rss = "n/a" if memory[name] is None else f"{memory[name]:.0f}"
        print(
            f"{name:<22} {params:>12,} {med(wall[name]):>14.3f} {min(wall[name]):>11.3f} "
            f"{med(cpu[name]):>13.3f} {rss:>18}"
        )
    for a, b in (pair for pair in RATIOS if set(pair) <= set(models)):
        print(f"ratio {a} / {b}:")
        print(f"  median wall time       {med(wall[a]) / med(wall[b]):.3f}")
        print(f"  fastest wall time      {min(wall[a]) / min(wall[b]):.3f}")
        rounds = (x / y for x, y in zip(wall[a], wall[b], strict=True))
        print(f"  median per-round ratio {med(rounds):.3f}")
        print(f"  median CPU time        {med(cpu[a]) / med(cpu[b]):.3f}")
    if "ours+world" in wall:
        _print_chunk_check(med(wall["ours+world"]))


if __name__ == "__main__":
    main()
