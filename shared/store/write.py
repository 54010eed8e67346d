"""Writing a Zarr store safely, one way for every store this project writes: the feature store
(`preprocess build`), the latent and decoded stores (`train encode`, `train decode`).

- Staging: a store is written in a directory beside its destination and renamed into place once
  complete (`publish`), so a failed run never leaves anything at the destination that looks like
  a store. An existing store there is refused, or replaced only when asked (`check_destination`),
  by exchanging the two atomically where the system can (`exchange_paths`).
  `staged_store` does it all for a store written in one go; the build keeps its staging
  directory across runs for `--resume` and calls the pieces itself.
- `complete` is the last root attribute written (`mark_complete`); a reader refuses a store
  without it.
- Schema and provenance: every store's root attributes hold its schema {name, version}
  (`shared.store.schema.Schema.attrs`), the package version, git revision and creation time
  (`provenance_attrs`); `shared.store.schema.check_root_attrs` is the one check of them on
  open, its messages naming what to run.
- The sequence table: column-wise JSON in the `table` attribute of a `sequences/` group
  (`write_table`; read back by `shared.store.schema.read_table`), one list per column. JSON
  rather than arrays because Zarr v3 has no standard variable-length string dtype yet, and the
  table is small (one row per sequence).
- Arrays: every store array is created with the same codecs (crc32c last) and writes every
  chunk (`create_store_array`, `store_compressors`, `ARRAY_CONFIG`).

This module must not import h5py or hdf5plugin: the trainer imports it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from shared.diskspace import disk_full_error
from shared.errors import OutputExistsError
from shared.provenance import git_revision, package_version
from shared.remote import is_url, local_path, url_options
from shared.store.schema import (
    ATTR_COMPLETE,
    ATTR_CREATED,
    ATTR_GIT_REVISION,
    ATTR_PACKAGE_VERSION,
    ATTR_TABLE,
    SEQUENCES_GROUP,
)


class DestinationExistsError(OutputExistsError):
    """Something is at the destination of a store and may not be replaced."""


# --- provenance and completion ------------------------------------------------------------------


def utc_now() -> str:
    """The `created` attribute's format: ISO 8601, UTC, whole seconds."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def provenance_attrs(created: str) -> dict[str, str]:
    """Which code wrote a store, and when: package version, git revision, `created`."""
    return {
        ATTR_PACKAGE_VERSION: package_version(),
        ATTR_GIT_REVISION: git_revision(),
        ATTR_CREATED: created,
    }


def mark_complete(group: zarr.Group) -> None:
    """Set `complete`: the last write to a store, after which readers accept it."""
    group.attrs.update({ATTR_COMPLETE: True})


# --- the sequence table -------------------------------------------------------------------------


def write_table(parent: zarr.Group, table: Mapping[str, list]) -> zarr.Group:
    """Write `table` ({column: [JSON value per row]}) as the `table` attribute of a new
    `sequences/` group of `parent` (replacing one a resumed run may have left)."""
    group = parent.create_group(SEQUENCES_GROUP, overwrite=True)
    group.attrs.update({ATTR_TABLE: table})
    return group


# --- staging and publishing ---------------------------------------------------------------------


def is_zarr_store(path: Path) -> bool:
    return (path / "zarr.json").is_file()


def check_destination(out: Path, overwrite: bool, how_to_replace: str) -> None:
    """Refuse `out` as a store's destination: always when something other than a Zarr store is
    there, and when a store is there unless `overwrite`; `how_to_replace` says what to do."""
    if not out.exists():
        return
    if not is_zarr_store(out):
        raise DestinationExistsError(
            f"{out} exists and is not a Zarr store; refusing to replace it: choose another --out"
        )
    if not overwrite:
        raise DestinationExistsError(f"a store already exists at {out}; {how_to_replace}")


_AT_FDCWD = -100  # <fcntl.h>: paths relative to the working directory
_RENAME_EXCHANGE = 2  # <linux/fs.h>


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap what `a` and `b` name in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`, both
    must exist); False, changing nothing, where the C library, kernel or file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, TypeError, AttributeError):  # no C library to load, or no renameat2 in it
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(error, os.strerror(error), str(a), None, str(b))


def replaced_path(staging: Path) -> Path:
    """Where `publish` moves the store it replaces when it cannot exchange the two (beside
    the staging directory, so whatever owns that cleans it up with it)."""
    return staging.with_name(f"{staging.name}.replaced")


def _no_step(step: str) -> None:
    """Default `on_step` of `publish`."""


def publish(
    staging: Path, out: Path, overwrite: bool, on_step: Callable[[str], None] = _no_step
) -> None:
    """Rename the complete store `staging` to `out`. A store already at `out` is replaced only
    with `overwrite` (else `DestinationExistsError`), so that a reader finds the old store or
    the new one at `out`, never a mix: the two are exchanged in one atomic step
    (`exchange_paths`; `staging` then holds the old store, which is deleted). Where that is not
    available the old one is renamed to `replaced_path(staging)` and the new one renamed in:
    a kill between the two renames leaves nothing at `out` until the owner of `staging`
    restores it (`preprocess.build` does at its next start). `on_step(name)` is called after
    each step ("exchanged"; "moved aside", "renamed in"; then "old deleted")."""
    if out.exists():
        if not (overwrite and is_zarr_store(out)):
            raise DestinationExistsError(f"{out} appeared while the new store was written")
        if exchange_paths(staging, out):
            on_step("exchanged")
            shutil.rmtree(staging)
        else:
            old = replaced_path(staging)
            os.rename(out, old)
            on_step("moved aside")
            os.rename(staging, out)
            on_step("renamed in")
            shutil.rmtree(old)
        on_step("old deleted")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, out)


NEW_STORE_ADVICE = "remove it or choose another output path"


@contextmanager
def staged_store(
    out: str | Path, needed_bytes: int, storage_options: dict | None = None
) -> Iterator[zarr.Group]:
    """A new Zarr v3 group that becomes `out` when the block (which ends with `mark_complete`)
    ends without an error; an existing store at `out` is never overwritten.

    Local `out`: the group lives in a sibling `<out>.partial-<pid>-<token>` directory, renamed
    to `out` after the block; on any error, interrupts included, the directory is removed and
    `out` is left untouched, and a full disk is reported as a `DiskFullError` naming `out` and
    `needed_bytes` (roughly the arrays' size). Remote URL: written in place (object stores have
    no atomic rename), so a failed run leaves an incomplete store at `out`, which readers refuse.
    """
    if is_url(out):
        try:
            options = url_options(out, storage_options)
            root = zarr.open_group(str(out), mode="w-", zarr_format=3, storage_options=options)
        except (FileExistsError, zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError):
            raise DestinationExistsError(
                f"a store already exists at {out}; {NEW_STORE_ADVICE}"
            ) from None
        yield root
        return
    local = local_path(out)
    check_destination(local, overwrite=False, how_to_replace=NEW_STORE_ADVICE)
    staging = local.with_name(f"{local.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield zarr.open_group(str(staging), mode="w-", zarr_format=3)
        publish(staging, local, overwrite=False)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        full = disk_full_error(error, local, needed_bytes, f"writing {out}", "nothing was written")
        if full is not None:
            raise full from error
        raise


# --- arrays -----------------------------------------------------------------------------------

ARRAY_CONFIG: Mapping[str, Any] = {"write_empty_chunks": True}
"""Zarr array config of every store array: write every chunk, so a missing file is damage."""


def store_compressors(zstd_level: int | None = None) -> tuple:
    """Bytes-to-bytes codecs of every store array: zstd when a level is given, then always
    crc32c, so the checksum covers the bytes as stored and an uncompressed chunk file is the raw
    C-order array followed by 4 checksum bytes (memory-mappable from offset 0)."""
    compression = () if zstd_level is None else (ZstdCodec(level=zstd_level),)
    return (*compression, Crc32cCodec())


def create_store_array(
    parent: zarr.Group,
    name: str,
    *,
    shape: tuple[int, ...],
    chunks: tuple[int, ...] | str,
    dtype: Any,
    dimension_names: Sequence[str] | None,
    zstd_level: int | None = None,
    fill_value: Any = 0,
    overwrite: bool = False,
) -> zarr.Array:
    """Create an array of a store: the one place that sets codecs and array config, used by the
    build, by `pull` when it re-encodes a compressed array as raw chunks, and by the latent and
    decoded stores (`train.latents`; `chunks="auto"` for their small tables)."""
    return parent.create_array(
        name,
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        compressors=store_compressors(zstd_level),
        fill_value=fill_value,
        dimension_names=dimension_names,
        config=ARRAY_CONFIG,
        overwrite=overwrite,
    )
