"""Label-free health of an encoder's features, and the held-out images they are measured on.

RankMe (Garrido et al., ICML 2023) is the effective rank of a batch of embeddings: the
exponential of the entropy of its normalised singular values. The spread is the mean
per-dimension standard deviation of the L2-normalised features (about 1/sqrt(D) when they
fill the sphere, 0 when every image maps to one point); ``feature_cos`` the mean cosine
similarity between different images.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from vitssl.config import Config, normalisation
from vitssl.data.batches import tail_size
from vitssl.data.source import DataSpec, StreamRequest, parse_spec
from vitssl.data.tasks import Transformed
from vitssl.data.transforms import eval_transform
from vitssl.errors import VitsslError

HELD_OUT_SPLITS = ("test", "val")  # tried in this order when the run trains on another
RANKME_EPS = 1e-7  # the paper's epsilon added to each normalised singular value

CHECKS_PER_RUN = 20  # monitor.every=null: about this many checks


def rankme(features: torch.Tensor) -> float:
    """The effective rank of ``features`` (N, D): exp(entropy of p), p_k = s_k / sum(s) + eps."""
    s = torch.linalg.svdvals(features.double())
    p = s / s.sum().clamp_min(1e-30) + RANKME_EPS
    return math.exp(float(-(p * p.log()).sum()))


def health(features: torch.Tensor) -> dict[str, float]:
    """RankMe of the centred features (and its ratio to min(N, D), its largest value), the
    spread and the mean cosine of the features as they are.

    Centred: a ViT's pooled features share a large offset (a cosine near 0.98 between random
    images at initialisation), which alone holds RankMe near 1 on healthy runs.
    """
    n, d = features.shape
    z = F.normalize(features.double(), dim=1)
    total = z.sum(0)
    rank = rankme(features - features.mean(0))
    return {"rankme": rank, "rankme_ratio": rank / min(n, d),
            "feature_std": float(z.std(dim=0).mean()),
            "feature_cos": float((total @ total - n) / max(1, n * (n - 1)))}


def held_out_split(cfg: Config) -> tuple[str, Dataset] | None:
    """(split, its dataset) of map-style pretraining data the held-out images come from: its
    test (or val) split when the run trains on another one; None for a stream or a single
    split."""
    spec = parse_spec(cfg.data.spec)
    if spec.source.streams:
        return None
    trained = spec.split or cfg.data.split
    for split in HELD_OUT_SPLITS:
        if split == trained:
            continue
        try:
            return split, spec.source.open(spec.target, split, cfg.data.options)
        except (VitsslError, OSError):
            continue
    return None


def monitor_every(cfg: Config) -> int:
    """Steps between health checks; 0 when the monitor is off (``monitor.every=null`` turns
    it off for runs under :data:`CHECKS_PER_RUN` steps: smoke tests)."""
    if not cfg.monitor.enabled:
        return 0
    return cfg.monitor.every or cfg.train.steps // CHECKS_PER_RUN


def tail_held_out(cfg: Config) -> int:
    """How many images at the end of the training split are kept out of training so the
    monitor can hold them out: ``monitor.images`` for map-style data with no other split."""
    mc = cfg.monitor
    if (not monitor_every(cfg) or parse_spec(cfg.data.spec).source.streams
            or held_out_split(cfg)):
        return 0
    return mc.images


def held_out_images(cfg: Config) -> tuple[TensorDataset, str]:
    """(images, labels) prepared without augmentation, and where they come from."""
    spec, count = parse_spec(cfg.data.spec), cfg.monitor.images
    (mean, std), size = normalisation(cfg.data), cfg.model.image_size
    if spec.source.streams:
        return _stream_head(cfg, spec, count), (f"the first {count} samples of {spec} (a "
                                                f"stream: they may also be trained on)")
    held_out = held_out_split(cfg)
    base = DataSpec(spec.kind, spec.target)
    if held_out is not None:
        split, dataset = held_out
        keep = np.sort(np.random.default_rng(0).permutation(len(dataset))[:count])
        where = f"{min(count, len(dataset))} images of {base}:{split} (never trained on)"
    else:
        dataset = spec.source.open(spec.target, spec.split or cfg.data.split, cfg.data.options)
        keep = np.arange(len(dataset) - tail_size(count, len(dataset)), len(dataset))
        where = f"the last {len(keep)} images of {spec}, kept out of training"
    items = Transformed(dataset, size, mean, std, cfg.data.channels)
    images, labels = zip(*(items[int(i)] for i in keep), strict=True)
    return TensorDataset(torch.stack(images), torch.tensor(labels)), where


def _stream_head(cfg: Config, spec: DataSpec, count: int) -> TensorDataset:
    """The first ``count`` samples of a stream, resized and centre-cropped."""
    request = StreamRequest(cfg.data, eval_transform(cfg.model.image_size,
                                                         channels=cfg.data.channels),
                            batch_size=count,
                            seed=cfg.train.seed, num_batches=1)
    batch = next(iter(spec.source.stream(spec.target, request)))
    labels = batch.get("label", torch.full((len(batch["image"]),), -1))
    return TensorDataset(batch["image"], labels)
