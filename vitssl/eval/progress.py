"""Progress for long evaluation work: a tqdm bar on a terminal, occasional log lines otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], total: int, desc: str, enabled: bool = True,
             every_s: float = 10.0) -> Iterator[T]:
    """Yield ``items``; show a bar when stderr is a TTY, else a line every ``every_s`` seconds."""
    if not enabled:
        yield from items
        return
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=desc, leave=False, dynamic_ncols=True)
        return
    start = last = time.monotonic()
    for done, item in enumerate(items, start=1):
        yield item
        now = time.monotonic()
        if now - last >= every_s and done < total:
            print(f"{desc}: {done}/{total} ({now - start:.0f}s)", file=sys.stderr, flush=True)
            last = now
