"""The ``patch`` stem: the paper's linear projection of non-overlapping P×P patches."""

import vitssl
from vitssl.models.patch_embed import PatchEmbed


@vitssl.hookimpl
def register_stems(register):
    register("patch", PatchEmbed)
