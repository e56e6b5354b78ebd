"""Makes ``magpo`` and ``ctds`` BenchMARL algorithms: fills BenchMARL's registry and Hydra's
ConfigStore (the ``<name>_config`` schema nodes the YAML in ``conf/algorithm`` extends)."""

from __future__ import annotations

import functools

from benchmarl.algorithms import algorithm_config_registry
from hydra.core.config_store import ConfigStore

from benchmarl_ext.algorithm import CtdsConfig, MagpoConfig

ALGORITHMS = {"magpo": MagpoConfig, "ctds": CtdsConfig}


@functools.cache
def register() -> None:
    """Idempotent; called by the ``benchmarl`` command and on importing :mod:`benchmarl_ext.experiment`."""
    store = ConfigStore.instance()
    for name, config in ALGORITHMS.items():
        algorithm_config_registry[name] = config
        store.store(name=f"{name}_config", group="algorithm", node=config)
