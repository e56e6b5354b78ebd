"""Test-wide setup. Without a CUDA device the Triton kernels run in Triton's interpreter, which
reads TRITON_INTERPRET when a kernel is decorated, so it is set here, before any test imports
kernels' Triton modules. With a GPU the same tests run the compiled kernels."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
