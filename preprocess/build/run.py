"""The stages in order: `build` (lock, recover a killed publication, check STORE, read, plan,
write, publish) and `plan_build` (read and plan only, writing nothing). Both make the plan with
the same function, so what `preprocess build --plan` prints is what a build executes; the build
hands that one plan to the write stage and returns it in its summary."""

from __future__ import annotations

import json
import logging
import shutil
import time
from contextlib import AbstractContextManager
from pathlib import Path

from preprocess.build.config import BuildConfig
from preprocess.build.errors import BuildError
from preprocess.build.paths import (
    BuildPaths,
    SpaceEstimate,
    disk_full_advice,
    not_visible_message,
    resume_hint,
)
from preprocess.build.plan import BuildPlan, make_plan
from preprocess.build.publish import check_resumable, publish_store, recover_publish
from preprocess.build.read import ReadStage, data_dir, discover, read_stage
from preprocess.build.summary import BuildSummary
from preprocess.build.write import write_store
from preprocess.clip_cache import ClipCache, NotVisibleOnWorker
from preprocess.discover import Discovery
from preprocess.executor import ClusterError, Executor, open_executor
from preprocess.lock import BuildLock, LockError
from shared.diskspace import disk_full_error
from shared.remote import normalize_location
from shared.store.write import DestinationExistsError, check_destination

logger = logging.getLogger(__package__)  # one logger for the whole build


def build(config: BuildConfig, progress: bool = True) -> BuildSummary:
    """Run a whole build (see the package doc). Raises BuildError when it cannot or must not
    publish. The summary's `plan` is the plan the write stage executed."""
    started = time.perf_counter()
    data, paths = data_dir(config), BuildPaths(Path(config.out).absolute())
    try:
        with BuildLock(paths.lock, take_over_stale=config.resume or config.overwrite):
            plan, read = _build_locked(config, data, paths, progress)
    except LockError as error:
        raise BuildError(str(error)) from None
    return BuildSummary.of(plan, read, paths.out, time.perf_counter() - started)


def _build_locked(
    config: BuildConfig, data: Path, paths: BuildPaths, progress: bool
) -> tuple[BuildPlan, ReadStage]:
    """The stages, with the lock held; environment failures become one-line BuildErrors."""
    space = SpaceEstimate(config.chunk_frames)
    try:
        check_resumable(paths, config, finished=recover_publish(paths))
        work = _check_existing(paths, config)
        discovery = discover(data)
        space.files = len(discovery.files)
        with _open_executor(config) as executor:
            _prepare_build_dir(paths, config, work)  # only once the executor is up
            results = ClipCache(paths.clips)
            plan, read = _read_and_plan(config, data, discovery, results, executor, progress, space)
            space.planned_frames = plan.num_frames
            write_store(plan, paths, results, executor, progress)
        publish_store(paths, config)
    except ClusterError as error:
        raise BuildError(f"{error}{resume_hint(paths)}") from None
    except NotVisibleOnWorker as error:
        raise BuildError(not_visible_message(error, data, paths)) from None
    except (OSError, RuntimeError) as error:
        full = disk_full_error(
            error,
            paths.build_dir,
            space.needed_bytes(paths.build_dir),
            f"building {paths.out}",
            disk_full_advice(paths, config),
        )
        if full is None:
            raise
        raise BuildError(str(full)) from error
    return plan, read


def plan_build(config: BuildConfig, progress: bool = True) -> BuildPlan:
    """Stages 1 and 2 only: every clip file is read (on the executor the build would use) and
    the store planned; nothing is written (no lock, no build directory, no per-file results,
    no store). `print(plan_build(config))` is `preprocess build --plan`."""
    data = data_dir(config)
    discovery = discover(data)
    try:
        with _open_executor(config) as executor:
            space = SpaceEstimate(config.chunk_frames)
            plan, _ = _read_and_plan(config, data, discovery, None, executor, progress, space)
    except ClusterError as error:
        raise BuildError(str(error)) from None
    except NotVisibleOnWorker as error:
        raise BuildError(not_visible_message(error, data, None)) from None
    return plan


def _read_and_plan(
    config: BuildConfig,
    data: Path,
    discovery: Discovery,
    results: ClipCache | None,
    executor: Executor,
    progress: bool,
    space: SpaceEstimate,
) -> tuple[BuildPlan, ReadStage]:
    """Stages 1 and 2, the same for a build and for its plan. `results` None: a plan (nothing
    persisted; --strict not applied, so the plan lists the unusable files)."""
    read = read_stage(data, discovery.files, results, executor, config, progress, space)
    strict = config.strict and results is not None
    return make_plan(config, data, discovery, read.entries, strict), read


def _open_executor(config: BuildConfig) -> AbstractContextManager[Executor]:
    return open_executor(
        config.scheduler, config.workers, config.worker_timeout, config.connect_timeout
    )


def _check_existing(paths: BuildPaths, config: BuildConfig) -> dict:
    """Check what exists at STORE and in the build directory against the options (nothing is
    changed on disk); returns the settings the per-file results depend on."""
    out = paths.out
    resuming = " --resume" if paths.build_dir.exists() else ""
    advice = (
        f"pass --overwrite{resuming} to replace it (it stays readable until the new one is "
        f"complete)"
    )
    try:
        check_destination(out, config.overwrite, advice)
    except DestinationExistsError as error:
        raise BuildError(str(error)) from None
    work = {
        "data": normalize_location(config.data),
        "rotation_atol": config.rotation_atol,
    }
    if paths.build_dir.exists():
        if config.resume:
            recorded = _read_json(paths.work_json)
            if recorded is not None and recorded != work:
                raise BuildError(
                    f"the interrupted build in {paths.build_dir} used {recorded}, this one "
                    f"{work}: rerun with the same DATA and --rotation-tolerance, or pass "
                    f"--overwrite instead of --resume to start over"
                )
        elif not config.overwrite:
            raise BuildError(
                f"an interrupted build of {out} exists in {paths.build_dir}; pass --resume to "
                f"continue it or --overwrite to discard it"
            )
    return work


def _prepare_build_dir(paths: BuildPaths, config: BuildConfig, work: dict) -> None:
    if paths.build_dir.exists():
        if config.resume:
            logger.info("resuming the build in %s", paths.build_dir)
        else:
            logger.info("discarding the partial build in %s", paths.build_dir)
            shutil.rmtree(paths.build_dir)
    elif config.resume:
        logger.info("nothing to resume in %s: starting a fresh build", paths.build_dir)
    paths.clips.mkdir(parents=True, exist_ok=True)
    paths.work_json.write_text(json.dumps(work, sort_keys=True))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
