"""`nymeria-preprocess` (also `python -m preprocess`): Nymeria clip HDF5 files -> feature store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import h5py

from preprocess import nymeria_format, synth
from preprocess.build import (
    AlreadyBuilt,
    BuildConfig,
    BuildError,
    BuildRuntime,
    BuildSettings,
    BuildStart,
    BuildSummary,
    build,
    describe_executor,
    plan_build,
)
from preprocess.info import format_info, store_info
from preprocess.read_clip import Discrepancy, Problem
from preprocess.split import parse_fractions
from preprocess.verify import verify_sequences, verify_stats
from shared.cli import (
    FEATURE_STORE,
    NEW_STORE,
    ConfigSections,
    Section,
    cli_group,
    config_values,
    dataclass_options,
    storage_options_option,
)
from shared.remote import DEFAULT_TIMEOUT_S, is_url, remote_options
from shared.remote_layout import NothingPublishedError, resolve
from shared.store import check_chunks, open_store
from shared.transfer import (
    DEFAULT_JOBS,
    TransferSummary,
    list_versions,
    published,
    pull,
    push,
    remove_versions,
)


@cli_group
def main() -> None:
    """Turn Nymeria clip HDF5 files into a versioned, self-describing feature store."""


@main.command("synth")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--recordings",
    type=click.IntRange(min=1),
    default=6,
    show_default=True,
    help="Number of recordings to synthesize.",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Random seed; the same seed writes identical files.",
)
@click.option(
    "--participants",
    type=click.IntRange(1, synth.MAX_PARTICIPANTS),
    default=None,
    help="Number of distinct people [default: min(recordings, 4)].",
)
@click.option(
    "--clips-per-recording",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help=f"Clips (of {synth.CLIP_FRAMES_RANGE[0]}-{synth.CLIP_FRAMES_RANGE[1]} frames) "
    f"each recording is cut into.",
)
@click.option(
    "--video-size",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Side in pixels of the stand-in egoview_RGB video.",
)
@click.option(
    "--no-video",
    is_flag=True,
    help="Write no egoview_RGB dataset (as later exporter versions, which keep the "
    "video in an MP4 beside the file).",
)
@click.option(
    "--drop-frames",
    "drop_frames",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.0,
    show_default=True,
    help="Probability that a frame is left out of its file, as the exporter skips "
    "frames it fails to extract (num_frames keeps the declared count).",
)
def synth_command(
    out_dir: Path,
    recordings: int,
    seed: int,
    participants: int | None,
    clips_per_recording: int,
    video_size: int,
    no_video: bool,
    drop_frames: float,
) -> None:
    """Write synthetic Nymeria-format clip files (walking, pauses, sitting, bending) to OUT_DIR."""
    if participants is not None and participants > recordings:
        raise click.BadParameter(
            f"must not exceed --recordings ({recordings}), found {participants}",
            param_hint="--participants",
        )
    paths = synth.generate_dataset(
        out_dir,
        recordings=recordings,
        seed=seed,
        participants=participants,
        clips_per_recording=clips_per_recording,
        video_size=None if no_video else video_size,
        drop_frame_probability=drop_frames,
    )
    num_frames = 0
    for path in paths:
        with h5py.File(path, "r") as f:
            num_frames += len(f[nymeria_format.KEY_TIMESTAMP_NS])
    people = {
        nymeria_format.participant_from_sequence_name(nymeria_format.parse_clip_file_name(p)[0])
        for p in paths
    }
    click.echo(
        f"wrote {len(paths)} clip files ({recordings} recordings, {num_frames} frames, "
        f"{len(people)} participants) to {out_dir}"
    )


class Fractions(click.ParamType):
    """Fractions of participants in train, val, test, e.g. "0.8,0.1,0.1"."""

    name = "TRAIN,VAL,TEST"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = value if isinstance(value, str) else ",".join(str(v) for v in value)
        try:
            return parse_fractions(text)
        except ValueError as error:
            self.fail(str(error), param, ctx)


def _echo_problems(problems: tuple[Problem, ...]) -> None:
    for problem in problems:
        click.echo(f"  skipped [{problem.kind}] {problem.reason}", err=True)


def _echo_unused(summary: BuildSummary) -> None:
    """Files not read, and what used files lack or disagree on (also in the store's attributes)."""
    for ignored in summary.ignored:
        click.echo(f"  not read: {ignored.path}: {ignored.reason}", err=True)
    if summary.other_files:
        other = summary.other_files.items()
        counts = ", ".join(f"{n} {ext or '(no extension)'}" for ext, n in other)
        click.echo(f"  not read, not clip files: {counts}", err=True)
    by_kind: dict[str, list[Discrepancy]] = {}
    for discrepancy in summary.discrepancies:
        by_kind.setdefault(discrepancy.kind, []).append(discrepancy)
    for kind, records in sorted(by_kind.items()):
        frames = sum(abs(d.count or 0) for d in records)
        click.echo(
            f"  used, noted [{kind}] {len(records)} files ({frames} frames), e.g. "
            f"{records[0].reason}",
            err=True,
        )
    if by_kind:
        click.echo(
            "  (every note is in the store's `discrepancies`: preprocess info STORE --json)",
            err=True,
        )


def _echo_summary(summary: BuildSummary) -> None:
    hours = summary.frames / summary.fps / 3600
    splits = ", ".join(
        f"{name} {summary.split_participants[name]} participants / "
        f"{summary.split_frames[name]} frames"
        for name in summary.split_participants
    )
    stitch = summary.stitch
    click.echo(
        f"wrote {summary.store}: {summary.frames} frames ({hours:.3f} h at {summary.fps:g} fps, "
        f"source {summary.source_fps:g} fps), {summary.sequences} sequences from "
        f"{stitch.recordings} recordings ({stitch.gaps} gaps, {stitch.filled_frames} missing "
        f"frames filled in {stitch.filled_holes} holes, {stitch.dropped_frames} overlapping "
        f"frames dropped)\n"
        f"files: {summary.files_found} found, {summary.files_reused} reused from an interrupted "
        f"build, {summary.files_used} used, {len(summary.problems)} skipped, "
        f"{len(summary.discrepancies)} notes on used files, {len(summary.ignored)} candidates "
        f"not read\n"
        f"splits: {splits}\n"
        f"took {summary.seconds:.1f} s"
        + (f" (read {summary.read_frames_per_s:.0f} frames/s)" if summary.read_frames_per_s else "")
    )
    _echo_problems(summary.problems)
    _echo_unused(summary)


# The sections of `preprocess build`'s configuration: what it computes, how it runs.
BUILD_SECTIONS = ConfigSections(
    Section(
        "build",
        BuildSettings,
        computes=True,
        flags={"rotation_atol": "--rotation-tolerance"},
        types={"split": Fractions()},
    ),
    Section("runtime", BuildRuntime, computes=False),
)


@main.command("build")
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    "out",
    type=NEW_STORE,
    required=True,
    help="Store to write (local directory), e.g. data/nymeria.zarr; share it with `push`.",
)
@BUILD_SECTIONS.options()
@dataclass_options(BuildStart)
@click.option(
    "--plan",
    "plan_only",
    is_flag=True,
    help="Print the build plan (sequences, frames, splits, statistics windows, chunks, size, "
    "executor) and exit; reads every clip file but writes nothing.",
)
@click.option(
    "--progress/--no-progress",
    default=True,
    show_default=True,
    help="Show progress bars on stderr.",
)
def build_command(
    data: Path,
    out: str | Path,
    config_file: Path | None,
    plan_only: bool,
    progress: bool,
    **options: object,
) -> None:
    """Build the feature store --out from the clip files (*.h5, searched recursively) in DATA.

    While it runs, STORE.lock holds the build's pid and host and STORE.build/ its per-file
    results and the store being written; the finished store is renamed to STORE. A killed
    build continues with --resume (--overwrite --resume when it replaces a store); --resume of
    a finished build says so and exits 0. Exit status 1 when no file is usable, with --strict
    when any file is not, and when the environment stops the build (full disk, unreachable
    cluster, workers that cannot see DATA).
    """
    if is_url(out):
        raise click.BadParameter(
            f"a build writes a local directory, not {out}: build locally, then copy it: "
            f"`python -m preprocess build DATA --out data/store.zarr` and "
            f"`python -m preprocess push data/store.zarr {out}`",
            param_hint="--out",
        )
    ctx = click.get_current_context()
    sections = BUILD_SECTIONS.make(BUILD_SECTIONS.resolve(ctx, config_file), data=data, out=out)
    start = BuildStart(**config_values(ctx, BuildStart))
    config = BuildConfig.of(*sections.values(), start)
    try:
        if plan_only:
            click.echo(plan_build(config, progress=progress))
            return
        click.echo(
            f"building {config.out} from {config.data} ({describe_executor(config)})", err=True
        )
        summary = build(config, progress=progress)
    except AlreadyBuilt as error:  # not an error: said on stdout, exit status 0
        click.echo(str(error))
        return
    except BuildError as error:  # the refused files first, then the error's one line
        _echo_problems(error.problems)
        raise
    _echo_summary(summary)


timeout_option = click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_TIMEOUT_S,
    show_default=True,
    help="Seconds a request to a URL may wait to connect or for its next bytes; a request that "
    "times out is retried a few times with backoff, then the command fails.",
)


def _published(
    store: str | Path, storage_options: dict | None, timeout: float
) -> tuple[str | Path, dict | None]:
    """The store a location publishes (a URL's pointer resolved once) and its storage options
    with the request timeout; a local path without a published store is returned as it is."""
    if is_url(store):
        location = published(str(store), storage_options, timeout)[0].root_url
    else:
        try:
            location = resolve(str(store), storage_options, timeout).root_url
        except NothingPublishedError:
            location = store  # open_store says what is missing
    return location, remote_options(location, storage_options, timeout)


@main.command("info")
@click.argument("store", type=FEATURE_STORE)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@storage_options_option
@timeout_option
def info_command(
    store: str | Path, as_json: bool, storage_options: dict | None, timeout: float
) -> None:
    """Describe the feature store STORE (a path or an fsspec URL; a URL's published version)."""
    store, storage_options = _published(store, storage_options, timeout)
    opened = open_store(store, storage_options=storage_options)
    info = store_info(opened, storage_options)
    click.echo(json.dumps(info, indent=2) if as_json else format_info(info))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


@main.command("verify")
@click.argument("store", type=FEATURE_STORE)
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="The clip files the store was built from: also recompute sampled sequences.",
)
@click.option(
    "--sample",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Sequences to recompute from the source files (with --data).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sequence sample.")
@click.option(
    "--progress/--no-progress",
    default=True,
    show_default=True,
    help="Show a progress bar on stderr.",
)
@storage_options_option
@timeout_option
def verify_command(
    store: str | Path,
    data: Path | None,
    sample: int,
    seed: int,
    progress: bool,
    storage_options: dict | None,
    timeout: float,
) -> None:
    """Check STORE's metadata (as every reader does), then every chunk (checksum, finite
    values) and its stats; with --data also recompute sampled sequences from the source files.
    Exit 1 on any problem; metadata that cannot be trusted is one line, before any chunk is
    read (so nothing is sized from it)."""
    store, storage_options = _published(store, storage_options, timeout)
    opened = open_store(  # chunks are checked next, in depth
        store, check_chunk_files=False, storage_options=storage_options
    )
    problems = check_chunks(store, deep=True, progress=progress, storage_options=storage_options)
    click.echo(f"checked every chunk's checksum and values: {_count(len(problems), 'problem')}")
    if not problems:
        problems += verify_stats(opened)
        click.echo(f"recomputed stats over {len(opened.split('train'))} train sequences")
        if data is not None:
            report = verify_sequences(opened, data, sample, seed)
            click.echo(f"recomputed {len(report.checked)} sequences: {', '.join(report.checked)}")
            problems += report.mismatches
    for problem in problems:
        click.echo(f"PROBLEM {problem}", err=True)
    if problems:
        raise click.ClickException(f"verify failed: {_count(len(problems), 'problem')}")
    sources = " and matches its sources" if data is not None else ""
    click.echo(f"verify passed: every chunk, the metadata and the stats are intact{sources}")


# --- sharing ---------------------------------------------------------------------------------

_jobs_option = click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=DEFAULT_JOBS,
    show_default=True,
    help="Requests in flight at the same time.",
)
_progress_option = click.option(
    "--progress/--no-progress", default=True, show_default=True, help="Show a progress bar."
)


def _copied(summary: TransferSummary) -> str:
    return (
        f"{summary.copied_objects} objects ({summary.copied_bytes / 1e6:.1f} MB) copied, "
        f"{summary.kept_objects} already there and verified"
    )


@main.command("push")
@click.argument("store", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("url", type=NEW_STORE)
@storage_options_option
@timeout_option
@_jobs_option
@click.option(
    "--overwrite",
    is_flag=True,
    help="Publish STORE although URL publishes another store: a new version, then the pointer "
    "moves to it (the old version stays until `versions --remove`).",
)
@_progress_option
def push_command(
    store: Path,
    url: str | Path,
    storage_options: dict | None,
    timeout: float,
    jobs: int,
    overwrite: bool,
    progress: bool,
) -> None:
    """Publish the complete store STORE at URL (s3://, gs://, file:// or a path).

    The store goes to URL/versions/FINGERPRINT/ (in parallel; a killed push resumes), with a
    MANIFEST.json of every object's size and crc32c computed from the local files; then the
    pointer URL/CURRENT.json moves to it, so readers always see one complete version. Pushing
    the published store again uploads nothing. http(s) is read-only.
    """
    summary = push(
        store,
        url,
        storage_options=storage_options,
        overwrite=overwrite,
        jobs=jobs,
        timeout=timeout,
        progress=progress,
    )
    fingerprint = summary.fingerprint[:16]
    if summary.outcome == "already published":
        click.echo(
            f"{url} already publishes this store ({fingerprint}, its manifest matches "
            f"the local checksums): nothing uploaded"
        )
    elif summary.outcome == "pointer moved":
        click.echo(
            f"{url} now points at {summary.destination} again (already uploaded and "
            f"matching the local checksums): nothing uploaded"
        )
    else:
        click.echo(
            f"published {store} at {summary.destination}: {_copied(summary)}; sizes checked, "
            f"MANIFEST.json written, {url}/CURRENT.json -> {fingerprint}"
        )


@main.command("pull")
@click.argument("url", type=FEATURE_STORE)
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--decompress/--keep-compression",
    default=True,
    show_default=True,
    help="Re-encode compressed arrays (a --compression zstd store) as raw chunks the "
    "trainer memory-maps; a raw store is copied as it is either way.",
)
@storage_options_option
@timeout_option
@_jobs_option
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace another store (or other files) at DEST, once the copy is verified.",
)
@_progress_option
def pull_command(
    url: str | Path,
    dest: Path,
    decompress: bool,
    storage_options: dict | None,
    timeout: float,
    jobs: int,
    overwrite: bool,
    progress: bool,
) -> None:
    """Copy the store published at URL (s3://, gs://, http(s)://, file://, a path) to DEST.

    Reads the pointer URL/CURRENT.json once and copies that version (a URL of the previous
    layout, a store at the URL itself, works too) into DEST.pull/, checking every object as it
    arrives (size, crc32c); DEST is replaced only by a complete, verified copy. A killed pull
    resumes. By default compressed arrays arrive as raw, memory-mappable chunks (the
    fingerprint is unchanged: it covers content, not codecs).
    """
    summary = pull(
        url,
        dest,
        storage_options=storage_options,
        decompress=decompress,
        overwrite=overwrite,
        jobs=jobs,
        timeout=timeout,
        progress=progress,
    )
    reencoded = (
        f"; re-encoded as raw chunks: {', '.join(summary.reencoded_arrays)}"
        if summary.reencoded_arrays
        else ""
    )
    click.echo(
        f"pulled {url} -> {dest}: {_copied(summary)}{reencoded}; every object verified, "
        f"fingerprint {summary.fingerprint[:16]}"
    )


@main.command("versions")
@click.argument("url", type=FEATURE_STORE)
@click.option(
    "--remove",
    "remove",
    multiple=True,
    metavar="FINGERPRINT",
    help="Delete this version (repeatable); the current one is refused.",
)
@click.option(
    "--keep-latest",
    type=click.IntRange(min=1),
    default=None,
    help="Delete every finished version but the current one and the N most recent "
    "(unfinished pushes, which may be running, are kept).",
)
@storage_options_option
@timeout_option
def versions_command(
    url: str,
    remove: tuple[str, ...],
    keep_latest: int | None,
    storage_options: dict | None,
    timeout: float,
) -> None:
    """List the versions published at URL (the current one marked `*`, unfinished pushes
    marked `unfinished`), or delete old ones with --remove / --keep-latest."""
    listed = list_versions(url, storage_options, timeout)
    doomed = list(remove)
    if keep_latest is not None:
        complete = [v for v in listed if v.complete]
        kept = {v.fingerprint for v in complete[-keep_latest:]}
        doomed += [v.fingerprint for v in complete if v.fingerprint not in kept and not v.current]
    if doomed:
        remove_versions(url, doomed, storage_options, timeout)
        click.echo(
            f"removed {_count(len(set(doomed)), 'version')}: {', '.join(sorted(set(doomed)))}"
        )
        return
    for v in listed:
        state = "*" if v.current else ("unfinished" if not v.complete else "")
        click.echo(
            f"{state:>10} {v.fingerprint} {v.created or '-':>25} {v.objects:>7} objects "
            f"{v.nbytes / 1e9:8.2f} GB"
        )
    if not listed:
        click.echo(f"no versions at {url}")
