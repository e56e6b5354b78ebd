"""Agent-by-agent updates inside BenchMARL's training loop (HAPPO, A2PO, MAGPO's sequential learners).

BenchMARL trains a group with ``epochs x minibatches`` calls of ``Experiment._optimizer_loop``
per iteration. An agent-by-agent update needs ``n_agents`` times as many: each agent in turn takes
all the epochs, and the next one sees the preceding agents' change through the preceding ratio
``M`` of every sample (:mod:`magpo.sequential`). :class:`AgentByAgentUpdate` does that from the
first of BenchMARL's calls of an iteration, and hands BenchMARL one training record per call (the
mean over the agents' turns), so that the loop, its logging and its timers stay BenchMARL's.

An agent's turn changes only its own rows of the stacked per-agent parameters (BenchMARL's
``share_policy_params=false`` networks hold agent ``i``'s weights at index ``i``): the other rows'
gradients are masked before the gradient clip, and their values and Adam moments are put back
after each step. (Adam's step count is one per tensor, so it counts every agent's steps.) Losses
named in ``first_turn_only`` (the critic, MAGPO's guider) are stepped in the first turn only:
their epochs are MAPPO's, not ``n_agents`` times as many.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Iterable

import torch
from tensordict import TensorDictBase

from magpo.sequential import PRECEDING_RATIO_KEY, agent_order


class AgentByAgentUpdate:
    """The agent-by-agent schedule of one group.

    Args:
        n_agents: agents in the group.
        rule: ``random`` or ``semi_greedy`` (:func:`magpo.sequential.agent_order`).
        log_prob: ``td -> [*B, n_agents]`` log-probs of the stored actions under the policy being
            updated (no gradient needed).
        per_agent_loss: the optimizer key whose parameters are per agent (``loss_objective``,
            ``loss_learner``).
        first_turn_only: optimizer keys stepped in the first turn only.
        on_turn: ``(agent, position)`` -> None, called before a turn (the loss learns whose turn it is).
        advantage_key: the advantage in the batch (``[*B, n_agents, 1]``): semi_greedy's scores.
        preceding_clip: the clip of ``M`` in semi_greedy's scores (A2PO's), or None.
    """

    def __init__(self, n_agents: int, rule: str, log_prob: Callable[[TensorDictBase], torch.Tensor],
                 per_agent_loss: str, first_turn_only: Iterable[str], on_turn: Callable[[int, int], None],
                 advantage_key, preceding_clip: float | None = None):
        self.n_agents = n_agents
        self.rule = rule
        self.log_prob = log_prob
        self.per_agent_loss = per_agent_loss
        self.first_turn_only = tuple(first_turn_only)
        self.on_turn = on_turn
        self.advantage_key = advantage_key
        self.preceding_clip = preceding_clip
        self.turn = 0  # position - 1 of the agent being updated
        self.last_order: list[int] = []
        self._pending: deque = deque()

    def loss_names_to_step(self, names: Iterable[str]) -> list[str]:
        """The losses an optimizer steps on in this turn (for ``process_loss_vals``)."""
        return [n for n in names if self.turn == 0 or n not in self.first_turn_only]

    def optimizer_call(self, step: Callable[[], TensorDictBase], buffer, optimizers: dict, slots: int) -> TensorDictBase:
        """One of BenchMARL's ``slots`` optimizer calls of an iteration (``step`` is BenchMARL's own
        ``_optimizer_loop`` for the group). The first call of an iteration runs every agent's
        turn; each call returns one training record."""
        if not self._pending:
            self._pending = deque(self._iteration(step, buffer, optimizers[self.per_agent_loss], slots))
        return self._pending.popleft()

    # ------------------------------------------------------------------ one iteration

    def _iteration(self, step, buffer, optimizer: torch.optim.Optimizer, slots: int) -> list[TensorDictBase]:
        data = buffer.storage.get(slice(0, len(buffer.storage)))  # a view: writes reach the buffer
        if PRECEDING_RATIO_KEY not in data.keys():
            raise KeyError(f"the batch has no {PRECEDING_RATIO_KEY!r}: the algorithm's process_batch must add it (ones)")
        with torch.no_grad():
            old = self.log_prob(data)
        preceding = torch.ones(old.shape[:-1], device=old.device)
        data.set_(PRECEDING_RATIO_KEY, preceding.reshape(data.get(PRECEDING_RATIO_KEY).shape))
        check_per_agent(optimizer, self.n_agents, self.per_agent_loss)
        records: list[list[TensorDictBase]] = []
        self.last_order = []
        for position, agent in enumerate(agent_order(self.rule, self.n_agents, lambda left: self._scores(data, left, preceding)), 1):
            self.turn = position - 1
            self.last_order.append(agent)
            self.on_turn(agent, position)
            records.append([own_rows_only(step, optimizer, agent, self.n_agents) for _ in range(slots)])
            with torch.no_grad():
                new = self.log_prob(data)[..., agent]
            preceding = preceding * (new - old[..., agent]).exp()
            data.set_(PRECEDING_RATIO_KEY, preceding.reshape(data.get(PRECEDING_RATIO_KEY).shape))
        self.turn = 0
        return [mean_record([turn[slot] for turn in records]) for slot in range(slots)]

    def _scores(self, data: TensorDictBase, left: list[int], preceding: torch.Tensor) -> torch.Tensor:
        """semi_greedy's score of each agent left: the mean |M A_i| over the batch, M clipped as
        A2PO clips it (our stand-in for A2PO's off-policy-corrected advantage, module docstring
        of :mod:`benchmarl_ext.a2po`)."""
        advantage = data.get(self.advantage_key).squeeze(-1)  # [*B, n_agents]
        weight = preceding if self.preceding_clip is None else preceding.clamp(1 - self.preceding_clip, 1 + self.preceding_clip)
        return (weight.unsqueeze(-1) * advantage).abs().reshape(-1, self.n_agents)[:, left].mean(0)


def check_per_agent(optimizer: torch.optim.Optimizer, n_agents: int, name: str) -> None:
    """Every parameter of ``optimizer`` must hold one row per agent."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            if param.dim() == 0 or param.shape[0] != n_agents:
                raise ValueError(
                    f"{name}: an agent-by-agent update needs one set of policy parameters per agent (a parameter of "
                    f"shape {tuple(param.shape)} is shared by the {n_agents} agents); set "
                    "experiment.share_policy_params=false"
                )


def own_rows_only(step: Callable[[], TensorDictBase], optimizer: torch.optim.Optimizer, agent: int,
                  n_agents: int) -> TensorDictBase:
    """Run ``step`` (backward, clip, ``optimizer.step()``) so that it changes only row ``agent`` of
    ``optimizer``'s per-agent parameters: the other rows' gradients are zeroed as they are
    computed (so the gradient clip sees agent ``agent``'s alone), and their values and optimizer
    moments are put back after the step."""
    others = torch.ones(n_agents, dtype=torch.bool)
    others[agent] = False
    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved = []
    hooks = []
    for param in params:
        mask = (~others).to(param.device, param.dtype).reshape(-1, *([1] * (param.dim() - 1)))
        hooks.append(param.register_hook(lambda grad, mask=mask: grad * mask))
        state = {k: v[others].clone() for k, v in optimizer.state.get(param, {}).items()
                 if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == n_agents}
        saved.append((param, param.detach()[others].clone(), state))
    try:
        record = step()
    finally:
        for hook in hooks:
            hook.remove()
        with torch.no_grad():
            for param, rows, state in saved:
                param[others] = rows
                for key, value in optimizer.state.get(param, {}).items():
                    if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == n_agents:
                        value[others] = state[key] if key in state else 0  # no state before: Adam's zeros
    return record


def mean_record(records: list[TensorDictBase]) -> TensorDictBase:
    """One training record from the turns' records of the same optimizer call: each entry's mean
    over the turns that have it (a loss stepped in the first turn only has its grad norm there)."""
    first = records[0].clone()
    keys = {k for r in records for k in r.keys(True, True)}
    for key in keys:
        values = [r.get(key) for r in records if key in r.keys(True, True)]
        first.set(key, torch.stack([v.float() for v in values]).mean(0))
    return first


def refuse_shared_actors(config, choice: str) -> None:
    """An agent-by-agent update needs one actor per agent: refuse ``share_policy_params=true``
    (``choice``: the setting that asks for the update, e.g. ``algorithm=happo``)."""
    if config.share_policy_params:
        raise ValueError(
            f"experiment.share_policy_params=true with {choice}: agents updated one at a time need one policy per "
            "agent; set experiment.share_policy_params=false (the happo and a2po presets do)"
        )


def with_preceding_ratio(batch: TensorDictBase) -> TensorDictBase:
    """The batch with the per-sample preceding ratio (ones until an agent's turn changes it)."""
    batch.set(PRECEDING_RATIO_KEY, torch.ones(batch.batch_size, device=batch.device))
    return batch


def stored_action_log_prob(loss, network: str, group: str):
    """``td -> [*B, n_agents]``: log-probs of ``group``'s stored actions under the loss's
    ``<network>_network`` and its current parameters."""

    def log_prob(td: TensorDictBase) -> torch.Tensor:
        module = getattr(loss, f"{network}_network")
        with getattr(loss, f"{network}_network_params").to_module(module):
            return module.get_dist(td).log_prob(td.get((group, "action")))

    return log_prob
