"""Where a command writes, checked before it starts work: one line and nothing written.

Every output option of every command is listed in :data:`OUTPUTS` (tests walk the parser and
fail on one that is not), with what a directory already there must hold for the command to
write into it: its own earlier output, never someone's unrelated files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vitssl.errors import VitsslError


@dataclass(frozen=True)
class Output:
    """An output option: a directory the command owns (``owns`` tells an earlier output of
    the command apart from other files), or a file whose folder must be writable."""

    what: str
    owns: Callable[[Path], bool] | None = None  # None: the option names a file (or pattern)


def _is_run(path: Path) -> bool:
    return any((path / name).exists() for name in ("config.yaml", "metrics.jsonl",
                                                   "checkpoints"))


OUTPUTS: dict[tuple[str, str], Output] = {
    ("pretrain", "out"): Output("vitssl run", _is_run),
    ("export", "out"): Output("vitssl export", lambda p: (p / "config.json").is_file()),
    ("analyze", "out"): Output("vitssl analysis",  # its figures and analysis.json only
                               lambda p: all(c.suffix in (".png", ".json") for c in p.iterdir())),
    ("shard", "output"): Output("shard pattern"),
    ("vtab", "output"): Output("results file"),
}


def _writable_parent(path: Path, option: str) -> None:
    """Refuse ``path`` when a folder above it is a file or the nearest existing one is not
    writable (so it could not be created)."""
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise VitsslError(f"{option} '{path}' cannot be created: '{parent}' is a file")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise VitsslError(f"{option} '{path}' cannot be created: '{parent}' is not "
                                  f"writable")
            return


def check_output(command: str, option: str, value: str | None) -> None:
    """Refuse, in one line, an output path ``command`` could not write or must not write into."""
    spec = OUTPUTS.get((command, option))
    if value is None or spec is None:
        return
    path, flag = Path(value), f"--{option}"
    if spec.owns is None:  # a file, or a pattern of files, in a folder
        if path.is_dir():
            raise VitsslError(f"{flag} '{path}' is a directory; give the {spec.what} a file path")
        _writable_parent(path, flag)
        return
    if path.exists() and not path.is_dir():
        raise VitsslError(f"{flag} '{path}' is a file; give a directory")
    _writable_parent(path, flag)
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise VitsslError(f"{flag} '{path}' is not writable")
        if any(path.iterdir()) and not spec.owns(path):
            raise VitsslError(f"{flag} '{path}' is a non-empty directory that holds no "
                              f"{spec.what}; give a new or empty directory")
