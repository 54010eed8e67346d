"""World-frame motion arrays of one clip or stitched sequence, and the features computed from them.

Pure numpy: no file I/O here, so every executor (Dask worker, plain loop, test) can run it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from shared.features import sequence_features


@dataclass(frozen=True)
class Motion:
    """Per-frame arrays of one clip or sequence; time on axis 0, all of length T."""

    timestamp_ns: np.ndarray  # (T,) int64
    cpf_translation: np.ndarray  # (T, 3) t_world_head, metres
    cpf_orientation: np.ndarray  # (T, 3, 3) R_world_head
    joint_translation: np.ndarray  # (T, 23, 3) p_world_joint, metres
    joint_orientation: np.ndarray  # (T, 23, 3, 3) R_world_joint
    contact: np.ndarray  # (T, 4) foot contacts

    def __len__(self) -> int:
        return int(self.timestamp_ns.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        """Field name -> array, in declaration order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def slice(self, start: int, stop: int) -> Motion:
        """Frames `[start, stop)`."""
        return Motion(**{name: a[start:stop] for name, a in self.arrays().items()})


MOTION_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Motion))


def concatenate(parts: Sequence[Motion]) -> Motion:
    """Parts joined along time, in the given order."""
    if not parts:
        raise ValueError("cannot concatenate zero motion parts")
    return Motion(
        **{name: np.concatenate([getattr(p, name) for p in parts]) for name in MOTION_FIELDS}
    )


def motion_features(motion: Motion) -> np.ndarray:
    """(T, 294) float32 features of one whole sequence, computed in float64.

    Velocities are first differences along the sequence, so call this on stitched
    sequences, never clip by clip: clip seams would get zero velocities.
    """
    return sequence_features(
        motion.cpf_translation,
        motion.cpf_orientation,
        motion.joint_translation,
        motion.joint_orientation,
    )
