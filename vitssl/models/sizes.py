"""Sizes given as one int or a (height, width) pair."""

from __future__ import annotations

from collections.abc import Sequence


def to_pair(x: int | Sequence[int]) -> tuple[int, int]:
    """``16`` -> ``(16, 16)``; ``(16, 24)`` or ``[16, 24]`` -> ``(16, 24)`` (as ints)."""
    return (int(x), int(x)) if isinstance(x, int) else (int(x[0]), int(x[1]))
