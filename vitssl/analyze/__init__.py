"""``vitssl analyze``: the ViT paper's section 4.5 figures (and training curves) from a checkpoint.

:mod:`~vitssl.analyze.attention` recomputes attention weights with explicit maths; ``distance``,
``rollout``, ``position`` and ``filters`` turn weights into each figure's numbers, ``figures``
draws them, ``source`` loads what to analyse and ``command`` ties it together.
"""
