"""Resample a continuous sequence to a new frame rate: slerp for rotations, linear for positions.

Pure numpy. The new frames are `t0 + round(k * 1e9 / fps)` ns for every k that stays within
the source's time span (1 ns slack for the source's rounding), so no frame is extrapolated.
"""

from __future__ import annotations

import numpy as np

from preprocess.motion import Motion
from shared.rotations import slerp_matrix


def resample_timestamps(timestamp_ns: np.ndarray, fps: float) -> np.ndarray:
    """New frame times (int64 ns) at `fps` over the span of `timestamp_ns`."""
    if not fps > 0:
        raise ValueError(f"fps must be positive, found {fps}")
    period_ns = 1e9 / fps
    span_ns = int(timestamp_ns[-1]) - int(timestamp_ns[0])
    # Source times are rounded to whole ns: allow the last new frame to overshoot by 1 ns.
    count = int(np.floor((span_ns + 1) / period_ns)) + 1
    return int(timestamp_ns[0]) + np.round(np.arange(count) * period_ns).astype(np.int64)


def resample_motion(motion: Motion, fps: float) -> Motion:
    """`motion` at `fps`. Contacts take the value of the nearest source frame."""
    source_ns = motion.timestamp_ns
    target_ns = resample_timestamps(source_ns, fps)
    if len(motion) == 1:
        return motion
    lower = np.clip(np.searchsorted(source_ns, target_ns, "right") - 1, 0, len(motion) - 2)
    upper = lower + 1
    weight = (target_ns - source_ns[lower]) / (source_ns[upper] - source_ns[lower])
    weight = np.clip(weight, 0.0, 1.0)  # (T_new,)

    def lerp(x: np.ndarray) -> np.ndarray:
        w = weight.reshape(-1, *([1] * (x.ndim - 1)))
        return (1 - w) * x[lower].astype(np.float64) + w * x[upper].astype(np.float64)

    num_joints = motion.joint_orientation.shape[1]
    joint_weight = np.broadcast_to(weight[:, None], (len(target_ns), num_joints))
    return Motion(
        timestamp_ns=target_ns,
        cpf_translation=lerp(motion.cpf_translation),
        cpf_orientation=slerp_matrix(
            motion.cpf_orientation[lower], motion.cpf_orientation[upper], weight
        ),
        joint_translation=lerp(motion.joint_translation),
        joint_orientation=slerp_matrix(
            motion.joint_orientation[lower], motion.joint_orientation[upper], joint_weight
        ),
        contact=np.where(weight[:, None] < 0.5, motion.contact[lower], motion.contact[upper]),
    )
