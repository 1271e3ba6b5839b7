"""Developer tooling run as commands, never imported by the library at run time.

``python -m vitssl.tools.compile_check`` compiles the attention kernels for real GPUs.
"""
