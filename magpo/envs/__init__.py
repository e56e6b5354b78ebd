"""Environments for MAGPO experiments (TorchRL ``EnvBase``s)."""

from magpo.envs.coordsum import MEMORIES, TASKS, CoordSumEnv
from magpo.envs.gym_suites import SUITES, MultiAgentGymEnv

__all__ = ["MEMORIES", "SUITES", "TASKS", "CoordSumEnv", "MultiAgentGymEnv"]
