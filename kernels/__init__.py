"""MAGPO loss kernels: the loss contract, its PyTorch reference and its fused Triton backend.

Pure tensor functions: imports torch (and triton, lazily) only; knows nothing of TensorDicts,
TorchRL or BenchMARL.

    >>> import torch, magpo_kernels
    >>> logits = torch.randn(8, 3, 5)  # [time, agents, actions]
    >>> terms = magpo_kernels.magpo_loss_categorical(
    ...     logits, logits + 0.1, torch.randint(5, (8, 3)), torch.full((8, 3), -1.6), torch.randn(8, 3),
    ...     magpo_kernels.LossOptions(delta=1.5, clip_epsilon=0.2, aux_coef=1.0))
    >>> terms.loss_guider.shape
    torch.Size([])
"""

from __future__ import annotations

from magpo_kernels.api import magpo_loss_categorical, magpo_loss_normal, triton_available
from magpo_kernels.options import BACKENDS, LEARNER_KL_DIRECTIONS, LossOptions
from magpo_kernels.reference import MAGPOLossTerms

__all__ = [
    "BACKENDS",
    "LEARNER_KL_DIRECTIONS",
    "LossOptions",
    "MAGPOLossTerms",
    "magpo_loss_categorical",
    "magpo_loss_normal",
    "triton_available",
]
