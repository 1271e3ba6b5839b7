"""``attention(q, k, v)``: one entry point over the Triton kernel, torch SDPA and plain math."""

from vitssl.kernels.dispatch import BACKENDS, attention

__all__ = ["BACKENDS", "attention"]
