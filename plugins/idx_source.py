"""``idx:PATH[:SPLIT]``: a folder of MNIST-family IDX files (splits ``train`` / ``test``).

Labelled and map-style; see :mod:`vitssl.data.idx` for the file names and
checks. ``data.options``: ``num_classes`` (default: one more than the largest
label). No augmentation by default: the family is mostly digits and letters,
which a mirror or a tight crop changes (``builtin:fashion-mnist`` declares its own).
"""

from collections.abc import Mapping
from typing import Any

import vitssl
from vitssl.data.idx import IdxImages
from vitssl.data.source import NONE, Augmentation, Source, check_options


class IdxSource(Source):
    """MNIST-family IDX files (train-images-idx3-ubyte[.gz], ...) in a folder: idx:PATH."""

    example = "idx:PATH"
    in_memory = True

    def augmentation(self, target: str) -> Augmentation:
        return NONE

    def open(self, target: str, split: str, options: Mapping[str, Any]):
        return IdxImages(target, split, **check_options("idx", options, ("num_classes",)))


@vitssl.hookimpl
def register_sources(register):
    register("idx", IdxSource)
