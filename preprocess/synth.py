"""Synthetic Nymeria-format clips: plausible human motion by forward kinematics (XSens skeleton).

Used for tests, demos and benchmarks where the real dataset is not at hand. Everything here is
pure and deterministic given a `numpy.random.Generator` (or a seed); only `write_clip` and
`generate_dataset` touch the disk.

Conventions
-----------
- World: Z up, metres, ground plane at z = 0. Frame rate 30 fps by default.
- Rotation matrices map local to world: `p_world = R @ p_local + t`.
- XSens segment frames in the rest pose (standing, arms hanging) are aligned with the body:
  X forward, Y left, Z up. `joint_orientation[:, j]` is `R_world_segment`,
  `joint_translation[:, j]` the segment origin in world. Joint angles below are
  `R_parent_child = Rz(yaw) @ Ry(pitch) @ Rx(roll)`; with these axes a positive pitch tilts a
  forward vector down and swings a hanging limb backward (so hip and shoulder flexion are
  negative pitches, knee flexion positive), a positive yaw turns left.
- `root_translation` / `root_orientation` are the Pelvis segment pose.
- `cpf_translation` / `cpf_orientation` are the Aria central pupil frame (CPF), rigidly attached
  to the Head segment: origin `CPF_OFFSET_IN_HEAD_M` = 0.08 m forward and 0.10 m above the Head
  segment origin, axes X left, Y up, Z forward (as in projectaria_tools, where a gaze direction
  in CPF is `(tan(yaw), tan(pitch), 1)` normalised, left eye at +X). Hence
  `R_world_cpf = R_world_head @ R_HEAD_CPF` with `R_HEAD_CPF` columns (left, up, forward) in
  head coordinates.
- `contact_information` channels are `shared.skeleton.CONTACT_CHANNELS` = (left heel, left toe,
  right heel, right toe), XSens MVN's order; the heel is a point on the Foot segment, the toe a
  point (the tip) on the Toe segment. A channel is 1.0 when its point is
  within `CONTACT_HEIGHT_M` of the ground and moves slower than `CONTACT_SPEED_MPS`, else 0.0.
- `timestamp_ns = t0_ns + i * int(1e9 / fps)` for grid frame i of the whole recording, as the
  exporter writes them, so consecutive clips of a recording are contiguous in time.

Files (`generate_dataset`) look like the exporter's: clips of varying length (`CLIP_FRAMES_RANGE`)
with inclusive `start_idx`/`end_idx` on the recording's grid, and optionally frames dropped at
random (the exporter skips frames it fails to extract: `num_frames` keeps the declared count,
the datasets hold fewer, `timestamp_ns` has holes) and no `egoview_RGB` (later exporter
versions keep the video in an MP4 beside the file; none is written here).

Motion: each recording is a sequence of activities (`Activity`): walking bouts, each at its own
speed (slow strolls to a jog, `_SPEED_FACTOR_RANGE` of the person's cruising speed, cadence,
stride and stance adapting) on a curved path after a turn of 15-60 degrees, alternating with
standing (the pelvis swaying a few centimetres at < 0.5 Hz over planted feet), waving one or
both hands (upper arm raised sideways, forearm up and oscillating at 1.5-3 Hz), raising one or
both hands above the head, turning on the spot with small steps, sitting down on an
(invisible) chair and standing up, and bending down to pick something up. A walking bout may
also have one hand waving. Walking has a stance/swing gait solved by two-link leg IK (stance
feet stay planted, also while the body turns: the leg turns under the hip and the foot turns
at its next step), knee lift, heel rise, pelvis bob and rotation with thorax
counter-rotation, and arm swing in antiphase with the legs; the head looks around calmly
(yaw/pitch split over Neck and Head) throughout. The pelvis height is set every frame so that
the lowest foot point touches the ground, and during sitting/bending the pelvis shifts so that
the feet stay in place. A clip's `atomic_action` describes the activity filling most of its
frames. `BENCHMARKS.md` ("Synthetic motion vs real") compares the motion with real optical
motion capture.
"""

from __future__ import annotations

import enum
import logging
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from itertools import pairwise
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np

from preprocess import nymeria_format
from shared.atomic import atomic_path
from shared.rotations import axis_angle_to_matrix, yaw_matrix
from shared.skeleton import FOOT_JOINTS, JOINT_INDEX, JOINT_NAMES, NUM_JOINTS, PARENTS

logger = logging.getLogger(__name__)

DEFAULT_FPS = 30.0
UP_AXIS = np.array([0.0, 0.0, 1.0])

# CPF pose in the Head segment frame.
CPF_OFFSET_IN_HEAD_M = np.array([0.08, 0.0, 0.10])
R_HEAD_CPF = np.array(
    [
        [0.0, 0.0, 1.0],
        [1.0, 0.0, 0.0],
        [0.0, 1.0, 0.0],
    ]
)  # columns: CPF x = head left (+Y), CPF y = head up (+Z), CPF z = head forward (+X)

CONTACT_HEIGHT_M = 0.03
CONTACT_SPEED_MPS = 0.3
# Contact points in their segment frames, for bone_scale 1 (they scale with the body).
_HEEL_IN_FOOT_M = np.array([-0.05, 0.0, -0.08])
_TOE_TIP_IN_TOE_M = np.array([0.05, 0.0, -0.02])

CLIP_FRAMES_RANGE = (45, 255)  # inclusive range of clip lengths (frames on the grid) written

# Rest-pose segment origins relative to their parent, for bone_scale 1 (a ~1.75 m adult,
# pelvis 0.94 m and eyes ~1.66 m above the ground). Left side mirrors the right.
_RIGHT_AND_CENTRE_OFFSETS_M: dict[str, tuple[float, float, float]] = {
    "Pelvis": (0.0, 0.0, 0.0),
    "L5": (0.0, 0.0, 0.10),
    "L3": (0.0, 0.0, 0.10),
    "T12": (0.0, 0.0, 0.09),
    "T8": (0.0, 0.0, 0.10),
    "Neck": (0.0, 0.0, 0.14),
    "Head": (0.0, 0.0, 0.09),
    "RightShoulder": (0.0, -0.03, 0.11),
    "RightUpperArm": (0.0, -0.15, 0.0),
    "RightForeArm": (0.0, 0.0, -0.29),
    "RightHand": (0.0, 0.0, -0.26),
    "RightUpperLeg": (0.0, -0.09, 0.0),
    "RightLowerLeg": (0.0, 0.0, -0.43),
    "RightFoot": (0.0, 0.0, -0.43),
    "RightToe": (0.14, 0.0, -0.06),
}
_THIGH_M = 0.43
_SHANK_M = 0.43


def _rest_offsets_m(bone_scale: float) -> np.ndarray:
    """(23, 3) segment origin in its parent's frame, rest pose."""
    offsets = np.zeros((NUM_JOINTS, 3))
    for name in JOINT_NAMES:
        if name.startswith("Left"):
            x, y, z = _RIGHT_AND_CENTRE_OFFSETS_M["Right" + name.removeprefix("Left")]
            offsets[JOINT_INDEX[name]] = (x, -y, z)
        else:
            offsets[JOINT_INDEX[name]] = _RIGHT_AND_CENTRE_OFFSETS_M[name]
    return offsets * bone_scale


# --- participants -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ParticipantSpec:
    """One synthetic person."""

    first_name: str
    last_name: str
    bone_scale: float = 1.0
    """Multiplies every bone length (1.0: a ~1.75 m adult)."""
    walk_speed_mps: float = 1.2
    """Cruising walking speed."""

    def __post_init__(self) -> None:
        for label, value in (("first_name", self.first_name), ("last_name", self.last_name)):
            if not (value.isascii() and value.isalpha() and value.islower()):
                raise ValueError(f"{label} must be lowercase ASCII letters, found {value!r}")
        if not 0.5 <= self.bone_scale <= 1.5:
            raise ValueError(f"bone_scale must be in [0.5, 1.5], found {self.bone_scale}")
        if not 0.3 <= self.walk_speed_mps <= 2.5:
            raise ValueError(f"walk_speed_mps must be in [0.3, 2.5], found {self.walk_speed_mps}")

    @property
    def name(self) -> str:
        """As it appears in sequence names: `first_last`."""
        return f"{self.first_name}_{self.last_name}"


_NAME_POOL: tuple[tuple[str, str], ...] = (
    ("james", "johnson"),
    ("maria", "garcia"),
    ("wei", "chen"),
    ("aisha", "okafor"),
    ("lars", "nielsen"),
    ("priya", "sharma"),
    ("tom", "becker"),
    ("yuki", "tanaka"),
    ("sofia", "rossi"),
    ("omar", "haddad"),
)
MAX_PARTICIPANTS = len(_NAME_POOL)
_BONE_SCALE_RANGE = (0.78, 1.12)


def default_participants(count: int, rng: np.random.Generator) -> tuple[ParticipantSpec, ...]:
    """`count` distinct people with body sizes spread over `_BONE_SCALE_RANGE`."""
    if not 1 <= count <= MAX_PARTICIPANTS:
        raise ValueError(f"participant count must be in [1, {MAX_PARTICIPANTS}], found {count}")
    name_ids = rng.choice(MAX_PARTICIPANTS, size=count, replace=False)
    scales = rng.permutation(np.linspace(*_BONE_SCALE_RANGE, count))
    scales += rng.uniform(-0.01, 0.01, count)
    speeds = rng.uniform(1.0, 1.35, count)
    return tuple(
        ParticipantSpec(
            *_NAME_POOL[i], bone_scale=round(float(s), 3), walk_speed_mps=round(float(v), 2)
        )
        for i, s, v in zip(name_ids, scales, speeds, strict=True)
    )


# --- activity plan ----------------------------------------------------------------------------


class Activity(enum.IntEnum):
    WALK = 0
    STAND = 1
    SIT = 2
    BEND = 3
    WAVE = 4
    RAISE_HANDS = 5
    TURN = 6


# Duration range (seconds) of one bout, and the ramp in/out (seconds) of its weight.
_BOUT_DURATION_S: dict[Activity, tuple[float, float]] = {
    Activity.WALK: (2.5, 5.0),
    Activity.STAND: (2.5, 5.0),
    Activity.SIT: (4.0, 6.0),
    Activity.BEND: (2.5, 4.0),
    Activity.WAVE: (3.0, 6.0),
    Activity.RAISE_HANDS: (3.5, 6.5),
    Activity.TURN: (2.5, 4.0),
}
_RAMP_S: dict[Activity, float] = {
    Activity.WALK: 1.0,
    Activity.SIT: 1.5,
    Activity.BEND: 1.0,
    Activity.WAVE: 0.5,
    Activity.RAISE_HANDS: 0.45,
    Activity.TURN: 0.6,
}
# Walks alternate with the other activities, taken in shuffled rounds of this tuple: every
# activity comes back within a round; gestures, standing and turning twice as often as sitting
# or bending.
_AFTER_WALK_ROUND: tuple[Activity, ...] = (
    Activity.STAND,
    Activity.STAND,
    Activity.SIT,
    Activity.BEND,
    Activity.WAVE,
    Activity.WAVE,
    Activity.RAISE_HANDS,
    Activity.RAISE_HANDS,
    Activity.TURN,
    Activity.TURN,
)
_SPEED_FACTOR_RANGE = (0.45, 1.6)  # a walking bout's speed over the cruising speed, log-uniform
_TURN_DEG_RANGE = (15.0, 60.0)  # turn at the start of every walking bout
_TURN_S = 3.0
_TURN_IN_PLACE_DEG_RANGE = (45.0, 150.0)
_TURN_IN_PLACE_SPEED_FACTOR = 1.2  # sets the cadence of the small steps
_CURVE_RAD_S_RANGE = (0.15, 0.4)  # mean yaw rate of a walking bout
_WALK_WAVE_P = 0.3  # chance that a walking bout has one hand waving for a while
_WALK_WAVE_S = (1.5, 2.5)
_WAVE_HZ_RANGE = (1.5, 3.0)  # forearm oscillation
_WAVE_SWING_RAD_RANGE = (0.4, 0.7)
_GESTURE_SIDES = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # (right, left): one or both

ACTION_PHRASES: dict[Activity, tuple[str, ...]] = {
    Activity.WALK: (
        "walking around the living room",
        "walking through the hallway",
        "walking around the kitchen",
        "wandering around the backyard",
    ),
    Activity.STAND: ("standing and looking around", "standing still, looking around the room"),
    Activity.SIT: ("sitting down on a chair and standing up again", "sitting on the sofa"),
    Activity.BEND: (
        "bending down to pick up a box",
        "bending over to reach something on a low table",
    ),
    Activity.WAVE: ("waving at someone across the room", "waving hello"),
    Activity.RAISE_HANDS: (
        "raising a hand above the head",
        "stretching the arms up over the head",
    ),
    Activity.TURN: ("turning around on the spot", "turning in place to look behind"),
}


@dataclass(frozen=True)
class ActivityPlan:
    """What the body does at each frame: the control signals `animate` turns into poses.
    Arm signals are (N, 2): right arm, left arm (the order of `_SIDES`)."""

    fps: float
    activity: np.ndarray  # (N,) int8 Activity per frame
    walk_weight: np.ndarray  # (N,) in [0, 1]: fraction of the bout's speed and gait amplitude
    speed_factor: np.ndarray  # (N,) the bout's walking speed over the cruising speed
    step_weight: np.ndarray  # (N,) in [0, 1]: stepping on the spot (turning in place)
    sit_weight: np.ndarray  # (N,) in [0, 1]: 1 = seated
    bend_weight: np.ndarray  # (N,) in [0, 1]: 1 = bent forward, hands low
    wave_weight: np.ndarray  # (N, 2) in [0, 1]: 1 = upper arm raised, forearm waving
    wave_swing_rad: np.ndarray  # (N,) the waving forearm's oscillation
    raise_weight: np.ndarray  # (N, 2) in [0, 1]: 1 = hand raised above the head
    yaw_rate_rad_s: np.ndarray  # (N,) heading rate of the body

    @property
    def num_frames(self) -> int:
        return len(self.activity)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _bout_envelope(num_frames: int, ramp_frames: float) -> np.ndarray:
    """(num_frames,) 0 -> 1 -> 0 with smooth ramps of `ramp_frames` at both ends."""
    i = np.arange(num_frames)
    return _smoothstep(np.minimum(i, num_frames - 1 - i) / max(ramp_frames, 1.0))


def _turn_rate_rad_s(
    rng: np.random.Generator, window: np.ndarray, deg_range: tuple[float, float], fps: float
) -> np.ndarray:
    """A turn by a random angle in `deg_range`, either way, with a yaw rate shaped as `window`."""
    turn_rad = np.deg2rad(rng.uniform(*deg_range)) * rng.choice([-1.0, 1.0])
    return turn_rad * window / (window.sum() / fps)


def _wave_signals(
    rng: np.random.Generator, weight: np.ndarray, sides: np.ndarray, fps: float
) -> dict[str, np.ndarray]:
    """A wave of the arms `sides` (right, left) with envelope `weight`: forearm oscillation at
    a random frequency and amplitude."""
    t_s = np.arange(len(weight)) / fps
    swing_rad = rng.uniform(*_WAVE_SWING_RAD_RANGE)
    phase_rad = 2 * np.pi * rng.uniform(*_WAVE_HZ_RANGE) * t_s + rng.uniform(0, 2 * np.pi)
    return {"wave_weight": weight[:, None] * sides, "wave_swing_rad": swing_rad * np.sin(phase_rad)}


def _walk_bout(rng: np.random.Generator, num_frames: int, fps: float) -> dict[str, np.ndarray]:
    """Walking at a random speed on a curved path, after a turn; maybe waving one hand."""
    envelope = _bout_envelope(num_frames, _RAMP_S[Activity.WALK] * fps)
    t_s = np.arange(num_frames) / fps
    turn_window = np.where(t_s < _TURN_S, np.sin(np.pi * t_s / _TURN_S) ** 2, 0.0)
    turn_rate = _turn_rate_rad_s(rng, turn_window * envelope, _TURN_DEG_RANGE, fps)
    wobble_hz, wobble_phase = rng.uniform(0.1, 0.3), rng.uniform(0, 2 * np.pi)
    wobble = 0.1 * np.sin(2 * np.pi * wobble_hz * t_s + wobble_phase)
    curve_rate = rng.uniform(*_CURVE_RAD_S_RANGE) * rng.choice([-1.0, 1.0]) + wobble
    speed_factor = np.exp(rng.uniform(*np.log(_SPEED_FACTOR_RANGE)))
    signals = {
        "walk_weight": envelope,
        "speed_factor": np.full(num_frames, speed_factor),
        "yaw_rate_rad_s": turn_rate + curve_rate * envelope,
    }
    wave_frames = round(rng.uniform(*_WALK_WAVE_S) * fps)
    if rng.uniform() < _WALK_WAVE_P and wave_frames < num_frames:
        start = rng.integers(num_frames - wave_frames)
        weight = np.zeros(num_frames)
        weight[start : start + wave_frames] = _bout_envelope(wave_frames, 0.4 * fps)
        signals |= _wave_signals(rng, weight, _GESTURE_SIDES[rng.integers(2)], fps)
    return signals


def _bout_signals(
    activity: Activity, rng: np.random.Generator, num_frames: int, fps: float
) -> dict[str, np.ndarray]:
    """The `ActivityPlan` fields one bout of `activity` sets (the others stay at rest)."""
    if activity == Activity.WALK:
        return _walk_bout(rng, num_frames, fps)
    envelope = _bout_envelope(num_frames, _RAMP_S.get(activity, 0.0) * fps)
    if activity == Activity.SIT:
        return {"sit_weight": envelope}
    if activity == Activity.BEND:
        return {"bend_weight": envelope}
    if activity == Activity.WAVE:
        return _wave_signals(rng, envelope, _GESTURE_SIDES[rng.integers(3)], fps)
    if activity == Activity.RAISE_HANDS:  # up and down once to three times
        parts = np.array_split(np.arange(num_frames), rng.integers(1, 4))
        ramp_frames = _RAMP_S[activity] * fps
        weight = np.concatenate([_bout_envelope(len(part), ramp_frames) for part in parts])
        return {"raise_weight": weight[:, None] * _GESTURE_SIDES[rng.integers(3)]}
    if activity == Activity.TURN:
        return {
            "step_weight": envelope,
            "speed_factor": np.full(num_frames, _TURN_IN_PLACE_SPEED_FACTOR),
            "yaw_rate_rad_s": _turn_rate_rad_s(rng, envelope**3, _TURN_IN_PLACE_DEG_RANGE, fps),
        }
    return {}  # standing


def plan_activities(
    rng: np.random.Generator, num_frames: int, fps: float = DEFAULT_FPS
) -> ActivityPlan:
    """Random sequence of activity bouts covering `num_frames`, starting with a walk. Walks
    alternate with the other activities, drawn in shuffled rounds of `_AFTER_WALK_ROUND`."""
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2 (for velocities), found {num_frames}")
    per_frame, per_arm = np.zeros(num_frames), np.zeros((num_frames, 2))
    plan = ActivityPlan(
        fps,
        np.empty(num_frames, np.int8),
        walk_weight=per_frame.copy(),
        speed_factor=np.ones(num_frames),
        step_weight=per_frame.copy(),
        sit_weight=per_frame.copy(),
        bend_weight=per_frame.copy(),
        wave_weight=per_arm.copy(),
        wave_swing_rad=per_frame.copy(),
        raise_weight=per_arm.copy(),
        yaw_rate_rad_s=per_frame.copy(),
    )
    current, start, upcoming = Activity.WALK, 0, []
    while start < num_frames:
        bout_frames = max(2, round(rng.uniform(*_BOUT_DURATION_S[current]) * fps))
        stop = min(start + bout_frames, num_frames)  # the last bout is cut at the end
        plan.activity[start:stop] = current
        for field, values in _bout_signals(current, rng, bout_frames, fps).items():
            getattr(plan, field)[start:stop] = values[: stop - start]
        if current != Activity.WALK:
            current = Activity.WALK
        else:
            upcoming = upcoming or list(rng.permutation(_AFTER_WALK_ROUND))
            current = Activity(upcoming.pop())
        start = stop
    return plan


# --- motion -----------------------------------------------------------------------------------

_STANCE_FRACTION = 0.6  # of the gait cycle, up to the cruising speed
_JOG_STANCE_FRACTION = 0.5  # at `_SPEED_FACTOR_RANGE[1]` x the cruising speed
_STRIDE_LENGTH_M = 1.3  # at bone_scale 1 and cruising speed
_CADENCE_EXPONENT = 0.75  # cadence grows as speed**0.75 (the stride as speed**0.25)
_WALK_SPEED_RANGE_MPS = (0.4, 2.2)
_SWAY_M = np.array([0.03, 0.025])  # (forward, left) amplitude of the postural sway
_SWAY_MAX_HZ = 0.4
_WAVE_ELEVATION_RAD = 2.0  # upper arm raised sideways while waving (from hanging down)
_RAISE_ELEVATION_RAD = 2.7  # ... and with the hand above the head
_LIFT_TO_TURN = 0.25  # step amplitude from which a swinging foot fully re-places its yaw
_MAX_LEG_EXTENSION = 0.995  # hip-ankle distance over leg length when the leg is straightest


def _smooth_noise(
    rng: np.random.Generator, num_frames: int, fps: float, max_hz: float
) -> np.ndarray:
    """(num_frames,) smooth random signal in [-1, 1]: a few random sinusoids below `max_hz`."""
    t_s = np.arange(num_frames) / fps
    freqs_hz = rng.uniform(0.25 * max_hz, max_hz, 4)
    phases = rng.uniform(0.0, 2 * np.pi, 4)
    weights = rng.uniform(0.5, 1.0, 4)
    waves = weights[:, None] * np.sin(2 * np.pi * freqs_hz[:, None] * t_s + phases[:, None])
    return waves.sum(0) / weights.sum()


def _euler_to_matrix(angles_rad: np.ndarray) -> np.ndarray:
    """(..., 3) (roll_x, pitch_y, yaw_z) -> (..., 3, 3) `Rz(yaw) @ Ry(pitch) @ Rx(roll)`."""
    R_x = axis_angle_to_matrix(np.array([1.0, 0.0, 0.0]), angles_rad[..., 0])
    R_y = axis_angle_to_matrix(np.array([0.0, 1.0, 0.0]), angles_rad[..., 1])
    R_z = axis_angle_to_matrix(np.array([0.0, 0.0, 1.0]), angles_rad[..., 2])
    return R_z @ R_y @ R_x


def forward_kinematics(
    R_parent_segment: np.ndarray, offsets_m: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Local rotations (N, 23, 3, 3) (root entry: root orientation) and rest offsets (23, 3) ->
    (R_world_segment (N, 23, 3, 3), segment origin (N, 23, 3)) with the root at the origin."""
    N = R_parent_segment.shape[0]
    R_world = np.empty_like(R_parent_segment)
    pos_m = np.zeros((N, NUM_JOINTS, 3))
    for j, parent in enumerate(PARENTS):
        if parent < 0:
            R_world[:, j] = R_parent_segment[:, j]
            continue
        R_world[:, j] = R_world[:, parent] @ R_parent_segment[:, j]
        pos_m[:, j] = pos_m[:, parent] + R_world[:, parent] @ offsets_m[j]
    return R_world, pos_m


def _pivot_shift_m(
    pitch_rad: np.ndarray, pivot_in_foot_m: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(forward, up) displacement of the ankle when the foot pitches by `pitch_rad` about a point
    of the foot (Foot segment frame) that stays on the ground."""
    x, _, z = -pivot_in_foot_m  # ankle relative to the pivot
    c, s = np.cos(pitch_rad), np.sin(pitch_rad)
    return c * x + s * z - x, -s * x + c * z - z


def _foot_targets(
    u: np.ndarray, stride_m: np.ndarray, beta: np.ndarray, gait: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gait cycle phase u in [0, 1) (0 = heel strike) -> (ankle forward of the hip (m), ankle
    height above the ground (m), sagittal foot pitch in the body frame (rad)).

    Stance (a fraction `beta` of the cycle): the foot stays put while the hip passes over it, so
    the ankle moves back linearly by the distance the body travels; it lands toes up and rolls
    off the toes at the end. Swing: the ankle eases forward, lifted mid-way. `gait` scales
    the foot's roll and lift (stepping on the spot has them with a zero stride).
    """
    stance = u < beta
    stance_progress = np.where(stance, u / beta, 1.0)
    swing_progress = np.where(stance, 0.0, (u - beta) / (1 - beta))
    excursion_m = beta * stride_m
    heel_strike_m, toe_off_m = 0.4 * excursion_m, -0.6 * excursion_m
    forward_m = np.where(
        stance,
        heel_strike_m + (toe_off_m - heel_strike_m) * stance_progress,
        toe_off_m + (heel_strike_m - toe_off_m) * 0.5 * (1.0 - np.cos(np.pi * swing_progress)),
    )
    heel_rise = np.where(
        stance, _smoothstep((stance_progress - 0.6) / 0.4), 1.0 - _smoothstep(swing_progress / 0.35)
    )
    toes_up = np.where(
        stance, 1.0 - _smoothstep(stance_progress / 0.12), _smoothstep((swing_progress - 0.3) / 0.5)
    )
    pitch_rad = gait * (0.5 * heel_rise - 0.2 * toes_up)
    # Heel rise pivots about the toe joint, toes-up about the heel.
    toe_joint_m = np.array(_RIGHT_AND_CENTRE_OFFSETS_M["RightToe"]) * scale
    dx_toe, dz_toe = _pivot_shift_m(np.maximum(pitch_rad, 0.0), toe_joint_m)
    dx_heel, dz_heel = _pivot_shift_m(np.minimum(pitch_rad, 0.0), _HEEL_IN_FOOT_M * scale)
    clearance_m = 0.09 * scale * gait * np.sin(np.pi * swing_progress)
    height_m = -_HEEL_IN_FOOT_M[2] * scale + dz_toe + dz_heel + clearance_m
    return forward_m + dx_toe + dx_heel, height_m, pitch_rad


def _two_link_ik(
    forward_m: np.ndarray, drop_m: np.ndarray, thigh_m: float, shank_m: float
) -> tuple[np.ndarray, np.ndarray]:
    """Sagittal leg IK: ankle `forward_m` ahead of and `drop_m` below the hip -> (thigh angle
    forward of straight down, knee flexion), both radians, knee bending forward."""
    reach_m = np.clip(np.hypot(forward_m, drop_m), 1e-6, thigh_m + shank_m)
    line_rad = np.arctan2(forward_m, drop_m)
    cos_hip = (thigh_m**2 + reach_m**2 - shank_m**2) / (2 * thigh_m * reach_m)
    cos_knee = (thigh_m**2 + shank_m**2 - reach_m**2) / (2 * thigh_m * shank_m)
    thigh_rad = line_rad + np.arccos(np.clip(cos_hip, -1.0, 1.0))
    return thigh_rad, np.pi - np.arccos(np.clip(cos_knee, -1.0, 1.0))


def _contact_points_m(R_world: np.ndarray, pos_m: np.ndarray, bone_scale: float) -> np.ndarray:
    """(N, 4, 3) heel and toe-tip points in `shared.skeleton.CONTACT_CHANNELS` order."""
    left_foot, left_toe, right_foot, right_toe = FOOT_JOINTS
    points = []
    for foot, toe in ((left_foot, left_toe), (right_foot, right_toe)):
        points.append(pos_m[:, foot] + R_world[:, foot] @ (_HEEL_IN_FOOT_M * bone_scale))
        points.append(pos_m[:, toe] + R_world[:, toe] @ (_TOE_TIP_IN_TOE_M * bone_scale))
    return np.stack(points, axis=1)


_ROLL, _PITCH, _YAW = 0, 1, 2  # columns of the joint angles (roll_x, pitch_y, yaw_z)
_SIDES = (("Right", 0.0), ("Left", 0.5))  # leg and arm sides with their gait phase shift


@dataclass(frozen=True)
class _Gait:
    """Where the body goes and how its legs cycle, per frame."""

    heading_rad: np.ndarray  # (N,) yaw of the body in the world
    path_xy_m: np.ndarray  # (N, 2) the body's place on the ground
    u_right: np.ndarray  # (N,) gait phase of the right leg in [0, 1), 0 = heel strike
    stride_m: np.ndarray  # (N,) stride length
    stance_fraction: np.ndarray  # (N,) of the gait cycle
    speed_ratio: np.ndarray  # (N,) the bout's walking speed over the cruising speed
    amplitude: np.ndarray  # (N,) in [0, 1]: how much the legs step (walking or on the spot)
    sway_m: np.ndarray  # (N, 2) the pelvis' (forward, left) shift over the feet, standing

    @property
    def cos_right(self) -> np.ndarray:
        """+1 when the right foot is furthest forward."""
        return np.cos(2 * np.pi * self.u_right)


def animate(
    plan: ActivityPlan, participant: ParticipantSpec, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Poses for every frame of `plan`, as full-recording arrays under the HDF5 key names."""
    gait = _gait(plan, participant, rng)
    angles = np.zeros((plan.num_frames, NUM_JOINTS, 3))  # of R_parent_segment, see _ROLL
    _set_pelvis_angles(angles, plan, gait)
    legs = _set_leg_angles(angles, plan, gait, participant.bone_scale)
    _set_arm_angles(angles, plan, gait)
    _set_spine_and_head_angles(angles, plan, gait, rng)
    R_body_segment, pos_body_m, contact_body_m = _body_pose(
        angles, legs, plan, gait, participant.bone_scale
    )
    return _world_arrays(R_body_segment, pos_body_m, contact_body_m, gait, plan.fps, rng)


def _gait(plan: ActivityPlan, participant: ParticipantSpec, rng: np.random.Generator) -> _Gait:
    N, fps, cruise_mps = plan.num_frames, plan.fps, participant.walk_speed_mps
    # Path of the body on the ground.
    bout_speed_mps = np.clip(cruise_mps * plan.speed_factor, *_WALK_SPEED_RANGE_MPS)
    speed_mps = bout_speed_mps * plan.walk_weight
    heading_rad = rng.uniform(-np.pi, np.pi) + np.cumsum(plan.yaw_rate_rad_s) / fps
    step_m = speed_mps[:, None] * np.stack([np.cos(heading_rad), np.sin(heading_rad)], -1) / fps
    path_xy_m = rng.uniform(-2.0, 2.0, 2) + np.cumsum(step_m, axis=0) - step_m[0]
    # Cadence and stride grow with the bout's speed, the stance shortening towards a jog;
    # within a bout the stride follows the speed at a fixed cadence, so legs stop with the body.
    speed_ratio = bout_speed_mps / cruise_mps
    stride_hz = cruise_mps / (_STRIDE_LENGTH_M * participant.bone_scale)
    stride_hz = stride_hz * speed_ratio**_CADENCE_EXPONENT
    u_right = (rng.uniform() + np.cumsum(stride_hz) / fps) % 1.0
    jog = np.clip((speed_ratio - 1.0) / (_SPEED_FACTOR_RANGE[1] - 1.0), 0.0, 1.0)
    stance_fraction = _STANCE_FRACTION + (_JOG_STANCE_FRACTION - _STANCE_FRACTION) * jog
    amplitude = np.maximum(plan.walk_weight, plan.step_weight)
    # Standing, the pelvis sways slowly over the planted feet (legs lean, see _set_leg_angles).
    idle = (1.0 - amplitude) * (1.0 - plan.sit_weight) * (1.0 - plan.bend_weight)
    sway = np.stack([_smooth_noise(rng, N, fps, _SWAY_MAX_HZ) for _ in range(2)], axis=-1)
    sway_m = idle[:, None] * _SWAY_M * sway
    return _Gait(
        heading_rad,
        path_xy_m,
        u_right,
        speed_mps / stride_hz,
        stance_fraction,
        speed_ratio,
        amplitude,
        sway_m,
    )


def _set_pelvis_angles(angles: np.ndarray, plan: ActivityPlan, gait: _Gait) -> None:
    walk, sit, bend = plan.walk_weight, plan.sit_weight, plan.bend_weight
    sit_transition = 4.0 * sit * (1.0 - sit)  # 1 halfway through sitting down / standing up
    pelvis = angles[:, JOINT_INDEX["Pelvis"]]
    pelvis[:, _PITCH] = 0.05 * walk - 0.1 * sit + 0.5 * sit_transition + 0.75 * bend
    pelvis[:, _YAW] = 0.08 * walk * gait.cos_right
    pelvis[:, _ROLL] = 0.03 * gait.amplitude * np.sin(2 * np.pi * gait.u_right)


def _planted_foot_yaw_rad(
    u: np.ndarray, beta: np.ndarray, amplitude: np.ndarray, heading_rad: np.ndarray
) -> np.ndarray:
    """(N,) the foot's yaw in the body frame that keeps it planted while the body turns. In
    stance (`u < beta`) the foot keeps its yaw in the world; in swing it turns towards the mean
    heading of the next stance, slower when the step's `amplitude` is below `_LIFT_TO_TURN` (a
    foot that does not lift does not turn: the leg twists until a step re-places it)."""
    cycle = np.concatenate([[0], np.cumsum(np.diff(u) < 0)])  # a new cycle at each heel strike
    stance = u < beta
    count = np.bincount(cycle, weights=stance)
    first_rad = heading_rad[np.searchsorted(cycle, np.arange(len(count)))]
    mean_rad = np.bincount(cycle, weights=stance * heading_rad) / np.maximum(count, 1)
    mean_rad = np.append(np.where(count > 0, mean_rad, first_rad), heading_rad[-1])
    # Turning progress through each swing, slowed where the foot barely lifts.
    swing = _smoothstep(np.where(stance, 0.0, (u - beta) / (1.0 - beta)))
    lifted = np.minimum(amplitude / _LIFT_TO_TURN, 1.0)
    turned = lifted * np.maximum(np.diff(swing, prepend=0.0), 0.0)
    turned_so_far = np.cumsum(turned)
    turned_so_far -= (turned_so_far - turned)[np.searchsorted(cycle, cycle)]  # within its cycle
    planted_rad = mean_rad.copy()
    for k, fraction in enumerate(np.bincount(cycle, weights=turned)):
        planted_rad[k + 1] = planted_rad[k] + fraction * (mean_rad[k + 1] - planted_rad[k])
    start_rad = planted_rad[cycle]
    foot_world_rad = start_rad + (mean_rad[cycle + 1] - start_rad) * turned_so_far
    return foot_world_rad - heading_rad


def _set_leg_angles(
    angles: np.ndarray, plan: ActivityPlan, gait: _Gait, scale: float
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Legs: foot targets along the gait cycle, turned about the body's centre so that a foot
    in stance stays put while the body turns; the pelvis as high as the stiffer leg allows
    (giving the vertical bob); IK for hip and knee in the leg's plane, which turns with the
    foot and leans to reach a foot off to the side (the standing sway moves the hips over
    still feet); then sitting and bending on top. Returns each thigh's (pitch, lean, yaw) in
    the body frame (the thighs are set there, not relative to the pelvis):
    `R_body_thigh = Rz(yaw) @ Rx(lean) @ Ry(pitch)`."""
    J = JOINT_INDEX
    sit, bend = plan.sit_weight, plan.bend_weight
    thigh_m, shank_m = _THIGH_M * scale, _SHANK_M * scale
    R_body_pelvis = _euler_to_matrix(angles[:, J["Pelvis"]])
    targets, root_height_limits_m = {}, []
    for side, phase_shift in _SIDES:
        targets[side], limit_m = _leg_target(side, phase_shift, gait, scale, R_body_pelvis)
        root_height_limits_m.append(limit_m)
    root_height_m = np.minimum(*root_height_limits_m)

    legs = {}
    for side, _ in _SIDES:
        forward_of_hip_m, left_of_hip_m, yaw_rad, ankle_height_m, foot_pitch, hip_height_m = (
            targets[side]
        )
        drop_m = root_height_m + hip_height_m - ankle_height_m
        thigh_forward, knee_flex = _two_link_ik(
            forward_of_hip_m, np.hypot(drop_m, left_of_hip_m), thigh_m, shank_m
        )
        # Sagittal pitches of thigh, shank and foot in the leg's plane; joints take differences.
        thigh_pitch_body = -thigh_forward - 1.5 * sit - 0.5 * bend
        knee_flex = knee_flex + 1.5 * sit + 0.9 * bend
        angles[:, J[f"{side}LowerLeg"], _PITCH] = knee_flex
        angles[:, J[f"{side}Foot"], _PITCH] = foot_pitch - (thigh_pitch_body + knee_flex)
        angles[:, J[f"{side}Toe"], _PITCH] = -np.maximum(foot_pitch, 0.0)  # toes flat on heel rise
        legs[side] = (thigh_pitch_body, np.arctan2(left_of_hip_m, drop_m), yaw_rad)
    return legs


def _leg_target(
    side: str, phase_shift: float, gait: _Gait, scale: float, R_body_pelvis: np.ndarray
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """One leg's ankle target from its hip in the leg's frame (forward, left), the leg's yaw,
    ankle height, foot pitch and hip height; and the highest root that leg allows."""
    J = JOINT_INDEX
    offsets_m = _rest_offsets_m(scale)
    thigh_m, shank_m = _THIGH_M * scale, _SHANK_M * scale
    u_side = (gait.u_right + phase_shift) % 1.0
    forward_m, ankle_height_m, foot_pitch = _foot_targets(
        u_side, gait.stride_m, gait.stance_fraction, gait.amplitude, scale
    )
    yaw_rad = _planted_foot_yaw_rad(u_side, gait.stance_fraction, gait.amplitude, gait.heading_rad)
    c, s = np.cos(yaw_rad), np.sin(yaw_rad)
    rest_hip_m = offsets_m[J[f"{side}UpperLeg"]]
    hip_body_m = R_body_pelvis @ rest_hip_m  # root at the origin
    # Ankle from hip in the body frame; the foot ignores the pelvis' sway and rotation.
    dx_m = c * forward_m - s * rest_hip_m[1] - hip_body_m[:, 0] - gait.sway_m[:, 0]
    dy_m = s * forward_m + c * rest_hip_m[1] - hip_body_m[:, 1] - gait.sway_m[:, 1]
    forward_of_hip_m, left_of_hip_m = c * dx_m + s * dy_m, c * dy_m - s * dx_m  # leg frame
    vertical_reach_m = np.sqrt(
        np.maximum(
            (_MAX_LEG_EXTENSION * (thigh_m + shank_m)) ** 2
            - forward_of_hip_m**2
            - left_of_hip_m**2,
            0.0,
        )
    )
    target = (
        forward_of_hip_m,
        left_of_hip_m,
        yaw_rad,
        ankle_height_m,
        foot_pitch,
        hip_body_m[:, 2],
    )
    return target, ankle_height_m + vertical_reach_m - hip_body_m[:, 2]


def _set_arm_angles(angles: np.ndarray, plan: ActivityPlan, gait: _Gait) -> None:
    """Arms swing against the same-side leg (wider, elbows bent, when faster); rest on the
    thighs when seated; reach when bent. A gesture takes an arm over: raised sideways with the
    forearm turned up (twisted a quarter turn about the upper arm) and, waving, the elbow
    flexing to and fro in the body's frontal plane, the upper arm following a little; or lifted
    above the head."""
    J = JOINT_INDEX
    walk, sit, bend = plan.walk_weight, plan.sit_weight, plan.bend_weight
    swing = 0.35 * walk * np.sqrt(gait.speed_ratio)
    jog_elbow = 0.8 * walk * np.clip(gait.speed_ratio - 1.0, 0.0, 1.0)
    for i, (side, phase_shift) in enumerate(_SIDES):
        outward = -1.0 if side == "Right" else 1.0
        arm_forward = -np.cos(2 * np.pi * (gait.u_right + phase_shift))
        wave, lift = plan.wave_weight[:, i], plan.raise_weight[:, i]
        rest = 1.0 - wave - lift
        upper_arm = angles[:, J[f"{side}UpperArm"]]
        upper_arm[:, _PITCH] = rest * (-swing * arm_forward - 0.5 * sit - 1.4 * bend) + 0.3 * (
            wave + lift
        )
        upper_arm[:, _ROLL] = outward * (
            0.1 * rest
            + (_WAVE_ELEVATION_RAD - 0.3 * plan.wave_swing_rad) * wave
            + _RAISE_ELEVATION_RAD * lift
        )
        forearm = angles[:, J[f"{side}ForeArm"]]
        forearm[:, _PITCH] = (
            rest * (-0.3 - 0.25 * walk * np.clip(arm_forward, 0, None) - 0.9 * sit - 0.2 * bend)
            - rest * jog_elbow
            - wave * (np.pi - _WAVE_ELEVATION_RAD + plan.wave_swing_rad)
            - 0.25 * lift
        )
        forearm[:, _YAW] = outward * 0.5 * np.pi * (wave + lift)


def _set_spine_and_head_angles(
    angles: np.ndarray, plan: ActivityPlan, gait: _Gait, rng: np.random.Generator
) -> None:
    """The spine leans with walking and bending and counters the pelvis' gait yaw; the head
    looks around calmly, the neck also cancelling the thorax's gait oscillation to steady the
    head."""
    J, N, fps = JOINT_INDEX, plan.num_frames, plan.fps
    walk, bend = plan.walk_weight, plan.bend_weight
    thorax_counter_yaw = -0.06 * walk * gait.cos_right
    for segment in ("L5", "L3", "T12", "T8"):
        angles[:, J[segment], _PITCH] = 0.02 * walk + 0.17 * bend
    for segment in ("T12", "T8"):
        angles[:, J[segment], _YAW] = thorax_counter_yaw

    look_yaw = 0.6 * _smooth_noise(rng, N, fps, max_hz=0.12)
    look_pitch = 0.1 + 0.3 * _smooth_noise(rng, N, fps, max_hz=0.2) - 0.4 * bend
    thorax_yaw = angles[:, J["Pelvis"], _YAW] + 2 * thorax_counter_yaw
    angles[:, J["Neck"], _YAW] = 0.4 * look_yaw - thorax_yaw
    angles[:, J["Head"], _YAW] = 0.6 * look_yaw
    angles[:, J["Neck"], _PITCH] = 0.4 * look_pitch
    angles[:, J["Head"], _PITCH] = 0.6 * look_pitch


def _body_pose(
    angles: np.ndarray,
    legs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    plan: ActivityPlan,
    gait: _Gait,
    scale: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Joint angles and thigh poses (`_set_leg_angles`) -> (R_body_segment (N, 23, 3, 3),
    segment origins (N, 23, 3), contact points (N, 4, 3)) in the body frame: the lowest foot
    point on the ground, the feet kept in place while sitting or bending, the pelvis swaying
    over them standing."""
    J = JOINT_INDEX
    R_parent_segment = _euler_to_matrix(angles)
    R_body_pelvis = _euler_to_matrix(angles[:, J["Pelvis"]])
    for side, _ in _SIDES:
        thigh, shank, foot = (J[f"{side}{s}"] for s in ("UpperLeg", "LowerLeg", "Foot"))
        pitch, lean, yaw = legs[side]
        # Thighs are set in the body frame, undoing the pelvis' own rotation.
        R_yaw = axis_angle_to_matrix(UP_AXIS, yaw)
        R_pitch = axis_angle_to_matrix(np.array([0.0, 1.0, 0.0]), pitch)
        R_unleaned_thigh = R_yaw @ R_pitch
        R_body_thigh = R_yaw @ axis_angle_to_matrix(np.array([1.0, 0.0, 0.0]), lean) @ R_pitch
        R_parent_segment[:, thigh] = R_body_pelvis.swapaxes(-1, -2) @ R_body_thigh
        # The ankle undoes the lean: the foot stays flat, turned by the leg's yaw.
        R_unleaned_shank = R_unleaned_thigh @ R_parent_segment[:, shank]
        R_body_shank = R_body_thigh @ R_parent_segment[:, shank]
        R_parent_segment[:, foot] = (
            R_body_shank.swapaxes(-1, -2) @ R_unleaned_shank @ R_parent_segment[:, foot]
        )
    R_body_segment, pos_body_m = forward_kinematics(R_parent_segment, _rest_offsets_m(scale))

    contact_body_m = _contact_points_m(R_body_segment, pos_body_m, scale)
    ankle_mid_xy_m = 0.5 * (pos_body_m[:, J["RightFoot"], :2] + pos_body_m[:, J["LeftFoot"], :2])
    root_body_m = np.zeros((plan.num_frames, 3))
    feet_kept = np.clip(plan.sit_weight + plan.bend_weight, 0.0, 1.0)
    root_body_m[:, :2] = -ankle_mid_xy_m * feet_kept[:, None] + gait.sway_m
    root_body_m[:, 2] = -contact_body_m[..., 2].min(axis=1)
    pos_body_m += root_body_m[:, None]
    contact_body_m += root_body_m[:, None]
    return R_body_segment, pos_body_m, contact_body_m


def _world_arrays(
    R_body_segment: np.ndarray,
    pos_body_m: np.ndarray,
    contact_body_m: np.ndarray,
    gait: _Gait,
    fps: float,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Body frame -> world (rotate by the heading, move along the path), the head pose, foot
    contacts and timestamps: the arrays of a recording under the HDF5 key names."""
    J, N = JOINT_INDEX, len(gait.heading_rad)
    R_world_body = yaw_matrix(gait.heading_rad, UP_AXIS)  # (N, 3, 3)
    offset_world_m = np.concatenate([gait.path_xy_m, np.zeros((N, 1))], axis=1)
    R_world_segment = R_world_body[:, None] @ R_body_segment
    pos_world_m = np.einsum("nab,njb->nja", R_world_body, pos_body_m) + offset_world_m[:, None]
    contact_world_m = np.einsum("nab,njb->nja", R_world_body, contact_body_m)
    contact_world_m += offset_world_m[:, None]

    R_world_head = R_world_segment[:, J["Head"]]
    cpf_world_m = pos_world_m[:, J["Head"]] + R_world_head @ CPF_OFFSET_IN_HEAD_M
    R_world_cpf = R_world_head @ R_HEAD_CPF

    speed_contact_mps = np.linalg.norm(np.gradient(contact_world_m[..., :2], axis=0), axis=-1) * fps
    contact = (contact_world_m[..., 2] < CONTACT_HEIGHT_M) & (speed_contact_mps < CONTACT_SPEED_MPS)

    t0_ns = int(rng.integers(10**12, 10**14))
    timestamp_ns = t0_ns + np.arange(N, dtype=np.int64) * int(1e9 / fps)

    f32 = np.float32
    return {
        nymeria_format.KEY_TIMESTAMP_NS: timestamp_ns,
        nymeria_format.KEY_ROOT_TRANSLATION: pos_world_m[:, J["Pelvis"]].astype(f32),
        nymeria_format.KEY_ROOT_ORIENTATION: R_world_segment[:, J["Pelvis"]].astype(f32),
        nymeria_format.KEY_CPF_TRANSLATION: cpf_world_m.astype(f32),
        nymeria_format.KEY_CPF_ORIENTATION: R_world_cpf.astype(f32),
        nymeria_format.KEY_JOINT_TRANSLATION: pos_world_m.astype(f32),
        nymeria_format.KEY_JOINT_ORIENTATION: R_world_segment.astype(f32),
        nymeria_format.KEY_CONTACT_INFORMATION: contact.astype(f32),
    }


def synthesize_recording(
    rng: np.random.Generator,
    participant: ParticipantSpec,
    num_frames: int,
    fps: float = DEFAULT_FPS,
) -> dict[str, np.ndarray]:
    """A whole recording of `num_frames` frames: arrays keyed by the HDF5 dataset names
    (`nymeria_format.MOTION_DATASETS`), float32 except int64 `timestamp_ns`, world frame."""
    return animate(plan_activities(rng, num_frames, fps), participant, rng)


# --- files ------------------------------------------------------------------------------------


def _egoview_frames(R_world_cpf: np.ndarray, video_size: int) -> np.ndarray:
    """(N, 3, V, V) uint8 stand-in video: colour bands that pan with the head's heading."""
    forward = R_world_cpf[:, :, 2]
    heading_rad = np.arctan2(forward[:, 1], forward[:, 0])
    grid = np.linspace(0.0, 1.0, video_size)
    channel_shift = np.arange(nymeria_format.EGOVIEW_CHANNELS) * (2 * np.pi / 3)
    wave = np.sin(
        2 * np.pi * (grid[None, None, None, :] + 0.5 * grid[None, None, :, None])
        - heading_rad[:, None, None, None]
        + channel_shift[None, :, None, None]
    )
    return np.rint(127.5 + 127.5 * wave).astype(nymeria_format.EGOVIEW_DTYPE)


def _check_clip(path: Path, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, object]) -> None:
    """Raise ValueError unless `arrays` and `attrs` form a valid clip."""
    missing = [key for key in nymeria_format.MOTION_DATASETS if key not in arrays]
    if missing:
        raise ValueError(f"{path}: arrays lack datasets {missing}")
    num_frames = len(arrays[nymeria_format.KEY_TIMESTAMP_NS])
    if num_frames < 1:
        raise ValueError(f"{path}: a clip needs at least one frame, found {num_frames}")
    for key, spec in nymeria_format.MOTION_DATASETS.items():
        array = arrays[key]
        expected = (num_frames, *spec.frame_shape)
        if array.shape != expected or not spec.accepts_dtype(array.dtype):
            raise ValueError(
                f"{path}: dataset {key!r} must be {spec.dtype_kind} with shape {expected}, "
                f"found {array.dtype} {array.shape}"
            )
    for key in (*nymeria_format.STRING_ATTRS, *nymeria_format.INT_ATTRS):
        if key not in attrs:
            raise ValueError(f"{path}: attribute {key!r} missing")
    start, end, count = (attrs[k] for k in nymeria_format.INT_ATTRS)
    covered = nymeria_format.num_frames_of_index_range(start, end)
    if not (count == covered >= num_frames and start >= 0):
        raise ValueError(
            f"{path}: attributes must satisfy 0 <= start_idx and num_frames == end_idx - start_idx"
            f" + 1 (both inclusive) >= {num_frames} frames held, found start_idx={start}, "
            f"end_idx={end}, num_frames={count}"
        )


def write_clip(
    path: Path,
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, object],
    video_size: int | None = 16,
) -> None:
    """Write one clip file atomically (`shared.atomic`: a glob for `*.h5` never sees half a file).

    `arrays` holds the clip's frames of every `nymeria_format.MOTION_DATASETS` key; `attrs` the
    string and int attributes (`num_frames` may exceed the frames held: skipped frames). Floats
    are stored as float32; every dataset is LZ4-compressed; `egoview_RGB` is a small
    (N, 3, video_size, video_size) stand-in video, absent when `video_size` is None.
    """
    path = Path(path)
    _check_clip(path, arrays, attrs)
    if video_size is not None and video_size < 1:
        raise ValueError(f"video_size must be >= 1 (or None: no video), found {video_size}")
    with atomic_path(path) as tmp_path, h5py.File(tmp_path, "x") as f:
        for key in nymeria_format.STRING_ATTRS:
            f.attrs[key] = str(attrs[key])
        for key in nymeria_format.INT_ATTRS:
            f.attrs[key] = int(attrs[key])
        for key, spec in nymeria_format.MOTION_DATASETS.items():
            dtype = np.int64 if spec.dtype_kind == "int64" else np.float32
            f.create_dataset(key, data=np.asarray(arrays[key], dtype=dtype), **hdf5plugin.LZ4())
        if video_size is None:
            return
        video = _egoview_frames(np.asarray(arrays[nymeria_format.KEY_CPF_ORIENTATION]), video_size)
        f.create_dataset(
            nymeria_format.KEY_EGOVIEW,
            data=video,
            chunks=(1, nymeria_format.EGOVIEW_CHANNELS, video_size, video_size),
            **hdf5plugin.LZ4(),
        )


_UID_ALPHABET = np.array(list(string.ascii_lowercase + string.digits))
_FIRST_RECORDING_DATE = date(2023, 6, 7)


def _resolve_participants(
    participants: int | Sequence[ParticipantSpec] | None, recordings: int, seed: int
) -> tuple[ParticipantSpec, ...]:
    if participants is None or isinstance(participants, int):
        count = min(recordings, 4) if participants is None else participants
        if count > recordings:
            raise ValueError(f"participants ({count}) must not exceed recordings ({recordings})")
        return default_participants(count, np.random.default_rng([seed, 0]))
    specs = tuple(participants)
    if not 1 <= len(specs) <= recordings:
        raise ValueError(f"need between 1 and {recordings} participants, found {len(specs)}")
    if len({p.name for p in specs}) != len(specs):
        raise ValueError(f"participant names must be distinct, found {[p.name for p in specs]}")
    return specs


def generate_dataset(
    out_dir: Path,
    recordings: int = 6,
    seed: int = 0,
    participants: int | Sequence[ParticipantSpec] | None = None,
    clips_per_recording: int = 4,
    fps: float = DEFAULT_FPS,
    video_size: int | None = 16,
    drop_frame_probability: float = 0.0,
) -> list[Path]:
    """Write `recordings` x `clips_per_recording` clip files into `out_dir`; return their paths.

    `participants`: a count of default people (default `min(recordings, 4)`) or explicit specs.
    Recording i belongs to participant `i % P` (its act number is `i // P`); each recording is
    cut into clips of `CLIP_FRAMES_RANGE` frames, like the exporter's (see the module doc).
    Each frame is left out of its file with `drop_frame_probability` (every clip keeps at least
    one); `video_size` None writes no video. Recording i depends only on (seed, i, its
    participant), and its motion not on the drop probability.
    """
    _check_dataset_args(recordings, clips_per_recording, drop_frame_probability, seed)
    specs = _resolve_participants(participants, recordings, seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for i in range(recordings):
        paths += _write_recording(
            out_dir, i, seed, specs, clips_per_recording, fps, video_size, drop_frame_probability
        )
    return paths


def _check_dataset_args(
    recordings: int, clips_per_recording: int, drop_frame_probability: float, seed: int
) -> None:
    if recordings < 1 or clips_per_recording < 1:
        raise ValueError(
            "recordings and clips_per_recording must be >= 1, "
            f"found {recordings} and {clips_per_recording}"
        )
    if not 0.0 <= drop_frame_probability < 1.0:
        raise ValueError(
            f"drop_frame_probability must be in [0, 1), found {drop_frame_probability}"
        )
    if seed < 0:
        raise ValueError(f"seed must be >= 0, found {seed}")


def _write_recording(
    out_dir: Path,
    i: int,
    seed: int,
    specs: Sequence[ParticipantSpec],
    clips_per_recording: int,
    fps: float,
    video_size: int | None,
    drop_frame_probability: float,
) -> list[Path]:
    """The clip files of recording `i` (see `generate_dataset`)."""
    rng = np.random.default_rng([seed, 1, i])
    drop_rng = np.random.default_rng([seed, 2, i])
    participant_idx, act = i % len(specs), i // len(specs)
    participant = specs[participant_idx]
    day = _FIRST_RECORDING_DATE + timedelta(days=3 * participant_idx)
    uid = "".join(rng.choice(_UID_ALPHABET, size=6))
    sequence_name = f"{day:%Y%m%d}_s0_{participant.name}_act{act}_{uid}"

    shortest, longest = CLIP_FRAMES_RANGE
    clip_frames = rng.integers(shortest, longest + 1, clips_per_recording)
    plan = plan_activities(rng, int(clip_frames.sum()), fps)
    arrays = animate(plan, participant, rng)
    bounds = np.concatenate([[0], np.cumsum(clip_frames)])
    paths = []
    for datapoint_id, (start, stop) in enumerate(pairwise(bounds)):
        counts = np.bincount(plan.activity[start:stop], minlength=len(Activity))
        majority = Activity(counts.argmax())
        attrs = {
            nymeria_format.ATTR_SEQUENCE_NAME: sequence_name,
            nymeria_format.ATTR_ATOMIC_ACTION: str(rng.choice(ACTION_PHRASES[majority])),
            nymeria_format.ATTR_START_IDX: int(start),
            nymeria_format.ATTR_END_IDX: int(stop - 1),  # inclusive
            nymeria_format.ATTR_NUM_FRAMES: int(stop - start),
        }
        held = drop_rng.uniform(size=stop - start) >= drop_frame_probability
        kept = start + np.flatnonzero(held) if held.any() else np.array([start])
        path = out_dir / nymeria_format.clip_file_name(sequence_name, datapoint_id)
        write_clip(path, {key: value[kept] for key, value in arrays.items()}, attrs, video_size)
        paths.append(path)
    logger.info(
        "synthesized %s (bone scale %.3f): %d frames in %d clips",
        sequence_name,
        participant.bone_scale,
        bounds[-1],
        clips_per_recording,
    )
    return paths
