"""The two modes of a guider core, as TorchRL modules, and the draws that make sequential sampling cheap.

* teacher forcing (:class:`TeacherForcedGuider`, the loss): one parallel pass computes every
  agent's parameters given the stored joint action and the stored execution order;
* sequential sampling (:class:`SequentialGuiderSampler`, collection): agents act one after the
  other, each conditioned on the actions already taken; the order (fixed, or a fresh random
  permutation per step) is written to the batch as ``(group, "agent_order")`` so training
  recomputes log-probs under it (``per_epoch``, the authors' scheme: collection in the fixed
  order, and training under one permutation per PPO epoch set in
  :attr:`TeacherForcedGuider.training_order`). A core whose parameters cannot currently depend
  on the previous actions (an anchored or residual guider at initialisation or after a reset)
  samples all agents in one pass, which draws from the same joint distribution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import (
    InteractionType,
    NormalParamExtractor,
    ProbabilisticTensorDictSequential,
    TensorDictModuleBase,
)
from tensordict.nn.probabilistic import interaction_type
from tensordict.utils import NestedKey
from torch import nn
from torchrl.modules.distributions.continuous import SafeTanhTransform

from magpo.guiders.common import AGENT_ORDERS, GuiderCore


class ActionDraw:
    """A distribution head's sampling split in two: noise drawn for every agent once per
    environment step (:meth:`noise`), and a deterministic map from (parameters, noise) to
    actions (:meth:`__call__`). The sequential sampler then needs no distribution object per
    step of the order, only this map on the acting agent's row; the log-probs come from one
    distribution built at the end. Zero noise gives the head's deterministic action.
    """

    noise_size: int  # the noise's last dim

    def noise(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        """Noise ``[*shape, noise_size]`` for every agent of a step (``shape = [*B, n_agents]``)."""
        raise NotImplementedError

    def __call__(self, params: torch.Tensor, noise: torch.Tensor, inputs: TensorDictBase) -> torch.Tensor:
        """Actions ``[*B, n_agents, ...]`` from parameters ``[*B, n_agents, P]``, noise as from
        :meth:`noise` and the head's other inputs (``inputs``, e.g. an action mask)."""
        raise NotImplementedError


class GumbelMaxDraw(ActionDraw):
    """Categorical (or masked categorical) logits: ``argmax(logits + g)`` with ``g`` standard
    Gumbel noise is a draw from ``softmax(logits)`` (the Gumbel-max trick); masked-out actions
    get ``-inf`` and are never drawn. Zero noise gives the mode.

    Args:
        n_actions: the number of actions ``K`` (the noise's last dim).
        mask_key: the action mask ``[*B, n_agents, K]`` among the head's inputs, or None.
    """

    def __init__(self, n_actions: int, mask_key: NestedKey | None = None):
        self.noise_size, self.mask_key = n_actions, mask_key

    def noise(self, shape, device):
        exponential = torch.empty(*shape, self.noise_size, device=device).exponential_()
        # -log Exp(1) is standard Gumbel. exponential_ can return exactly 0, an infinite noise that
        # would win the argmax even against a masked action's -inf (inf - inf = nan): floor it.
        return -exponential.clamp_(min=torch.finfo(exponential.dtype).tiny).log()

    def __call__(self, params, noise, inputs):
        if self.mask_key is not None:
            params = params.masked_fill(~inputs.get(self.mask_key), float("-inf"))
        return (params + noise).argmax(-1)


class NormalDraw(ActionDraw):
    """Normal heads written out as TorchRL samples them: ``loc + eps * scale`` with ``eps``
    standard normal (``IndependentNormal``), then, for ``TanhNormal``, TorchRL's safe tanh and
    the affine map onto ``[low, high]``. The same noise gives the same action as the
    distribution's own ``rsample``; zero noise gives its ``deterministic_sample``.

    Args:
        extractor: the head's ``NormalParamExtractor`` (parameters ``[..., 2D]`` to loc, scale).
        action_dim: ``D``.
        low, high: the ``TanhNormal`` bounds (broadcastable to ``[*B, n_agents, D]``), or None
            for an unbounded ``IndependentNormal``.
    """

    def __init__(self, extractor: NormalParamExtractor, action_dim: int, low=None, high=None):
        self.extractor, self.noise_size = extractor, action_dim
        self.tanh = SafeTanhTransform() if low is not None else None
        self.affine = None
        if low is not None and ((torch.as_tensor(low) != -1).any() or (torch.as_tensor(high) != 1).any()):
            low, high = torch.as_tensor(low), torch.as_tensor(high)  # TanhNormal skips the identity map too
            self.affine = ((high + low) / 2, (high - low) / 2)

    def noise(self, shape, device):
        return torch.empty(*shape, self.noise_size, device=device).normal_()

    def __call__(self, params, noise, inputs):
        loc, scale = self.extractor(params)
        action = loc + noise * scale
        if self.tanh is not None:
            action = self.tanh(action)
        if self.affine is not None:
            shift, stretch = (t.to(action.device) for t in self.affine)
            action = shift + stretch * action
        return action


class TeacherForcedGuider(TensorDictModuleBase):
    """The loss side: writes every agent's parameters given the stored action and order.

    ``training_order`` (``[n_agents]``, or None) replaces the stored order of every sample when
    set: ``agent_order="per_epoch"`` sets one random permutation per PPO epoch. A core with memory
    is given whole rollouts: the batch's last dim is time.
    """

    def __init__(self, core: GuiderCore, action_key: NestedKey, order_key: NestedKey, out_key: NestedKey):
        super().__init__()
        self.core = core
        self.action_key, self.order_key, self.out_key = action_key, order_key, out_key
        self.in_keys = list(dict.fromkeys(core.in_keys + [action_key, order_key]))
        self.out_keys = [out_key]
        self.training_order: torch.Tensor | None = None

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        order = tensordict.get(self.order_key)
        if self.training_order is not None:
            order = self.training_order.expand_as(order)
        over_time = self.core.memory_key is not None
        params = self.core.params(tensordict, tensordict.get(self.action_key), order, over_time)
        tensordict.set(self.out_key, params)
        return tensordict


class SequentialGuiderSampler(TensorDictModuleBase):
    """The collection side: agents act one after the other in a fixed or random order.

    Step k computes the parameters of the agent acting k-th from the actions chosen so far
    (:meth:`GuiderCore.decode_next`, incremental: the transformer caches its attention keys and
    values from step to step, the corrected guiders their first layer's fixed part and the sum of
    the earlier actions' embeddings; entries of agents yet to act are placeholders that the
    causal structure ignores) and keeps the action of the agent acting k-th. With an
    :class:`ActionDraw` (``make_guider`` gives one for each of its heads) and random or
    deterministic exploration, the noise of every agent is drawn once per environment step, each
    step maps the acting agent's parameters and noise to its action, and one distribution built
    at the end gives every log-prob: per step only a few tensor operations instead of a
    distribution object, a draw and a log-prob for every agent. Without one (another head, or
    another exploration type) the head acts at every step and the acting agent's action and
    log-prob are kept. When the core reports that its parameters do not depend on the previous
    actions (an anchored or residual guider right after a backtrack), a single step serves every agent: the
    same joint distribution, one pass instead of n_agents (with a draw, the very same actions).
    Writes the joint action, the per-agent log-probs, the parameters and the order (drawn either
    way, so that training recomputes log-probs under it), and for a core with memory its next
    state.
    """

    def __init__(
        self,
        teacher_forced: TeacherForcedGuider,
        head: ProbabilisticTensorDictSequential,
        group: str,
        log_prob_key: NestedKey,
        agent_order: str,
        action_shape: Sequence[int],
        action_dtype: torch.dtype,
        draw: ActionDraw | None = None,
    ):
        super().__init__()
        if agent_order not in AGENT_ORDERS:
            raise ValueError(f"agent_order must be one of {AGENT_ORDERS}, got {agent_order!r}")
        self.teacher_forced = teacher_forced
        self.head = head
        self.group = group
        self.action_key, self.order_key = teacher_forced.action_key, teacher_forced.order_key
        self.log_prob_key = log_prob_key
        self.n_agents = teacher_forced.core.n_agents
        self.agent_order = agent_order
        self.action_shape, self.action_dtype = tuple(action_shape), action_dtype
        self.draw = draw
        produced = set(teacher_forced.out_keys)
        self.in_keys = list(
            dict.fromkeys(
                [k for k in teacher_forced.in_keys if k not in (self.action_key, self.order_key)]
                + [k for k in head.in_keys if k not in produced]
            )
        )
        self.out_keys = [self.action_key, log_prob_key, self.order_key, *teacher_forced.out_keys]
        self.memory_key = teacher_forced.core.memory_key
        if self.memory_key is not None:
            self.out_keys.append(("next", *self.memory_key))

    def _order(self, batch_shape: torch.Size, device: torch.device) -> torch.Tensor:
        if self.agent_order in ("fixed", "per_epoch"):  # per_epoch permutes in training only
            return torch.arange(self.n_agents, device=device).expand(*batch_shape, self.n_agents)
        return torch.argsort(torch.rand(*batch_shape, self.n_agents, device=device), dim=-1)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        group_td = tensordict.get(self.group)
        batch_shape = group_td.batch_size[:-1]
        device = group_td.get(self.teacher_forced.core.observation_keys[0][-1]).device
        order = self._order(batch_shape, device)
        action = torch.zeros(*batch_shape, *self.action_shape, dtype=self.action_dtype, device=device)
        log_prob = torch.zeros(*batch_shape, self.n_agents, device=device)
        core = self.teacher_forced.core
        context = core.context(tensordict, order)  # observations and order: once per env step
        head_inputs = tensordict.select(*self.head.in_keys, strict=False)  # e.g. an action mask
        exploration = interaction_type() or self.head.module[-1].default_interaction_type
        draw = self.draw if exploration in (InteractionType.RANDOM, InteractionType.DETERMINISTIC) else None
        if draw is not None:  # every agent's noise, drawn before decoding: the stream does not depend on it
            random = exploration is InteractionType.RANDOM
            noise = draw.noise(order.shape, device) if random else torch.zeros(*order.shape, draw.noise_size, device=device)
        if core.depends_on_previous_actions():
            steps = nn.functional.one_hot(order, self.n_agents).bool().movedim(-2, 0)  # [n, *B, n]: who acts at k
            state, params = core.start_decoding(context), None
        else:
            steps = torch.ones(1, *batch_shape, self.n_agents, dtype=torch.bool, device=device)  # all at once
            params = core.decode(context, action)
        for step, acting in enumerate(steps):
            if len(steps) > 1:
                row, state = core.decode_next(context, state, order, step, action)
                # Each agent's row is filled in at its step; the rows of the agents still to act are
                # zeros until then (valid parameters whose actions are discarded).
                params = torch.where(acting.unsqueeze(-1), row.unsqueeze(-2), 0.0 if params is None else params)
            if draw is not None:
                taken = draw(params, noise, head_inputs)
            else:  # the head draws for every agent at every step, so the stream does not depend on the decoding
                acted = self.head(head_inputs.clone(False).set(self.teacher_forced.out_key, params))
                log_prob = torch.where(acting, acted.get(self.log_prob_key), log_prob)
                taken = acted.get(self.action_key)
            while acting.dim() < action.dim():
                acting = acting.unsqueeze(-1)
            action = torch.where(acting, taken, action)
        if draw is not None:  # every agent's log-prob under its own row, from one distribution
            dist = self.head.get_dist(head_inputs.clone(False).set(self.teacher_forced.out_key, params))
            log_prob = dist.log_prob(action)
        tensordict.set(self.action_key, action)
        tensordict.set(self.log_prob_key, log_prob)
        tensordict.set(self.order_key, order)
        tensordict.set(self.teacher_forced.out_key, params)  # every agent's own, from its step
        if self.memory_key is not None:
            tensordict.set(("next", *self.memory_key), core.next_memory(context))
        return tensordict

