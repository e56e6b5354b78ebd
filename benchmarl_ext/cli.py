"""The ``benchmarl`` command: BenchMARL's Hydra runner with MAGPO registered.

    benchmarl run algorithm=magpo task=vmas/balance experiment=cpu   # any BenchMARL algorithm/task
    benchmarl run -m algorithm=magpo,mappo seed=0,1,2 task=vmas/balance experiment=cpu
    benchmarl run -m hydra/sweeper=magpo_optuna algorithm=magpo task=vmas/balance experiment=cpu  # TPE search
    benchmarl run -m hydra/launcher=magpo_local algorithm=magpo,mappo seed=0,1,2 task=...     # parallel runs
    benchmarl run -m hydra/launcher=magpo_slurm ...   # or magpo_ray: a cluster (conf/hydra/launcher)
    benchmarl resume outputs/.../checkpoints/checkpoint_60000.pt      # continues the run exactly
    benchmarl evaluate outputs/.../checkpoints/checkpoint_60000.pt    # prints, writes evaluations/*.json

Runs go through :class:`benchmarl_ext.experiment.MagpoExperiment` (BenchMARL's Experiment plus
learner evaluation for MAGPO, optimizer state in checkpoints, atomic checkpoint files), log to
csv by default (wandb offline when asked for), use one torch thread unless
``MAGPO_NUM_THREADS`` (or ``OMP_NUM_THREADS``) says otherwise, and end by saving
``learning_curve.png`` in the experiment folder.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

THREADS_VARIABLE = "MAGPO_NUM_THREADS"
OBJECTIVES = ("final", "auc")  # the run's return value: final evaluation return, or its mean over frames
# Hydra plugins behind the launcher and sweeper presets: option name -> (plugin module, pip package, extra)
PLUGINS = {
    "hydra/launcher": {
        **dict.fromkeys(("magpo_local", "joblib"), ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher", "launchers")),
        **dict.fromkeys(("magpo_slurm", "submitit_slurm", "submitit_local"),
                        ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher", "launchers")),
        **dict.fromkeys(("magpo_ray", "ray", "ray_aws"), ("hydra_plugins.hydra_ray_launcher", "hydra-ray-launcher", "ray")),
    },
    "hydra/sweeper": dict.fromkeys(("magpo_optuna", "optuna"), ("hydra_plugins.hydra_optuna_sweeper", "hydra-optuna-sweeper", "sweep")),
}
# BenchMARL environments behind optional packages: task prefix -> (module, extra)
ENVIRONMENT_PACKAGES = {"pettingzoo": ("pettingzoo", "mpe")}
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
        absolute_metric_episodes=cfg.get("absolute_metric_episodes", 0),
        compile_networks=cfg.get("compile_networks", False),
    )


def report_learning_curve(experiment) -> None:
    """Draw ``learning_curve.png`` from the run's csv logs and print its path (the curve is read
    from the csv logger's files, so runs without it get a note instead)."""
    from benchmarl_ext.plots import plot_learning_curve

    if "csv" in experiment.config.loggers:
        print(f"learning curve: {plot_learning_curve(experiment.folder_name)}")
    else:
        print("learning curve: not drawn (it is read from the csv logger's files; add csv to experiment.loggers)")


def check_choices(argv: list[str]) -> None:
    """Refuse, before anything runs, what Hydra would report without the useful part: a task of
    one of this package's suites that does not exist (naming the suite's tasks), a task whose
    environment package or a launcher or sweeper preset whose plugin is not installed (naming the
    extra to install)."""
    import importlib.util

    from benchmarl_ext.tasks import TASK_CONFIGS, TASKS

    for override in argv:
        group, _, name = override.partition("=")
        suite = name.split("/")[0]
        if group == "task" and suite in TASK_CONFIGS and name not in TASKS:  # this package's suites
            valid = [task.split("/")[1] for task in TASKS if task.startswith(f"{suite}/")]
            raise SystemExit(f"task={name}: {suite} has no task {name.split('/', 1)[-1]!r}; its tasks: {', '.join(valid)}")
        package = ENVIRONMENT_PACKAGES.get(suite) if group == "task" else None
        if package is not None and importlib.util.find_spec(package[0]) is None:
            raise SystemExit(
                f"task={name} needs the {package[0]} package, which is not installed: "
                f"pip install -c .ci/constraints.txt \".[{package[1]}]\" (from a checkout) or pip install \"magpo[{package[1]}]\""
            )
        plugin = PLUGINS.get(group, {}).get(name)
        if plugin is not None and importlib.util.find_spec(plugin[0]) is None:
            raise SystemExit(
                f"{group}={name} needs the {plugin[1]} plugin, which is not installed: "
                f"pip install -c .ci/constraints.txt \".[{plugin[2]}]\" (from a checkout) or pip install \"magpo[{plugin[2]}]\""
            )


def _run_with_hydra(argv: list[str]) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig, OmegaConf

    from benchmarl_ext import CONFIG_PACKAGE
    from benchmarl_ext.experiment import EvaluationCurve

    @hydra.main(config_path=CONFIG_PACKAGE, config_name="config", version_base=None)
    def run(cfg: DictConfig) -> float:
        """One run; returns its ``objective`` (what a sweeper such as Optuna maximises). A launcher
        may run it in a fresh process (joblib, SLURM, Ray), so it sets threads and registers again."""
        from benchmarl_ext.registration import register

        configure_threads()
        register()
        if cfg.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {list(OBJECTIVES)}, got {cfg.objective!r}")
        choices = HydraConfig.get().runtime.choices
        print(f"\nAlgorithm: {choices.algorithm}, Task: {choices.task}\n")
        print(OmegaConf.to_yaml(cfg))
        curve = EvaluationCurve()
        experiment = build_experiment(cfg, task_name=choices.task, callbacks=[curve])
        experiment.run()
        report_learning_curve(experiment)
        if not curve.points:
            return float("nan")
        value = curve.objective(cfg.objective)
        print(f"objective ({cfg.objective} evaluation return): {value:.6g}")
        return value

    check_choices(argv)
    sys.argv = ["benchmarl run", *argv]
    run()


def reload_experiment(checkpoint: str, for_evaluation: bool = False):
    """Rebuild the experiment a checkpoint belongs to, from the run's saved ``.hydra`` config.

    The checkpoint is read and validated before anything is built. ``for_evaluation`` builds it
    with no training loggers, so an evaluation writes only its own ``evaluations/*.json``."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from benchmarl_ext.checkpoints import CheckpointError

    path = Path(checkpoint).resolve()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {checkpoint}: no such file")
    hydra_dir = next((p / ".hydra" for p in list(path.parents)[:4] if (p / ".hydra").is_dir()), None)
    if hydra_dir is None:
        raise CheckpointError(f"checkpoint {checkpoint}: no .hydra folder within three levels above it; was it made by `benchmarl run`?")
    overrides = list(OmegaConf.load(hydra_dir / "overrides.yaml"))
    with initialize_config_module(config_module="benchmarl_ext.conf", version_base=None):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    task_name = cfg.hydra.runtime.choices.task
    saved = OmegaConf.load(hydra_dir / "config.yaml")
    del cfg.hydra
    cfg.merge_with(saved)
    cfg.experiment.restore_file = str(path)
    if for_evaluation:
        cfg.experiment.loggers = []
        cfg.experiment.create_json = False
    return build_experiment(cfg, task_name=task_name)


def configure_threads() -> int:
    """Set torch's intra-op threads for this process and return the count.

    ``MAGPO_NUM_THREADS`` if set; else ``OMP_NUM_THREADS`` (which torch reads itself); else 1.
    One thread is the default because these small networks gain little from a second one on a
    quiet machine and lose several times over beside one busy process
    (docs/research-log.md, `threads.md`); it also keeps parallel multirun jobs off each other's cores.
    """
    import torch

    value = os.environ.get(THREADS_VARIABLE)
    if value is None and "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    if value is None:
        threads = 1
    elif value.isdigit() and int(value) >= 1:
        threads = int(value)
    else:
        raise SystemExit(f"{THREADS_VARIABLE} must be an integer >= 1, got {value!r}")
    torch.set_num_threads(threads)
    return threads


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("WANDB_MODE", "offline")  # works with no network; WANDB_MODE=online to sync
    configure_threads()
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
        experiment = reload_experiment(rest[0], for_evaluation=command == "evaluate")
        if command == "resume":
            experiment.run()
            report_learning_curve(experiment)
        else:
            experiment.evaluate()
            experiment.close()
    else:
        raise SystemExit(f"unknown command {command!r}\n{USAGE}")


if __name__ == "__main__":
    main()
