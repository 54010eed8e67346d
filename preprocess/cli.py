"""`nymeria-preprocess` (also `python -m preprocess`): Nymeria clip HDF5 files -> feature store."""

from __future__ import annotations

import logging
from pathlib import Path

import click
import h5py

from preprocess import nymeria_format as nf
from preprocess import synth


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log progress (INFO) to stderr.")
def main(verbose: bool) -> None:
    """Turn Nymeria clip HDF5 files into a versioned, self-describing feature store."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@main.command("synth")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--recordings", type=click.IntRange(min=1), default=6, show_default=True,
              help="Number of recordings to synthesize.")  # fmt: skip
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Random seed; the same seed writes identical files.")  # fmt: skip
@click.option("--participants", type=click.IntRange(1, synth.MAX_PARTICIPANTS), default=None,
              help="Number of distinct people [default: min(recordings, 4)].")  # fmt: skip
@click.option("--clips-per-recording", type=click.IntRange(min=1), default=4, show_default=True,
              help="Clips (of 140-160 frames) each recording is cut into.")  # fmt: skip
@click.option("--video-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Side in pixels of the stand-in egoview_RGB video.")  # fmt: skip
def synth_command(
    out_dir: Path,
    recordings: int,
    seed: int,
    participants: int | None,
    clips_per_recording: int,
    video_size: int,
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
        video_size=video_size,
    )
    num_frames = 0
    for path in paths:
        with h5py.File(path, "r") as f:
            num_frames += int(f.attrs[nf.ATTR_NUM_FRAMES])
    people = {nf.participant_from_sequence_name(nf.parse_clip_file_name(p)[0]) for p in paths}
    click.echo(
        f"wrote {len(paths)} clip files ({recordings} recordings, {num_frames} frames, "
        f"{len(people)} participants) to {out_dir}"
    )
