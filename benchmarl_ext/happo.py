"""HAPPO (Kuba et al., ICLR 2022) as a BenchMARL algorithm: MAPPO's actor, critic and GAE, with the
agents of a group updated one after another in a fresh random order each iteration; each agent's
clipped PPO objective is weighted by the product of the new/old ratios of the agents updated
before it (:mod:`magpo.sequential`, :mod:`benchmarl_ext.agent_by_agent`).

Heterogeneous agents: one actor per agent (``experiment.share_policy_params=false``, which the
``happo`` preset sets; ``true`` is refused). The critic is MAPPO's and takes MAPPO's epochs, in
the first agent's turn. As BenchMARL's MAPPO, the advantage is not normalized.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Type

from benchmarl.algorithms.common import Algorithm
from benchmarl.algorithms.mappo import Mappo, MappoConfig
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule
from torchrl.objectives import ValueEstimators

from benchmarl_ext.agent_by_agent import (
    AgentByAgentUpdate,
    refuse_shared_actors,
    stored_action_log_prob,
    with_preceding_ratio,
)
from benchmarl_ext.checks import check_ppo_fields
from magpo.sequential import AgentByAgentPPOLoss


class Happo(Mappo):
    """HAPPO: agent-by-agent PPO with the preceding agents' ratio product (HAPPO's M factor)."""

    correction = "happo"

    def __init__(self, agent_order: str = "random", preceding_clip: float = 0.1, clip_floor: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.agent_order, self.preceding_clip, self.clip_floor = agent_order, preceding_clip, clip_floor
        self._updates: dict[str, AgentByAgentUpdate] = {}

    def _get_loss(self, group: str, policy_for_loss: TensorDictModule, continuous: bool):
        loss = AgentByAgentPPOLoss(
            policy_for_loss, self.get_critic(group), correction=self.correction, clip_epsilon=self.clip_epsilon,
            preceding_clip=self.preceding_clip, clip_floor=self.clip_floor, entropy_coeff=self.entropy_coef,
            critic_coeff=self.critic_coef, loss_critic_type=self.loss_critic_type,
        )
        loss.set_keys(
            reward=(group, "reward"), action=(group, "action"), done=(group, "done"),
            terminated=(group, "terminated"), advantage=(group, "advantage"), value_target=(group, "value_target"),
            value=(group, "state_value"), sample_log_prob=(group, "log_prob"),
        )
        loss.make_value_estimator(ValueEstimators.GAE, gamma=self.experiment_config.gamma, lmbda=self.lmbda)
        return loss, False

    def process_batch(self, group: str, batch: TensorDictBase) -> TensorDictBase:
        return with_preceding_ratio(super().process_batch(group, batch))

    def agent_by_agent_update(self, group: str) -> AgentByAgentUpdate:
        """The group's schedule (:class:`benchmarl_ext.agent_by_agent.AgentByAgentUpdate`)."""
        if group not in self._updates:
            loss = self.get_loss_and_updater(group)[0]

            def on_turn(agent: int, position: int) -> None:
                loss.agent, loss.position = agent, position

            self._updates[group] = AgentByAgentUpdate(
                len(self.group_map[group]), self.agent_order, stored_action_log_prob(loss, "actor", group),
                per_agent_loss="loss_objective", first_turn_only=("loss_critic",), on_turn=on_turn,
                advantage_key=(group, "advantage"),
                preceding_clip=self.preceding_clip if self.correction == "a2po" else None,
            )
        return self._updates[group]

    def process_loss_vals(self, group: str, loss_vals: TensorDictBase) -> TensorDictBase:
        loss_vals = super().process_loss_vals(group, loss_vals)  # the entropy joins the objective
        for name in set(loss_vals.keys()) - set(self.agent_by_agent_update(group).loss_names_to_step(loss_vals.keys())):
            del loss_vals[name]
        return loss_vals


@dataclass
class HappoConfig(MappoConfig):
    """Configuration of :class:`Happo`: MAPPO's fields (conf/algorithm/happo.yaml documents them)."""

    def __post_init__(self):
        check_ppo_fields(self)

    def check_experiment(self, config) -> None:
        refuse_shared_actors(config, "algorithm=happo")

    @staticmethod
    def associated_class() -> Type[Algorithm]:
        return Happo
