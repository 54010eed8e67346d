"""Mutated copies of clip files, and a campaign that builds stores over them and checks what is
published (`python -m benchmarks fuzz`; a seeded subset in tests/preprocess/test_fuzz.py).

`mutate(template, directory, index, seed)` writes one mutated copy of a good clip file and
returns its name and the mutation's name, a pure function of its arguments. Two families:
- bytes: 1-8 runs of random bytes written over the file, which is sometimes cut short first
  (reaches the HDF5 superblock, B-trees, attributes, compressed chunks);
- values (through h5py, one or two at a time): huge float64 values, NaN/Inf, joints jumping
  up to 100 km, scaled positions, timestamps wrapped past int64's maximum, stalled, negative or
  with absurd steps, other dtypes and shapes, chunks never written, non-rotations, damaged or
  missing attributes, missing datasets, groups and links in their place, no frames, and file
  names that are exactly `.h5` or not valid UTF-8.
Every mutated file is its own recording (its `sequence_name` made unique), so one file's damage
cannot hide behind another's frames.

`run_campaign` builds one store per batch of mutated files with the real CLI (a subprocess per
build, so a crash of any kind shows) and reports crashes (a build exiting other than 0 or 1, a
traceback, a file recorded as `unexpected_error`) and bad publications (a published store that
`preprocess verify` rejects, or that holds implausible values: timestamps outside [0, 2^62] or
not increasing within a sequence, a head or joint moving faster than the reader accepts).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (the templates are LZ4-compressed)
import numpy as np

import shared.store
from preprocess import nymeria_format
from preprocess.discover import printable
from preprocess.read_clip import MAX_SPEED_M_PER_S, MAX_TIMESTAMP_NS
from shared.layout import HP, HR, JP
from shared.rotations import rot6d_to_matrix
from shared.skeleton import NUM_JOINTS
from shared.store import FeatureStore, StoreError, open_store

TRUNCATE_PROBABILITY = 0.2
BYTES_FRACTION = 0.5
"""Share of the mutated files damaged byte by byte; the rest get value mutations."""
SPEED_SLACK = 1.01
"""Stored speeds are recomputed from float32 features: the margin for their rounding."""
SPLIT = "1,0,0"  # every recording in train: statistics exist whatever survives
BUILD_TIMEOUT_S = 600

FLOAT_KEYS = (
    nymeria_format.KEY_CPF_TRANSLATION,
    nymeria_format.KEY_CPF_ORIENTATION,
    nymeria_format.KEY_JOINT_TRANSLATION,
    nymeria_format.KEY_JOINT_ORIENTATION,
    nymeria_format.KEY_CONTACT_INFORMATION,
)
MOTION_KEYS = (nymeria_format.KEY_TIMESTAMP_NS, *FLOAT_KEYS)
POSITION_KEYS = (nymeria_format.KEY_CPF_TRANSLATION, nymeria_format.KEY_JOINT_TRANSLATION)
ROTATION_KEYS = (nymeria_format.KEY_CPF_ORIENTATION, nymeria_format.KEY_JOINT_ORIENTATION)
_TS = nymeria_format.KEY_TIMESTAMP_NS
_REMOVE = object()  # a dataset or attribute value: remove it


def corrupt(data: bytes, seed: int) -> bytes:
    """`data` cut short (sometimes) and with 1-8 runs of 1-16 random bytes written over it."""
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    if rng.uniform() < TRUNCATE_PROBABILITY:
        out = out[: int(rng.integers(0, len(out)))]
    for _ in range(int(rng.integers(1, 9)) if out else 0):
        offset = int(rng.integers(0, len(out)))
        width = min(int(rng.integers(1, 17)), len(out) - offset)
        out[offset : offset + width] = rng.integers(0, 256, width, dtype=np.uint8).tobytes()
    return bytes(out)


@dataclass
class Edit:
    """What a value mutation changes in a copy of the template."""

    datasets: dict[str, Any] = field(default_factory=dict)  # key -> array, or _REMOVE
    attrs: dict[str, Any] = field(default_factory=dict)  # name -> value, or _REMOVE
    unwritten: dict[str, int] = field(default_factory=dict)  # key -> chunks left unwritten
    links: dict[str, Any] = field(default_factory=dict)  # key -> h5py link or "group"
    name: str | None = None  # another file name


def _frame(rng: np.random.Generator, n: int) -> int:
    return int(rng.integers(0, n))


def _huge(raw, rng, edit):
    key = str(rng.choice(FLOAT_KEYS))
    values = raw[key].astype(np.float64)
    index = tuple(int(rng.integers(0, s)) for s in values.shape)
    values[index] = float(rng.choice([-1, 1])) * 10 ** rng.uniform(38.6, 300)
    edit.datasets[key] = values


def _non_finite(raw, rng, edit):
    key = str(rng.choice(FLOAT_KEYS))
    values = raw[key].copy()
    index = tuple(int(rng.integers(0, s)) for s in values.shape)
    values[index] = rng.choice([np.nan, np.inf, -np.inf])
    edit.datasets[key] = values


def _jump(raw, rng, edit):
    key = str(rng.choice(POSITION_KEYS))
    values = raw[key].astype(np.float64)
    frame = _frame(rng, len(values))
    rows = slice(frame, None) if rng.uniform() < 0.5 else slice(frame, frame + 1)
    values[rows] += rng.choice([-1, 1]) * 10 ** rng.uniform(-1, 5) * rng.normal(size=3)
    edit.datasets[key] = values


def _scale(raw, rng, edit):
    key = str(rng.choice(POSITION_KEYS))
    edit.datasets[key] = raw[key] * 10 ** rng.uniform(-3, 6)


def _timestamps(raw, rng, edit):
    ts = raw[_TS].copy()
    n, frame = len(ts), _frame(rng, len(ts))
    how = int(rng.integers(0, 6))
    with np.errstate(over="ignore"):
        if how == 0:  # wrapped past the maximum: the int64 differences wrap too
            ts = (
                ts - ts[0] + np.int64(np.iinfo(np.int64).max - int(rng.integers(0, n)) * 33_333_333)
            )
        elif how == 1 and n > 1:  # stalled or reversed
            ts[frame] = ts[max(frame - 1, 0)] - int(rng.integers(0, 2))
        elif how == 2:
            ts = ts - ts[0] - int(rng.integers(1, 10**12))
        elif how == 3:  # one absurd step
            ts[frame:] += np.int64(10 ** int(rng.integers(10, 19)))
        elif how == 4:  # another rate
            ts = ts[0] + ((ts - ts[0]) * 10 ** rng.uniform(-3, 3)).astype(np.int64)
        else:
            ts[frame] = np.int64(rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max))
    edit.datasets[_TS] = ts


def _dtype(raw, rng, edit):
    key = str(rng.choice(MOTION_KEYS))
    dtypes = (np.float16, np.float64, np.int32, np.uint64, np.int8)
    with np.errstate(all="ignore"):
        edit.datasets[key] = raw[key].astype(rng.choice(dtypes))


def _shape(raw, rng, edit):
    key = str(rng.choice(MOTION_KEYS))
    values = raw[key]
    how = int(rng.integers(0, 3))
    if how == 0:
        edit.datasets[key] = values[: _frame(rng, len(values))]
    elif how == 1 and values.ndim > 1:
        edit.datasets[key] = values[..., :-1]
    else:
        edit.datasets[key] = values[..., None]


def _unwritten(raw, rng, edit):
    key = str(rng.choice(MOTION_KEYS))
    edit.unwritten[key] = int(rng.integers(1, 4))


def _rotation(raw, rng, edit):
    key = str(rng.choice(ROTATION_KEYS))
    values = raw[key].astype(np.float64)
    frame = _frame(rng, len(values))
    how = int(rng.integers(0, 3))
    if how == 0:
        values[frame] *= -1
    elif how == 1:
        values[frame] *= 10 ** rng.uniform(-2, 2)
    else:
        values[frame] += 10 ** rng.uniform(-5, 0) * rng.normal(size=values[frame].shape)
    edit.datasets[key] = values


def _attribute(raw, rng, edit):
    name = str(rng.choice([nymeria_format.ATTR_SEQUENCE_NAME, *nymeria_format.INT_ATTRS]))
    edit.attrs[name] = [
        _REMOVE,
        b"\xff\xfe not utf-8",
        np.int64(-(2**62)),
        "42",
        np.array([1.5, 2.5]),
        10**18,
        np.void(b"\x00\x01"),
    ][int(rng.integers(0, 7))]


def _structure(raw, rng, edit):
    key = str(rng.choice(MOTION_KEYS))
    edit.links[key] = [
        "group",
        h5py.SoftLink("/nowhere"),
        h5py.ExternalLink("missing.h5", "/x"),
        _REMOVE,
    ][int(rng.integers(0, 4))]


def _empty(raw, rng, edit):
    for key in MOTION_KEYS:
        edit.datasets[key] = raw[key][:0]


def _name(raw, rng, edit):
    edit.name = ".h5" if rng.uniform() < 0.5 else os.fsdecode(b"caf\xe9_00000.h5")


VALUE_MUTATIONS: Mapping[str, Callable[[dict, np.random.Generator, Edit], None]] = {
    "huge": _huge,
    "non_finite": _non_finite,
    "jump": _jump,
    "scale": _scale,
    "timestamps": _timestamps,
    "dtype": _dtype,
    "shape": _shape,
    "unwritten": _unwritten,
    "rotation": _rotation,
    "attribute": _attribute,
    "structure": _structure,
    "empty": _empty,
    "name": _name,
}


def read_motion(path: Path) -> dict[str, Any]:
    with h5py.File(path, "r") as f:
        raw = {key: f[key][()] for key in MOTION_KEYS}
        raw["attrs"] = dict(f.attrs)
    return raw


def mutate(
    template: Path, directory: Path, index: int, seed: int, exclude: frozenset[str] = frozenset()
) -> tuple[str, str]:
    """Write mutated copy number `index` of `template` into `directory` (as its own recording),
    with no value mutation named in `exclude`; returns (file name, mutation name). A pure
    function of the arguments."""
    rng = np.random.default_rng([seed, index])
    raw = read_motion(template)
    name = str(raw["attrs"][nymeria_format.ATTR_SEQUENCE_NAME])
    unique = f"{name[:-6]}{index:06d}"  # same length: a byte mutation hits the same layout
    file = nymeria_format.clip_file_name(unique, 0)
    if rng.uniform() < BYTES_FRACTION:
        clean = directory / f".clean-{index}"
        _write(template, clean, raw, Edit(attrs={nymeria_format.ATTR_SEQUENCE_NAME: unique}))
        (directory / file).write_bytes(corrupt(clean.read_bytes(), int(rng.integers(2**32))))
        clean.unlink()
        return file, "bytes"
    names = [name for name in VALUE_MUTATIONS if name not in exclude]
    chosen = list(rng.choice(names, size=int(rng.integers(1, 3)), replace=False))
    edit = Edit(attrs={nymeria_format.ATTR_SEQUENCE_NAME: unique})
    for mutation in chosen:
        VALUE_MUTATIONS[mutation](raw, rng, edit)
    if edit.name is not None:  # a directory of its own: one `.h5` per directory
        file = f"{index}/{edit.name}"
    _write(template, directory / file, raw, edit)
    return file, "+".join(sorted(chosen))


def _write(template: Path, target: Path, raw: dict, edit: Edit) -> None:
    """A copy of the motion and attributes of `template` with `edit` applied (no video)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(target, "w") as dst:
        for key, value in {**raw["attrs"], **edit.attrs}.items():
            if value is not _REMOVE:
                dst.attrs[key] = value
        for key in MOTION_KEYS:
            value, link = edit.datasets.get(key, raw[key]), edit.links.get(key)
            if value is _REMOVE or link is _REMOVE:
                continue
            if link == "group":
                dst.create_group(key)
            elif link is not None:
                dst[key] = link
            elif key in edit.unwritten and len(value) > 1:
                _write_some_chunks(dst, key, np.asarray(value), edit.unwritten[key])
            else:
                dst.create_dataset(key, data=value)


def _write_some_chunks(dst: h5py.File, key: str, value: np.ndarray, unwritten: int) -> None:
    """`value` chunked by frames, its last `unwritten` chunks never written."""
    chunk = max(1, len(value) // 8)
    ds = dst.create_dataset(
        key, shape=value.shape, dtype=value.dtype, chunks=(chunk, *value.shape[1:])
    )
    stop = max(chunk, len(value) - unwritten * chunk) // chunk * chunk
    ds[:stop] = value[:stop]


# --- the campaign -------------------------------------------------------------------------------


@dataclass
class CampaignReport:
    files: int = 0
    mutations: Counter = field(default_factory=Counter)  # mutation -> files
    outcomes: Counter = field(default_factory=Counter)  # "used", a problem kind, ... -> files
    builds: int = 0
    published: int = 0
    crashes: list[str] = field(default_factory=list)
    bad_publications: list[str] = field(default_factory=list)
    seconds: float = 0.0


def make_batch(
    templates: list[Path],
    directory: Path,
    first: int,
    count: int,
    seed: int,
    exclude: frozenset[str] = frozenset(),
) -> dict[str, str]:
    """Mutated files `first` .. `first + count - 1` (templates in turn); file -> mutation."""
    directory.mkdir(parents=True, exist_ok=True)
    made = {}
    for index in range(first, first + count):
        template = templates[index % len(templates)]
        file, mutation = mutate(template, directory, index, seed, exclude)
        made[file] = mutation
    return made


def run_campaign(
    templates: list[Path],
    workdir: Path,
    files: int,
    batch: int,
    seed: int,
    exclude: frozenset[str] = frozenset(),
    build: Callable[[Path, Path], tuple[int, str]] | None = None,
    verify: Callable[[Path], tuple[int, str]] | None = None,
) -> CampaignReport:
    """Mutate `files` copies of `templates` (no value mutation in `exclude`), `batch` files per
    build (beside good copies of the templates, so every build has something to publish); check
    each build and its store.
    `build(data, out)` and `verify(store)` return (exit status, output); by default the real
    CLI in a subprocess."""
    default_build, default_verify = cli_at()
    build, verify = build or default_build, verify or default_verify
    report, started = CampaignReport(), time.perf_counter()
    for first in range(0, files, batch):
        data, out = workdir / f"data{first}", workdir / f"store{first}.zarr"
        count = min(batch, files - first)
        made = make_batch(templates, data / "fuzzed", first, count, seed, exclude)
        for template in templates:
            shutil.copy(template, data / template.name)
        report.files += len(made)
        report.mutations.update(made.values())
        status, output = build(data, out)
        report.builds += 1
        where = f"build of files {first}-{first + len(made) - 1} (seed {seed})"
        if status not in (0, 1) or "Traceback" in output:
            last = " | ".join(output.strip().splitlines()[-2:])
            report.crashes.append(f"{where}: exit {status}: {last}")
        if status == 0:
            _check_published(out, made, verify, where, report)
        shutil.rmtree(data)
        shutil.rmtree(out, ignore_errors=True)
    report.seconds = time.perf_counter() - started
    return report


def _check_published(
    out: Path,
    made: dict[str, str],
    verify: Callable[[Path], tuple[int, str]],
    where: str,
    report: CampaignReport,
) -> None:
    report.published += 1
    try:
        store = open_store(out)
    except StoreError as error:
        report.bad_publications.append(f"{where}: the published store does not open: {error}")
        return
    problems = {p["file"]: p for p in store.attrs[shared.store.ATTR_PROBLEMS]}
    used = {f for record in store.sequences for f in record.source_files}
    ignored = {i["path"] for i in store.attrs[shared.store.ATTR_SOURCE]["ignored"]}
    for file in made:
        rel = f"fuzzed/{file}"
        if rel in problems:
            report.outcomes[problems[rel]["kind"]] += 1
            if problems[rel]["kind"] == "unexpected_error":
                report.crashes.append(f"{where}: {problems[rel]['reason']}")
        elif rel in used:
            report.outcomes["used"] += 1
        elif printable(rel) in ignored:
            report.outcomes["listed, not read"] += 1
        else:
            report.bad_publications.append(f"{where}: {rel!r} is neither used nor listed")
    status, output = verify(out)
    if status != 0:
        last = " | ".join(output.strip().splitlines()[-3:])
        report.bad_publications.append(f"{where}: preprocess verify rejects it: {last}")
    report.bad_publications += [f"{where}: {p}" for p in implausible_values(store)]


def implausible_values(store: FeatureStore) -> list[str]:
    """What a published store should never hold: timestamps outside [0, 2^62] or not strictly
    increasing within a sequence, a head or joint moving faster than `read_clip` accepts."""
    found = []
    limit = MAX_SPEED_M_PER_S * SPEED_SLACK
    for record in store.sequences:
        ts = np.asarray(store.timestamp_ns[record.start : record.stop])
        if ts.min() < 0 or ts.max() > MAX_TIMESTAMP_NS or (np.diff(ts) <= 0).any():
            found.append(f"sequence {record.name}: timestamps out of range or not increasing")
            continue
        features = store.read_features(record.start, record.stop).astype(np.float64)
        R_head = rot6d_to_matrix(features[:, HR])
        joints = features[:, JP].reshape(-1, NUM_JOINTS, 3)
        world = np.einsum("tij,tkj->tki", R_head, joints) + features[:, None, HP]
        points = np.concatenate([features[:, None, HP], world], axis=1)
        seconds = np.diff(ts) / 1e9
        speed = np.linalg.norm(np.diff(points, axis=0), axis=-1) / seconds[:, None]
        # float32 features carry ~1e-7 relative rounding, and a rotation accepted at the
        # reader's tolerance (1e-3) moves a joint by up to 1e-3 of its distance to the head.
        error_m = 4e-7 * np.abs(points).max() + 2e-3 * np.abs(joints).max()
        rounding = error_m / seconds.min() if len(seconds) else 0.0
        if len(seconds) and speed.max() > limit + rounding:
            frame = int(np.argmax(speed.max(axis=1))) + 1
            found.append(
                f"sequence {record.name}, frame {frame}: a point moves at {speed.max():.3g} m/s "
                f"(the reader accepts up to {MAX_SPEED_M_PER_S:g})"
            )
    return found


# How the campaign builds a mutated tree: in one process, everything in train.
BUILD_OPTIONS = ("--scheduler", "synchronous", "--no-progress", "--split", SPLIT)


def cli_at(code: Path | None = None) -> tuple[Callable, Callable]:
    """`build(data, out)` and `verify(store)`: `preprocess build` / `verify` in a subprocess,
    each giving (exit status, output), run from the checkout at `code` (another revision,
    benchmarks.bench_fuzz) or, without, from this code."""
    where = {} if code is None else {"cwd": code, "env": {**os.environ, "PYTHONPATH": str(code)}}

    def run(args: list[str]) -> tuple[int, str]:
        result = subprocess.run(
            [sys.executable, "-m", "preprocess", *args],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
            **where,
        )
        return result.returncode, result.stdout + result.stderr

    def build(data: Path, out: Path) -> tuple[int, str]:
        return run(["build", str(data), "--out", str(out), *BUILD_OPTIONS])

    def verify(store: Path) -> tuple[int, str]:
        return run(["verify", str(store), "--no-progress"])

    return build, verify
