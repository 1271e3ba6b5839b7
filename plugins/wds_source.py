"""``wds:URLS``: webdataset tar shards, streamed.

URLS, as it is (no ``:SPLIT``): a brace pattern (``DIR/shard-{000000..000127}.tar``),
patterns joined by ``::``, paths, ``file:``, ``pipe:CMD`` or http(s) URLs.
Labelled when the first readable sample has a ``cls`` member;
the class count is unknown without reading every shard. ``data.options``:
``shuffle_buffer`` (samples held to shuffle, default 1000; 0 or 1: none) and
``resampled`` (draw shards with replacement; default: when training on more
than one rank), ``layout`` (of ``npy`` members: auto, chw or hwc).
See :mod:`vitssl.data.wds` and :mod:`vitssl.data.wds_stream`.
"""

from collections.abc import Mapping
from typing import Any

import vitssl
from vitssl.data.bands import RGB, ImageFormat, file_format
from vitssl.data.source import Source, StreamRequest, check_options
from vitssl.data.streams import StreamBatches, open_stream
from vitssl.data.wds import IMAGE_KEYS, expand_urls, first_sample, is_labelled, readable_samples
from vitssl.errors import VitsslError


def _options(options: Mapping[str, Any]) -> dict[str, Any]:
    out = check_options("wds", options, ("shuffle_buffer", "resampled", "layout"))
    buffer, resampled = out.get("shuffle_buffer", 0), out.get("resampled")
    if type(buffer) is not int or buffer < 0 or resampled not in (None, True, False):
        raise VitsslError(f"wds: data.options.shuffle_buffer must be a whole number >= 0 and "
                          f"resampled true, false or null; got {out}")
    return out


class WdsSource(Source):
    """Webdataset tar shards, streamed: wds:'DIR/shard-{000000..000127}.tar'."""

    example = "wds:'shards-{000..009}.tar'"
    streams = True

    def parse(self, rest: str) -> tuple[str, str | None]:
        return rest, None

    def info(self, target: str, split: str, options: Mapping[str, Any]) -> tuple[bool, int | None]:
        _options(options)
        return is_labelled(expand_urls(target)), None

    def image_format(self, target: str, split: str, options: Mapping[str, Any]) -> ImageFormat:
        """What the first readable sample's image holds."""
        sample = first_sample(expand_urls(target))
        ext = next((k for k in IMAGE_KEYS if k in sample), None)
        if ext is None:
            return RGB  # the stream reports the sample when it reads it
        return file_format(sample[ext], f"{sample['__key__']}.{ext}",
                           _options(options).get("layout", "auto"))

    def stream(self, target: str, request: StreamRequest) -> StreamBatches:
        return open_stream(target, request, **_options(request.data.options))

    def samples(self, target: str, skips):
        return readable_samples(target, skips)


@vitssl.hookimpl
def register_sources(register):
    register("wds", WdsSource)
