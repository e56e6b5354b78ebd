"""MAT (Wen et al., 2022) as a BenchMARL algorithm: the centralized baseline of the MAGPO paper.

MAT is this package's transformer guider trained on its own: PPO (BenchMARL's ``ClipPPOLoss``
through ``Mappo``) on the auto-regressive joint policy, each agent's ratio taken under the stored
execution order, with MAPPO's centralized critic and GAE. No learner exists, so its evaluation is
centralized execution: every agent's action depends on every agent's observation and on the
actions of the agents before it. Its ``eval/...`` numbers are those of a policy that cannot be
deployed decentralized, which is what the paper's CTCE rows report; compare them with MAGPO's
learner knowing that.
"""

from __future__ import annotations

import logging
from dataclasses import MISSING, dataclass
from typing import Type

from benchmarl.algorithms.common import Algorithm
from benchmarl.algorithms.mappo import Mappo, MappoConfig
from benchmarl.models.common import ModelConfig
from tensordict.nn import TensorDictModule, TensorDictModuleBase

from benchmarl_ext.algorithm import guider_for_group
from benchmarl_ext.checks import check_ppo_fields
from magpo.guiders import AGENT_ORDERS

log = logging.getLogger(__name__)

CENTRALIZED_EXECUTION = (
    "mat: evaluation is centralized execution (each agent sees every agent's observation and the "
    "earlier agents' actions); eval/... numbers are not those of a decentralized policy"
)


class Mat(Mappo):
    """The auto-regressive transformer policy trained with PPO (the paper's MAT baseline).

    Args (besides MAPPO's): embed_dim, heads, layers (transformer size) and agent_order
    (``random`` or ``fixed``).
    """

    def __init__(self, embed_dim: int, heads: int, layers: int, agent_order: str, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim, self.heads, self.layers, self.agent_order = embed_dim, heads, layers, agent_order
        self._samplers: dict[str, TensorDictModuleBase] = {}
        log.warning(CENTRALIZED_EXECUTION)

    def _get_policy_for_loss(self, group: str, model_config: ModelConfig, continuous: bool) -> TensorDictModule:
        """The teacher-forced joint policy (its log-probs are ClipPPOLoss's); keeps the sampler."""
        _, for_loss, for_collection = guider_for_group(
            self, group, continuous, "transformer",
            width=self.embed_dim, heads=self.heads, layers=self.layers, agent_order=self.agent_order,
        )
        self._samplers[group] = for_collection
        return for_loss

    def _get_policy_for_collection(self, policy_for_loss: TensorDictModule, group: str, continuous: bool) -> TensorDictModule:
        """Agents act one after the other, as in training (collection and evaluation alike)."""
        return self._samplers[group]


@dataclass
class MatConfig(MappoConfig):
    """Configuration of :class:`Mat`; every field is documented in ``conf/algorithm/mat.yaml``."""

    # the values live in conf/algorithm/mat.yaml, as BenchMARL keeps them
    embed_dim: int = MISSING
    heads: int = MISSING
    layers: int = MISSING
    agent_order: str = MISSING

    def __post_init__(self):
        for name in ("embed_dim", "heads", "layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"algorithm.{name} must be an integer >= 1, got {value!r}")
        if self.embed_dim % self.heads:
            raise ValueError(f"algorithm.embed_dim ({self.embed_dim}) must be divisible by algorithm.heads ({self.heads})")
        served = [order for order in AGENT_ORDERS if order != "per_epoch"]
        if self.agent_order not in served:
            raise ValueError(f"algorithm.agent_order must be one of {served} for mat, got {self.agent_order!r}")
        check_ppo_fields(self)

    @staticmethod
    def associated_class() -> Type[Algorithm]:
        return Mat
