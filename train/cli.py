"""`nymeria-train` / `python -m train`: the trainer's command line."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import torch
from torch import nn
from tqdm import tqdm

from shared.chunk_cache import open_cached_store
from shared.cli import (
    FEATURE_STORE,
    LATENT_STORE,
    NEW_STORE,
    ConfigSections,
    cli_group,
    storage_options_option,
)
from shared.errors import UserError
from shared.remote import is_url
from shared.store import ATTR_FPS, ATTR_WINDOW_FRAMES, SPLITS, FeatureStore
from shared.transfer import cached_store
from train.config import RUN_SECTIONS, Device, RunConfig, saved_config
from train.evaluate import META, METRICS_FILE, evaluate, format_table
from train.fit import TrainingInterrupted
from train.fit import fit as run_fit
from train.latents import (
    ATTR_HOP_FRAMES,
    FEATURES,
    MEAN,
    WORLD_ARRAYS,
    decode_store,
    encode_store,
    format_store_info,
    read_decoded_table,
    read_latent_table,
    store_info,
)
from train.model import FRAMES_PER_LATENT, MotionVAE


@cli_group
def main() -> None:
    """Train and use the causal motion VAE on a Nymeria feature store."""


# The model's parts, each a conv stack and the linear path beside it (when the model has one).
_PARTS = {"encoder": ("encoder", "linear_encoder"), "decoder": ("decoder", "linear_decoder")}


def _table_rows(model: MotionVAE, part: str) -> Iterator[tuple[str, nn.Module]]:
    """The layers of `part` (see _PARTS) in execution order, ModuleLists expanded: every
    parameter of the part is in exactly one row."""
    stack, linear = (getattr(model, name, None) for name in _PARTS[part])
    for name, child in stack.named_children():
        if isinstance(child, nn.ModuleList):
            for i, layer in enumerate(child):
                yield f"{part}.{name}.{i}", layer
        else:
            yield f"{part}.{name}", child
    if linear is not None:
        yield _PARTS[part][1], linear


# The model's section alone (`describe`).
_MODEL_SECTIONS = ConfigSections(RUN_SECTIONS.sections[0])


@main.command()
@_MODEL_SECTIONS.options(config_file=False)
def describe(**options: Any) -> None:
    """Print the layer table and parameter count of a MotionVAE (defaults unless overridden)."""
    ctx = click.get_current_context()
    config = _MODEL_SECTIONS.make(_MODEL_SECTIONS.resolve(ctx, None))["model"]
    model = MotionVAE(config).eval()

    rows = {part: list(_table_rows(model, part)) for part in _PARTS}
    shapes: dict[nn.Module, str] = {}

    def record(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        _, T, C = output.shape
        shapes[module] = f"{T} x {C}"

    hooks = [module.register_forward_hook(record) for part in rows.values() for _, module in part]
    with torch.no_grad():
        model(torch.zeros(1, config.seq_len, config.input_dim))
    for hook in hooks:
        hook.remove()

    click.echo(" ".join(f"{k}={v}" for k, v in dataclasses.asdict(config).items()))
    click.echo(f"{'module':<20} {'type':<16} {'output T x C':>14} {'params':>12}")
    click.echo(f"{'input':<20} {'frames':<16} {f'{config.seq_len} x {config.input_dim}':>14}")
    totals = {}
    for part, part_rows in rows.items():
        for name, module in part_rows:
            params = sum(p.numel() for p in module.parameters())
            totals[part] = totals.get(part, 0) + params
            kind = type(module).__name__.lstrip("_")
            click.echo(f"{name:<20} {kind:<16} {shapes[module]:>14} {params:>12,}")
    for part, params in totals.items():
        click.echo(f"{part + ' total':<20} {'':<16} {'':>14} {params:>12,}")
    click.echo(f"total parameters: {model.num_parameters():,}")


def _store_options(**store_kwargs: Any) -> Callable:
    """--store PATH|URL, --cache-dir, --storage-options: a URL is read through the local cache."""
    options = (
        click.option("--store", "store_url", type=FEATURE_STORE, **store_kwargs),
        click.option(
            "--cache-dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="Where a --store URL is cached and memory-mapped from, one directory "
            "per store fingerprint: `fit` fetches chunks as it first uses them, "
            "`eval`/`encode` copy the store once "
            "[default: $NYMERIA_MVAE_CACHE, else ~/.cache/nymeria-mvae/stores].",
        ),
        storage_options_option,
    )

    def decorate(func: Callable) -> Callable:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def _local_store(
    store_url: str | Path, cache_dir: Path | None, storage_options: dict | None
) -> str | Path:
    """The store to open: a path as given, a URL's local copy (pulled on first use)."""
    with _naming_the_store(store_url):
        return cached_store(
            store_url, cache_dir, storage_options, progress=os.environ.get("RANK", "0") == "0"
        )


@contextmanager
def _naming_the_store(store_url: str | Path) -> Iterator[None]:
    """A `UserError` of fetching --store, its message led by the option and URL."""
    try:
        yield
    except UserError as error:
        raise click.ClickException(f"--store {store_url}: {error}") from None


DEFAULT_STORE = "data/nymeria.zarr"


def _training_store(
    store_url: str | Path,
    cache_dir: Path | None,
    storage_options: dict | None,
    cache_max_gb: float | None,
) -> str | FeatureStore:
    """The store `fit` reads: a path as given; a URL through the local chunk cache (chunks
    fetched on first use, at most `cache_max_gb` kept)."""
    if not is_url(store_url):
        return str(store_url)
    max_bytes = None if cache_max_gb is None else int(cache_max_gb * 1e9)
    with _naming_the_store(store_url):
        return open_cached_store(str(store_url), cache_dir, storage_options, max_bytes)


@main.command()
@_store_options(
    default=None,
    help=f"Feature store (local path or fsspec URL) built by `python -m preprocess build` "
    f"[default: {DEFAULT_STORE}; with --resume: the run's store].",
)
@click.option(
    "--out",
    "run_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run directory: config, metrics, checkpoints, pictures (required unless --resume RUN).",
)
@click.option(
    "--resume",
    "resume_run",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[RUN]",
    help="Continue the run RUN (or --out) from its last checkpoint; its config and store come "
    "from the run directory.",
)
@RUN_SECTIONS.options()
def fit(
    store_url: str | Path | None,
    cache_dir: Path | None,
    storage_options: dict | None,
    run_dir: Path | None,
    config_file: Path | None,
    resume_run: str | None,
    **options: Any,
) -> None:
    """Train the motion VAE on the store's train split (also under `torchrun --nproc_per_node=N`).

    The configuration is, from the bottom up: the defaults below, the run's saved
    config.json (with --resume), the --config file (sections `model`, `train`, `runtime`), and
    the options given here. Ctrl-C (or SIGTERM) writes a checkpoint after the current step and
    prints the command that resumes; a second one aborts at once.
    """
    ctx = click.get_current_context()
    resume = resume_run is not None
    run_dir = _run_dir(run_dir, resume_run)
    store_url = _fit_store(ctx, store_url, run_dir if resume else None)
    saved_file = run_dir / "config.json"
    saved = (
        saved_config(json.loads(saved_file.read_text())) if resume and saved_file.exists() else None
    )
    values = RUN_SECTIONS.resolve(ctx, config_file, saved, str(saved_file))
    config = RunConfig(**RUN_SECTIONS.make(values))
    store = _training_store(store_url, cache_dir, storage_options, config.runtime.cache_max_gb)
    notify = functools.partial(tqdm.write, file=sys.stderr)
    try:
        metrics = run_fit(
            config,
            store,
            run_dir,
            resume=resume,
            notify=notify,
            store_source=store_url if isinstance(store_url, str) else None,
        )
    except TrainingInterrupted as e:  # not an error: rank 0 says how to resume
        if os.environ.get("RANK", "0") == "0":
            click.echo(str(e), err=True)
        sys.exit(e.exit_code)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun, rank 0 reports
    if metrics:
        click.echo(
            f"validation after {config.runtime.steps} steps: loss {metrics['val/total']:.4f}, "
            f"MPJPE head frame {metrics['val/mpjpe_head_mm']:.1f} mm, "
            f"world {metrics['val/mpjpe_world_mm']:.1f} mm"
        )
    click.echo(f"run written to {run_dir}")


def _run_dir(out: Path | None, resume_run: str | None) -> Path:
    """The run directory: --out, or RUN of --resume RUN (both given must agree)."""
    if resume_run:
        if out is not None and out != Path(resume_run):
            raise click.UsageError(
                f"--resume {resume_run} and --out {out} name different runs; give one of them"
            )
        return Path(resume_run)
    if out is None:
        raise click.UsageError("Missing option '--out' (or '--resume RUN' to continue a run).")
    return out


def _fit_store(
    ctx: click.Context, given: str | Path | None, resumed_run: Path | None
) -> str | Path:
    """The store to train on: --store, else the store of the resumed run (as its run_info.json
    records it), else DEFAULT_STORE; checked like a --store value."""
    value = given
    if value is None and resumed_run is not None:
        value = _recorded_store(resumed_run)
    if value is None:
        value = DEFAULT_STORE
    param = next(p for p in ctx.command.params if p.name == "store_url")
    return FEATURE_STORE.convert(value, param, ctx)


def _recorded_store(run_dir: Path) -> str | None:
    """The store a run was started on (as the user named it), or None when the run has no
    readable run_info.json."""
    try:
        recorded = json.loads((run_dir / "run_info.json").read_text())["store"]
        return str(recorded.get("source", recorded["url"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --- eval, encode, decode ---------------------------------------------------------------------

_DEVICE_OPTION = click.option(
    "--device",
    type=click.Choice(typing.get_args(Device)),
    default="auto",
    show_default=True,
    help="Where the model runs; auto picks CUDA, then MPS, then CPU.",
)
_CKPT_OPTION = click.option(
    "--ckpt",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Checkpoint file, e.g. runs/NAME/checkpoints/best.pt.",
)


@main.command("eval")
@_CKPT_OPTION
@_store_options(required=True, help="Feature store: a path or an fsspec URL.")
@click.option(
    "--split",
    type=click.Choice(SPLITS),
    default="val",
    show_default=True,
    help="Split whose windows are evaluated.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for metrics.json and the pictures (created if missing).",
)
@click.option(
    "--max-windows",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Evaluate at most this many evenly spaced windows of the split.",
)
@click.option(
    "--animate",
    is_flag=True,
    help="Also write reconstruction.gif (ground truth vs reconstruction).",
)
@_DEVICE_OPTION
def eval_command(
    ckpt: Path,
    store_url: str | Path,
    cache_dir: Path | None,
    storage_options: dict | None,
    split: str,
    out_dir: Path,
    max_windows: int,
    animate: bool,
    device: str,
) -> None:
    """Reconstruction metrics and pictures of a checkpoint on fixed windows of a split.

    Windows are canonicalised and normalised as in training, the model runs in eval mode
    (mean latents). Prints a table and writes OUT/metrics.json; every metric is defined,
    with its unit, in docs/metrics.md.
    """
    store_url = str(_local_store(store_url, cache_dir, storage_options))
    metrics = evaluate(ckpt, store_url, split, out_dir, max_windows, animate, device=device)
    click.echo(format_table(metrics))
    pictures = ", ".join(metrics[META]["pictures"])
    click.echo(f"wrote {out_dir / METRICS_FILE} and {pictures}")
    meta = metrics[META]
    click.echo(
        f"{split}: world MPJPE {metrics['mpjpe_world_mm']:.1f} mm, head-frame MPJPE "
        f"{metrics['mpjpe_head_mm']:.1f} mm over {meta['num_windows']} windows "
        f"(checkpoint step {meta['checkpoint_step']})"
    )


@main.command("encode")
@_CKPT_OPTION
@_store_options(required=True, help="Feature store: a path or an fsspec URL.")
@click.option(
    "--out",
    type=NEW_STORE,
    required=True,
    help="Latent store to create (Zarr v3, path or URL); must not exist.",
)
@click.option("--logvar", is_flag=True, help="Also store the posterior log-variances.")
@click.option(
    "--split",
    type=click.Choice(("all", *SPLITS)),
    default="all",
    show_default=True,
    help="Which sequences to encode.",
)
@click.option(
    "--window",
    "window_frames",
    type=click.IntRange(min=FRAMES_PER_LATENT),
    help="Window in frames, a multiple of 4 [default: the checkpoint's training window].",
)
@click.option(
    "--hop",
    "hop_frames",
    type=click.IntRange(min=1),
    help="Frames between window starts, at most the window [default: the window, so "
    "every frame is in exactly one window].",
)
@_DEVICE_OPTION
def encode_command(
    ckpt: Path,
    store_url: str | Path,
    cache_dir: Path | None,
    storage_options: dict | None,
    out: str | Path,
    logvar: bool,
    split: str,
    window_frames: int | None,
    hop_frames: int | None,
    device: str,
) -> None:
    """Encode every sequence of a store, window by window as trained, into a latent store.

    Each sequence is cut into windows of the training length starting every --hop frames;
    each window is canonicalised at its own first frame, normalised with the checkpoint's
    statistics and encoded (posterior mean, and log-variance with --logvar): window/4 latents
    per window, latent k summarising window frames 4k..4k+3 and everything before them in
    the window. The last window is padded by repeating the sequence's last frame; its valid
    frames are recorded. The latent store holds the latents (N_windows, window/4, latent_dim),
    a window table (sequence, first frame, valid frames, canonical transform), a sequence
    table, per-channel latent mean/std (over the train windows when encoded) and provenance;
    see train/latents.py. The same code runs from Python: `train.MotionCodec`.
    """
    store_url = str(_local_store(store_url, cache_dir, storage_options))
    root = encode_store(
        ckpt, store_url, out, split, logvar, device, window_frames, hop_frames, storage_options
    )
    mean = root[MEAN]
    click.echo(
        f"wrote {out}: {len(read_latent_table(root))} sequences, {mean.shape[0]} windows of "
        f"{root.attrs[ATTR_WINDOW_FRAMES]} frames (hop {root.attrs[ATTR_HOP_FRAMES]}) -> "
        f"{mean.shape[1]} latents x {mean.shape[2]} channels each, "
        f"{root.attrs[ATTR_FPS]:g} latents/s"
    )


@main.command("decode")
@_CKPT_OPTION
@click.option(
    "--latents",
    type=LATENT_STORE,
    required=True,
    help="Latent store written by `encode` (path or URL).",
)
@click.option(
    "--out",
    type=NEW_STORE,
    required=True,
    help="Zarr store to create (path or URL); must not exist.",
)
@click.option(
    "--world",
    is_flag=True,
    help="Write world motion (cpf_translation, cpf_orientation, joint_translation, "
    "joint_orientation) instead of 294-D world features.",
)
@_DEVICE_OPTION
@storage_options_option
def decode_command(
    ckpt: Path,
    latents: str | Path,
    out: str | Path,
    world: bool,
    device: str,
    storage_options: dict | None,
) -> None:
    """Decode the mean latents of a latent store back to world features or world motion.

    Every window is decoded, denormalised and moved back to the world with its stored
    canonical transform; the windows of a sequence are joined into the whole sequence
    (padding dropped, exactly the original frame count). Where windows overlap (--hop below
    the window) a frame comes from the earliest window covering it, where the causal model
    has the most past context. CKPT must be the checkpoint that encoded the latents (checked
    by sha256).
    """
    root = decode_store(ckpt, latents, out, world, device, storage_options)
    arrays = ", ".join(
        f"{name} {root[name].shape}" for name in (WORLD_ARRAYS if world else (FEATURES,))
    )
    sequences = len(read_decoded_table(root)["name"])
    click.echo(f"wrote {out}: {sequences} sequences; {arrays}")


@main.command("info")
@click.argument("store", type=LATENT_STORE)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@storage_options_option
def info_command(store: str | Path, as_json: bool, storage_options: dict | None) -> None:
    """Describe the latent store (`encode`) or decoded store (`decode`) STORE, a path or an
    fsspec URL: its checkpoint and feature store, sequences, windows and latents, statistics.
    A feature store is described by `python -m preprocess info`."""
    info = store_info(store, storage_options)
    click.echo(json.dumps(info, indent=2) if as_json else format_store_info(info))
