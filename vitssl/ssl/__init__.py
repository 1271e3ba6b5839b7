"""What objectives share; with :mod:`vitssl.objective`, all an objective author reads.

- :mod:`~vitssl.ssl.batch`: per-sample seeds and uniform draws (host-side, no device
  sync), the run's progress, views by name, the square-size refusal, ``patchify``;
- :mod:`~vitssl.ssl.masking`: MAE's random masking, BEiT's block masks, iBOT's ratios;
- :mod:`~vitssl.ssl.views`: DINO's multi-crop and BYOL's two views, ``data_allows``;
- :mod:`~vitssl.ssl.ema`: an EMA teacher (``teacher_copy``, ``ema_update``) and its
  momentum schedules (cosine, run-scaled by update mass);
- :mod:`~vitssl.ssl.distributed`: ``is_distributed``, a differentiable ``global_sum``,
  ``all_reduce_``, ``gather_rows`` (no-ops in one process);
- :mod:`~vitssl.ssl.heads`: projection MLPs with a global-batch BatchNorm;
  :mod:`~vitssl.ssl.distillation`: DINO's head and cross-view loss;
  :mod:`~vitssl.ssl.centering`: Sinkhorn–Knopp; :mod:`~vitssl.ssl.koleo`: KoLeo;
- :mod:`~vitssl.ssl.self_distillation`: the student/teacher base of ``dino`` and ``ibot``.

The transformer block and the fixed sin-cos table a decoder needs are re-exported here.
"""

from vitssl.models.layers import Block
from vitssl.models.pos_embed import sincos_pos_embed

__all__ = ["Block", "sincos_pos_embed"]
