"""``vitssl analyze``: the ViT paper's section 4.5 figures (and training curves) from a
checkpoint; :mod:`~vitssl.analyze.command` ties the modules together."""
