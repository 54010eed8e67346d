"""Bad input: every kind of unusable file is skipped with a precise reason, the rest proceed;
the video is never read."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from store_testing import cli_build, raw_recordings, read_raw, synchronous_build, write_variant

import shared.store
from preprocess import nymeria_format
from preprocess import read_clip as read_clip_module
from preprocess.read_clip import PROBLEM_KINDS, read_clip
from shared.store import open_store

GOOD_RECORDINGS = 2
# What a file can be wrong with (an unexpected error is injected in its own test).
FILE_KINDS = tuple(k for k in PROBLEM_KINDS if k != "unexpected_error")


def _variants(clip: Path, raw: dict) -> dict[str, tuple[dict, dict, tuple[str, ...]]]:
    """kind -> (datasets, attrs, unreadable datasets) applied to a copy of `clip`."""
    n = len(raw[nymeria_format.KEY_TIMESTAMP_NS])
    nan_cpf = raw[nymeria_format.KEY_CPF_TRANSLATION].copy()
    nan_cpf[7, 1] = np.nan
    scaled = raw[nymeria_format.KEY_JOINT_ORIENTATION].copy()
    scaled[5, 3] *= 1.5
    stalled = raw[nymeria_format.KEY_TIMESTAMP_NS].copy()
    stalled[9] = stalled[8]
    absurd = raw[nymeria_format.KEY_JOINT_TRANSLATION].copy()
    absurd[5, 2, 0] = 3e38  # finite, but its features would overflow float32
    jumping = raw[nymeria_format.KEY_JOINT_TRANSLATION].copy()
    jumping[20, 4] = jumping[19, 4] + (5.0, 0.0, 0.0)  # 5 m in one 30 fps frame: 150 m/s
    slow = raw[nymeria_format.KEY_TIMESTAMP_NS][0] + np.arange(n, dtype=np.int64) * 2_000_000_000
    empty = {
        key: raw[key][:0]
        for key in (
            nymeria_format.KEY_TIMESTAMP_NS,
            nymeria_format.KEY_CPF_TRANSLATION,
            nymeria_format.KEY_CPF_ORIENTATION,
            nymeria_format.KEY_JOINT_TRANSLATION,
            nymeria_format.KEY_JOINT_ORIENTATION,
            nymeria_format.KEY_CONTACT_INFORMATION,
        )
    }
    return {
        "missing_key": ({nymeria_format.KEY_JOINT_TRANSLATION: None}, {}, ()),
        "out_of_range": ({nymeria_format.KEY_JOINT_TRANSLATION: absurd}, {}, ()),
        "implausible_motion": ({nymeria_format.KEY_JOINT_TRANSLATION: jumping}, {}, ()),
        "frame_rate": ({nymeria_format.KEY_TIMESTAMP_NS: slow}, {}, ()),
        "bad_shape": (
            {nymeria_format.KEY_JOINT_TRANSLATION: np.zeros((n, 22, 3), np.float32)},
            {},
            (),
        ),
        "bad_dtype": (
            {
                nymeria_format.KEY_TIMESTAMP_NS: raw[nymeria_format.KEY_TIMESTAMP_NS].astype(
                    np.float64
                )
            },
            {},
            (),
        ),
        "non_finite": ({nymeria_format.KEY_CPF_TRANSLATION: nan_cpf}, {}, ()),
        "not_rotation": ({nymeria_format.KEY_JOINT_ORIENTATION: scaled}, {}, ()),
        "timestamps_not_increasing": ({nymeria_format.KEY_TIMESTAMP_NS: stalled}, {}, ()),
        "empty_clip": (empty, {nymeria_format.ATTR_NUM_FRAMES: 0}, ()),
        "frame_count_mismatch": (
            {
                nymeria_format.KEY_CONTACT_INFORMATION: raw[nymeria_format.KEY_CONTACT_INFORMATION][
                    :-1
                ]
            },
            {},
            (),
        ),
        "filter_unavailable": ({}, {}, (nymeria_format.KEY_JOINT_ORIENTATION,)),
        "missing_attribute": ({}, {nymeria_format.ATTR_SEQUENCE_NAME: None}, ()),
        "bad_sequence_name": (
            {},
            {nymeria_format.ATTR_SEQUENCE_NAME: "not-a-nymeria-recording"},
            (),
        ),
    }


# What each kind's reason must say (besides the file name).
EXPECTED_DETAIL = {
    "not_hdf5": "not an HDF5 file",
    "unreadable": "unreadable or truncated",
    "missing_key": "missing dataset 'joint_translation'",
    "bad_link": "'joint_translation' is a dangling soft link to '/nowhere'",
    "bad_size": "dataset 'timestamp_ns' declares 100000000000 frames (800000000000 bytes) but the",
    "out_of_range": "dataset 'joint_translation', frame 5: coordinate 3e+38 m is beyond",
    "implausible_motion": "dataset 'joint_translation', frame 20, joint 4: moves 5",
    "unwritten_data": "dataset 'cpf_translation', frame 32: never written (HDF5 reports its",
    "frame_rate": "is 0.5 fps, outside [1, 1000] fps",
    "bad_shape": "dataset 'joint_translation' has shape (",
    "bad_dtype": "dataset 'timestamp_ns' has dtype float64, expected int64",
    "non_finite": "dataset 'cpf_translation', frame 7: NaN or Inf",
    "not_rotation": "dataset 'joint_orientation', frame 5, joint 3: not a rotation matrix",
    "timestamps_not_increasing": "dataset 'timestamp_ns', frame 9:",
    "empty_clip": "0 frames",
    "frame_count_mismatch": "disagree on the number of frames",
    "filter_unavailable": "dataset 'joint_orientation' is compressed with HDF5 filter 32099",
    "missing_attribute": "missing file attribute 'sequence_name'",
    "bad_sequence_name": "does not match the Nymeria pattern",
}


@pytest.fixture(scope="module")
def mixed_dataset(
    synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, str]]:
    """Good clips of two recordings (one of them with an unreadable video) plus one bad file
    per problem kind, each made from a good clip with h5py. Returns (root, kind -> file)."""
    root = tmp_path_factory.mktemp("mixed")
    recordings = raw_recordings(synthetic_dataset)
    good_names = list(recordings)[:GOOD_RECORDINGS]
    for index, name in enumerate(good_names):
        for clip in recordings[name]:
            source = synthetic_dataset / clip["file"]
            # The video of the first recording uses a filter nobody has: reading it would fail.
            trap = (nymeria_format.KEY_EGOVIEW,) if index == 0 else ()
            write_variant(source, root / "good" / clip["file"], filtered=trap)
    donor_name = list(recordings)[GOOD_RECORDINGS]
    donor = synthetic_dataset / recordings[donor_name][0]["file"]
    raw = read_raw(donor)
    files = {}
    for kind, (datasets, attrs, filtered) in _variants(donor, raw).items():
        files[kind] = f"bad/{kind}/{donor_name}_00000.h5"
        write_variant(donor, root / files[kind], datasets, attrs, filtered)
    files["not_hdf5"] = "bad/not_hdf5_00000.h5"
    (root / files["not_hdf5"]).write_text("this is a CSV, not HDF5\n1,2,3\n")
    files["unreadable"] = "bad/truncated_00000.h5"
    (root / files["unreadable"]).write_bytes(donor.read_bytes()[:3000])
    for kind in ("bad_link", "bad_size", "unwritten_data"):
        files[kind] = f"bad/{kind}/{donor_name}_00000.h5"
        write_variant(donor, root / files[kind])
    with h5py.File(root / files["bad_link"], "a") as f:
        del f[nymeria_format.KEY_JOINT_TRANSLATION]
        f[nymeria_format.KEY_JOINT_TRANSLATION] = h5py.SoftLink("/nowhere")
    with h5py.File(root / files["bad_size"], "a") as f:  # declares 745 GiB, stores nothing
        del f[nymeria_format.KEY_TIMESTAMP_NS]
        f.create_dataset(
            nymeria_format.KEY_TIMESTAMP_NS, shape=(10**11,), dtype=np.int64, chunks=(4096,)
        )
    with h5py.File(root / files["unwritten_data"], "a") as f:  # frames 32 on never written
        cpf = f[nymeria_format.KEY_CPF_TRANSLATION][()]
        del f[nymeria_format.KEY_CPF_TRANSLATION]
        f.create_dataset(
            nymeria_format.KEY_CPF_TRANSLATION, shape=cpf.shape, dtype=cpf.dtype, chunks=(16, 3)
        )[:32] = cpf[:32]
    assert set(files) == set(FILE_KINDS)
    return root, files


def test_the_video_trap_would_fire(mixed_dataset):
    root, _ = mixed_dataset
    trapped = min((root / "good").glob("*.h5"))
    with h5py.File(trapped, "r") as f, pytest.raises(OSError):
        f[nymeria_format.KEY_EGOVIEW][0]


@pytest.mark.parametrize("kind", FILE_KINDS)
def test_read_clip_reports_each_kind(mixed_dataset, kind):
    root, files = mixed_dataset
    result = read_clip(root, files[kind])
    assert not result.ok and result.motion is None
    assert result.problem.kind == kind
    assert files[kind] in result.problem.reason
    assert EXPECTED_DETAIL[kind] in result.problem.reason, result.problem.reason


def test_missing_filter_says_install_hdf5plugin(mixed_dataset):
    root, files = mixed_dataset
    reason = read_clip(root, files["filter_unavailable"]).problem.reason
    assert "HDF5 filter not available; is hdf5plugin installed?" in reason


def test_good_clip_with_unreadable_video_is_used(mixed_dataset):
    root, _ = mixed_dataset
    for path in sorted((root / "good").glob("*.h5")):
        result = read_clip(root, path.relative_to(root).as_posix())
        assert result.ok, result.problem


def test_build_skips_bad_files_and_records_them(mixed_dataset, tmp_path: Path):
    root, files = mixed_dataset
    out = tmp_path / "store.zarr"
    result = cli_build(root, out)
    assert result.exit_code == 0, result.output
    good_files, bad_files = 3 * GOOD_RECORDINGS, len(FILE_KINDS)
    total = good_files + bad_files
    expected = f"{total} found, 0 reused from an interrupted build, {good_files} used"
    assert f"{expected}, {bad_files} skipped" in result.output
    for kind, file in files.items():
        assert f"skipped [{kind}] {file}" in result.output

    store = open_store(out)
    problems = store.attrs[shared.store.ATTR_PROBLEMS]
    assert [p["file"] for p in problems] == sorted(files.values())
    assert {p["file"]: p["kind"] for p in problems} == {f: k for k, f in files.items()}
    assert store.attrs[shared.store.ATTR_SOURCE]["file_count"] == total
    assert store.attrs[shared.store.ATTR_SOURCE]["files_used"] == good_files
    assert len(store.sequences) == GOOD_RECORDINGS
    used = {f for r in store.sequences for f in r.source_files}
    assert used == {p.relative_to(root).as_posix() for p in (root / "good").glob("*.h5")}


def test_strict_publishes_nothing(mixed_dataset, tmp_path: Path):
    root, _ = mixed_dataset
    out = tmp_path / "strict.zarr"
    result = cli_build(root, out, "--strict")
    assert result.exit_code == 1
    assert f"--strict: {len(FILE_KINDS)} of" in result.output
    assert not out.exists()


def test_no_usable_file_fails(mixed_dataset, tmp_path: Path):
    root, _ = mixed_dataset
    out = tmp_path / "none.zarr"
    result = cli_build(root / "bad", out)
    assert result.exit_code == 1
    assert f"no usable clip file among the {len(FILE_KINDS)}" in result.output
    assert not out.exists()


def test_empty_folder_fails(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    result = cli_build(tmp_path / "empty", tmp_path / "s.zarr")
    assert result.exit_code == 1 and "no *.h5 files under" in result.output


def test_api_build_reports_problems(mixed_dataset, tmp_path: Path):
    root, _ = mixed_dataset
    summary = synchronous_build(root, tmp_path / "api.zarr")
    assert {p.kind for p in summary.problems} == set(FILE_KINDS)
    assert summary.files_used == 3 * GOOD_RECORDINGS


def test_an_unexpected_error_in_one_file_is_recorded_not_raised(
    mixed_dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """Whatever a file makes the reader raise (here a ZeroDivisionError injected for one file,
    standing in for an HDF5 failure nobody has seen yet or a bug), the build goes on."""
    root, _ = mixed_dataset
    victim = min(p.relative_to(root).as_posix() for p in (root / "good").glob("*.h5"))
    check_values = read_clip_module._check_values

    def failing(arrays, file, rotation_atol):
        if file == victim:
            raise ZeroDivisionError("injected")
        check_values(arrays, file, rotation_atol)

    monkeypatch.setattr(read_clip_module, "_check_values", failing)
    summary = synchronous_build(root, tmp_path / "s.zarr")
    problem = next(p for p in summary.problems if p.file == victim)
    assert problem.kind == "unexpected_error"
    assert "unexpected ZeroDivisionError while reading: injected" in problem.reason
    assert "Traceback" in caplog.text and "ZeroDivisionError" in caplog.text
    assert summary.files_used == 3 * GOOD_RECORDINGS - 1
