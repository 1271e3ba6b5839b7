"""Skipping unreadable samples: counted and logged, or fatal with ``data.on_error=raise``."""

from __future__ import annotations

import logging

from vitssl.errors import VitsslError

log = logging.getLogger("vitssl.data")


class SkipLog:
    """Counts and logs skipped samples, or raises when ``on_error == "raise"``.

    With ``carry`` the messages are kept in ``messages`` instead: a batch built
    in a DataLoader worker carries them (``"_skip_messages"``) to the main
    process, where :func:`~vitssl.data.batches.counted` logs them.
    """

    def __init__(self, on_error: str = "skip", carry: bool = False) -> None:
        if on_error not in ("skip", "raise"):
            raise VitsslError(f"data.on_error must be 'skip' or 'raise', got '{on_error}'")
        self.raise_errors = on_error == "raise"
        self.count = 0
        self.messages: list[str] | None = [] if carry else None

    def skip(self, message: str) -> None:
        if self.raise_errors:
            raise VitsslError(f"{message} (set data.on_error=skip to skip such samples)")
        self.count += 1
        if self.messages is not None:
            self.messages.append(message)
        else:
            log.warning("skipping sample: %s", message)

    def take(self) -> int:
        """The count since the last call."""
        count, self.count = self.count, 0
        return count
