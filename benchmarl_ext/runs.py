"""What the benchmark scripts share: running sets of `benchmarl run`s through a Hydra launcher
(one run in its own process for timings), the launcher flags of their command lines, and the
provenance line of a results file (statistics: :mod:`benchmarl_ext.protocol`, through rliable)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path


def benchmarl_run(name: str, overrides: list[str], runs_dir: Path, threads: int | None = None) -> Path:
    """``benchmarl run OVERRIDES`` in a fresh process of its own (for timings), logged to
    ``runs_dir/<name>.log``; returns the experiment folder. ``threads`` caps the run's torch
    threads."""
    run_dir = runs_dir / name
    shutil.rmtree(run_dir, ignore_errors=True)
    # the console script, not `python -m`: -m would put the working directory first on sys.path,
    # and from a checkout that shadows an installed (non-editable) package, whose conf/ lives elsewhere
    command = [str(Path(sys.executable).with_name("benchmarl")), "run", *overrides, f"hydra.run.dir={run_dir}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads)) if threads else None
    print(f"{name}: benchmarl run {' '.join(overrides)}", flush=True)
    runs_dir.mkdir(parents=True, exist_ok=True)
    with (runs_dir / f"{name}.log").open("w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, env=env)
    (folder,) = _experiment_folders(run_dir)
    return folder


def _experiment_folders(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.iterdir() if p.is_dir() and not p.name.startswith(".")] if run_dir.exists() else []


def run_overrides(run_dir: Path) -> list[str] | None:
    """The overrides Hydra recorded for the run in ``run_dir`` (``.hydra/overrides.yaml``), or
    None where there is no record."""
    import yaml

    record = run_dir / ".hydra" / "overrides.yaml"
    return [str(o) for o in yaml.safe_load(record.read_text()) or []] if record.exists() else None


def finished_run(run_dir: Path, overrides: list[str] | None = None) -> Path | None:
    """The experiment folder of a run that finished in ``run_dir`` (it saved its learning
    curve), else None. With ``overrides``, only a run made with exactly these overrides (in any
    order) counts as finished: a changed command runs again instead of reusing a stale result."""
    finished = [p for p in _experiment_folders(run_dir) if (p / "learning_curve.png").exists()]
    if len(finished) != 1:
        return None
    if overrides is not None and sorted(run_overrides(run_dir) or []) != sorted(overrides):
        return None
    return finished[0]


def add_launcher_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of every benchmark that launches runs: ``--jobs``, ``--launcher`` and
    ``--launcher-option`` (read back with :func:`launcher_from_arguments`)."""
    parser.add_argument("--jobs", type=int, default=1, help="runs at once on this machine (hydra/launcher=magpo_local), >= 1")
    parser.add_argument("--launcher", help="a Hydra launcher preset for the runs (magpo_local, magpo_slurm, magpo_ray)")
    parser.add_argument("--launcher-option", action="append", default=[], metavar="KEY=VALUE",
                        help="hydra.launcher.KEY=VALUE for --launcher, repeatable (e.g. partition=gpu)")


def launcher_from_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """The keyword arguments of :func:`run_many` (``jobs``, ``launcher``, ``launcher_options``)
    from the flags of :func:`add_launcher_arguments`; a bad value is a parser error."""
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    return {"jobs": args.jobs, "launcher": args.launcher, "launcher_options": tuple(args.launcher_option)}


def run_many(runs: list[tuple[str, list[str]]], runs_dir: Path, jobs: int = 1, launcher: str | None = None,
             launcher_options: tuple[str, ...] = ()) -> list[Path]:
    """``(name, overrides)`` runs through Hydra; returns their experiment folders in order.

    Runs already finished under ``runs_dir`` with the same overrides are reused; the others (an
    unfinished one, or one made with other overrides, is started afresh) go in one
    ``benchmarl run -m hydra/sweeper=magpo_runs`` to the launcher ``launcher``
    (``conf/hydra/launcher``, e.g. ``magpo_slurm``, with ``launcher_options`` as
    ``hydra.launcher.<key>=<value>``). Without one: ``magpo_local`` with ``jobs`` runs at once
    (each its own process with one torch thread: these small networks gain little from intra-op
    threads, so parallel runs finish a set sooner than threaded ones in sequence), or Hydra's
    basic launcher, one after another in one process, for ``jobs=1``. The launch's output goes
    to ``runs_dir/multirun.log``."""
    todo = []
    for name, overrides in runs:
        reused = finished_run(runs_dir / name, overrides)
        if reused is None:
            todo.append((name, overrides))
            stale = finished_run(runs_dir / name) is not None
            print(f"{name}: {'to run again (its overrides changed)' if stale else 'to run'}", flush=True)
        else:
            print(f"{name}: reusing {reused}", flush=True)
    if todo:
        launched = {"commit": code_commit(), "date": datetime.date.today().isoformat()}
        for name, _ in todo:
            shutil.rmtree(runs_dir / name, ignore_errors=True)
            (runs_dir / name).mkdir(parents=True)
            (runs_dir / name / "launched.json").write_text(json.dumps(launched))  # what the run executes
        runs_dir.mkdir(parents=True, exist_ok=True)
        runs_file = runs_dir / "runs.json"
        runs_file.write_text(json.dumps([{"name": n, "overrides": o} for n, o in todo], indent=1))
        if launcher is None and jobs > 1:
            launcher, launcher_options = "magpo_local", (f"n_jobs={jobs}", *launcher_options)
        chosen = [f"hydra/launcher={launcher}", *(f"hydra.launcher.{o}" for o in launcher_options)] if launcher else []
        command = [str(Path(sys.executable).with_name("benchmarl")), "run", "-m", "hydra/sweeper=magpo_runs",
                   f"hydra.sweeper.runs_file={runs_file.resolve()}", *chosen, f"hydra.sweep.dir={runs_dir.resolve()}"]
        print(f"{len(todo)} runs: {' '.join(command[1:])} (log: {runs_dir / 'multirun.log'})", flush=True)
        with (runs_dir / "multirun.log").open("w") as log:
            subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)  # what failed is named below
    folders = [finished_run(runs_dir / name, overrides) for name, overrides in runs]
    missing = [name for (name, _), folder in zip(runs, folders) if folder is None]
    if missing:
        raise RuntimeError(f"{len(missing)} runs did not finish: {', '.join(missing)} (see {runs_dir / 'multirun.log'})")
    return folders


def code_commit() -> str:
    """The checkout's short commit, with ``+local`` when the code a run executes (not docs or
    results) has uncommitted changes; run from the checkout."""
    code = ["magpo", "kernels", "benchmarl_ext", "conf", "hydra_plugins", "benchmarks/evidence.yaml"]

    def git(*args: str) -> str:
        with subprocess.Popen(["git", *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as process:
            return process.communicate()[0].strip() if process.wait() == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:  # not a git checkout
        return "unknown"
    return commit + ("+local" if git("status", "--porcelain", "--untracked-files=no", "--", *code) else "")


def random_policy_return(overrides: list[str], episodes: int = 200, seed: int = 0) -> float:
    """The evaluation return of uniformly random actions on the task that ``benchmarl run
    OVERRIDES`` composes (a run's overrides, e.g. ``["algorithm=mappo", "task=vmas/simple_spread",
    "experiment=cpu", "task.n_agents=5"]``; the algorithm is not used): the level every method
    starts from, so that a lead there is not read as learning.

    Measured as BenchMARL's ``eval/reward/episode_reward_mean``: on ``episodes`` environments
    (vectorized, or BenchMARL's ``SerialEnv`` of single ones) with the task's transforms, each
    episode's reward summed up to its first done, averaged over a group's agents, then over
    episodes and groups. Actions are drawn from the action spec with torch's generator seeded by
    ``seed`` (the experiment's continuous or discrete choice; action masks are not applied)."""
    import torch
    from benchmarl.hydra_config import load_task_config_from_hydra
    from hydra import compose, initialize_config_module
    from torchrl.envs import Compose, SerialEnv, TransformedEnv

    from benchmarl_ext.registration import register

    register()
    with initialize_config_module(config_module="benchmarl_ext.conf", version_base=None):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    task = load_task_config_from_hydra(cfg.task, cfg.hydra.runtime.choices.task)
    continuous = cfg.experiment.prefer_continuous_actions and task.supports_continuous_actions()
    env_fun = task.get_env_fun(num_envs=episodes, continuous_actions=continuous, seed=seed, device="cpu")
    base = env_fun()
    transforms = Compose(*task.get_env_transforms(base))
    if base.batch_size:
        env = TransformedEnv(base, transforms)
    else:
        env = SerialEnv(episodes, lambda: TransformedEnv(env_fun(), transforms.clone()))
    group_map = task.group_map(base)
    torch.manual_seed(seed)
    rollout = env.rollout(task.max_steps(base), break_when_any_done=False)  # [episodes, time]
    return evaluation_return(rollout, list(group_map))


def evaluation_return(rollout, groups: list[str]) -> float:
    """BenchMARL's evaluation return of a rollout ``[episodes, time]`` of a multi-agent env, as
    its logger computes it: each episode's reward summed up to and including its first
    ``("next", "done")`` (later steps belong to the next episode), the group's
    ``("next", group, "reward")`` ``[episodes, time, n_agents, 1]`` averaged over its agents (or
    the env's ``("next", "reward")`` ``[episodes, time, 1]`` where the group has none), then
    averaged over the episodes and the groups."""
    import torch

    done = rollout.get(("next", "done")).squeeze(-1).long()
    counted = (done.cumsum(-1) - done) == 0
    returns = []
    for group in groups:
        reward = rollout.get(("next", group, "reward"), None)
        per_step = rollout.get(("next", "reward")).squeeze(-1) if reward is None else reward.squeeze(-1).mean(-1)
        returns.append((per_step * counted).sum(-1).mean())
    return torch.stack(returns).mean().item()


def provenance() -> str:
    """Date, machine, versions and commit, for the header of a results file."""
    import benchmarl
    import torch
    import torchrl
    import vmas

    root = Path.cwd()  # the checkout the benchmark runs from (the package may be installed elsewhere)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True).stdout
    return (
        f"Measured {datetime.date.today().isoformat()} at commit {commit or 'unknown'}{' (with local changes)' if dirty.strip() else ''} "
        f"on {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads here), torchrl {torchrl.__version__}, "
        f"benchmarl {benchmarl.__version__}, vmas {vmas.__version__}."
    )
