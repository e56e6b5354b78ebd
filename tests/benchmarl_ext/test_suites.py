"""The paper's other suites in BenchMARL: RWARE and LBF (this package's tasks) and MPE's
simple_spread (BenchMARL's PettingZoo and VMAS ports): MAGPO, MAPPO and MAT end to end on the
smallest task of each, and the errors for an unknown task or a missing package. Tiny sizes."""

from __future__ import annotations

import math
import sys

import pytest
from configs import build_experiment, compose_config

from benchmarl_ext import cli
from benchmarl_ext.plots import read_scalar
from benchmarl_ext.registration import register

pytestmark = pytest.mark.filterwarnings("ignore")
register()

BUDGET = ["experiment=cpu", "experiment.max_n_frames=80", "experiment.on_policy_collected_frames_per_batch=40",
          "experiment.on_policy_n_envs_per_worker=2", "experiment.on_policy_minibatch_size=20",
          "experiment.on_policy_n_minibatch_iters=1", "experiment.evaluation_interval=40",
          "experiment.evaluation_episodes=2", "model.num_cells=[16]", "critic_model.num_cells=[16]"]
TASKS = {"rware/tiny-2ag": ["task.time_limit=10"], "lbf/8x8-2p-2f-coop": ["task.time_limit=10"],
         "vmas/simple_spread": ["task.max_steps=10"], "pettingzoo/simple_spread": ["task.N=3", "task.max_cycles=10"]}
ALGORITHMS = {"magpo": ["algorithm.guider_embed_dim=8", "algorithm.guider_heads=2"], "mappo": [],
              "mat": ["algorithm.embed_dim=8", "algorithm.heads=2"]}


def test_every_task_of_the_suites_is_a_benchmarl_task():
    from benchmarl_ext.tasks import TASKS as BENCHMARL_TASKS
    from magpo.envs.gym_suites import SUITES

    for suite in SUITES:
        names = {name.split("/")[1] for name in BENCHMARL_TASKS if name.startswith(f"{suite}/")}
        assert names == set(SUITES[suite].tasks), suite
        for name in names:
            compose_config(["algorithm=mappo", f"task={suite}/{name}", "experiment=cpu"])  # its YAML exists


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_smallest_task_of_each_suite_end_to_end(tmp_path, task, algorithm):
    if task.split("/")[0] in ("rware", "lbf", "pettingzoo"):
        pytest.importorskip({"rware": "rware", "lbf": "lbforaging", "pettingzoo": "pettingzoo"}[task.split("/")[0]])
    run_dir = tmp_path / "run"
    cli.main(["run", f"algorithm={algorithm}", *ALGORITHMS[algorithm], f"task={task}", *TASKS[task], *BUDGET,
              f"hydra.run.dir={run_dir}"])
    (folder,) = [p for p in run_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    returns = read_scalar(folder, "eval_reward_episode_reward_mean")
    assert len(returns) == 2 and all(math.isfinite(v) for v in returns.values())
    if algorithm == "magpo":
        assert len(read_scalar(folder, "eval_guider_reward_episode_reward_mean")) == 2


@pytest.mark.parametrize("task, listed", [("rware/tiny-3ag", "tiny-2ag, tiny-2ag-hard"),
                                          ("lbf/9x9-2p-2f", "15x15-3p-5f"), ("coordsum/4x10", "3x10, 3x30, 5x20, 8x15")])
def test_an_unknown_task_lists_the_suites_tasks(task, listed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=rf"^task={task}: .*its tasks: .*{listed}"):
        cli.main(["run", "algorithm=magpo", f"task={task}", *BUDGET])
    assert not any(tmp_path.iterdir())


def test_a_missing_package_names_the_extra_before_any_environment(tmp_path, monkeypatch):
    import benchmarl.experiment.experiment as bm_experiment

    monkeypatch.setitem(sys.modules, "rware", None)  # makes `import rware` fail as if it were not installed
    monkeypatch.setattr(bm_experiment.Experiment, "_setup_task", lambda *a, **k: pytest.fail("an environment was built"))
    with pytest.raises(ImportError, match=r"^task: this task needs the rware package.*\[rware\]"):
        build_experiment(tmp_path, ["algorithm=magpo", "task=rware/tiny-2ag", *BUDGET])
    with pytest.raises(ValueError, match=r"^task\.time_limit"):
        build_experiment(tmp_path, ["algorithm=magpo", "task=lbf/8x8-2p-2f-coop", "task.time_limit=0", *BUDGET])


def test_a_missing_benchmarl_environment_package_names_the_extra(tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pettingzoo" else find_spec(name, *a))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"^task=pettingzoo/simple_spread needs the pettingzoo package.*\[mpe\]"):
        cli.main(["run", "algorithm=magpo", "task=pettingzoo/simple_spread", *BUDGET])
    assert not any(tmp_path.iterdir())
