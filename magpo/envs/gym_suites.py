"""RWARE and LBF, the paper's grid-world suites, as TorchRL environments.

The paper ran the JAX ports of these games (Jumanji's RobotWarehouse and LevelBasedForaging,
through the authors' Mava configs); here they come from the original Python packages, ``rware``
and ``lbforaging`` (optional extras ``rware`` and ``lbf``), built with the parameters of the
authors' scenario files (``mava/configs/env/scenario/<task>.yaml``) under the paper's names:

* RWARE: tiny-2ag, tiny-2ag-hard, tiny-4ag, tiny-4ag-hard, small-4ag, small-4ag-hard, medium-4ag,
  medium-4ag-hard, medium-6ag, large-4ag, large-4ag-hard, large-8ag, large-8ag-hard, xlarge-4ag,
  xlarge-4ag-hard. Shelf rows x columns: tiny 1x3, small 2x3, medium 2x5, large 3x5, xlarge 4x5
  (the package registers no xlarge), column height 8, sensor range 1, request queue = agents
  (``-hard``: half), 500 steps, individual rewards.
* LBF: 15x15-3p-5f, 15x15-4p-3f, 15x15-4p-5f, 2s-8x8-2p-2f-coop, 2s-10x10-3p-3f, 8x8-2p-2f-coop,
  10x10-3p-3f: grid size, agents, foods (the package registers at most 4), field of view
  (``2s-``: 2, else the grid), agent levels up to 2, ``-coop`` forces cooperation, 100 steps (the
  authors' time limit; the package's registrations use 50), normalised rewards.

Both are stepped in Python one game at a time: :class:`MultiAgentGymEnv` is one game (batch size
``()``), and BenchMARL vectorises it with TorchRL's ``SerialEnv`` or, with
``experiment.parallel_collection=true``, ``ParallelEnv``. Every agent of a game is in the group
``"agents"``: observation ``[n_agents, F]`` (float), action ``[n_agents]`` (an index), reward
``[n_agents, 1]`` (each agent's own; the authors' LBF config sums them into a team reward), and
the game's ``done``/``terminated``/``truncated`` as the package reports them.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

GROUP = "agents"


@dataclass(frozen=True)
class Suite:
    """A gymnasium multi-agent package and the paper's tasks of it."""

    package: str  # the module that provides the games
    extra: str  # this project's optional extra that installs it
    tasks: tuple[str, ...]

    def require(self) -> None:
        """Import the package, or fail with the extra that installs it."""
        try:
            importlib.import_module(self.package)
        except ImportError as err:
            raise ImportError(
                f"this task needs the {self.package} package: pip install -c .ci/constraints.txt \".[{self.extra}]\" "
                f"(from a checkout) or pip install \"magpo[{self.extra}]\" ({err})"
            ) from None


SUITES = {
    "rware": Suite("rware", "rware", (
        "tiny-2ag", "tiny-2ag-hard", "tiny-4ag", "tiny-4ag-hard", "small-4ag", "small-4ag-hard", "medium-4ag",
        "medium-4ag-hard", "medium-6ag", "large-4ag", "large-4ag-hard", "large-8ag", "large-8ag-hard", "xlarge-4ag",
        "xlarge-4ag-hard",
    )),
    "lbf": Suite("lbforaging", "lbf", (
        "15x15-3p-5f", "15x15-4p-3f", "15x15-4p-5f", "2s-8x8-2p-2f-coop", "2s-10x10-3p-3f", "8x8-2p-2f-coop",
        "10x10-3p-3f",
    )),
}


# RWARE sizes: (shelf rows, shelf columns), from the authors' scenario files
WAREHOUSE_SHELVES = {"tiny": (1, 3), "small": (2, 3), "medium": (2, 5), "large": (3, 5), "xlarge": (4, 5)}


def make_game(suite: str, task: str, time_limit: int | None = None):
    """The package's game (a gymnasium environment) for one of the paper's tasks; ``time_limit``
    replaces the task's steps per episode (RWARE 500, LBF 100)."""
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {sorted(SUITES)}, got {suite!r}")
    if task not in SUITES[suite].tasks:
        raise ValueError(f"{suite} task must be one of {list(SUITES[suite].tasks)}, got {task!r}")
    if time_limit is not None and (isinstance(time_limit, bool) or not isinstance(time_limit, int) or time_limit < 1):
        raise ValueError(f"time_limit must be an integer >= 1 or None, got {time_limit!r}")
    SUITES[suite].require()
    if suite == "rware":
        from rware.warehouse import RewardType, Warehouse

        size, agents, hard = re.fullmatch(r"([a-z]+)-(\d+)ag(-hard)?", task).groups()
        rows, columns = WAREHOUSE_SHELVES[size]
        return Warehouse(
            shelf_columns=columns, column_height=8, shelf_rows=rows, n_agents=int(agents), msg_bits=0, sensor_range=1,
            request_queue_size=int(agents) // 2 if hard else int(agents), max_inactivity_steps=None, max_steps=time_limit or 500,
            reward_type=RewardType.INDIVIDUAL,
        )
    from lbforaging.foraging import ForagingEnv

    partial, size, players, foods, coop = re.fullmatch(r"(2s-)?(\d+)x\d+-(\d+)p-(\d+)f(-coop)?", task).groups()
    return ForagingEnv(
        players=int(players), min_player_level=1, max_player_level=2, min_food_level=1, max_food_level=None,
        field_size=(int(size), int(size)), max_num_food=int(foods), sight=2 if partial else int(size),
        max_episode_steps=time_limit or 100, force_coop=coop is not None,
    )


def steps_per_episode(game) -> int:
    """Steps after which the package ends an episode (RWARE: ``max_steps``; LBF: ``_max_episode_steps``)."""
    inner = game.unwrapped
    return int(getattr(inner, "max_steps", None) or getattr(inner, "_max_episode_steps"))


class MultiAgentGymEnv(EnvBase):
    """One game of an RWARE or LBF task (see the module docstring for the specs).

    Args:
        suite: ``"rware"`` or ``"lbf"``.
        task: one of the paper's task names of that suite (:data:`SUITES`).
        time_limit: steps per episode, or None for the task's (RWARE 500, LBF 100).
        seed: seeds the game's next reset (:meth:`set_seed` does too).
        device: where the tensors are put.
    """

    def __init__(self, suite: str, task: str, time_limit: int | None = None, seed: int | None = None, device=None):
        super().__init__(device=device, batch_size=torch.Size([]))
        self.suite, self.task, self._time_limit = suite, task, time_limit
        self._game = make_game(suite, task, time_limit)
        spaces = self._game.observation_space.spaces
        self.n_agents = len(spaces)
        self.num_actions = int(self._game.action_space.spaces[0].n)
        self.max_steps = steps_per_episode(self._game)
        agents = (self.n_agents,)
        self.observation_spec = Composite(
            {GROUP: Composite({"observation": Unbounded((*agents, spaces[0].shape[0]), device=self.device)}, shape=agents)}
        )
        self.action_spec = Composite(
            {GROUP: Composite({"action": Categorical(self.num_actions, agents, dtype=torch.long, device=self.device)},
                              shape=agents)}
        )
        self.reward_spec = Composite({GROUP: Composite({"reward": Unbounded((*agents, 1), device=self.device)}, shape=agents)})
        self.done_spec = Composite(
            {k: Categorical(2, (1,), dtype=torch.bool, device=self.device) for k in ("done", "terminated", "truncated")}
        )
        self._pending_seed = seed

    def _set_seed(self, seed: int | None):
        # A fresh game: LBF's reset(seed=...) also depends on the previous episode's state, so
        # only a new game seeded at its first reset repeats exactly. Later resets continue the stream.
        self._game.close()
        self._game = make_game(self.suite, self.task, self._time_limit)
        self._pending_seed = seed

    def _observation(self, observations) -> torch.Tensor:
        return torch.as_tensor(np.stack(observations), dtype=torch.float32, device=self.device)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        observations, _ = self._game.reset(seed=self._pending_seed)
        self._pending_seed = None
        done = torch.zeros(1, dtype=torch.bool, device=self.device)
        return TensorDict(
            {GROUP: TensorDict({"observation": self._observation(observations)}, [self.n_agents]),
             "done": done, "terminated": done.clone(), "truncated": done.clone()},
            [], device=self.device,
        )

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get((GROUP, "action"))
        if action.dim() == 2:  # one-hot actions
            action = action.argmax(-1)
        observations, rewards, terminated, truncated, _ = self._game.step(tuple(int(a) for a in action.tolist()))
        terminated, truncated = bool(np.all(terminated)), bool(np.all(truncated))
        reward = torch.as_tensor(np.asarray(rewards, dtype=np.float32), device=self.device).reshape(self.n_agents, 1)
        flag = lambda value: torch.tensor([value], dtype=torch.bool, device=self.device)  # noqa: E731
        return TensorDict(
            {GROUP: TensorDict({"observation": self._observation(observations), "reward": reward}, [self.n_agents]),
             "done": flag(terminated or truncated), "terminated": flag(terminated), "truncated": flag(truncated)},
            [], device=self.device,
        )
