"""Encoder weights in other layouts: reading timm's and transformers' (``--init``, ``vitssl
eval``, ``vitssl analyze``) and writing transformers' and ONNX (``vitssl export``).

:func:`vitssl.weights.layouts.read_encoder` reads any accepted layout into a standalone
encoder; :func:`vitssl.weights.init.apply_init` starts a run's encoder from it.
"""
