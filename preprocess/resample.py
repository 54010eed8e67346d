"""Motion at new frame times: slerp for rotations, linear for positions, nearest for contacts.

Pure numpy. One interpolation serves both uses: filling short holes at the source rate
(`preprocess.stitch` plans the times) and resampling to `--fps`, whose new frames are
`t0 + round(k * 1e9 / fps)` ns for every k that stays within the source's time span, so no
frame is extrapolated (beyond `RESAMPLE_SLACK_PERIODS` of a period: the exporter's clock steps
`int(1e9 / 30)` ns, 1/3 ns short of 30 fps, so an exact 30 or 15 fps grid runs past a long
source span by a few microseconds; that last frame takes the source's last pose).
"""

from __future__ import annotations

import numpy as np

from preprocess.motion import Motion
from shared.rotations import slerp_matrix

RESAMPLE_SLACK_PERIODS = 1e-3


def resample_timestamps(timestamp_ns: np.ndarray, fps: float) -> np.ndarray:
    """New frame times (int64 ns) at `fps` over the span of `timestamp_ns`."""
    if not fps > 0:
        raise ValueError(f"fps must be positive, found {fps}")
    period_ns = 1e9 / fps
    span_ns = int(timestamp_ns[-1]) - int(timestamp_ns[0])
    slack_ns = max(1.0, RESAMPLE_SLACK_PERIODS * period_ns)
    count = int(np.floor((span_ns + slack_ns) / period_ns)) + 1
    return int(timestamp_ns[0]) + np.round(np.arange(count) * period_ns).astype(np.int64)


def interpolate_motion(motion: Motion, target_ns: np.ndarray) -> Motion:
    """`motion` at the increasing times `target_ns` (within its span; outside, the end frames).

    Source frames whose time is asked for are returned exactly (as float64); frames in
    between are interpolated from their two neighbours in time.
    """
    source_ns = motion.timestamp_ns
    target_ns = np.asarray(target_ns, dtype=np.int64)
    if len(motion) == 1:
        return Motion(**{n: np.repeat(a, len(target_ns), 0) for n, a in motion.arrays().items()})
    lower = np.clip(np.searchsorted(source_ns, target_ns, "right") - 1, 0, len(motion) - 2)
    upper = lower + 1
    weight = (target_ns - source_ns[lower]) / (source_ns[upper] - source_ns[lower])
    weight = np.clip(weight, 0.0, 1.0)  # (T_new,)
    exact_lower, exact_upper = weight == 0.0, weight == 1.0

    def lerp(x: np.ndarray) -> np.ndarray:
        w = weight.reshape(-1, *([1] * (x.ndim - 1)))
        return (1 - w) * x[lower].astype(np.float64) + w * x[upper].astype(np.float64)

    def slerp(R: np.ndarray) -> np.ndarray:
        w = weight.reshape(-1, *([1] * (R.ndim - 3)))  # (T_new, 1...) over the batch dims
        out = slerp_matrix(R[lower], R[upper], np.broadcast_to(w, (len(w), *R.shape[1:-2])))
        # Slerp goes through quaternions: give the source frames back bit for bit.
        out[exact_lower] = R[lower[exact_lower]]
        out[exact_upper] = R[upper[exact_upper]]
        return out

    return Motion(
        timestamp_ns=target_ns,
        cpf_translation=lerp(motion.cpf_translation),
        cpf_orientation=slerp(motion.cpf_orientation),
        joint_translation=lerp(motion.joint_translation),
        joint_orientation=slerp(motion.joint_orientation),
        contact=np.where(weight[:, None] < 0.5, motion.contact[lower], motion.contact[upper]),
    )


def resample_motion(motion: Motion, fps: float) -> Motion:
    """`motion` at `fps` over its time span."""
    if len(motion) == 1:
        return motion
    return interpolate_motion(motion, resample_timestamps(motion.timestamp_ns, fps))
