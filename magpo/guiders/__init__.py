"""Centralized auto-regressive guiders for MAGPO, as TorchRL modules.

A guider maps every agent's observation (and the task's global state, when there is one) plus
the actions of the agents before it in the execution order to that agent's action
distribution parameters. Three cores, each built on a :class:`GuiderSpec`:

* :class:`TransformerGuider` (``transformer``): the paper's MAT-style network, optionally with
  memory over the episode (``transformer.py``; the retention memory in ``retention.py``);
* :class:`AnchoredGuider` (``anchored``, the default) and :class:`ResidualGuider`
  (``residual``): the learner's output (live, or a trainable copy) plus a zero-initialised
  correction (``corrected.py``).

Each core runs teacher-forced in the loss and sequentially in collection (``sampling.py``);
:func:`make_guider` builds a core and both policies from a group's specs (``factory.py``).
Shared constants and the core's interface are in ``common.py``.
"""

from magpo.guiders.common import (
    AGENT_ORDERS,
    EPISODE_START_KEY,
    GUIDER_KINDS,
    GUIDER_MEMORIES,
    GuiderCore,
    GuiderSpec,
    positions_of,
)
from magpo.guiders.corrected import AnchoredGuider, CorrectedGuider, ResidualGuider
from magpo.guiders.factory import make_guider, make_guider_policies, memory_entry
from magpo.guiders.sampling import (
    ActionDraw,
    GumbelMaxDraw,
    NormalDraw,
    SequentialGuiderSampler,
    TeacherForcedGuider,
)
from magpo.guiders.retention import MultiScaleRetention
from magpo.guiders.transformer import TransformerGuider

__all__ = [
    "AGENT_ORDERS", "EPISODE_START_KEY", "GUIDER_KINDS", "GUIDER_MEMORIES", "ActionDraw", "AnchoredGuider",
    "CorrectedGuider", "GuiderCore", "GuiderSpec", "GumbelMaxDraw", "NormalDraw", "ResidualGuider",
    "MultiScaleRetention", "SequentialGuiderSampler", "TeacherForcedGuider", "TransformerGuider", "make_guider",
    "make_guider_policies", "memory_entry", "positions_of",
]
