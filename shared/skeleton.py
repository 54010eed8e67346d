"""The 23-segment XSens MVN skeleton as stored in Nymeria (`joint_translation`,
`joint_orientation`)."""

from __future__ import annotations

JOINT_NAMES: tuple[str, ...] = (
    "Pelvis", "L5", "L3", "T12", "T8", "Neck", "Head",
    "RightShoulder", "RightUpperArm", "RightForeArm", "RightHand",
    "LeftShoulder", "LeftUpperArm", "LeftForeArm", "LeftHand",
    "RightUpperLeg", "RightLowerLeg", "RightFoot", "RightToe",
    "LeftUpperLeg", "LeftLowerLeg", "LeftFoot", "LeftToe",
)  # fmt: skip
NUM_JOINTS: int = len(JOINT_NAMES)
JOINT_INDEX: dict[str, int] = {name: i for i, name in enumerate(JOINT_NAMES)}

_PARENT_NAMES: dict[str, str | None] = {
    "Pelvis": None, "L5": "Pelvis", "L3": "L5", "T12": "L3", "T8": "T12", "Neck": "T8",
    "Head": "Neck",
    "RightShoulder": "T8", "RightUpperArm": "RightShoulder", "RightForeArm": "RightUpperArm",
    "RightHand": "RightForeArm",
    "LeftShoulder": "T8", "LeftUpperArm": "LeftShoulder", "LeftForeArm": "LeftUpperArm",
    "LeftHand": "LeftForeArm",
    "RightUpperLeg": "Pelvis", "RightLowerLeg": "RightUpperLeg", "RightFoot": "RightLowerLeg",
    "RightToe": "RightFoot",
    "LeftUpperLeg": "Pelvis", "LeftLowerLeg": "LeftUpperLeg", "LeftFoot": "LeftLowerLeg",
    "LeftToe": "LeftFoot",
}  # fmt: skip
# Parent index per joint, -1 for the root; parents always precede children.
PARENTS: tuple[int, ...] = tuple(
    -1 if _PARENT_NAMES[n] is None else JOINT_INDEX[_PARENT_NAMES[n]] for n in JOINT_NAMES
)

MIRROR: tuple[int, ...] = tuple(
    JOINT_INDEX[n.replace("Right", "\0").replace("Left", "Right").replace("\0", "Left")]
    for n in JOINT_NAMES
)
"""The joint each joint becomes in the left/right mirror image of the body (Right* <-> Left*,
the spine and head themselves)."""
SEGMENT_LATERAL_AXIS: int = 1
"""The left/right axis of every segment frame (XSens: X forward, Y left, Z up in the N-pose, so
mirrored segments' frames are each other's with Y reversed)."""

ROOT: int = JOINT_INDEX["Pelvis"]
HEAD: int = JOINT_INDEX["Head"]

CONTACT_CHANNELS: tuple[str, ...] = ("LeftHeel", "LeftToe", "RightHeel", "RightToe")
"""Order of the 4 foot-contact channels: `contact_information` in the clip files, `contact` in
the store. UNCONFIRMED for the real files: the exporter copies XSens `foot_contacts` of the
nearest body frame without documenting their order; this is XSens MVN's own order (left heel,
left toe, right heel, right toe). The synthetic clips are written in this order. Nothing that
trains or evaluates a model reads these channels (foot skating derives contact from the joints,
`train.metrics.foot_contact_steps`), so a different real order would mislabel only them."""
FOOT_JOINTS: tuple[int, ...] = tuple(
    JOINT_INDEX[n] for n in ("LeftFoot", "LeftToe", "RightFoot", "RightToe")
)
"""The segment each contact channel sits on, in `CONTACT_CHANNELS` order (heel: Foot)."""
# Bones (child, parent) for drawing.
BONES: tuple[tuple[int, int], ...] = tuple((j, p) for j, p in enumerate(PARENTS) if p >= 0)
