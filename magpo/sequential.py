"""Agent-by-agent (sequential) policy updates: HAPPO's and A2PO's per-agent PPO objective, and the
pieces a training loop needs to run agents one after another.

In a sequential update the agents of a group are updated one at a time, in an order drawn every
iteration; agent ``i_k`` (the ``k``-th in the order) sees the agents updated before it through the
*preceding ratio* of every sample, ``M = prod_{j before i_k} pi_j^new(a_j | o_j) / pi_j^old(a_j | o_j)``
(old: the policy when the iteration started). Its objective on the iteration's samples:

* HAPPO (Kuba et al., 2022): ``M * min(r A, clip(r, 1 +- eps) A)``, ``r = pi_i(a_i) / pi_i^old(a_i)``.
* A2PO (Wang et al., 2023, "Order Matters"): ``min(l A, clip(l, 1 +- eps_k) A)`` with
  ``l = r * clip(M, 1 +- preceding_clip)``: the preceding agents' product is clipped on its own
  and sits inside the trust region. ``eps_k = eps * (c + (1 - c) * k / n)`` grows with the position
  ``k = 1..n`` (its adaptive clipping; ``c = 1`` keeps ``eps``).

``M`` is a sample's constant (no gradient); the stored log-probs are the old policy's. The
sequential MAGPO learner uses the same ``M`` on its lambda-weighted PPO term
(:class:`magpo.MAGPOLoss`, key ``preceding_ratio``).
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import ProbabilisticTensorDictSequential, TensorDictModule
from torch import Tensor
from torchrl.objectives import PPOLoss

from .losses import PRECEDING_RATIO_KEY, batch_advantage

__all__ = ["AgentByAgentPPOLoss", "CORRECTIONS", "ORDER_RULES", "PRECEDING_RATIO_KEY", "agent_order", "position_clip"]

CORRECTIONS = ("happo", "a2po")
# random: a fresh uniform permutation each iteration (HAPPO). semi_greedy (A2PO): odd positions
# uniform among the agents left, even positions the agent left with the largest mean |advantage|.
ORDER_RULES = ("random", "semi_greedy")


def position_clip(clip_epsilon: float, position: int, n_agents: int, floor: float) -> float:
    """A2PO's adaptive clipping ``eps * (floor + (1 - floor) * position / n_agents)`` for the
    agent updated at ``position`` (1-based): later agents, which see more of the others' changes,
    get the wider range; ``floor = 1`` keeps ``eps`` for all."""
    return clip_epsilon * (floor + (1.0 - floor) * position / n_agents)


def agent_order(rule: str, n_agents: int, scores=None):
    """Yield an update order of ``n_agents`` agents, one agent at a time, drawn from the global
    torch generator (a seeded run draws the same orders; a checkpoint's generator state restores
    them). The caller updates each agent before it asks for the next.

    ``random``: one ``torch.randperm`` per iteration (HAPPO). ``semi_greedy``: A2PO's rule:
    position 1, 3, ... is drawn uniformly among the agents left; position 2, 4, ... takes the agent
    left with the largest ``scores(left)`` (a tensor, one score per agent in ``left``), asked for
    only then, after the preceding agents' updates."""
    if rule == "random":
        yield from torch.randperm(n_agents).tolist()
        return
    if rule != "semi_greedy":
        raise ValueError(f"order rule must be one of {ORDER_RULES}, got {rule!r}")
    left = list(range(n_agents))
    position = 1
    while left:
        if position % 2:
            pick = left[int(torch.randint(len(left), ()).item())]
        else:
            pick = left[int(torch.as_tensor(scores(left)).argmax().item())]
        left.remove(pick)
        position += 1
        yield pick


class AgentByAgentPPOLoss(PPOLoss):
    """PPO for one agent of a group at a time, with the preceding agents' ratio (HAPPO or A2PO).

    Keys (``set_keys``, as :class:`torchrl.objectives.ClipPPOLoss`): ``action``,
    ``sample_log_prob`` (the old policy's), ``advantage``, ``value_target``, ``value`` and
    ``preceding_ratio`` (a root key, ``[*B]``; absent = 1). The actor's distribution has batch
    shape ``[*B, n_agents]``.

    Outputs ``loss_objective`` (the surrogate of agent :attr:`agent`, a mean over its rows, or of
    every row when ``agent`` is None: then, with no preceding ratio, exactly ClipPPOLoss'),
    ``loss_entropy``, ``loss_critic``, and diagnostics ``clip_fraction``, ``preceding_ratio``
    (its mean), ``kl_approx``, ``entropy`` and ``explained_variance``.

    Args:
        actor_network, critic_network: as ClipPPOLoss's.
        correction: ``"happo"`` or ``"a2po"`` (module docstring).
        clip_epsilon: PPO's clip, in (0, 1).
        preceding_clip: A2PO's clip of the preceding product, in (0, 1) (A2PO's own: clip_epsilon / 2).
        clip_floor: A2PO's adaptive-clipping floor ``c`` in (0, 1]; 1 = the same clip for every position.
        entropy_coeff, critic_coeff, loss_critic_type: as ClipPPOLoss's.
    """

    actor_network: TensorDictModule
    critic_network: TensorDictModule
    actor_network_params: TensorDictBase
    critic_network_params: TensorDictBase
    target_actor_network_params: TensorDictBase
    target_critic_network_params: TensorDictBase

    def __init__(
        self,
        actor_network: ProbabilisticTensorDictSequential,
        critic_network: TensorDictModule,
        *,
        correction: str = "happo",
        clip_epsilon: float = 0.2,
        preceding_clip: float = 0.1,
        clip_floor: float = 1.0,
        entropy_coeff: float = 0.01,
        critic_coeff: float = 1.0,
        loss_critic_type: str = "l2",
    ):
        if correction not in CORRECTIONS:
            raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
        for name, value, high in (("clip_epsilon", clip_epsilon, 1.0), ("preceding_clip", preceding_clip, 1.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < high:
                raise ValueError(f"{name} must be in (0, 1), got {value!r}")
        if isinstance(clip_floor, bool) or not isinstance(clip_floor, (int, float)) or not 0 < clip_floor <= 1:
            raise ValueError(f"clip_floor must be in (0, 1], got {clip_floor!r}")
        super().__init__(
            actor_network, critic_network, entropy_bonus=True, entropy_coeff=float(entropy_coeff),
            critic_coeff=float(critic_coeff), loss_critic_type=loss_critic_type, normalize_advantage=False,
        )
        self.correction = correction
        self.clip_epsilon = float(clip_epsilon)
        self.preceding_clip = float(preceding_clip)
        self.clip_floor = float(clip_floor)
        self.agent: int | None = None  # the agent whose turn it is; None: every agent (MAPPO)
        self.position = 1  # its 1-based position in this iteration's order (A2PO's adaptive clip)

    @property
    def out_keys(self):
        return ["loss_objective", "loss_entropy", "loss_critic", "clip_fraction", "preceding_ratio", "kl_approx",
                "entropy", "explained_variance"]

    @out_keys.setter
    def out_keys(self, values):
        pass

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        tensordict = tensordict.clone(False)
        advantage = batch_advantage(self, tensordict)  # [*B, n_agents, 1]
        with self.actor_network_params.to_module(self.actor_network):
            dist = self.actor_network.get_dist(tensordict)
        log_prob = dist.log_prob(tensordict.get(self.tensor_keys.action))  # [*B, n_agents]
        old_log_prob = tensordict.get(self.tensor_keys.sample_log_prob)
        if old_log_prob.requires_grad:
            raise ValueError(f"{type(self).__name__}: the stored {self.tensor_keys.sample_log_prob!r} must not require grad")
        if old_log_prob.shape != log_prob.shape:  # a plain Normal stores per-dimension log-probs
            old_log_prob = old_log_prob.sum(-1)
        try:
            entropy = dist.entropy()
        except NotImplementedError:  # TanhNormal: one-sample estimate, as TorchRL's PPO losses
            entropy = -dist.log_prob(dist.rsample())
        rows = slice(None) if self.agent is None else slice(self.agent, self.agent + 1)
        advantage = advantage.squeeze(-1)[..., rows]
        ratio = (log_prob - old_log_prob)[..., rows].exp()
        preceding = tensordict.get(PRECEDING_RATIO_KEY, None)
        preceding = torch.ones(ratio.shape[:-1], device=ratio.device) if preceding is None else preceding.detach()
        preceding = preceding.reshape(*ratio.shape[:-1], 1)
        if self.correction == "happo":
            epsilon = self.clip_epsilon
            gain = preceding * torch.minimum(ratio * advantage, ratio.clamp(1 - epsilon, 1 + epsilon) * advantage)
            clipped = (ratio.clamp(1 - epsilon, 1 + epsilon) * advantage) < ratio * advantage
        else:
            n_agents = log_prob.shape[-1]
            epsilon = position_clip(self.clip_epsilon, self.position, n_agents, self.clip_floor)
            joint = ratio * preceding.clamp(1 - self.preceding_clip, 1 + self.preceding_clip)
            gain = torch.minimum(joint * advantage, joint.clamp(1 - epsilon, 1 + epsilon) * advantage)
            clipped = (joint.clamp(1 - epsilon, 1 + epsilon) * advantage) < joint * advantage
        entropy = entropy[..., rows].mean()
        out = TensorDict({
            "loss_objective": -gain.mean(),
            "loss_entropy": -self.entropy_coeff * entropy,
            "clip_fraction": clipped.float().mean().detach(),
            "preceding_ratio": preceding.mean().detach(),
            "kl_approx": (old_log_prob - log_prob)[..., rows].mean().detach(),
            "entropy": entropy.detach(),
        })
        loss_critic, _, explained_variance = self.loss_critic(tensordict)
        out.set("loss_critic", loss_critic.mean())
        out.set("explained_variance", explained_variance.mean())
        self._clear_weakrefs(tensordict, out, "actor_network_params", "critic_network_params",
                             "target_actor_network_params", "target_critic_network_params")
        return out
