"""Corrected guiders: a decentralized base's parameters plus a zero-initialised, centralized,
auto-regressive correction.

* :class:`AnchoredGuider`: stop-gradient(the live learner's output) plus the correction. It
  starts equal to the learner (mu_0 = pi_0, where the paper's theory starts) and follows every
  learner update.
* :class:`ResidualGuider`: a trainable copy of the learner's network plus the same correction.

Both have ``reset_to(learner)``, which makes the guider's distribution equal the learner's on
every input (the paper's guider backtracking, Section 4.1 step 4).
"""

from __future__ import annotations

import contextlib
import copy

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch import nn

from magpo.guiders.common import ActionEmbedding, GuiderCore, GuiderSpec, flat_observations, positions_of


class CorrectedGuider(GuiderCore):
    """A decentralized base's parameters plus a zero-initialised, centralized, auto-regressive
    correction; the subclasses differ only in where the base comes from (:meth:`base_params`).

    The correction sees the agent's own observation, the mean of all agents' observations, the
    global state, the mean embedding of the actions taken earlier in the order, and the agent's
    step in the order. Its last layer starts at zero, so at initialisation the guider's
    distribution equals the base's on every input (mu_0 = pi_0).
    """

    def __init__(
        self,
        base_out_key: NestedKey,
        spec: GuiderSpec,
        hidden_dim: int = 64,
    ):
        super().__init__(spec)
        observation_dim, state_dim, n_agents = spec.observation_dim, spec.state_dim, spec.n_agents
        action_size, discrete, param_dim = spec.action_size, spec.discrete, spec.param_dim
        self.base_out_key = base_out_key
        self.action_embed = ActionEmbedding(action_size, discrete, hidden_dim)
        context_dim = 2 * observation_dim + (state_dim or 0) + hidden_dim + n_agents
        self.correction = nn.Sequential(
            nn.Linear(context_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, hidden_dim), nn.Tanh(),
            nn.Linear(hidden_dim, param_dim),
        )
        self._zero_correction()

    def _zero_correction(self) -> None:
        last = self.correction[-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()

    def base_module(self) -> TensorDictModuleBase:
        """The decentralized network whose output :meth:`base_params` reads."""
        raise NotImplementedError

    def base_params(self, tensordict: TensorDictBase) -> torch.Tensor:
        """The base's distribution parameters ``[*B, n_agents, P]``."""
        module = self.base_module()
        return module(tensordict.select(*module.in_keys, strict=False).clone(False)).get(self.base_out_key)

    @property
    def in_keys(self) -> list[NestedKey]:
        return list(dict.fromkeys(super().in_keys + list(self.base_module().in_keys)))

    def depends_on_previous_actions(self) -> bool:
        # A zero last layer makes the correction exactly zero whatever its inputs: the guider is
        # then its base, a decentralized network. That is the guider's state at initialisation
        # and right after a backtrack (with backtrack=true every collection takes this shortcut).
        # The check reads two small tensors (one host sync per environment step on a GPU).
        last = self.correction[-1]
        return bool(last.weight.any() | last.bias.any())  # one sync, not one per tensor

    def context(self, tensordict, order, over_time=False):  # memoryless: every step on its own
        batch_shape = order.shape[:-1]
        lead = len(batch_shape)
        base = self.base_params(tensordict)
        obs = flat_observations(tensordict, self.observation_keys, lead + 1)  # [*B, n, F]
        others = obs.mean(dim=-2, keepdim=True).expand_as(obs)  # permutation-invariant summary
        parts = [obs, others]
        if self.state_key is not None:
            state = tensordict.get(self.state_key).flatten(lead).float()
            parts.append(state.unsqueeze(-2).expand(*batch_shape, self.n_agents, -1))
        positions = positions_of(order)  # [*B, n]
        before = (positions.unsqueeze(-1) > positions.unsqueeze(-2)).float()  # [*B, i, j]: j acted before i
        mean_before = before / before.sum(-1, keepdim=True).clamp(min=1)  # averages the earlier actions
        step = nn.functional.one_hot(positions, self.n_agents).float()
        return base, torch.cat(parts, dim=-1), mean_before, step

    def decode(self, context, action):
        base, observed, mean_before, step = context
        previous = mean_before @ self.action_embed(action)  # [*B, n, H]
        return base + self.correction(torch.cat([observed, previous, step], dim=-1))

    def start_decoding(self, context):
        # The first layer splits over its input's parts: the observed and step parts are fixed for
        # the whole environment step, so they are computed once; per step of the order only the
        # acting agent's row moves, with the running sum of the earlier agents' action embeddings.
        base, observed, _, step = context
        first = self.correction[0]
        hidden = first.out_features
        w_observed, w_previous, w_step = first.weight.split([observed.shape[-1], hidden, self.n_agents], dim=-1)
        fixed = observed @ w_observed.T + step @ w_step.T + first.bias  # [*B, n, H]
        return fixed, w_previous, base.new_zeros(*base.shape[:-2], hidden)

    def decode_next(self, context, state, order, step, action):
        base = context[0]
        fixed, w_previous, earlier = state
        if step > 0:  # the agent that acted at the previous step joins the earlier ones
            acted = order[..., step - 1]
            index = acted.view(*acted.shape, *[1] * (action.dim() - acted.dim()))
            index = index.expand(*acted.shape, 1, *action.shape[acted.dim() + 1:])
            earlier = earlier + self.action_embed(action.gather(acted.dim(), index).squeeze(acted.dim()))
        agent = order[..., step, None, None]
        previous = earlier / max(step, 1)  # the mean embedding of the earlier agents' actions, [*B, H]
        hidden = fixed.gather(-2, agent.expand(*agent.shape[:-1], fixed.shape[-1])).squeeze(-2) + previous @ w_previous.T
        row = base.gather(-2, agent.expand(*agent.shape[:-1], base.shape[-1])).squeeze(-2) + self.correction[1:](hidden)
        return row, (fixed, w_previous, earlier)


class ResidualGuider(CorrectedGuider):
    """A trainable copy of the learner's network plus the zero-initialised correction.

    :meth:`reset_to` copies the learner into the base and zeroes the correction, making the
    guider's distribution equal the learner's on every input (the paper's guider backtracking,
    Section 4.1 step 4).

    Args:
        learner_module: the learner's ``TensorDictModule`` that writes its distribution
            parameters to ``learner_out_key``; it is deep-copied into the guider's base.
        learner_out_key: that key, e.g. ``(group, "logits")``.
        spec: the group's :class:`GuiderSpec`.
        hidden_dim: width of the correction MLP.
    """

    def __init__(self, learner_module: TensorDictModuleBase, learner_out_key: NestedKey, *args, **kwargs):
        super().__init__(learner_out_key, *args, **kwargs)
        self.base = copy.deepcopy(learner_module)

    def base_module(self) -> TensorDictModuleBase:
        return self.base

    @torch.no_grad()
    def reset_to(self, learner_module: TensorDictModuleBase) -> None:
        """Backtrack: copy the learner into the base and zero the correction, in place (the
        Parameter objects stay, so optimizers and collectors keep working)."""
        source = dict(learner_module.named_parameters()) | dict(learner_module.named_buffers())
        for name, tensor in list(self.base.named_parameters()) + list(self.base.named_buffers()):
            tensor.copy_(source[name])
        self._zero_correction()


class AnchoredGuider(CorrectedGuider):
    """stop-gradient(the live learner's output) plus the zero-initialised correction.

    The base is the learner itself, read without gradient, so mu = pi at initialisation and the
    guider follows every learner update at once (a continuous form of the paper's backtracking)
    while the correction carries what only a centralized, auto-regressive policy can do. At the
    taken action mu/pi is exp(correction) up to normalisation, so the double clip bounds the
    correction directly. The guider owns only the correction: the learner is held by reference,
    not registered as a submodule, so the guider's optimizer and checkpoint never see it.

    Args:
        learner_module: the learner's ``TensorDictModule`` that writes its distribution
            parameters to ``learner_out_key`` (shared, not copied).
        learner_out_key, spec, hidden_dim: as in :class:`ResidualGuider`.
    """

    def __init__(self, learner_module: TensorDictModuleBase, learner_out_key: NestedKey, *args, **kwargs):
        super().__init__(learner_out_key, *args, **kwargs)
        self._learner = (learner_module,)  # a tuple: nn.Module does not register what it holds
        self._given_base: torch.Tensor | None = None

    def base_module(self) -> TensorDictModuleBase:
        return self._learner[0]

    @torch.no_grad()
    def reset_to(self, learner_module: TensorDictModuleBase) -> None:
        """Backtrack (paper Section 4.1, step 4): zero the correction, in place, so the guider is
        its base, the learner, on every input. ``learner_module`` must be that base."""
        if learner_module is not self.base_module():
            raise ValueError("an anchored guider can only be reset to the learner it is anchored on")
        self._zero_correction()

    def base_params(self, tensordict: TensorDictBase) -> torch.Tensor:
        if self._given_base is not None:
            return self._given_base
        with torch.no_grad():  # sg(learner): the guider's loss never reaches the learner
            return super().base_params(tensordict)

    @contextlib.contextmanager
    def given_base(self, base: torch.Tensor):
        """Within the block, :meth:`base_params` returns ``base.detach()`` instead of running the
        learner. The loss has just run the learner on the same batch (``base`` is its output at
        ``base_out_key``, ``[*B, n_agents, P]``), so this saves one learner forward per minibatch
        and gives the very same values."""
        self._given_base = base.detach()
        try:
            yield
        finally:
            self._given_base = None

