"""What every guider core shares: the constants of the options, the order helpers, the action
embedding, the :class:`GuiderSpec` of a group and the :class:`GuiderCore` interface.

Orders are ``[*B, n_agents]`` long tensors; ``order[..., k]`` is the agent that acts k-th.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import nn
from torchrl.data import Composite, TensorSpec

AGENT_ORDERS = ("fixed", "random", "per_epoch")
GUIDER_KINDS = ("transformer", "anchored", "residual")
GUIDER_MEMORIES = ("none", "gru", "retention")
EPISODE_START_KEY = "is_init"  # TorchRL's InitTracker: True at the first step of an episode


def positions_of(order: torch.Tensor) -> torch.Tensor:
    """Inverse permutation: ``positions[..., i]`` is the step at which agent i acts."""
    return torch.argsort(order, dim=-1)


def flat_observations(tensordict: TensorDictBase, keys: Sequence[NestedKey], lead: int) -> torch.Tensor:
    """Concatenate the observation entries, flattening each one's feature dims after ``lead`` dims."""
    return torch.cat([tensordict.get(k).flatten(lead).float() for k in keys], dim=-1)


class ActionEmbedding(nn.Module):
    """Embeds one agent's action (an index or a vector); ``start`` stands for 'no action yet'."""

    def __init__(self, action_size: int, discrete: bool, dim: int):
        super().__init__()
        self.discrete = discrete
        self.embed = nn.Embedding(action_size, dim) if discrete else nn.Linear(action_size, dim)
        self.start = nn.Parameter(torch.zeros(dim))

    def forward(self, action: torch.Tensor) -> torch.Tensor:
        return self.embed(action.long()) if self.discrete else self.embed(action.float())


class GuiderCore(nn.Module):
    """Shared plumbing: reads the group's observations (and state) and the action and order."""

    def __init__(self, spec: GuiderSpec, memory_key: NestedKey | None = None):
        super().__init__()
        self.observation_keys = list(spec.observation_keys)
        self.state_key = spec.state_key
        self.n_agents = spec.n_agents
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
        """The state after this step, shaped as the ``memory_key`` entry (cores with memory)."""
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



@dataclass(frozen=True)
class GuiderSpec:
    """What a guider core reads and writes, derived once from a group's specs (:meth:`of_group`).

    Attributes:
        observation_keys: the group's observation entries, each ``[*B, n_agents, ...]``.
        state_key: the global state entry ``[*B, ...]``, or None.
        observation_dim, state_dim: their flattened feature sizes (``state_dim`` None without a state).
        n_agents: agents in the group.
        action_size: number of actions (discrete) or action dims (continuous).
        discrete: whether actions are indices.
        param_dim: output size per agent (logits, or 2 x action dims before the Normal
            parameter extractor).
    """

    observation_keys: tuple[NestedKey, ...]
    state_key: NestedKey | None
    observation_dim: int
    state_dim: int | None
    n_agents: int
    action_size: int
    discrete: bool
    param_dim: int

    @classmethod
    def of_group(cls, group: str, observation_spec: Composite, action_spec: TensorSpec, continuous: bool,
                 state_spec: Composite | None = None) -> GuiderSpec:
        """The spec of ``group`` from its unbatched observation spec (every leaf ``[n_agents, ...]``
        is an input), action spec (``[n_agents]`` indices or ``[n_agents, D]``) and optional
        global state spec (its first leaf)."""
        observation_keys = tuple((group, *((k,) if isinstance(k, str) else k)) for k in observation_spec.keys(True, True))
        observation_dim = sum(math.prod(observation_spec[k[1:]].shape[1:]) for k in observation_keys)
        state_key, state_dim = None, None
        if state_spec is not None:
            state_key = list(state_spec.keys(True, True))[0]
            state_dim = math.prod(state_spec[state_key].shape)
        action_size = action_spec.shape[-1] if continuous else action_spec.space.n
        return cls(observation_keys, state_key, observation_dim, state_dim, action_spec.shape[0], action_size,
                   not continuous, 2 * action_size if continuous else action_size)
