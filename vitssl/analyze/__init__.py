"""``vitssl analyze``: the ViT paper's section 4.5 figures (and training curves) from a checkpoint.

One module per job: :mod:`~vitssl.analyze.attention` recomputes attention
weights with explicit maths, :mod:`~vitssl.analyze.distance`,
:mod:`~vitssl.analyze.rollout`, :mod:`~vitssl.analyze.position` and
:mod:`~vitssl.analyze.filters` turn weights into the numbers behind each
figure, :mod:`~vitssl.analyze.figures` draws them, :mod:`~vitssl.analyze.source`
loads what to analyse and :mod:`~vitssl.analyze.command` ties it together.
"""

from vitssl.analyze.attention import attention_maps, iter_attention
from vitssl.analyze.distance import mean_attention_distance, patch_distances
from vitssl.analyze.filters import filter_components
from vitssl.analyze.position import position_similarity
from vitssl.analyze.rollout import attention_rollout, rollout_map

__all__ = ["attention_maps", "attention_rollout", "filter_components", "iter_attention",
           "mean_attention_distance", "patch_distances", "position_similarity", "rollout_map"]
