"""The paper's tasks that BenchMARL lacks: CoordSum (``coordsum/3x10``, ``coordsum/3x30``,
``coordsum/5x20``, ``coordsum/8x15``), RWARE (``rware/<task>``) and LBF (``lbf/<task>``), under
the paper's names (YAML in ``conf/task/<suite>``). MPE's simple_spread is BenchMARL's
``vmas/simple_spread`` (``task.n_agents=3|5|10``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Dict, List, Optional

from benchmarl.environments.common import Task, TaskClass
from torchrl.data import Composite
from torchrl.envs import EnvBase

from magpo.envs.coordsum import GROUP, MEMORIES, TIME_LIMIT_MODES, CoordSumEnv
from magpo.envs.gym_suites import SUITES, MultiAgentGymEnv


class _DiscreteTaskClass(TaskClass):
    """What the paper's discrete-action tasks share: one group, no state, mask or info."""

    def supports_continuous_actions(self) -> bool:
        return False

    def supports_discrete_actions(self) -> bool:
        return True

    def has_render(self, env: EnvBase) -> bool:
        return False

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


class CoordSumClass(_DiscreteTaskClass):
    """Builds :class:`magpo.envs.CoordSumEnv` from the task config (batched)."""

    def get_env_fun(self, num_envs: int, continuous_actions: bool, seed: Optional[int], device) -> Callable[[], EnvBase]:
        config = dict(self.config)
        return lambda: CoordSumEnv(batch_size=(num_envs,), seed=seed, device=device, **config)

    def max_steps(self, env: EnvBase) -> int:
        return self.config["time_limit"]

    def group_map(self, env: EnvBase) -> Dict[str, List[str]]:
        return {GROUP: [f"agent_{i}" for i in range(self.config["n_agents"])]}

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


class _GridWorldClass(_DiscreteTaskClass):
    """One game of :class:`magpo.envs.gym_suites.MultiAgentGymEnv` per environment; BenchMARL
    vectorises it (``SerialEnv``, or ``ParallelEnv`` with ``experiment.parallel_collection``)."""

    suite: str

    @property
    def task(self) -> str:
        return TASK_NAMES[self.name]

    def get_env_fun(self, num_envs: int, continuous_actions: bool, seed: Optional[int], device) -> Callable[[], EnvBase]:
        suite, task, time_limit = self.suite, self.task, self.config.get("time_limit")
        return lambda: MultiAgentGymEnv(suite, task, time_limit=time_limit, seed=seed, device=device)

    def max_steps(self, env: EnvBase) -> int:
        return env.max_steps  # a TransformedEnv passes the attribute on from its base env

    def group_map(self, env: EnvBase) -> Dict[str, List[str]]:
        n_agents = env.full_action_spec_unbatched[GROUP, "action"].shape[0]
        return {GROUP: [f"agent_{i}" for i in range(n_agents)]}

    @classmethod
    def env_name(cls) -> str:
        return cls.suite


class RwareClass(_GridWorldClass):
    suite = "rware"


class LbfClass(_GridWorldClass):
    suite = "lbf"


class RwareTask(Task):
    """The paper's RWARE tasks (``rware`` extra)."""

    TINY_2AG = None
    TINY_2AG_HARD = None
    TINY_4AG = None
    TINY_4AG_HARD = None
    SMALL_4AG = None
    SMALL_4AG_HARD = None
    MEDIUM_4AG = None
    MEDIUM_4AG_HARD = None
    MEDIUM_6AG = None
    LARGE_4AG = None
    LARGE_4AG_HARD = None
    LARGE_8AG = None
    LARGE_8AG_HARD = None
    XLARGE_4AG = None
    XLARGE_4AG_HARD = None

    @staticmethod
    def associated_class():
        return RwareClass


class LbfTask(Task):
    """The paper's LBF tasks (``lbf`` extra)."""

    T15X15_3P_5F = None
    T15X15_4P_3F = None
    T15X15_4P_5F = None
    T2S_8X8_2P_2F_COOP = None
    T2S_10X10_3P_3F = None
    T8X8_2P_2F_COOP = None
    T10X10_3P_3F = None

    @staticmethod
    def associated_class():
        return LbfClass


def _task_name(member: Task) -> str:
    """The paper's name of an enum member: TINY_2AG_HARD -> tiny-2ag-hard, T2S_8X8_2P_2F_COOP -> 2s-8x8-2p-2f-coop."""
    name = member.name[1:] if isinstance(member, LbfTask) else member.name
    return name.lower().replace("_", "-")


TASK_NAMES = {m.name: _task_name(m) for suite in (RwareTask, LbfTask) for m in suite}
# benchmarl task name -> enum member
TASKS = {
    **{f"coordsum/{m.name[len('TASK_'):].lower()}": m for m in CoordSumTask},
    **{f"rware/{_task_name(m)}": m for m in RwareTask},
    **{f"lbf/{_task_name(m)}": m for m in LbfTask},
}


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


@dataclass
class GridWorldTaskConfig:
    """``conf/task/<suite>/*.yaml`` of RWARE and LBF (the task's name fixes the game): only
    ``time_limit``. Building it checks the values and that the suite's package is installed,
    before any environment is built."""

    suite: ClassVar[str]
    time_limit: Optional[int] = None  # steps per episode; None: the task's (RWARE 500, LBF 100)

    def __post_init__(self):
        value = self.time_limit
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"task.time_limit must be an integer >= 1 or null (the task's own), got {value!r}")
        try:
            SUITES[self.suite].require()
        except ImportError as err:
            raise ImportError(f"task: {err}") from None


@dataclass
class RwareTaskConfig(GridWorldTaskConfig):
    suite: ClassVar[str] = "rware"


@dataclass
class LbfTaskConfig(GridWorldTaskConfig):
    suite: ClassVar[str] = "lbf"


# suite -> the dataclass of its task YAML
TASK_CONFIGS = {"coordsum": CoordSumTaskConfig, "rware": RwareTaskConfig, "lbf": LbfTaskConfig}
