"""``vtab1k:PATH/TASK[:classes=N][:SPLIT]``: one task in the VTAB-1k folder layout.

``data.options``: ``num_classes`` (a custom task's class count, as ``:classes=N``).
"""

from collections.abc import Mapping
from typing import Any

import vitssl
from vitssl.data.source import Source, check_options
from vitssl.data.vtab1k import Vtab1kTask


class Vtab1kSource(Source):
    """A VTAB-1k task folder (train800/val200/train800val200/test lists): vtab1k:PATH/TASK."""

    example = "vtab1k:PATH/TASK"

    def open(self, target: str, split: str, options: Mapping[str, Any]):
        return Vtab1kTask(target, split, **check_options("vtab1k", options, ("num_classes",)))

    def native_splits(self, target: str) -> bool:
        return True  # train800, val200, train800val200 and test are its list files


@vitssl.hookimpl
def register_sources(register):
    register("vtab1k", Vtab1kSource)
