"""Synthetic Nymeria-format data: file format, timing, determinism, plausibility of the motion."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers the LZ4 filter)
import numpy as np
import pytest
from click.testing import CliRunner

from preprocess import nymeria_format, synth
from preprocess.cli import main
from shared.rotations import is_rotation, yaw_of
from shared.skeleton import CONTACT_CHANNELS, FOOT_JOINTS, HEAD, JOINT_INDEX, PARENTS, ROOT

REPO_ROOT = Path(__file__).resolve().parents[2]
FRAME_PERIOD_NS = int(1e9 / 30)  # the exporter's step
FORWARD, UP = np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0])
SEQUENCE_NAME = "20230607_s0_james_johnson_act0_e72nhq"
Arrays = dict[str, np.ndarray]
Clip = tuple[dict, Arrays]


def read_clip(path: Path) -> Clip:
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
        arrays = {key: f[key][()] for key in nymeria_format.MOTION_DATASETS}
    return attrs, arrays


def read_recordings(root: Path) -> dict[str, list[Clip]]:
    """sequence name -> its clips in datapoint order."""
    by_sequence = defaultdict(list)
    for path in sorted(root.glob("*.h5")):
        sequence_name, datapoint_id = nymeria_format.parse_clip_file_name(path)
        by_sequence[sequence_name].append((datapoint_id, read_clip(path)))
    return {name: [clip for _, clip in sorted(clips)] for name, clips in by_sequence.items()}


def stitch(clips: list[Clip]) -> Arrays:
    return {
        key: np.concatenate([arrays[key] for _, arrays in clips])
        for key in nymeria_format.MOTION_DATASETS
    }


def heading_rad(arrays: Arrays) -> np.ndarray:
    return np.unwrap(
        yaw_of(arrays[nymeria_format.KEY_ROOT_ORIENTATION].astype(np.float64), FORWARD, UP)
    )


def horizontal_speed_mps(pos_m: np.ndarray, fps: float = 30.0) -> np.ndarray:
    return np.linalg.norm(np.diff(pos_m[..., :2], axis=0), axis=-1) * fps


@pytest.fixture(scope="module")
def recordings(synthetic_dataset: Path) -> dict[str, Arrays]:
    return {name: stitch(clips) for name, clips in read_recordings(synthetic_dataset).items()}


@pytest.fixture(scope="module")
def long_recording() -> tuple[synth.ActivityPlan, Arrays]:
    """100 s of one participant, long enough to contain every activity."""
    rng = np.random.default_rng(11)
    plan = synth.plan_activities(rng, 3000)
    return plan, synth.animate(plan, synth.ParticipantSpec("maria", "garcia", 0.95), rng)


# --- format -------------------------------------------------------------------------------------


def test_files_conform_to_the_input_table(synthetic_dataset: Path) -> None:
    paths = sorted(synthetic_dataset.glob("*.h5"))
    assert len(paths) == 6 * 3
    assert not [p for p in synthetic_dataset.iterdir() if p.suffix != ".h5"]  # no temp files left
    for path in paths:
        sequence_name, _ = nymeria_format.parse_clip_file_name(path)
        with h5py.File(path, "r") as f:
            assert set(f.keys()) == {*nymeria_format.MOTION_DATASETS, nymeria_format.KEY_EGOVIEW}
            for key in nymeria_format.STRING_ATTRS:
                assert isinstance(f.attrs[key], str) and f.attrs[key]
            for key in nymeria_format.INT_ATTRS:
                assert isinstance(f.attrs[key], np.integer)
            assert f.attrs[nymeria_format.ATTR_SEQUENCE_NAME] == sequence_name
            n = int(f.attrs[nymeria_format.ATTR_NUM_FRAMES])
            # Both ends inclusive, as the exporter writes them.
            assert (
                n
                == f.attrs[nymeria_format.ATTR_END_IDX] - f.attrs[nymeria_format.ATTR_START_IDX] + 1
            )
            assert synth.CLIP_FRAMES_RANGE[0] <= n <= synth.CLIP_FRAMES_RANGE[1]
            steps = np.diff(f[nymeria_format.KEY_TIMESTAMP_NS][()])
            assert (steps == FRAME_PERIOD_NS).all()  # no frame dropped by default
            for key, spec in nymeria_format.MOTION_DATASETS.items():
                expected_dtype = np.int64 if spec.dtype_kind == "int64" else np.float32
                assert f[key].shape == (n, *spec.frame_shape), key
                assert f[key].dtype == expected_dtype, key
            assert f[nymeria_format.KEY_EGOVIEW].shape == (n, 3, 16, 16)
            assert f[nymeria_format.KEY_EGOVIEW].dtype == np.uint8
            for key in f:
                plist = f[key].id.get_create_plist()
                filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
                assert filters == [nymeria_format.LZ4_FILTER_ID], key
                assert np.all(np.isfinite(f[key][()])), key  # decompresses
            contact = f[nymeria_format.KEY_CONTACT_INFORMATION][()]
            assert set(np.unique(contact)) <= {0.0, 1.0}


def test_dataset_has_several_participants_with_different_bodies(
    recordings: dict[str, Arrays],
) -> None:
    femur_m: dict[str, float] = {}
    for name, arrays in recordings.items():
        joints_m = arrays[nymeria_format.KEY_JOINT_TRANSLATION]
        hip, knee = JOINT_INDEX["RightUpperLeg"], JOINT_INDEX["RightLowerLeg"]
        femur_m[nymeria_format.participant_from_sequence_name(name)] = float(
            np.linalg.norm(joints_m[0, knee] - joints_m[0, hip])
        )
    assert len(femur_m) == 4  # min(recordings, 4)
    assert max(femur_m.values()) - min(femur_m.values()) > 0.03


def test_consecutive_clips_are_contiguous(synthetic_dataset: Path) -> None:
    for name, clips in read_recordings(synthetic_dataset).items():
        first_attrs, _ = clips[0]
        assert first_attrs[nymeria_format.ATTR_START_IDX] == 0
        for (attrs_a, a), (attrs_b, b) in pairwise(clips):
            assert (
                attrs_b[nymeria_format.ATTR_START_IDX] == attrs_a[nymeria_format.ATTR_END_IDX] + 1
            ), name
            gap_ns = b[nymeria_format.KEY_TIMESTAMP_NS][0] - a[nymeria_format.KEY_TIMESTAMP_NS][-1]
            assert gap_ns == FRAME_PERIOD_NS, name
            jump_m = np.abs(
                b[nymeria_format.KEY_JOINT_TRANSLATION][0]
                - a[nymeria_format.KEY_JOINT_TRANSLATION][-1]
            ).max()
            assert jump_m < 0.15, name  # one frame of motion, not a restart
        timestamp_ns = np.concatenate(
            [arrays[nymeria_format.KEY_TIMESTAMP_NS] for _, arrays in clips]
        )
        assert np.all(np.diff(timestamp_ns) == FRAME_PERIOD_NS)


def small_clip(num_frames: int) -> Clip:
    person = synth.ParticipantSpec("james", "johnson")
    arrays = synth.synthesize_recording(np.random.default_rng(0), person, num_frames)
    attrs = {
        nymeria_format.ATTR_SEQUENCE_NAME: SEQUENCE_NAME,
        nymeria_format.ATTR_ATOMIC_ACTION: "walking",
        nymeria_format.ATTR_START_IDX: 0,
        nymeria_format.ATTR_END_IDX: num_frames - 1,
        nymeria_format.ATTR_NUM_FRAMES: num_frames,
    }
    return attrs, arrays


def test_write_clip_rejects_bad_input_and_leaves_no_file(tmp_path: Path) -> None:
    attrs, arrays = small_clip(10)
    path = tmp_path / "clip_00000.h5"
    bad = {
        **arrays,
        nymeria_format.KEY_JOINT_TRANSLATION: arrays[nymeria_format.KEY_JOINT_TRANSLATION][:, :22],
    }
    with pytest.raises(ValueError, match=r"joint_translation.*\(10, 23, 3\).*\(10, 22, 3\)"):
        synth.write_clip(path, bad, attrs)
    with pytest.raises(ValueError, match="num_frames"):
        synth.write_clip(path, arrays, {**attrs, nymeria_format.ATTR_NUM_FRAMES: 9})
    with pytest.raises(ValueError, match="inclusive"):  # an exclusive end_idx
        synth.write_clip(path, arrays, {**attrs, nymeria_format.ATTR_END_IDX: 10})
    assert list(tmp_path.iterdir()) == []

    synth.write_clip(path, arrays, attrs)
    _, back = read_clip(path)
    for key, value in arrays.items():
        np.testing.assert_array_equal(back[key], value)
    assert list(tmp_path.iterdir()) == [path]


def test_exporter_like_files_skip_frames_and_omit_the_video(tmp_path: Path) -> None:
    """`drop_frame_probability`: the datasets hold fewer frames than num_frames declares, with
    holes in timestamp_ns on the 30 fps grid; the motion is the same as without drops.
    `video_size=None`: no egoview_RGB, as later exporter versions."""
    full = synth.generate_dataset(tmp_path / "full", recordings=2, clips_per_recording=2, seed=3)
    dropped = synth.generate_dataset(
        tmp_path / "dropped",
        recordings=2,
        clips_per_recording=2,
        seed=3,
        video_size=None,
        drop_frame_probability=0.1,
    )
    held, declared = 0, 0
    for path_full, path_dropped in zip(full, dropped, strict=True):
        attrs_full, arrays_full = read_clip(path_full)
        attrs, arrays = read_clip(path_dropped)
        assert attrs == attrs_full  # the attributes describe the clip, not the frames held
        with h5py.File(path_dropped, "r") as f:
            assert nymeria_format.KEY_EGOVIEW not in f
        ts, ts_full = (
            arrays[nymeria_format.KEY_TIMESTAMP_NS],
            arrays_full[nymeria_format.KEY_TIMESTAMP_NS],
        )
        kept = np.searchsorted(ts_full, ts)
        np.testing.assert_array_equal(ts_full[kept], ts)  # a subset of the grid
        for key in nymeria_format.MOTION_DATASETS:
            np.testing.assert_array_equal(arrays[key], arrays_full[key][kept])
        held += len(ts)
        declared += int(attrs[nymeria_format.ATTR_NUM_FRAMES])
        assert len(ts_full) == attrs[nymeria_format.ATTR_NUM_FRAMES]
    assert 0.8 < held / declared < 0.97


def test_write_clip_crash_leaves_neither_final_nor_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attrs, arrays = small_clip(5)

    def crash(*args: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(synth, "_egoview_frames", crash)
    with pytest.raises(RuntimeError, match="disk on fire"):
        synth.write_clip(tmp_path / "clip_00000.h5", arrays, attrs)
    assert list(tmp_path.iterdir()) == []


# --- determinism --------------------------------------------------------------------------------


def test_same_seed_same_arrays_different_seed_different() -> None:
    person = synth.ParticipantSpec("wei", "chen", 1.05)
    first = synth.synthesize_recording(np.random.default_rng(5), person, 300)
    again = synth.synthesize_recording(np.random.default_rng(5), person, 300)
    other = synth.synthesize_recording(np.random.default_rng(6), person, 300)
    assert set(first) == set(nymeria_format.MOTION_DATASETS)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.allclose(
        first[nymeria_format.KEY_JOINT_TRANSLATION], other[nymeria_format.KEY_JOINT_TRANSLATION]
    )


def test_generate_dataset_is_deterministic_by_seed(tmp_path: Path) -> None:
    def build(seed: int, name: str) -> dict[str, Clip]:
        paths = synth.generate_dataset(
            tmp_path / name, recordings=3, seed=seed, clips_per_recording=2
        )
        return {p.name: read_clip(p) for p in paths}

    first, again, other = build(3, "a"), build(3, "b"), build(4, "c")
    assert first.keys() == again.keys()
    assert first.keys() != other.keys()
    for name, (attrs, arrays) in first.items():
        assert attrs == again[name][0]
        for key, value in arrays.items():
            np.testing.assert_array_equal(value, again[name][1][key])


def test_default_participant_count(tmp_path: Path) -> None:
    for recordings, expected in ((1, 1), (3, 3), (8, 4)):
        paths = synth.generate_dataset(
            tmp_path / str(recordings), recordings=recordings, clips_per_recording=1, video_size=1
        )
        sequences = {nymeria_format.parse_clip_file_name(p)[0] for p in paths}
        assert len(sequences) == recordings
        assert (
            len({nymeria_format.participant_from_sequence_name(s) for s in sequences}) == expected
        )
    with pytest.raises(ValueError, match="must not exceed recordings"):
        synth.generate_dataset(tmp_path / "x", recordings=3, participants=5)


# --- geometry -----------------------------------------------------------------------------------


def test_rotations_are_proper(recordings: dict[str, Arrays]) -> None:
    for arrays in recordings.values():
        for key in (
            nymeria_format.KEY_ROOT_ORIENTATION,
            nymeria_format.KEY_CPF_ORIENTATION,
            nymeria_format.KEY_JOINT_ORIENTATION,
        ):
            assert is_rotation(arrays[key].astype(np.float64), atol=1e-5).all(), key
    assert is_rotation(synth.R_HEAD_CPF, atol=0.0)


def test_root_is_the_pelvis_segment(recordings: dict[str, Arrays]) -> None:
    for arrays in recordings.values():
        pelvis_m = arrays[nymeria_format.KEY_JOINT_TRANSLATION][:, ROOT]
        R_world_pelvis = arrays[nymeria_format.KEY_JOINT_ORIENTATION][:, ROOT]
        np.testing.assert_array_equal(arrays[nymeria_format.KEY_ROOT_TRANSLATION], pelvis_m)
        np.testing.assert_array_equal(arrays[nymeria_format.KEY_ROOT_ORIENTATION], R_world_pelvis)


def test_bone_lengths_are_constant(recordings: dict[str, Arrays]) -> None:
    children = [j for j, p in enumerate(PARENTS) if p >= 0]
    parents = [PARENTS[j] for j in children]
    for name, arrays in recordings.items():
        joints_m = arrays[nymeria_format.KEY_JOINT_TRANSLATION].astype(np.float64)
        bone_m = np.linalg.norm(joints_m[:, children] - joints_m[:, parents], axis=-1)  # (N, 22)
        assert np.ptp(bone_m, axis=0).max() < 1e-4, name
        assert bone_m.min() > 0.05


def test_segment_offsets_are_fixed_in_the_parent_frame(recordings: dict[str, Arrays]) -> None:
    arrays = next(iter(recordings.values()))
    R_world_segment = arrays[nymeria_format.KEY_JOINT_ORIENTATION].astype(np.float64)
    joints_m = arrays[nymeria_format.KEY_JOINT_TRANSLATION].astype(np.float64)
    for j, p in enumerate(PARENTS):
        if p < 0:
            continue
        offset_world_m = joints_m[:, j] - joints_m[:, p]
        offset_in_parent_m = np.einsum("nba,nb->na", R_world_segment[:, p], offset_world_m)
        assert np.ptp(offset_in_parent_m, axis=0).max() < 1e-4, j


def test_feet_on_the_ground_and_head_above_pelvis(recordings: dict[str, Arrays]) -> None:
    for name, arrays in recordings.items():
        joints_m = arrays[nymeria_format.KEY_JOINT_TRANSLATION]
        assert joints_m[..., 2].min() > -0.01, name  # nothing below the floor
        lowest_foot_m = joints_m[:, list(FOOT_JOINTS), 2].min(axis=1)
        assert lowest_foot_m.max() < 0.05, name  # some toe on (or right above) the ground, always
        walking = horizontal_speed_mps(arrays[nymeria_format.KEY_ROOT_TRANSLATION]) > 0.8
        assert walking.sum() > 30, name
        assert (joints_m[1:][walking][:, list(FOOT_JOINTS), 2] < 0.4).all(), name
        head_above_pelvis_m = joints_m[:, HEAD, 2] - joints_m[:, ROOT, 2]
        assert head_above_pelvis_m.min() > 0.1, name  # even when bent over
        eyes_above_head_origin = (
            arrays[nymeria_format.KEY_CPF_TRANSLATION][:, 2] > joints_m[:, HEAD, 2]
        )
        assert eyes_above_head_origin[1:][walking].all(), name  # upright; not so when bent over


def test_cpf_is_rigidly_attached_to_the_head(recordings: dict[str, Arrays]) -> None:
    for arrays in recordings.values():
        R_world_head = arrays[nymeria_format.KEY_JOINT_ORIENTATION][:, HEAD].astype(np.float64)
        R_world_cpf = arrays[nymeria_format.KEY_CPF_ORIENTATION].astype(np.float64)
        # CPF z = head forward (x), CPF x = head left (y), CPF y = head up (z).
        for cpf_axis, head_axis in ((2, 0), (0, 1), (1, 2)):
            np.testing.assert_allclose(
                R_world_cpf[:, :, cpf_axis], R_world_head[:, :, head_axis], atol=1e-5
            )
        cpf_from_head_m = (
            arrays[nymeria_format.KEY_CPF_TRANSLATION]
            - arrays[nymeria_format.KEY_JOINT_TRANSLATION][:, HEAD]
        )
        cpf_in_head_m = np.einsum("nba,nb->na", R_world_head, cpf_from_head_m)
        np.testing.assert_allclose(
            cpf_in_head_m - synth.CPF_OFFSET_IN_HEAD_M, np.zeros_like(cpf_in_head_m), atol=1e-5
        )


# --- motion -------------------------------------------------------------------------------------


def test_motion_walks_turns_and_pauses(recordings: dict[str, Arrays]) -> None:
    for name, arrays in recordings.items():
        speed_mps = horizontal_speed_mps(arrays[nymeria_format.KEY_ROOT_TRANSLATION])
        assert speed_mps.sum() / 30.0 > 2.0, name  # path length, metres
        assert speed_mps.max() < 2.6, name  # a jog at most
        heading = heading_rad(arrays)
        assert np.rad2deg(heading.max() - heading.min()) > 60.0, name
        assert (speed_mps < 0.02).sum() >= 15, name  # at least half a second standing still


def test_long_recording_has_every_activity(long_recording) -> None:
    plan, arrays = long_recording
    assert set(np.unique(plan.activity)) == set(synth.Activity)
    pelvis_z_m = arrays[nymeria_format.KEY_ROOT_TRANSLATION][:, 2]
    head_z_m = arrays[nymeria_format.KEY_JOINT_TRANSLATION][:, HEAD, 2]
    standing = plan.activity == synth.Activity.STAND
    assert (plan.sit_weight > 0.99).any() and (plan.bend_weight > 0.99).any()
    # Seated: pelvis at chair height. Bent over: head well below standing height.
    assert pelvis_z_m[plan.sit_weight > 0.99].max() < 0.7 * pelvis_z_m[standing].min()
    assert head_z_m[plan.bend_weight > 0.99].max() < head_z_m[standing].min() - 0.3
    speed_mps = horizontal_speed_mps(arrays[nymeria_format.KEY_ROOT_TRANSLATION])
    assert speed_mps[standing[1:]].max() < 0.1  # swaying, not walking


def test_arms_swing_against_the_legs(long_recording) -> None:
    plan, arrays = long_recording
    gesturing = (plan.wave_weight + plan.raise_weight).max(axis=1) > 0
    cruising = (plan.walk_weight > 0.99) & ~gesturing
    joints_m = arrays[nymeria_format.KEY_JOINT_TRANSLATION][cruising].astype(np.float64)
    R_world_pelvis = arrays[nymeria_format.KEY_ROOT_ORIENTATION][cruising].astype(np.float64)
    forward = R_world_pelvis[:, :, 0]

    def forward_of_pelvis_m(joint: str) -> np.ndarray:
        return np.einsum("na,na->n", joints_m[:, JOINT_INDEX[joint]] - joints_m[:, ROOT], forward)

    for side, other in (("Right", "Left"), ("Left", "Right")):
        hand = forward_of_pelvis_m(f"{side}Hand")
        assert np.corrcoef(hand, forward_of_pelvis_m(f"{side}Foot"))[0, 1] < -0.5
        assert np.corrcoef(hand, forward_of_pelvis_m(f"{other}Foot"))[0, 1] > 0.5


def test_head_looks_around_while_walking(long_recording) -> None:
    plan, arrays = long_recording
    head_yaw = yaw_of(
        arrays[nymeria_format.KEY_JOINT_ORIENTATION][:, HEAD].astype(np.float64), FORWARD, UP
    )
    relative_yaw = np.angle(np.exp(1j * (head_yaw - heading_rad(arrays))))
    walking = plan.walk_weight > 0.5
    assert np.ptp(relative_yaw[walking]) > np.deg2rad(30)
    head_pitch = -np.arcsin(arrays[nymeria_format.KEY_JOINT_ORIENTATION][:, HEAD, 2, 0])
    assert np.ptp(head_pitch[walking]) > np.deg2rad(10)


def test_contacts_follow_the_gait(long_recording) -> None:
    plan, arrays = long_recording
    contact = arrays[nymeria_format.KEY_CONTACT_INFORMATION]
    standing = plan.activity == synth.Activity.STAND
    assert contact[standing].mean() > 0.95
    cruising = plan.walk_weight > 0.99
    assert (contact[cruising].max(axis=1) == 1).mean() > 0.8  # some foot down most of the time
    assert CONTACT_CHANNELS == ("LeftHeel", "LeftToe", "RightHeel", "RightToe")
    left_down = contact[cruising][:, :2].max(axis=1)
    right_down = contact[cruising][:, 2:].max(axis=1)
    assert 0.3 < right_down.mean() < 0.8 and 0.3 < left_down.mean() < 0.8  # feet alternate
    # A foot in contact is on the ground and (nearly) still.
    feet = [JOINT_INDEX["LeftFoot"], JOINT_INDEX["RightFoot"]]
    feet_m = arrays[nymeria_format.KEY_JOINT_TRANSLATION][:, feet]
    foot_speed_mps = np.linalg.norm(np.gradient(feet_m[..., :2], axis=0), axis=-1) * 30.0
    heel_down = contact[:, [0, 2]] == 1
    assert np.median(foot_speed_mps[heel_down]) < 0.05


def bouts(plan: synth.ActivityPlan, activity: synth.Activity) -> list[slice]:
    """The frames of each bout of `activity`, in order."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], plan.activity == activity, [0]])))
    return [slice(start, stop) for start, stop in zip(edges[::2], edges[1::2], strict=True)]


def test_gestures_raise_the_hands_above_the_head_and_the_forearm_waves(long_recording) -> None:
    plan, arrays = long_recording
    joints_m = arrays[nymeria_format.KEY_JOINT_TRANSLATION].astype(np.float64)
    eyes_z_m = arrays[nymeria_format.KEY_CPF_TRANSLATION][:, 2]
    gesturing = (plan.wave_weight + plan.raise_weight).max(axis=1) > 0
    waves = bouts(plan, synth.Activity.WAVE)
    assert waves and bouts(plan, synth.Activity.RAISE_HANDS)
    for i, side in enumerate(("Right", "Left")):
        shoulder, elbow, wrist = (
            JOINT_INDEX[f"{side}{s}"] for s in ("UpperArm", "ForeArm", "Hand")
        )
        hand_z_m = joints_m[:, wrist, 2]
        raised, waving = plan.raise_weight[:, i] > 0.99, plan.wave_weight[:, i] > 0.99
        assert raised.sum() > 30 and waving.sum() > 30, side
        assert (hand_z_m[raised] > eyes_z_m[raised] + 0.1).all(), side
        assert (hand_z_m[waving] > joints_m[waving, shoulder, 2] + 0.2).all(), side
        assert (hand_z_m[~gesturing] < eyes_z_m[~gesturing]).all(), side
        # Waving: the elbow flexes to and fro at 1.5-3 Hz by tens of degrees.
        upper_arm_m = joints_m[:, elbow] - joints_m[:, shoulder]
        forearm_m = joints_m[:, wrist] - joints_m[:, elbow]
        cos_elbow = np.einsum("na,na->n", upper_arm_m, forearm_m) / (
            np.linalg.norm(upper_arm_m, axis=-1) * np.linalg.norm(forearm_m, axis=-1)
        )
        elbow_rad = np.arccos(np.clip(cos_elbow, -1.0, 1.0))
        for bout in waves:
            frames = np.flatnonzero(waving[bout]) + bout.start
            if len(frames) < 45:
                continue
            assert np.ptp(elbow_rad[frames]) > np.deg2rad(35), side
            centred = elbow_rad[frames] - np.median(elbow_rad[frames])
            crossings = np.count_nonzero(np.diff(np.sign(centred)) != 0)
            assert 1.3 < crossings / 2 / (len(frames) / 30.0) < 3.3, side


def test_standing_sways_but_stays_in_place(long_recording) -> None:
    plan, arrays = long_recording
    joints_m = arrays[nymeria_format.KEY_JOINT_TRANSLATION].astype(np.float64)
    contact = arrays[nymeria_format.KEY_CONTACT_INFORMATION]
    standing = bouts(plan, synth.Activity.STAND)
    assert len(standing) >= 2
    for bout in standing:
        pelvis_xy_m = joints_m[bout, ROOT, :2]
        sway_m = np.linalg.norm(pelvis_xy_m - pelvis_xy_m.mean(axis=0), axis=-1)
        assert 0.005 < sway_m.max() < 0.06  # a few centimetres, not frozen
        assert horizontal_speed_mps(pelvis_xy_m).max() < 0.1  # slowly
        assert np.ptp(joints_m[bout][:, list(FOOT_JOINTS)], axis=0).max() < 1e-3  # feet planted
        assert (contact[bout] == 1).all()


def test_walking_speed_and_cadence_vary_across_bouts(long_recording) -> None:
    plan, arrays = long_recording
    speed_mps = horizontal_speed_mps(arrays[nymeria_format.KEY_ROOT_TRANSLATION])
    right_heel_down = arrays[nymeria_format.KEY_CONTACT_INFORMATION][:, 2] == 1
    bout_speed_mps, bout_cadence_hz = [], []
    for bout in bouts(plan, synth.Activity.WALK):
        strikes = np.flatnonzero(~right_heel_down[bout][:-1] & right_heel_down[bout][1:])
        strikes = strikes[plan.walk_weight[bout][strikes] > 0.8] + bout.start
        if len(strikes) < 2:
            continue
        bout_speed_mps.append(speed_mps[strikes[0] : strikes[-1]].mean())
        bout_cadence_hz.append(30.0 / np.diff(strikes).mean())
    assert len(bout_speed_mps) >= 5
    assert max(bout_speed_mps) > 1.8 * min(bout_speed_mps)  # strolls and brisk walks
    # Faster bouts step faster and longer.
    assert np.corrcoef(bout_speed_mps, bout_cadence_hz)[0, 1] > 0.8
    stride_m = np.array(bout_speed_mps) / np.array(bout_cadence_hz)
    assert np.corrcoef(bout_speed_mps, stride_m)[0, 1] > 0.8


def test_turning_in_place_steps_with_the_feet_near_the_pelvis(long_recording) -> None:
    plan, arrays = long_recording
    heading = heading_rad(arrays)
    joints_m = arrays[nymeria_format.KEY_JOINT_TRANSLATION].astype(np.float64)
    contact = arrays[nymeria_format.KEY_CONTACT_INFORMATION]
    turns = bouts(plan, synth.Activity.TURN)
    assert len(turns) >= 2
    for bout in turns:
        assert abs(heading[bout.stop - 1] - heading[bout.start]) > np.deg2rad(45)
        pelvis_xy_m = joints_m[bout, ROOT, :2]
        assert np.ptp(pelvis_xy_m, axis=0).max() < 0.05  # on the spot
        feet_xy_m = joints_m[bout][:, list(FOOT_JOINTS), :2]
        assert np.linalg.norm(feet_xy_m - pelvis_xy_m[:, None], axis=-1).max() < 0.3
        left_down, right_down = contact[bout][:, :2].max(axis=1), contact[bout][:, 2:].max(axis=1)
        assert (left_down == 0).any() and (right_down == 0).any()  # each foot steps
        assert np.maximum(left_down, right_down).mean() > 0.9
    # A flat foot stays put while the body turns above it (it does not pivot with the body).
    feet = [JOINT_INDEX["LeftFoot"], JOINT_INDEX["RightFoot"]]
    foot_speed_mps = np.linalg.norm(np.gradient(joints_m[:, feet, :2], axis=0), axis=-1) * 30.0
    flat = (contact[:, [0, 2]] == 1) & (contact[:, [1, 3]] == 1)
    turning = np.zeros(len(flat), bool)
    for bout in turns:
        turning[bout] = True
    assert np.median(foot_speed_mps[flat & turning[:, None]]) < 0.02


def test_no_joint_moves_implausibly_fast(recordings: dict[str, Arrays], long_recording) -> None:
    _, long_arrays = long_recording
    for name, arrays in {**recordings, "long": long_arrays}.items():
        joints_m = arrays[nymeria_format.KEY_JOINT_TRANSLATION].astype(np.float64)
        speed_mps = np.linalg.norm(np.diff(joints_m, axis=0), axis=-1) * 30.0
        assert speed_mps.max() < 8.0, name  # fast hands reach a few m/s; the build refuses 30


# --- naming -------------------------------------------------------------------------------------


def test_participant_from_sequence_name() -> None:
    assert nymeria_format.participant_from_sequence_name(SEQUENCE_NAME) == "james_johnson"
    long_name = "20231101_s12_ana_maria_lopez_act10_0a9b8c"
    assert nymeria_format.participant_from_sequence_name(long_name) == "ana_maria_lopez"
    for bad in ("james_johnson", "20230607_james_johnson_act0_e72nhq", "20230607_s0_act0_e72nhq"):
        with pytest.raises(ValueError, match=rf"{bad}.*<YYYYMMDD>_s<N>_<first>_<last>_act<N>_<id>"):
            nymeria_format.participant_from_sequence_name(bad)


def test_clip_file_names_round_trip(synthetic_dataset: Path) -> None:
    name = nymeria_format.clip_file_name(SEQUENCE_NAME, 3)
    assert name == f"{SEQUENCE_NAME}_00003.h5"
    assert nymeria_format.parse_clip_file_name(Path("/data") / name) == (SEQUENCE_NAME, 3)
    for bad in ("x_0003.h5", "x_00003.hdf5", "00003.h5"):
        with pytest.raises(ValueError, match="clip file name"):
            nymeria_format.parse_clip_file_name(bad)
    with pytest.raises(ValueError, match="datapoint_id"):
        nymeria_format.clip_file_name("x", 100000)
    for path in synthetic_dataset.glob("*.h5"):
        sequence_name, datapoint_id = nymeria_format.parse_clip_file_name(path)
        assert nymeria_format.clip_file_name(sequence_name, datapoint_id) == path.name
        nymeria_format.participant_from_sequence_name(sequence_name)


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_synth_in_process(tmp_path: Path) -> None:
    out_dir = tmp_path / "synthetic"
    args = ["synth", str(out_dir), "--recordings", "3", "--seed", "2", "--clips-per-recording", "2"]
    result = CliRunner().invoke(main, [*args, "--video-size", "8"])
    assert result.exit_code == 0, result.output
    paths = sorted(out_dir.glob("*.h5"))
    assert len(paths) == 6
    frames = sum(read_clip(p)[0][nymeria_format.ATTR_NUM_FRAMES] for p in paths)
    assert result.output.strip() == (
        f"wrote 6 clip files (3 recordings, {frames} frames, 3 participants) to {out_dir}"
    )
    with h5py.File(paths[0], "r") as f:
        assert f[nymeria_format.KEY_EGOVIEW].shape[1:] == (3, 8, 8)

    exporter_like = tmp_path / "exporter_like"
    args = ["synth", str(exporter_like), "--recordings", "2", "--clips-per-recording", "2"]
    result = CliRunner().invoke(main, [*args, "--no-video", "--drop-frames", "0.1"])
    assert result.exit_code == 0, result.output
    held, declared = 0, 0
    for path in sorted(exporter_like.glob("*.h5")):
        with h5py.File(path, "r") as f:
            assert nymeria_format.KEY_EGOVIEW not in f
            held += len(f[nymeria_format.KEY_TIMESTAMP_NS])
            declared += int(f.attrs[nymeria_format.ATTR_NUM_FRAMES])
    assert held < declared and f"({2} recordings, {held} frames," in result.output

    too_many = ["synth", str(tmp_path / "x"), "--recordings", "2", "--participants", "3"]
    result = CliRunner().invoke(main, too_many)
    assert result.exit_code == 2
    assert "--participants" in result.output and "must not exceed --recordings (2)" in result.output


@pytest.mark.slow
def test_cli_synth_subprocess(tmp_path: Path) -> None:
    out_dir = tmp_path / "synthetic"
    args = ["synth", str(out_dir), "--recordings", "2", "--clips-per-recording", "1"]
    completed = subprocess.run(
        [sys.executable, "-m", "preprocess", *args],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "wrote 2 clip files (2 recordings" in completed.stdout
    assert "2 participants" in completed.stdout
    assert len(list(out_dir.glob("*.h5"))) == 2
