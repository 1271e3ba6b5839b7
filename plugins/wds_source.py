"""``wds:URLS``: webdataset tar shards, streamed (brace patterns, ``::``, pipes, URLs).

The text after ``wds:`` is the shard pattern as it is (URLs hold colons, so no
``:SPLIT``). Labelled when the first readable sample has a ``cls`` member;
the class count is unknown without reading every shard. Takes no
``data.options``; see :mod:`vitssl.data.wds` for the stream itself.
"""

from collections.abc import Mapping
from typing import Any

import vitssl
from vitssl.data.source import Source, check_options
from vitssl.data.streams import open_stream
from vitssl.data.wds import expand_urls, is_labelled
from vitssl.errors import VitsslError


class WdsSource(Source):
    """Webdataset tar shards, streamed: wds:'DIR/shard-{000000..000127}.tar'."""

    example = "wds:'shards-{000..009}.tar'"
    streams = True

    def parse(self, rest: str) -> tuple[str, str | None]:
        return rest, None

    def info(self, target: str, split: str, options: Mapping[str, Any]) -> tuple[bool, int | None]:
        check_options("wds", options)
        return is_labelled(expand_urls(target)), None

    def open(self, target: str, split: str, options: Mapping[str, Any]):
        raise VitsslError(f"'wds:{target}' is a stream of webdataset shards, not a map-style "
                          f"dataset; use it for pretraining, or use builtin:, idx:, folder: or "
                          f"vtab1k: here")

    def stream(self, target: str, **request: Any):
        check_options("wds", request["data"].options)
        return open_stream(target, **request)


@vitssl.hookimpl
def register_sources(register):
    register("wds", WdsSource)
