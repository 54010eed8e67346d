"""Stage 4 of a build: the complete staging store renamed into place (exchanged atomically with
an old one: `shared.store.write.publish`) after its identity is recorded in
STORE.build/publishing, so that a build killed while publishing is finished by the next build of
STORE, whatever its options, before anything else (`recover_publish`)."""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
from pathlib import Path

import shared.store
from preprocess.build.config import BuildConfig
from preprocess.build.errors import AlreadyBuilt, BuildError
from preprocess.build.paths import BuildPaths
from shared.atomic import atomic_path
from shared.store import ATTR_COMPLETE, ATTR_CREATED
from shared.store.write import DestinationExistsError, publish

logger = logging.getLogger(__package__)  # one logger for the whole build


def publish_store(paths: BuildPaths, config: BuildConfig) -> None:
    """Record the new store's identity in the build directory, rename the complete staging
    store to STORE (exchanging it with the old one) and clean up. From the record on, a build
    killed here is finished by the next one (`recover_publish`)."""
    with atomic_path(paths.publishing) as tmp:
        tmp.write_text(str(_published_identity(paths.staging)))
    _publish_step("marked")
    try:
        publish(paths.staging, paths.out, config.overwrite, on_step=_publish_step)
    except DestinationExistsError:
        paths.publishing.unlink()
        raise BuildError(
            f"{paths.out} appeared during the build; the new store is left in {paths.staging}"
        ) from None
    shutil.rmtree(paths.build_dir)
    logger.info("published %s", paths.out)


def _publish_step(step: str) -> None:
    """Called after each step of publishing (`publish_store`, `shared.store.write.publish`)."""
    logger.debug("publishing: %s", step)


def _published_identity(store: Path) -> str | None:
    """Fingerprint and creation time of the complete store at `store` (two builds of the same
    content differ by when they were made), or None (nothing there, incomplete, unreadable
    metadata)."""
    try:
        attrs = json.loads((store / "zarr.json").read_bytes())["attributes"]
        if attrs[ATTR_COMPLETE] is True:
            return f"{attrs[shared.store.ATTR_FINGERPRINT]} {attrs[ATTR_CREATED]}"
    except (OSError, ValueError, TypeError, KeyError, RecursionError):
        pass
    return None


def recover_publish(paths: BuildPaths) -> bool:
    """Finish what a build killed while publishing left (with the lock held): when the build
    directory records a store's identity, the store of that identity is put at STORE (unless it
    is there already) and the build directory removed. Stores that older versions left as
    `STORE.replaced-<pid>` go back to STORE if nothing is there, else are deleted. True when a
    killed build's store was published here."""
    recorded = paths.publishing.read_text().strip() if paths.publishing.is_file() else None
    finished = recorded is not None and _published_identity(paths.out) == recorded
    if recorded is not None and not finished:
        if _published_identity(paths.staging) == recorded:
            logger.warning("finishing the publication of %s a killed build began", paths.out)
            publish(paths.staging, paths.out, overwrite=True)
            finished = True
        else:
            logger.warning("%s records an unfinished publication; ignored", paths.publishing)
            paths.publishing.unlink()
    if finished:
        shutil.rmtree(paths.build_dir)
    leftovers = paths.out.parent.glob(f"{glob.escape(paths.out.name)}.replaced-*")
    for leftover in sorted(leftovers, key=lambda p: p.stat().st_mtime_ns, reverse=True):
        if not paths.out.exists() and _published_identity(leftover) is not None:
            logger.warning("restoring %s from %s", paths.out, leftover)
            os.rename(leftover, paths.out)
        else:
            logger.warning("removing %s, left by a killed build", leftover)
            shutil.rmtree(leftover)
    return finished


def check_resumable(paths: BuildPaths, config: BuildConfig, finished: bool) -> None:
    """`AlreadyBuilt` for `--resume` of a build that has nothing left to do: its publication
    was just finished, or (without --overwrite) there is no build directory and a store is
    published."""
    if not config.resume or paths.build_dir.exists():
        return
    if finished:
        raise AlreadyBuilt(
            f"the interrupted build of {paths.out} was finished: its store is published; "
            f"nothing to resume"
        )
    identity = _published_identity(paths.out)
    if identity is not None and not config.overwrite:
        raise AlreadyBuilt(
            f"{paths.out} is already built (fingerprint {identity[:12]}): nothing to resume; "
            f"pass --overwrite to build it again"
        )
