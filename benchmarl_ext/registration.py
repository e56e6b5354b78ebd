"""Makes ``magpo``, ``ctds``, ``mat``, ``happo`` and ``a2po`` BenchMARL algorithms and ``coordsum/*`` BenchMARL tasks: fills
BenchMARL's registries and Hydra's ConfigStore (the ``<name>_config`` schema nodes that the YAML
in ``conf/algorithm`` and ``conf/task`` extends)."""

from __future__ import annotations

import functools
import sys
import types

from benchmarl.algorithms import algorithm_config_registry
from benchmarl.environments import task_config_registry
from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from omegaconf import OmegaConf

from benchmarl_ext.a2po import A2poConfig
from benchmarl_ext.algorithm import CtdsConfig, MagpoConfig
from benchmarl_ext.happo import HappoConfig
from benchmarl_ext.mat import MatConfig
from benchmarl_ext.tasks import TASK_CONFIGS, TASKS
from hydra_plugins.magpo_runs_sweeper import RunListSweeper

ALGORITHMS = {"magpo": MagpoConfig, "ctds": CtdsConfig, "mat": MatConfig, "happo": HappoConfig, "a2po": A2poConfig}


def frames_per_minibatch(frames_per_batch: int, minibatches: int) -> int:
    """``${frames_per_minibatch:<frames per batch>,<minibatches>}`` in the YAML: the minibatch size
    that splits a batch into ``minibatches`` equal parts (the authors count minibatches, BenchMARL
    sizes them)."""
    if isinstance(minibatches, bool) or not isinstance(minibatches, int) or minibatches < 1:
        raise ValueError(f"experiment.on_policy_minibatch_size: the number of minibatches must be an integer >= 1, got {minibatches!r}")
    if frames_per_batch % minibatches:
        raise ValueError(
            f"experiment.on_policy_minibatch_size: experiment.on_policy_collected_frames_per_batch ({frames_per_batch}) "
            f"must split into {minibatches} equal minibatches"
        )
    return frames_per_batch // minibatches


@functools.cache
def register() -> None:
    """Idempotent; called by the ``benchmarl`` command, and by Python code before it composes a
    configuration that names ``magpo``, ``ctds``, ``mat`` or a ``coordsum``, ``rware`` or ``lbf`` task."""
    OmegaConf.register_new_resolver("frames_per_minibatch", frames_per_minibatch, replace=True)
    # hydra/sweeper=magpo_runs. Hydra finds plugins by listing hydra_plugins' folders, which an
    # editable install (pip install -e) does not expose; registering the class works for both.
    Plugins.instance().register(RunListSweeper)
    store = ConfigStore.instance()
    for name, config in ALGORITHMS.items():
        algorithm_config_registry[name] = config
        store.store(name=f"{name}_config", group="algorithm", node=config)
    task_config_registry.update(TASKS)
    for suite, config in TASK_CONFIGS.items():
        store.store(name=f"{suite}_config", group="task", node=config)
        # BenchMARL type-checks a task's fields with the TaskConfig dataclass it imports from the
        # module benchmarl.environments.<env>.<task>, and warns "dataclass not found" when there
        # is none. These module entries point it at ours.
        name = f"benchmarl.environments.{suite}"
        package = sys.modules.setdefault(name, types.ModuleType(name))
        if not hasattr(package, "__path__"):  # ours, not a real BenchMARL package of that name
            package.__path__ = []
    for name in TASKS:
        module = types.ModuleType(f"benchmarl.environments.{name.replace('/', '.')}")
        module.TaskConfig = TASK_CONFIGS[name.split("/")[0]]
        sys.modules.setdefault(module.__name__, module)
