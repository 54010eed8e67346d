"""The 294-D head-centric frame vector: named slices and loss groups, defined once.

Every consumer slices features through these names; no other module spells out
feature offsets. See docs/design.md "Features" for the definitions.
"""

from __future__ import annotations

from types import MappingProxyType

from shared.skeleton import NUM_JOINTS

ROT6D_DIM = 6

# (name, width) in storage order. Widths are derived from the skeleton, not typed in.
_FIELDS: tuple[tuple[str, int], ...] = (
    ("hr", ROT6D_DIM),  # 6D of R_world_head
    ("hr_dot", ROT6D_DIM),  # 6D of R_head[t-1]^T R_head[t]
    ("hp", 3),  # t_world_head
    ("hp_dot", 3),  # t_head[t] - t_head[t-1]
    ("jp", 3 * NUM_JOINTS),  # R_head^T (p_joint - t_head), joint-major
    ("jv", 3 * NUM_JOINTS),  # jp[t] - jp[t-1]
    ("jr", ROT6D_DIM * NUM_JOINTS),  # 6D of R_world_joint, joint-major
)


def _build_slices() -> dict[str, slice]:
    slices, start = {}, 0
    for name, width in _FIELDS:
        slices[name] = slice(start, start + width)
        start += width
    return slices


FEATURE_SLICES: MappingProxyType[str, slice] = MappingProxyType(_build_slices())
FEATURE_DIM: int = FEATURE_SLICES["jr"].stop  # 294

HR = FEATURE_SLICES["hr"]
HR_DOT = FEATURE_SLICES["hr_dot"]
HP = FEATURE_SLICES["hp"]
HP_DOT = FEATURE_SLICES["hp_dot"]
JP = FEATURE_SLICES["jp"]
JV = FEATURE_SLICES["jv"]
JR = FEATURE_SLICES["jr"]

# Loss groups: contiguous spans of fields, each weighted equally in the VAE loss.
LOSS_GROUPS: MappingProxyType[str, slice] = MappingProxyType(
    {
        "head_6D": slice(HR.start, HR_DOT.stop),
        "head_3D": slice(HP.start, HP_DOT.stop),
        "joint_3D": slice(JP.start, JV.stop),
        "joint_6D": slice(JR.start, JR.stop),
    }
)

LAYOUT_NAME = "nymeria-head-centric-v1"


def layout_description() -> dict:
    """JSON-ready description stored with every feature store and checkpoint."""
    return {
        "name": LAYOUT_NAME,
        "dim": FEATURE_DIM,
        "fields": {k: [s.start, s.stop] for k, s in FEATURE_SLICES.items()},
        "loss_groups": {k: [s.start, s.stop] for k, s in LOSS_GROUPS.items()},
        "rot6d": "first two columns of R, concatenated: [R00,R10,R20,R01,R11,R21]",
        "joints_order": "joint-major",
    }


def field_of_dim(dim: int) -> str:
    """Name of feature dimension `dim` within its field, e.g. 14 -> "hp[2]"."""
    for name, s in FEATURE_SLICES.items():
        if s.start <= dim < s.stop:
            return f"{name}[{dim - s.start}]"
    raise IndexError(f"feature dim {dim} is not within [0, {FEATURE_DIM})")
