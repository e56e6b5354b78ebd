"""Test-wide setup. Without a CUDA device the Triton kernels run in Triton's interpreter, which
reads TRITON_INTERPRET when a kernel is decorated, so it is set here, before any test imports
kernels' Triton modules. With a GPU the same tests run the compiled kernels."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Libraries that add a logging handler on import keep the sys.stderr of that moment. Imported first
# inside a test, that is the test's captured stream, closed after it, and every later record
# (Hydra's launchers, in other tests) fails with "I/O operation on closed file". Imported here,
# they keep the session's stream. (ray comes in with Hydra's ray launcher plugin, absl with
# rliable, when installed.)
import tensordict  # noqa: E402, F401
import torchrl  # noqa: E402, F401

for optional in ("ray", "absl.logging"):
    try:
        __import__(optional)
    except ImportError:
        pass
