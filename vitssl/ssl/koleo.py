"""KoLeo regulariser (Sablayrolles et al. 2019, "Spreading vectors for similarity
search"; used on the student's class token in DINOv2, Oquab et al. 2023).

The Kozachenko–Leonenko differential-entropy estimator, up to constants: for
L2-normalised features ``x_i`` and the distance ``d_i`` from each to its
nearest neighbour in the batch, ``loss = -mean_i log(d_i + eps)``. Minimising
it spreads the batch over the sphere, so features cannot all collapse to one
point. Computed per process on the local batch, as DINOv2 does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``-mean log(nearest-neighbour distance)`` of the L2-normalised rows of (B, D)."""
    if features.shape[0] < 2:
        return features.new_zeros(())
    x = F.normalize(features.float(), dim=-1, eps=eps)
    with torch.no_grad():  # the neighbour's index: argmax of cosine, self excluded
        sims = x @ x.T
        sims.fill_diagonal_(-2.0)
        nearest = sims.argmax(dim=1)
    distances = (x - x[nearest]).norm(dim=-1)
    return -(distances + eps).log().mean()
