"""Composing the `benchmarl` command's configuration and building experiments from it, for the
tests of this folder (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_module

from benchmarl_ext import cli
from benchmarl_ext.registration import register

register()


def compose_config(overrides: list[str]):
    """The composed config of ``benchmarl run OVERRIDES`` (without its hydra node) and the task's name."""
    with initialize_config_module(config_module="benchmarl_ext.conf", version_base=None):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    task_name = cfg.hydra.runtime.choices.task
    del cfg.hydra
    return cfg, task_name


def build_experiment(folder: Path, overrides: list[str], restore: Path | None = None, callbacks=()):
    """The experiment of ``benchmarl run OVERRIDES``, saving under ``folder`` (created), resumed
    from ``restore`` when given; not run."""
    cfg, task_name = compose_config(overrides)
    folder.mkdir(parents=True, exist_ok=True)
    cfg.experiment.save_folder = str(folder)
    if restore is not None:
        cfg.experiment.restore_file = str(restore)
    return cli.build_experiment(cfg, task_name, callbacks=list(callbacks))
