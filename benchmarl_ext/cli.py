"""The ``benchmarl`` command: BenchMARL's Hydra runner with MAGPO registered.

    benchmarl run algorithm=magpo task=vmas/balance experiment=cpu   # any BenchMARL algorithm/task
    benchmarl run -m algorithm=magpo,mappo seed=0,1,2 task=vmas/balance experiment=cpu
    benchmarl resume outputs/.../checkpoints/checkpoint_60000.pt      # continues the run
    benchmarl evaluate outputs/.../checkpoints/checkpoint_60000.pt    # one evaluation, logged

Runs go through :class:`benchmarl_ext.experiment.MagpoExperiment` (BenchMARL's Experiment plus
learner evaluation for MAGPO, optimizer state in checkpoints, atomic checkpoint files), log to
csv by default (wandb offline when asked for) and end by saving ``learning_curve.png`` in the
experiment folder.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

USAGE = """usage: benchmarl run [-m] OVERRIDE...        e.g. benchmarl run algorithm=magpo task=vmas/balance experiment=cpu
       benchmarl resume CHECKPOINT.pt
       benchmarl evaluate CHECKPOINT.pt"""


def build_experiment(cfg, task_name: str, callbacks=()):
    """A :class:`MagpoExperiment` from a composed config (BenchMARL's public loaders)."""
    from benchmarl.hydra_config import (
        load_algorithm_config_from_hydra,
        load_experiment_config_from_hydra,
        load_model_config_from_hydra,
        load_task_config_from_hydra,
    )

    from benchmarl_ext.experiment import MagpoExperiment

    return MagpoExperiment(
        task=load_task_config_from_hydra(cfg.task, task_name),
        algorithm_config=load_algorithm_config_from_hydra(cfg.algorithm),
        model_config=load_model_config_from_hydra(cfg.model),
        critic_model_config=load_model_config_from_hydra(cfg.critic_model),
        seed=cfg.seed,
        config=load_experiment_config_from_hydra(cfg.experiment),
        callbacks=list(callbacks),
    )


def _run_with_hydra(argv: list[str]) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig, OmegaConf

    from benchmarl_ext import CONFIG_PACKAGE
    from benchmarl_ext.plots import plot_learning_curve

    @hydra.main(config_path=CONFIG_PACKAGE, config_name="config", version_base=None)
    def run(cfg: DictConfig) -> None:
        choices = HydraConfig.get().runtime.choices
        print(f"\nAlgorithm: {choices.algorithm}, Task: {choices.task}\n")
        print(OmegaConf.to_yaml(cfg))
        experiment = build_experiment(cfg, task_name=choices.task)
        experiment.run()
        print(f"learning curve: {plot_learning_curve(experiment.folder_name)}")

    sys.argv = ["benchmarl run", *argv]
    run()


def reload_experiment(checkpoint: str):
    """Rebuild the experiment a checkpoint belongs to, from the run's saved ``.hydra`` config."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    path = Path(checkpoint).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {checkpoint}")
    hydra_dir = next((p / ".hydra" for p in list(path.parents)[:4] if (p / ".hydra").is_dir()), None)
    if hydra_dir is None:
        raise FileNotFoundError(f"no .hydra folder within three levels above {checkpoint}; was it made by `benchmarl run`?")
    overrides = list(OmegaConf.load(hydra_dir / "overrides.yaml"))
    with initialize_config_module(config_module="benchmarl_ext.conf", version_base=None):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    task_name = cfg.hydra.runtime.choices.task
    saved = OmegaConf.load(hydra_dir / "config.yaml")
    del cfg.hydra
    cfg.merge_with(saved)
    cfg.experiment.restore_file = str(path)
    return build_experiment(cfg, task_name=task_name)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("WANDB_MODE", "offline")  # works with no network; WANDB_MODE=online to sync
    from benchmarl_ext.registration import register

    register()
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command == "run":
        _run_with_hydra(rest)
    elif command in ("resume", "evaluate"):
        if len(rest) != 1:
            raise SystemExit(f"benchmarl {command} takes one checkpoint file\n{USAGE}")
        experiment = reload_experiment(rest[0])
        if command == "resume":
            from benchmarl_ext.plots import plot_learning_curve

            experiment.run()
            print(f"learning curve: {plot_learning_curve(experiment.folder_name)}")
        else:
            experiment.evaluate()
    else:
        raise SystemExit(f"unknown command {command!r}\n{USAGE}")


if __name__ == "__main__":
    main()
