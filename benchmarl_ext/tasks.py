"""CoordSum tasks for BenchMARL: ``coordsum/3x10``, ``coordsum/3x30``, ``coordsum/5x20``,
``coordsum/8x15`` (the paper's names; YAML in ``conf/task/coordsum``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from benchmarl.environments.common import Task, TaskClass
from torchrl.data import Composite
from torchrl.envs import EnvBase

from magpo.envs.coordsum import GROUP, MEMORIES, TIME_LIMIT_MODES, CoordSumEnv


class CoordSumClass(TaskClass):
    """Builds :class:`magpo.envs.CoordSumEnv` from the task config (discrete actions only)."""

    def get_env_fun(self, num_envs: int, continuous_actions: bool, seed: Optional[int], device) -> Callable[[], EnvBase]:
        config = dict(self.config)
        return lambda: CoordSumEnv(batch_size=(num_envs,), seed=seed, device=device, **config)

    def supports_continuous_actions(self) -> bool:
        return False

    def supports_discrete_actions(self) -> bool:
        return True

    def has_render(self, env: EnvBase) -> bool:
        return False

    def max_steps(self, env: EnvBase) -> int:
        return self.config["time_limit"]

    def group_map(self, env: EnvBase) -> Dict[str, List[str]]:
        return {GROUP: [f"agent_{i}" for i in range(self.config["n_agents"])]}

    def state_spec(self, env: EnvBase) -> Optional[Composite]:
        return None

    def action_mask_spec(self, env: EnvBase) -> Optional[Composite]:
        return None

    def observation_spec(self, env: EnvBase) -> Composite:
        return env.full_observation_spec_unbatched.clone()

    def info_spec(self, env: EnvBase) -> Optional[Composite]:
        return None

    def action_spec(self, env: EnvBase) -> Composite:
        return env.full_action_spec_unbatched

    @staticmethod
    def env_name() -> str:
        return "coordsum"


class CoordSumTask(Task):
    """The paper's CoordSum tasks."""

    TASK_3X10 = None
    TASK_3X30 = None
    TASK_5X20 = None
    TASK_8X15 = None

    @staticmethod
    def associated_class():
        return CoordSumClass


# benchmarl task name -> enum member
TASKS = {f"coordsum/{m.name[len('TASK_'):].lower()}": m for m in CoordSumTask}


@dataclass
class CoordSumTaskConfig:
    """Fields of ``conf/task/coordsum/*.yaml`` (see :class:`magpo.envs.CoordSumEnv`)."""

    n_agents: int = 3
    num_actions: int = 10
    maxval: int = 30
    time_limit: int = 100
    memory: str = "authors"
    time_limit_mode: str = "terminate"

    def __post_init__(self):
        for name, low in (("n_agents", 2), ("num_actions", 2), ("maxval", 1), ("time_limit", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"task.{name} must be an integer >= {low}, got {value!r}")
        if self.memory not in MEMORIES:
            raise ValueError(f"task.memory must be one of {MEMORIES}, got {self.memory!r}")
        if self.time_limit_mode not in TIME_LIMIT_MODES:
            raise ValueError(f"task.time_limit_mode must be one of {TIME_LIMIT_MODES}, got {self.time_limit_mode!r}")
