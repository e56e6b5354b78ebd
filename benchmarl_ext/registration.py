"""Makes ``magpo``, ``ctds`` and ``mat`` BenchMARL algorithms and ``coordsum/*`` BenchMARL tasks: fills
BenchMARL's registries and Hydra's ConfigStore (the ``<name>_config`` schema nodes that the YAML
in ``conf/algorithm`` and ``conf/task`` extends)."""

from __future__ import annotations

import functools
import sys
import types

from benchmarl.algorithms import algorithm_config_registry
from benchmarl.environments import task_config_registry
from hydra.core.config_store import ConfigStore

from benchmarl_ext.algorithm import CtdsConfig, MagpoConfig
from benchmarl_ext.mat import MatConfig
from benchmarl_ext.tasks import TASKS, CoordSumTaskConfig

ALGORITHMS = {"magpo": MagpoConfig, "ctds": CtdsConfig, "mat": MatConfig}


@functools.cache
def register() -> None:
    """Idempotent; called by the ``benchmarl`` command, and by Python code before it composes a
    configuration that names ``magpo``, ``ctds`` or a ``coordsum`` task."""
    store = ConfigStore.instance()
    for name, config in ALGORITHMS.items():
        algorithm_config_registry[name] = config
        store.store(name=f"{name}_config", group="algorithm", node=config)
    task_config_registry.update(TASKS)
    store.store(name="coordsum_config", group="task", node=CoordSumTaskConfig)
    # BenchMARL type-checks a task's fields with the TaskConfig dataclass it imports from the
    # module benchmarl.environments.<env>.<task>, and warns "dataclass not found" when there is
    # none. These module entries point it at ours.
    package = sys.modules.setdefault("benchmarl.environments.coordsum", types.ModuleType("benchmarl.environments.coordsum"))
    if not hasattr(package, "__path__"):  # ours, not a real BenchMARL package of that name
        package.__path__ = []
    for name in TASKS:
        module = types.ModuleType(f"benchmarl.environments.{name.replace('/', '.')}")
        module.TaskConfig = CoordSumTaskConfig
        sys.modules.setdefault(module.__name__, module)
