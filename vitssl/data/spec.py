"""Data specs, parsed in one place: ``KIND:ARGUMENT[:SPLIT]``."""

from __future__ import annotations

from dataclasses import dataclass

from vitssl.errors import VitsslError

KINDS = ("builtin", "folder", "wds", "vtab1k")
SPLITS = ("train", "val", "test", "train800", "val200", "train800val200")


@dataclass(frozen=True)
class DataSpec:
    """``kind`` is one of KINDS; ``target`` a dataset name, path or URL pattern."""

    kind: str
    target: str
    split: str | None = None

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}" + (f":{self.split}" if self.split else "")


def parse_spec(spec: str) -> DataSpec:
    """``"builtin:digits"``, ``"folder:/data/imgs"``, ``"vtab1k:/data/vtab-1k/dtd:test"``...

    A trailing ``:SPLIT`` (one of SPLITS) is split off for every kind but ``wds``,
    whose URLs may contain colons (``pipe:``, ``https:``).
    """
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in KINDS or not rest:
        raise VitsslError(f"bad data spec '{spec}': expected one of "
                          + ", ".join(f"{k}:..." for k in KINDS)
                          + " (e.g. builtin:digits, folder:PATH, wds:'shards-{000..009}.tar', "
                            "vtab1k:PATH/TASK)")
    split = None
    if kind != "wds":
        head, colon, tail = rest.rpartition(":")
        if colon and tail in SPLITS and head:
            rest, split = head, tail
    return DataSpec(kind, rest, split)
