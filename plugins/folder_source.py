"""``folder:PATH[:SPLIT]``: class-per-subfolder image trees, or flat unlabelled folders."""

from collections.abc import Mapping
from typing import Any

import vitssl
from vitssl.data.folder import ImageFolder, folder_info
from vitssl.data.source import Source, check_options


class FolderSource(Source):
    """Image files: PATH/<class>/*.jpg (labelled) or PATH/*.jpg (unlabelled)."""

    example = "folder:PATH"

    def info(self, target: str, split: str, options: Mapping[str, Any]) -> tuple[bool, int | None]:
        check_options("folder", options, ("layout",))
        return folder_info(target, split)

    def open(self, target: str, split: str, options: Mapping[str, Any]):
        layout = check_options("folder", options, ("layout",)).get("layout", "auto")
        return ImageFolder(target, split, layout)


@vitssl.hookimpl
def register_sources(register):
    register("folder", FolderSource)
