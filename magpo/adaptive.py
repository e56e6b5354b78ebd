"""Adaptive delta (``delta: auto``): the paper's open question of how tight the guider/learner
bound should be, answered the way adaptive-KL PPO answers it for its penalty.

After each training iteration the observed imitation gap, the mean KL(guider || learner), is
compared with a target. Above 1.5 x target the bound tightens, ``delta - 1`` is divided by
``factor``; below target / 1.5 it loosens, ``delta - 1`` is multiplied by ``factor``. Working on
``delta - 1`` keeps delta > 1 (the bound's meaning) at any number of steps; ``low``/``high`` bound it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class DeltaSchedule:
    """The rule's settings, validated at construction (messages start with the field).

    Args:
        target_kl: the wanted mean KL(guider || learner) per iteration, > 0.
        low, high: bounds of delta, 1 < low < high < inf.
        start: delta of the first iteration, within the bounds; None: 1.5 (the authors'
            default) moved into the bounds.
        factor: multiplicative step of ``delta - 1``, > 1.
    """

    target_kl: float = 0.01
    low: float = 1.1
    high: float = 3.0
    start: float | None = None
    factor: float = 1.5

    def __post_init__(self):
        def number(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        if not (number(self.target_kl) and self.target_kl > 0):
            raise ValueError(f"delta_target_kl must be a finite number > 0, got {self.target_kl!r}")
        if not (number(self.low) and number(self.high) and 1 < self.low < self.high):
            raise ValueError(f"delta_bounds must be [low, high] with 1 < low < high < inf, got {[self.low, self.high]!r}")
        if self.start is None:
            object.__setattr__(self, "start", min(max(1.5, self.low), self.high))
        if not (number(self.start) and self.low <= self.start <= self.high):
            raise ValueError(f"delta start must be within delta_bounds {[self.low, self.high]}, got {self.start!r}")
        if not (number(self.factor) and self.factor > 1):
            raise ValueError(f"delta factor must be > 1, got {self.factor!r}")

    def next_delta(self, delta: float, observed_kl: float) -> float:
        """The delta of the next iteration, given this iteration's delta and mean KL."""
        if observed_kl > 1.5 * self.target_kl:
            delta = 1 + (delta - 1) / self.factor
        elif observed_kl < self.target_kl / 1.5:
            delta = 1 + (delta - 1) * self.factor
        return min(max(delta, self.low), self.high)
