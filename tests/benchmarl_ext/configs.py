"""Composing the `benchmarl` command's configuration and building experiments from it, for the
tests of this folder (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_module

from benchmarl_ext import cli
from benchmarl_ext.registration import register

register()

# Tiny runs: 80-frame batches, 2 minibatches, 2 epochs, small networks.
BATCH = ["experiment.on_policy_collected_frames_per_batch=80", "experiment.on_policy_minibatch_size=40",
         "experiment.on_policy_n_minibatch_iters=2", "experiment.evaluation_interval=80",
         "experiment.evaluation_episodes=2", "model.num_cells=[16,16]", "critic_model.num_cells=[16,16]"]
VMAS = ["task=vmas/balance", "task.max_steps=20", "experiment=cpu", "experiment.on_policy_n_envs_per_worker=4", *BATCH]
COORDSUM = ["task=coordsum/3x10", "task.time_limit=10", "experiment=coordsum", "experiment.on_policy_n_envs_per_worker=8", *BATCH]
SMALL_GUIDER = ["algorithm.guider_embed_dim=8", "algorithm.guider_heads=2"]


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
