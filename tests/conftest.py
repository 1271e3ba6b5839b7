"""Test setup: Triton kernels under the interpreter when there is no GPU; one CPU thread.

The test models are tiny: on a small CPU one intra-op thread is faster than
several, and the interpreter's tile matmuls only thrash with threaded BLAS.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy is first imported

import torch  # noqa: E402

if not torch.cuda.is_available():
    # Must be set before triton is first imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(1)
