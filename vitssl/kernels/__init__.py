"""``attention(q, k, v)``: one entry point over the Triton kernel, torch SDPA and plain math."""

from vitssl.kernels.dispatch import BACKENDS, AttentionDispatch, attention, check_backend

__all__ = ["BACKENDS", "AttentionDispatch", "attention", "check_backend"]
