"""``builtin:NAME[:SPLIT]``: a dataset registered through ``register_datasets``.

``data.options`` are the dataset factory's keyword options
(``builtin:photos`` with ``{"size": 64}``, ``builtin:fashion-mnist`` with
``{"root": DIR}``). A factory's class attributes ``augmentation`` and
``num_classes`` say what the dataset's labels survive and its class count
without building it.
"""

from collections.abc import Mapping
from typing import Any

import vitssl
from vitssl.data.source import IMAGENET_STYLE, Augmentation, Source
from vitssl.errors import VitsslError
from vitssl.plugins import get_registry

_UNSET = object()


class BuiltinSource(Source):
    """Embedded or installed datasets by name (no download): builtin:NAME."""

    example = "builtin:NAME"
    in_memory = True

    def augmentation(self, target: str) -> Augmentation:
        own = getattr(get_registry().get("datasets", target), "augmentation", None)
        return own if isinstance(own, Augmentation) else IMAGENET_STYLE

    def info(self, target: str, split: str, options: Mapping[str, Any]) -> tuple[bool, int | None]:
        classes = getattr(get_registry().get("datasets", target), "num_classes", _UNSET)
        if classes is _UNSET or not (classes is None or isinstance(classes, int)):
            return super().info(target, split, options)
        return bool(classes), classes

    def native_splits(self, target: str) -> bool:
        try:
            self.open(target, "val200", {})
        except VitsslError:
            return False
        return True

    def open(self, target: str, split: str, options: Mapping[str, Any]):
        factory = get_registry().get("datasets", target)
        try:
            return factory(split=split, **options)
        except TypeError as exc:
            if not options:
                raise
            raise VitsslError(f"builtin:{target}: bad options {dict(options)}: {exc}") from None


@vitssl.hookimpl
def register_sources(register):
    register("builtin", BuiltinSource)
