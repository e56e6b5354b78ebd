"""CoordSum (paper Appendix B) as a batched TorchRL environment.

n agents each pick an integer in ``[0, num_actions)``. Every agent observes the current target
(a raw integer), the step count and its one-hot id. The team reward of a step is:

* 2.0 if the actions sum to the target and an opponent's guess of agent 0's action is wrong;
* 1.0 if they sum to the target and the guess is right;
* 0.0 if they miss the target.

The opponent guesses by majority vote over agent 0's earlier actions recorded for this target
within the episode (no record: guess 0; ties: the smallest action). After the reward, agent 0's
action is recorded. Episodes last ``time_limit`` (100) steps; the targets of an episode are
drawn uniformly in ``[0, maxval)`` at reset.

``time_limit_mode`` says what the last step is: ``"terminate"`` (default, the authors' code: the
episode ends with discount 0, so GAE does not bootstrap past it) or ``"truncate"`` (a time-out:
GAE bootstraps the value of the state after the last step).

``memory`` chooses how records are kept (docs/design.md, "BenchMARL"):

* ``"authors"`` (default, what the paper's Table 1 numbers come from): the authors' JAX code keeps
  ``num_actions`` rows indexed by the target and JAX clamps out-of-range indices, so every
  target ``>= num_actions - 1`` shares the last row;
* ``"per_target"``: a separate record per target value, as the paper's text describes.

The paper's tasks: 3x10 (maxval 30), 3x30 (50), 5x20 (80), 8x15 (100); see :data:`TASKS`.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

MEMORIES = ("authors", "per_target")
TIME_LIMIT_MODES = ("terminate", "truncate")
# the paper's tasks: name -> (n_agents, num_actions, maxval); authors' mava/coordsum/__init__.py
TASKS = {"3x10": (3, 10, 30), "3x30": (3, 30, 50), "5x20": (5, 20, 80), "8x15": (8, 15, 100)}
GROUP = "agents"


class CoordSumEnv(EnvBase):
    """Batched CoordSum. ``batch_size`` is the number of parallel games (``()`` for one).

    Args:
        n_agents: agents, >= 2.
        num_actions: actions per agent, >= 2 (each picks an integer in [0, num_actions)).
        maxval: targets are drawn in [0, maxval), >= 1.
        time_limit: steps per episode, >= 1 (paper: 100).
        time_limit_mode: ``"terminate"`` or ``"truncate"`` (see the module docstring).
        memory: ``"authors"`` or ``"per_target"`` (see the module docstring).
        batch_size: number of parallel games, e.g. ``(64,)``.
        device: where the state lives.
        seed: seeds the target draws (see :meth:`set_seed`).
    """

    batch_locked = True

    def __init__(
        self,
        n_agents: int = 3,
        num_actions: int = 10,
        maxval: int = 30,
        time_limit: int = 100,
        memory: str = "authors",
        time_limit_mode: str = "terminate",
        batch_size=(),
        device=None,
        seed: int | None = None,
    ):
        for name, value, low in (("n_agents", n_agents, 2), ("num_actions", num_actions, 2), ("maxval", maxval, 1),
                                 ("time_limit", time_limit, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if memory not in MEMORIES:
            raise ValueError(f"memory must be one of {MEMORIES}, got {memory!r}")
        if time_limit_mode not in TIME_LIMIT_MODES:
            raise ValueError(f"time_limit_mode must be one of {TIME_LIMIT_MODES}, got {time_limit_mode!r}")
        self.terminates = time_limit_mode == "terminate"
        super().__init__(device=device, batch_size=torch.Size(batch_size))
        self.n_agents, self.num_actions, self.maxval, self.time_limit, self.memory = (
            n_agents, num_actions, maxval, time_limit, memory
        )
        self.memory_rows = maxval if memory == "per_target" else num_actions
        batch = self.batch_size
        agents = (*batch, n_agents)
        self.observation_dim = 2 + n_agents
        self.observation_spec = Composite(
            {GROUP: Composite({"observation": Unbounded((*agents, self.observation_dim), device=self.device)}, shape=agents)},
            shape=batch,
        )
        self.action_spec = Composite(
            {GROUP: Composite({"action": Categorical(num_actions, agents, dtype=torch.long, device=self.device)}, shape=agents)},
            shape=batch,
        )
        self.reward_spec = Composite(
            {GROUP: Composite({"reward": Unbounded((*agents, 1), device=self.device)}, shape=agents)}, shape=batch
        )
        self.done_spec = Composite(
            {k: Categorical(2, (*batch, 1), dtype=torch.bool, device=self.device) for k in ("done", "terminated", "truncated")},
            shape=batch,
        )
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()) if seed is None else seed)
        self._targets = torch.zeros((*batch, time_limit + 1), dtype=torch.long, device=self.device)
        self._counts = torch.zeros((*batch, self.memory_rows, num_actions), dtype=torch.long, device=self.device)
        self._t = torch.zeros(batch, dtype=torch.long, device=self.device)
        self._agent_ids = torch.eye(n_agents, device=self.device)

    def _set_seed(self, seed: int | None):
        self.generator.manual_seed(seed)

    def _observation(self) -> torch.Tensor:
        target = self._targets.gather(-1, self._t.unsqueeze(-1)).float()  # [*B, 1]
        step = self._t.unsqueeze(-1).float()
        per_game = torch.cat([target, step], dim=-1).unsqueeze(-2).expand(*self.batch_size, self.n_agents, 2)
        return torch.cat([per_game, self._agent_ids.expand(*self.batch_size, -1, -1)], dim=-1)

    def _memory_row(self, target: torch.Tensor) -> torch.Tensor:
        # the authors' code indexes num_actions rows by the target; JAX clamps the overflow
        return target if self.memory == "per_target" else target.clamp(max=self.num_actions - 1)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        reset = None if tensordict is None else tensordict.get("_reset", None)
        fresh = torch.randint(
            self.maxval, self._targets.shape, generator=self.generator, device=self.device
        )
        if reset is None:
            self._targets, self._t = fresh, torch.zeros_like(self._t)
            self._counts = torch.zeros_like(self._counts)
        else:
            games = reset.reshape(self.batch_size)
            self._targets = torch.where(games.unsqueeze(-1), fresh, self._targets)
            self._t = torch.where(games, torch.zeros_like(self._t), self._t)
            self._counts = torch.where(games.unsqueeze(-1).unsqueeze(-1), torch.zeros_like(self._counts), self._counts)
        done = torch.zeros((*self.batch_size, 1), dtype=torch.bool, device=self.device)
        return TensorDict(
            {
                GROUP: TensorDict({"observation": self._observation()}, [*self.batch_size, self.n_agents]),
                "done": done, "terminated": done.clone(), "truncated": done.clone(),
            },
            self.batch_size,
            device=self.device,
        )

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get((GROUP, "action"))  # [*B, n]
        if action.shape[-1:] == (self.num_actions,) and action.dim() == len(self.batch_size) + 2:
            action = action.argmax(-1)  # one-hot actions
        target = self._targets.gather(-1, self._t.unsqueeze(-1)).squeeze(-1)  # [*B]
        row = self._memory_row(target)
        record = self._counts.gather(-2, row[..., None, None].expand(*self.batch_size, 1, self.num_actions)).squeeze(-2)
        guess = record.argmax(-1)  # majority vote; all zero -> 0; ties -> the smallest action
        first = action[..., 0]
        match = action.sum(-1) == target
        reward = torch.where(match, torch.where(guess == first, 1.0, 2.0), 0.0)
        # record agent 0's action for this target (after the reward, as the authors do)
        self._counts = self._counts.clone()
        flat_counts = self._counts.reshape(-1, self.memory_rows, self.num_actions)
        games = torch.arange(flat_counts.shape[0], device=self.device)
        flat_counts[games, row.reshape(-1), first.reshape(-1)] += 1
        self._t = self._t + 1
        done = (self._t >= self.time_limit).unsqueeze(-1)
        return TensorDict(
            {
                GROUP: TensorDict(
                    {
                        "observation": self._observation(),
                        "reward": reward[..., None, None].expand(*self.batch_size, self.n_agents, 1).clone(),
                    },
                    [*self.batch_size, self.n_agents],
                ),
                "done": done,
                "terminated": done.clone() if self.terminates else torch.zeros_like(done),
                "truncated": torch.zeros_like(done) if self.terminates else done.clone(),
            },
            self.batch_size,
            device=self.device,
        )
