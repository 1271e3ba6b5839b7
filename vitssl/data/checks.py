"""What a run's data configuration must satisfy, checked before anything is built."""

from __future__ import annotations

from typing import Any

from vitssl.config import DataConfig
from vitssl.errors import VitsslError


def check_num_workers(value: Any) -> None:
    """Refuse a ``data.num_workers`` that is neither ``"auto"`` nor a count >= 0."""
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool)
                           and value >= 0):
        return
    raise VitsslError(f"data.num_workers must be 'auto' or a whole number >= 0 (0 loads in "
                      f"the main process), got {value!r}")


def validate_data_config(dc: DataConfig) -> None:
    """Refuse, in one line, data settings no pipeline can use.

    Augmentation keys still unset (``None``, before
    :func:`~vitssl.data.augment.resolve_augmentation`) are not checked.
    """
    check_num_workers(dc.num_workers)
    if dc.crop_scale is not None:
        lo, hi = dc.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise VitsslError(f"data.crop_scale must satisfy 0 < low <= high <= 1, "
                              f"got {[lo, hi]}")
    if dc.crop_ratio is not None:
        lo, hi = dc.crop_ratio
        if not 0.0 < lo <= hi:
            raise VitsslError(f"data.crop_ratio must satisfy 0 < low <= high, got {[lo, hi]}")
    if dc.translate is not None and not 0.0 <= dc.translate < 1.0:
        raise VitsslError(f"data.translate must lie in [0, 1), got {dc.translate}")
    if not isinstance(dc.options, dict):
        raise VitsslError(f"data.options must be a mapping of option names to values, "
                          f"got {dc.options!r}")
