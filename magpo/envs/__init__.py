"""Environments for MAGPO experiments (TorchRL ``EnvBase``s)."""

from magpo.envs.coordsum import MEMORIES, TASKS, CoordSumEnv

__all__ = ["MEMORIES", "TASKS", "CoordSumEnv"]
