"""The MAGPO loss hyperparameters as one validated object, below the math that reads them
(:mod:`magpo_kernels.reference`) and the contract that dispatches them (:mod:`magpo_kernels.api`)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

BACKENDS = ("auto", "reference", "triton")
LEARNER_KL_DIRECTIONS = ("forward", "reverse")


@dataclass(frozen=True)
class LossOptions:
    """The MAGPO loss hyperparameters, validated once on construction and carried unchanged from
    the configuration to the kernel. Every default of the package lives here.

    Attributes:
        delta: guider/learner ratio bound, > 1; ``float("inf")`` switches off the double clip
            and the mask (the CTDS guider).
        clip_epsilon: PPO clip, in (0, 1).
        aux_coef: lambda, weight of the learner's PPO term, finite and >= 0 (0: pure
            distillation, the CTDS learner).
        learner_kl: ``"forward"`` = KL(guider || learner) (the authors' code), ``"reverse"`` =
            KL(learner || guider) (paper Eq. 10).
        backend: ``"auto"`` (Triton on CUDA tensors when available, else the reference),
            ``"reference"`` or ``"triton"``.

    Invalid values raise TypeError/ValueError whose message starts with the field's name.
    """

    delta: float = 1.5
    clip_epsilon: float = 0.2
    aux_coef: float = 1.0
    learner_kl: str = "forward"
    backend: str = "auto"

    def __post_init__(self):
        def real(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
                raise TypeError(f"{name} must be a real number, got {value!r}")
            object.__setattr__(self, name, float(value))  # frozen: plain floats from here on
            return float(value)

        if not real("delta") > 1.0:
            raise ValueError(f"delta must be > 1 (inf disables the double clip), got {self.delta}")
        if not 0.0 < real("clip_epsilon") < 1.0:
            raise ValueError(f"clip_epsilon must be in (0, 1), got {self.clip_epsilon}")
        aux = real("aux_coef")
        if not (aux >= 0.0 and math.isfinite(aux)):
            raise ValueError(f"aux_coef must be finite and >= 0, got {self.aux_coef}")
        if self.learner_kl not in LEARNER_KL_DIRECTIONS:
            raise ValueError(f"learner_kl must be one of {LEARNER_KL_DIRECTIONS}, got {self.learner_kl!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
