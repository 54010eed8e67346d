"""Train/val/test split by participant: no person is in two splits.

Participants are ordered by sha256(f"{seed}:{participant}") (a seeded shuffle that does not
depend on Python's RNG or on which other participants exist), then the first n_train go to
train, the next n_val to val, the rest to test. Counts are the largest-remainder apportionment
of the fractions; with three or more participants every split with a positive fraction gets at
least one.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping

from shared.store import SPLITS

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)


def parse_fractions(text: str) -> tuple[float, float, float]:
    """`"0.8,0.1,0.1"` -> (0.8, 0.1, 0.1), checked."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(
            f"split must be three numbers like '0.8,0.1,0.1', found {text!r}"
        ) from None
    if len(values) != len(SPLITS):
        raise ValueError(f"split needs {len(SPLITS)} fractions {SPLITS}, found {text!r}")
    check_fractions(values)
    return values  # type: ignore[return-value]


def check_fractions(fractions: tuple[float, ...]) -> None:
    if any(not math.isfinite(f) or f < 0 for f in fractions) or fractions[0] <= 0:
        raise ValueError(
            f"split fractions must be >= 0 with a positive train fraction, found {fractions}"
        )
    if abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, found {fractions} (sum {sum(fractions)})")


def split_counts(
    num_participants: int, fractions: tuple[float, float, float]
) -> tuple[int, int, int]:
    """Participants per split."""
    check_fractions(fractions)
    quotas = [f * num_participants for f in fractions]
    counts = [math.floor(q) for q in quotas]
    # Largest remainder; ties go to the earlier split (train first).
    order = sorted(range(3), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[: num_participants - sum(counts)]:
        counts[i] += 1
    if num_participants >= 3:
        for i in range(3):
            if fractions[i] > 0 and counts[i] == 0:
                donor = max(range(3), key=lambda j: (counts[j], -j))
                counts[donor] -= 1
                counts[i] += 1
    return counts[0], counts[1], counts[2]


def shuffle_key(participant: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{participant}".encode()).hexdigest()


def assign_splits(
    participants: Iterable[str], fractions: tuple[float, float, float], seed: int
) -> Mapping[str, str]:
    """participant -> split name."""
    unique = sorted(set(participants))
    ordered = sorted(unique, key=lambda p: (shuffle_key(p, seed), p))
    counts = split_counts(len(ordered), fractions)
    assignment, first = {}, 0
    for split, count in zip(SPLITS, counts, strict=True):
        for participant in ordered[first : first + count]:
            assignment[participant] = split
        first += count
    return dict(sorted(assignment.items()))
