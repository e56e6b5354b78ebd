"""MAGPO for TorchRL: loss modules (and, with the BenchMARL work, guider policies and envs).

Imports torch, tensordict, torchrl and :mod:`kernels`; never BenchMARL or Hydra.
"""

from magpo.adaptive import DeltaSchedule
from magpo.losses import GuiderClipLoss, LearnerKLPPOLoss, LossOptions, MAGPOLoss, NonFiniteLossError

__all__ = ["DeltaSchedule", "GuiderClipLoss", "LearnerKLPPOLoss", "LossOptions", "MAGPOLoss", "NonFiniteLossError"]
