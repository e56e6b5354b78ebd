"""Centralized auto-regressive guiders for MAGPO, as TorchRL modules.

A guider maps every agent's observation (and the task's global state, when there is one) plus
the actions of the agents before it in the execution order to that agent's action
distribution parameters. Three cores:

* :class:`TransformerGuider` (MAT-style, arXiv 2205.14953): a transformer encoder over the agents'
  observation embeddings (plus a state token), and a decoder whose causal self-attention runs
  over the previously chosen actions, in execution order, with cross-attention to the encoding.
* :class:`AnchoredGuider`: stop-gradient(the live learner's output) plus a zero-initialised
  correction that sees the centralized context and the previous actions. It starts equal to the
  learner (mu_0 = pi_0, where the paper's theory starts) and follows every learner update.
* :class:`ResidualGuider`: a trainable copy of the learner's network plus the same correction.

Both corrected guiders have ``reset_to(learner)``, which makes the guider's distribution equal
the learner's on every input (the paper's guider backtracking, Section 4.1 step 4).

Both run in two modes, wrapped by :func:`make_guider_policies`:

* teacher forcing (the loss): one parallel pass computes every agent's parameters given the
  stored joint action and the stored execution order;
* sequential sampling (collection): agents act one after the other, each conditioned on the
  actions already taken; the order (fixed, or a fresh random permutation per step) is written
  to the batch as ``(group, "agent_order")`` so training recomputes log-probs under it
  (``per_epoch``, the authors' scheme: collection in the fixed order, and training under one
  permutation per PPO epoch set in :attr:`TeacherForcedGuider.training_order`). A core
  whose parameters cannot currently depend on the previous actions (an anchored or residual
  guider at initialisation or after a reset) samples all agents in one pass, which draws from the same joint distribution.

Orders are ``[*B, n_agents]`` long tensors; ``order[..., k]`` is the agent that acts k-th.

Memory over the episode (``TransformerGuider(memory_key=...)``, the role of the retention over
time in the authors' Sable guider): a GRU cell carries each agent's state from step to step and
is reset at episode starts (``"is_init"``, TorchRL's ``InitTracker``). Collection reads the state
entering each step from the batch (``memory_key``, zero after a reset, e.g. from a
``TensorDictPrimer``) and writes the next one to ``("next", *memory_key)``. Training gets whole
rollouts, ``[*B, T]`` with time last: the state stored at ``t = 0`` restarts the recurrence, which
is rerun over the sequence with the same resets, so the log-probs are those of collection and the
gradient flows through the whole rollout.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import (
    InteractionType,
    NormalParamExtractor,
    ProbabilisticTensorDictModule,
    ProbabilisticTensorDictSequential,
    TensorDictModule,
    TensorDictModuleBase,
)
from tensordict.nn.probabilistic import interaction_type
from tensordict.utils import NestedKey
from torch import nn
from torch.distributions import Categorical
from torchrl.data import Composite, TensorSpec
from torchrl.modules import IndependentNormal, MaskedCategorical, TanhNormal
from torchrl.modules.distributions.continuous import SafeTanhTransform

AGENT_ORDERS = ("fixed", "random", "per_epoch")
GUIDER_KINDS = ("transformer", "anchored", "residual")
GUIDER_MEMORIES = ("none", "gru")
EPISODE_START_KEY = "is_init"  # TorchRL's InitTracker: True at the first step of an episode


def positions_of(order: torch.Tensor) -> torch.Tensor:
    """Inverse permutation: ``positions[..., i]`` is the step at which agent i acts."""
    return torch.argsort(order, dim=-1)


def _flat_observations(tensordict: TensorDictBase, keys: Sequence[NestedKey], lead: int) -> torch.Tensor:
    """Concatenate the observation entries, flattening each one's feature dims after ``lead`` dims."""
    return torch.cat([tensordict.get(k).flatten(lead).float() for k in keys], dim=-1)


class _ActionEmbedding(nn.Module):
    """Embeds one agent's action (an index or a vector); ``start`` stands for 'no action yet'."""

    def __init__(self, action_size: int, discrete: bool, dim: int):
        super().__init__()
        self.discrete = discrete
        self.embed = nn.Embedding(action_size, dim) if discrete else nn.Linear(action_size, dim)
        self.start = nn.Parameter(torch.zeros(dim))

    def forward(self, action: torch.Tensor) -> torch.Tensor:
        return self.embed(action.long()) if self.discrete else self.embed(action.float())


class _GuiderCore(nn.Module):
    """Shared plumbing: reads the group's observations (and state) and the action and order."""

    def __init__(self, observation_keys, state_key, n_agents: int, memory_key: NestedKey | None = None):
        super().__init__()
        self.observation_keys = list(observation_keys)
        self.state_key = state_key
        self.n_agents = n_agents
        self.memory_key = memory_key  # the recurrent state entering each step, or None (memoryless)

    @property
    def in_keys(self) -> list[NestedKey]:
        memory = [self.memory_key, EPISODE_START_KEY] if self.memory_key is not None else []
        return self.observation_keys + ([self.state_key] if self.state_key is not None else []) + memory

    def params(self, tensordict: TensorDictBase, action: torch.Tensor, order: torch.Tensor, over_time: bool = False) -> torch.Tensor:
        """Distribution parameters ``[*B, n_agents, P]`` of every agent given the actions of the
        agents before it in ``order`` (teacher forcing). ``action`` entries of agents that act at
        or after an agent's own step never influence that agent's output. ``over_time``: the
        last batch dim is time (whole rollouts, for a core with memory)."""
        return self.decode(self.context(tensordict, order, over_time), action)

    def context(self, tensordict: TensorDictBase, order: torch.Tensor, over_time: bool = False):
        """Everything that does not depend on the actions: the observations (and, with memory,
        the recurrent state) and the execution order ``[*B, n_agents]`` (computed once per env
        step when sampling). ``over_time`` as in :meth:`params`."""
        raise NotImplementedError

    def next_memory(self, context) -> torch.Tensor:
        """The recurrent state ``[*B, n_agents, E]`` after this step (cores with memory)."""
        raise NotImplementedError(f"{type(self).__name__} has no memory")

    def decode(self, context, action: torch.Tensor) -> torch.Tensor:
        """The parameters ``[*B, n_agents, P]`` from a :meth:`context` and the actions
        ``[*B, n_agents, ...]`` (each agent sees only those of the agents before it)."""
        raise NotImplementedError

    def start_decoding(self, context):
        """What :meth:`decode_next` carries from one step of the order to the next (the
        transformer: the attention keys and values so far; the corrected guiders: their first
        layer's fixed part and the sum of the earlier actions' embeddings)."""
        raise NotImplementedError

    def decode_next(self, context, state, order: torch.Tensor, step: int, action: torch.Tensor):
        """``(params [*B, P], state)``: the parameters of the agent acting at ``step`` of
        ``order`` given the actions ``[*B, n_agents, ...]`` of the agents before it (the other
        entries are ignored), and the state for the next step; sampling calls it for steps 0, 1, ...
        in turn from :meth:`start_decoding`. Equal, up to rounding, to that agent's row of
        :meth:`decode`."""
        raise NotImplementedError

    def depends_on_previous_actions(self) -> bool:
        """Whether the parameters can currently depend on the other agents' actions. When they
        cannot, the agents are independent given the observations, and drawing all of them at
        once samples exactly the same joint distribution as drawing them one after the other."""
        return True


class TransformerGuider(_GuiderCore):
    """Encoder over agents (+ state token), causal decoder over previous actions in order.

    Args:
        observation_keys: the group's observation entries, each ``[*B, n_agents, ...]``.
        state_key: optional global state entry ``[*B, ...]``.
        observation_dim, state_dim: flattened feature sizes.
        n_agents: agents in the group (parameters are shared; a learned agent-id embedding
            tells them apart).
        action_size: number of actions (discrete) or action dims (continuous).
        discrete: whether actions are indices.
        param_dim: output size per agent (logits, or 2 x action dims before the Normal
            parameter extractor).
        embed_dim, num_heads, num_layers: transformer size (encoder and decoder each get
            ``num_layers`` layers).
        memory_key: where the recurrent state ``[*B, n_agents, embed_dim]`` entering each step is
            stored, or None for a memoryless guider. With it, a GRU cell (shared by the agents)
            runs over each agent's observation embeddings through the episode and its state is
            added to the encoder's agent tokens (module docstring).
    """

    def __init__(
        self,
        observation_keys,
        state_key,
        observation_dim: int,
        state_dim: int | None,
        n_agents: int,
        action_size: int,
        discrete: bool,
        param_dim: int,
        embed_dim: int = 64,
        num_heads: int = 4,
        num_layers: int = 1,
        memory_key: NestedKey | None = None,
    ):
        super().__init__(observation_keys, state_key, n_agents, memory_key)
        self.observation_embed = nn.Sequential(nn.LayerNorm(observation_dim), nn.Linear(observation_dim, embed_dim), nn.GELU())
        self.agent_embed = nn.Parameter(0.02 * torch.randn(n_agents, embed_dim))
        self.state_embed = (
            nn.Sequential(nn.LayerNorm(state_dim), nn.Linear(state_dim, embed_dim), nn.GELU()) if state_dim else None
        )
        layer = dict(d_model=embed_dim, nhead=num_heads, dim_feedforward=2 * embed_dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer), num_layers, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer), num_layers)
        self.action_embed = _ActionEmbedding(action_size, discrete, embed_dim)
        self.head = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, param_dim))
        self.recurrence = nn.GRUCell(embed_dim, embed_dim) if memory_key is not None else None
        self.register_buffer("causal_mask", nn.Transformer.generate_square_subsequent_mask(n_agents), persistent=False)

    def _recall(self, tokens: torch.Tensor, tensordict: TensorDictBase, batch_shape: torch.Size, over_time: bool):
        """Each agent's recurrent state after this step, ``[*B, n, E]``, from its tokens ``[*B, n, E]``.
        One step: from the stored state (zero at an episode start). ``over_time``: rerun over the
        time dim (the last of ``batch_shape``) from the state stored at its first step."""
        stored = tensordict.get(self.memory_key)
        start = tensordict.get(EPISODE_START_KEY).reshape(*batch_shape, 1, 1)

        def step(x, state, fresh):
            state = torch.where(fresh, 0.0, state)
            return self.recurrence(x.reshape(-1, x.shape[-1]), state.reshape(-1, state.shape[-1])).view_as(x)

        if not over_time:
            return step(tokens, stored, start)
        if not batch_shape:
            raise ValueError("a guider with memory trains on rollouts: the batch needs a time dim, [*B, T]")
        time = len(batch_shape) - 1
        state, states = stored.select(time, 0), []
        for x, fresh in zip(tokens.unbind(time), start.unbind(time)):
            state = step(x, state, fresh)
            states.append(state)
        return torch.stack(states, time)

    def context(self, tensordict, order, over_time=False):
        batch_shape, n = order.shape[:-1], self.n_agents
        obs = _flat_observations(tensordict, self.observation_keys, len(batch_shape) + 1)
        tokens = self.observation_embed(obs) + self.agent_embed  # [*B, n, E]
        recalled = None
        if self.recurrence is not None:
            recalled = self._recall(tokens, tensordict, batch_shape, over_time)
            tokens = tokens + recalled
        encoded = tokens.reshape(-1, n, tokens.shape[-1])
        if self.state_embed is not None:
            state = tensordict.get(self.state_key).flatten(len(batch_shape)).float().reshape(len(encoded), -1)
            encoded = torch.cat([self.state_embed(state)[:, None], encoded], dim=1)
        encoded = self.encoder(encoded)
        flat_order = order.reshape(-1, n)
        agents = encoded[:, -n:]
        step_agents = agents.gather(1, flat_order[..., None].expand(-1, -1, agents.shape[-1]))  # [B, n, E], in order
        return encoded, step_agents, flat_order, positions_of(flat_order), batch_shape, recalled

    def next_memory(self, context):
        if context[-1] is None:
            return super().next_memory(context)
        return context[-1]

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L, E]`` -> ``[B, heads, L, E / heads]``, the layout of the attention below."""
        heads = self.decoder.layers[0].self_attn.num_heads
        return x.unflatten(-1, (heads, -1)).transpose(1, 2)

    def start_decoding(self, context):
        # The cross-attention keys and values of the encoding, per decoder layer: once per env step.
        encoded, dim = context[0], context[0].shape[-1]
        memory = []
        for layer in self.decoder.layers:
            weight, bias = layer.multihead_attn.in_proj_weight, layer.multihead_attn.in_proj_bias
            memory.append(tuple(self._heads(nn.functional.linear(encoded, weight[i * dim:(i + 1) * dim], bias[i * dim:(i + 1) * dim]))
                                for i in (1, 2)))
        return memory, [None] * len(self.decoder.layers)

    def decode_next(self, context, state, order, step, action):
        # Incremental decoding: only the token of the agent acting at `step` runs through the
        # decoder; its self-attention reads the keys and values cached at the earlier steps. Each
        # norm-first layer as nn.TransformerDecoderLayer computes it (dropout is 0): the same
        # values as decode()'s row for this agent up to float rounding, at a cost that does not
        # grow with the agents still to act.
        encoded, step_agents, flat_order, _, batch_shape, _ = context
        memory, past = state
        rows, dim = len(flat_order), encoded.shape[-1]
        if step == 0:
            previous = self.action_embed.start.expand(rows, -1)
        else:
            agent_actions = action.reshape(rows, self.n_agents, *action.shape[len(batch_shape) + 1:])
            previous = self.action_embed(agent_actions[torch.arange(rows, device=action.device), flat_order[:, step - 1]])
        x = (previous + step_agents[:, step])[:, None]  # [B, 1, E]
        attend = nn.functional.scaled_dot_product_attention
        cached = []
        for layer, (memory_keys, memory_values), earlier in zip(self.decoder.layers, memory, past):
            query, key, value = (self._heads(t) for t in nn.functional.linear(
                layer.norm1(x), layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias).chunk(3, -1))
            if earlier is not None:
                key, value = torch.cat([earlier[0], key], 2), torch.cat([earlier[1], value], 2)
            cached.append((key, value))
            x = x + layer.self_attn.out_proj(attend(query, key, value).transpose(1, 2).flatten(2))
            cross = layer.multihead_attn
            query = self._heads(nn.functional.linear(layer.norm2(x), cross.in_proj_weight[:dim], cross.in_proj_bias[:dim]))
            x = x + cross.out_proj(attend(query, memory_keys, memory_values).transpose(1, 2).flatten(2))
            x = x + layer.linear2(layer.activation(layer.linear1(layer.norm3(x))))
        return self.head(x[:, 0]).reshape(*batch_shape, -1), (memory, cached)

    def decode(self, context, action):
        encoded, step_agents, flat_order, positions, batch_shape, _ = context
        n = self.n_agents
        action_rows = action.reshape(len(flat_order), n, *action.shape[len(batch_shape) + 1 :])
        taken = self.action_embed(action_rows)  # [B, n, E], agent-indexed
        taken_in_order = taken.gather(1, flat_order[..., None].expand(-1, -1, taken.shape[-1]))
        # step k sees the actions of steps < k: shift right, a start token at step 0
        previous = torch.cat([self.action_embed.start.expand(len(taken), 1, -1), taken_in_order[:, :-1]], dim=1)
        decoded = self.decoder(previous + step_agents, encoded, tgt_mask=self.causal_mask, tgt_is_causal=True)
        out_in_order = self.head(decoded)
        out = out_in_order.gather(1, positions[..., None].expand(-1, -1, out_in_order.shape[-1]))
        return out.reshape(*batch_shape, n, -1)


class _CorrectedGuider(_GuiderCore):
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
        observation_keys,
        state_key,
        observation_dim: int,
        state_dim: int | None,
        n_agents: int,
        action_size: int,
        discrete: bool,
        param_dim: int,
        hidden_dim: int = 64,
    ):
        super().__init__(observation_keys, state_key, n_agents)
        self.base_out_key = base_out_key
        self.action_embed = _ActionEmbedding(action_size, discrete, hidden_dim)
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
        obs = _flat_observations(tensordict, self.observation_keys, lead + 1)  # [*B, n, F]
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


class ResidualGuider(_CorrectedGuider):
    """A trainable copy of the learner's network plus the zero-initialised correction.

    :meth:`reset_to` copies the learner into the base and zeroes the correction, making the
    guider's distribution equal the learner's on every input (the paper's guider backtracking,
    Section 4.1 step 4).

    Args:
        learner_module: the learner's ``TensorDictModule`` that writes its distribution
            parameters to ``learner_out_key``; it is deep-copied into the guider's base.
        learner_out_key: that key, e.g. ``(group, "logits")``.
        observation_keys, state_key, observation_dim, state_dim, n_agents, action_size,
        discrete, param_dim: as in :class:`TransformerGuider`.
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


class AnchoredGuider(_CorrectedGuider):
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
        learner_out_key, observation_keys, state_key, observation_dim, state_dim, n_agents,
        action_size, discrete, param_dim, hidden_dim: as in :class:`ResidualGuider`.
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

    def __init__(self, core: _GuiderCore, action_key: NestedKey, order_key: NestedKey, out_key: NestedKey):
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
    (:meth:`_GuiderCore.decode_next`, incremental: the transformer caches its attention keys and
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


def make_guider_policies(
    core: _GuiderCore,
    head_modules: Sequence[TensorDictModuleBase],
    distribution: ProbabilisticTensorDictModule,
    *,
    group: str,
    params_key: NestedKey,
    order_key: NestedKey,
    agent_order: str,
    action_shape: Sequence[int],
    action_dtype: torch.dtype,
    draw: ActionDraw | None = None,
):
    """Wrap a guider core as (policy for the loss, policy for collection).

    ``head_modules`` map ``params_key`` to the distribution's inputs (e.g. a Normal parameter
    extractor; none for logits); ``distribution`` is the ``ProbabilisticTensorDictModule`` that
    writes the action and, with ``return_log_prob=True``, its log-prob. ``draw``, when given,
    must sample exactly as that head does (:class:`GumbelMaxDraw`, :class:`NormalDraw`); the
    sampler then draws the noise once per environment step (:class:`SequentialGuiderSampler`).
    Both policies share every parameter.
    """
    if not distribution.return_log_prob:
        raise ValueError("the guider's distribution module needs return_log_prob=True")
    action_key = distribution.out_keys[0]
    teacher_forced = TeacherForcedGuider(core, action_key, order_key, params_key)
    for_loss = ProbabilisticTensorDictSequential(teacher_forced, *head_modules, distribution)
    head = ProbabilisticTensorDictSequential(*head_modules, distribution)
    for_collection = SequentialGuiderSampler(
        teacher_forced, head, group, distribution.log_prob_key, agent_order, action_shape, action_dtype, draw
    )
    return for_loss, for_collection


def make_guider(
    kind: str,
    *,
    group: str,
    observation_spec: Composite,
    action_spec: TensorSpec,
    continuous: bool,
    state_spec: Composite | None = None,
    learner_module: TensorDictModuleBase | None = None,
    width: int = 64,
    heads: int = 4,
    layers: int = 1,
    agent_order: str = "random",
    memory: str = "none",
    action_mask: bool = False,
    scale_mapping: str = "biased_softplus_1.0",
    tanh_normal: bool = True,
    device: torch.device | str | None = None,
):
    """Build a guider of one agent group from its specs: core, distribution head, both policies.

    Args:
        kind: one of :data:`GUIDER_KINDS`.
        group: the agent group; entries are read and written under it.
        observation_spec: the group's unbatched observation entries, each ``[n_agents, ...]``;
            every leaf is an input.
        action_spec: the group's unbatched action spec, ``[n_agents]`` (discrete indices) or
            ``[n_agents, D]`` (continuous).
        continuous: Normal actions (TanhNormal bounded to the spec, or IndependentNormal) rather
            than categorical ones.
        state_spec: optional global state, one leaf ``[...]``.
        learner_module: for ``anchored``/``residual``, the learner's module that writes its raw
            distribution parameters to ``(group, "logits")`` (the anchored guider reads it live,
            the residual guider copies it).
        width: transformer embedding size, or the correction's hidden size.
        heads, layers: transformer attention heads (dividing ``width``) and layers.
        agent_order: ``"random"`` (a stored permutation per step), ``"fixed"``, or ``"per_epoch"``
            (collect in the fixed order; the trainer sets ``training_order`` per epoch).
        memory: ``"none"``, or ``"gru"`` (transformer only): a recurrent state over the episode,
            stored at ``(group, "guider_memory")`` (``[n_agents, width]`` per step); the batch
            needs ``"is_init"`` and the loss whole rollouts (module docstring).
        action_mask: discrete actions read ``(group, "action_mask")``.
        scale_mapping: Normal scale mapping of the parameter extractor (continuous).
        tanh_normal: TanhNormal (True) or IndependentNormal (False) for continuous actions.
        device: where the core's parameters live.

    Returns:
        ``(core, for_loss, for_collection)``: the network, the teacher-forced policy (the loss's
        ``actor_network``; parameters in ``(group, "guider_logits")``) and the sampling policy
        (writes ``(group, "action")``, ``(group, "log_prob")``, ``(group, "agent_order")``).
    """
    if kind not in GUIDER_KINDS:
        raise ValueError(f"guider must be one of {GUIDER_KINDS}, got {kind!r}")
    if memory not in GUIDER_MEMORIES:
        raise ValueError(f"guider memory must be one of {GUIDER_MEMORIES}, got {memory!r}")
    if memory != "none" and kind != "transformer":
        raise ValueError(f"guider memory {memory!r} needs the transformer guider, got {kind!r}")
    if kind != "transformer" and learner_module is None:
        raise ValueError(f"the {kind} guider is built on the learner: pass learner_module")
    n_agents = action_spec.shape[0]
    observation_keys = [(group, *((k,) if isinstance(k, str) else k)) for k in observation_spec.keys(True, True)]
    observation_dim = sum(math.prod(observation_spec[k[1:]].shape[1:]) for k in observation_keys)
    state_key, state_dim = None, None
    if state_spec is not None:
        state_key = list(state_spec.keys(True, True))[0]
        state_dim = math.prod(state_spec[state_key].shape)
    action_size = action_spec.shape[-1] if continuous else action_spec.space.n
    params_key = (group, "guider_logits")
    common = dict(
        observation_keys=observation_keys, state_key=state_key, observation_dim=observation_dim, state_dim=state_dim,
        n_agents=n_agents, action_size=action_size, discrete=not continuous,
        param_dim=2 * action_size if continuous else action_size,
    )
    if kind == "transformer":
        memory_key = (group, "guider_memory") if memory != "none" else None
        core = TransformerGuider(**common, embed_dim=width, num_heads=heads, num_layers=layers, memory_key=memory_key)
    else:
        corrected = AnchoredGuider if kind == "anchored" else ResidualGuider
        core = corrected(learner_module, (group, "logits"), **common, hidden_dim=width)
    core = core.to(device)

    if continuous:
        extractor = NormalParamExtractor(scale_mapping=scale_mapping)
        head = [
            TensorDictModule(
                extractor, in_keys=[params_key], out_keys=[(group, "guider_loc"), (group, "guider_scale")],
            )
        ]
        bounds = (action_spec.space.low, action_spec.space.high) if tanh_normal else (None, None)
        distribution = ProbabilisticTensorDictModule(
            in_keys={"loc": (group, "guider_loc"), "scale": (group, "guider_scale")},
            out_keys=[(group, "action")],
            distribution_class=TanhNormal if tanh_normal else IndependentNormal,
            distribution_kwargs={"low": bounds[0], "high": bounds[1]} if tanh_normal else {},
            return_log_prob=True,
            log_prob_key=(group, "log_prob"),
        )
        draw = NormalDraw(extractor, action_size, *bounds)
    else:
        head = []
        mask_key = (group, "action_mask") if action_mask else None
        distribution = ProbabilisticTensorDictModule(
            in_keys={"logits": params_key, "mask": mask_key} if action_mask else {"logits": params_key},
            out_keys=[(group, "action")],
            distribution_class=MaskedCategorical if action_mask else Categorical,
            return_log_prob=True,
            log_prob_key=(group, "log_prob"),
        )
        draw = GumbelMaxDraw(action_size, mask_key)
    for_loss, for_collection = make_guider_policies(
        core, head, distribution, group=group, params_key=params_key, order_key=(group, "agent_order"),
        agent_order=agent_order, action_shape=action_spec.shape, action_dtype=action_spec.dtype, draw=draw,
    )
    return core, for_loss, for_collection
