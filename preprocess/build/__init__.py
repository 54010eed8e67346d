"""Build a feature store (schema v2, see shared/store/) from a tree of Nymeria clip files.

Stages, each restartable:
1. read: every clip file under DATA (`preprocess.discover`: links followed once, every file
   not read listed) -> `read_clip` on the executor (a pure function of the file; on Dask, a
   few files per task); each result is persisted in the build directory as it arrives. No
   file can stop the build: an unusable one becomes a problem record.
2. plan: detect the frame period (median over all clips); a clip at another rate is
   resampled with `--fps` and otherwise recorded as a problem; stitch clips into sequences,
   filling holes of up to `--max-fill-frames` and splitting at longer ones (preprocess.stitch);
   assign splits by participant (preprocess.split). The result is a `BuildPlan`, a printable
   value: `preprocess build --plan` (`plan_build`) stops here, having written nothing.
3. compute: per sequence on the executor, `compute_sequence` (interpolate filled holes or
   resample, features on the stitched motion, moments of canonical windows for train
   sequences); results are written in sequence order, whole chunks at a time, and the moments
   merged in that fixed order. Progress is recorded as chunks become durable (resume_record),
   and the per-file results of sequences wholly written are deleted.
4. publish: stats, sequence table and attributes are written, `complete=True` last; the new
   store's identity is recorded in STORE.build/publishing, and the finished store is
   renamed into place (exchanged atomically with an old one: `shared.store.write.publish`).

Where things are, for `--out STORE`:
    STORE.lock            the lock (pid + host); one build per STORE at a time
    STORE.build/clips/    per-file results (`preprocess.clip_cache`) and their index
    STORE.build/work.json settings the per-file results depend on
    STORE.build/progress.record  how far stage 3 got (`preprocess.build.resume_record`)
    STORE.build/store.zarr the store being written (complete=False until the end)
    STORE.build/publishing the store being published: fingerprint and creation time (stage 4)
    STORE                 the published store; replaced only with --overwrite, by renaming the
                          new store into place after it is complete

A killed build therefore never leaves anything at STORE that looks complete; `--resume` (with
`--overwrite` too when it replaces a store) reuses every finished per-file result and every
durable chunk, and redoes the rest, which is deterministic (sorted inputs, fixed merge order),
so the result is byte-identical to an uninterrupted build. A build killed while publishing is
finished by the next build of STORE, whatever its options, before anything else
(`publish.recover_publish`): a reader finds the old store or the new one at STORE throughout
(where the system cannot exchange two directories atomically, STORE is missing between two
renames until then). `--resume` of a build that is finished says so and does nothing.

Failures of the environment stop the build with one line and leave STORE.build/ for `--resume`:
a full disk (naming the path and roughly the space needed; temp files are removed), a Dask
scheduler that cannot be reached (checked before anything is written), a cluster without
workers for `worker_timeout` seconds, a task whose workers keep dying, a worker that cannot see
DATA or STORE.build/ at the paths this process uses.

The stages are the package's modules: `config` (BuildConfig and what derives from it), `errors`,
`paths` (where things are; the disk-space estimate and the messages that name paths), `read`
(stage 1), `plan` (stage 2, `BuildPlan`), `write` (stage 3 and the store's metadata),
`resume_record` (how far stage 3 got), `publish` (stage 4; finishing a killed publication),
`summary`, and `run`: `build` and `plan_build`, which share stages 1-2, so the plan that `--plan`
prints is the plan a build executes (its summary records it).
"""

from preprocess.build.config import (
    BuildConfig,
    BuildRuntime,
    BuildSettings,
    BuildStart,
    describe_executor,
)
from preprocess.build.errors import AlreadyBuilt, BuildError
from preprocess.build.paths import BuildPaths
from preprocess.build.plan import BuildPlan
from preprocess.build.run import build, plan_build
from preprocess.build.summary import BuildSummary

__all__ = [
    "AlreadyBuilt",
    "BuildConfig",
    "BuildError",
    "BuildPaths",
    "BuildPlan",
    "BuildRuntime",
    "BuildSettings",
    "BuildStart",
    "BuildSummary",
    "build",
    "describe_executor",
    "plan_build",
]
