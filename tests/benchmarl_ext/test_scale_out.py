"""Scale-out and logging on existing engines: Hydra's launcher plugins through the presets in
conf/hydra/launcher, and TensorBoard through BenchMARL's logger. Tiny sizes."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from benchmarl_ext import cli
from benchmarl_ext.plots import read_scalar
from benchmarl_ext.registration import register

pytestmark = pytest.mark.filterwarnings("ignore")
register()

TINY = [
    "task=vmas/balance", "task.max_steps=20", "experiment=cpu", "experiment.max_n_frames=160",
    "experiment.on_policy_collected_frames_per_batch=80", "experiment.on_policy_n_envs_per_worker=4",
    "experiment.on_policy_minibatch_size=40", "experiment.on_policy_n_minibatch_iters=2",
    "experiment.evaluation_interval=80", "experiment.evaluation_episodes=2", "model.num_cells=[16,16]",
    "critic_model.num_cells=[16,16]",
]


def finished_magpo_and_mappo_runs(sweep_dir: Path) -> list[Path]:
    """The experiment folders of a two-job ``algorithm=magpo,mappo`` multirun, checked to hold both
    evaluations of a TINY run with finite returns."""
    folders = sorted(p for job in ("0", "1") for p in (sweep_dir / job).iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [f.name.split("_")[0] for f in folders] == ["magpo", "mappo"]
    for folder in folders:
        values = read_scalar(folder, "eval_reward_episode_reward_mean")
        assert len(values) == 2 and all(math.isfinite(v) for v in values.values())
    return folders


@pytest.mark.slow
def test_joblib_multirun_runs_two_jobs_in_parallel_processes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="the launchers extra (part of the test extra) is missing")
    cli.main(["run", "-m", "hydra/launcher=magpo_local", "hydra.launcher.n_jobs=2", "algorithm=magpo,mappo", *TINY,
              "experiment.create_json=true", f"hydra.sweep.dir={tmp_path}"])
    folders = finished_magpo_and_mappo_runs(tmp_path)
    # the multirun's BenchMARL json files are what the evaluation protocol reads; MAGPO's are its learner's
    if importlib.util.find_spec("rliable") is not None:
        from benchmarl_ext import protocol

        curves, frames = protocol.read_curves(tmp_path)
        assert sorted(curves["vmas/balance"]) == ["magpo", "mappo"] and len(frames["vmas/balance"]) == 2
        learner = read_scalar(folders[0], "eval_reward_episode_reward_mean")
        assert curves["vmas/balance"]["magpo"][0] == pytest.approx([learner[k] for k in sorted(learner)], rel=1e-5)


@pytest.mark.slow
def test_ray_multirun_runs_two_jobs_as_ray_tasks(tmp_path):
    """The magpo_ray preset with ``address=null``: Ray starts a local instance here, and each run is a
    Ray task with one CPU, no GPU and one torch thread (the preset's 8 would oversubscribe 2 cores)."""
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="the ray extra (part of the test extra) is missing")
    import ray

    try:
        cli.main(["run", "-m", "hydra/launcher=magpo_ray", "hydra.launcher.ray.init.address=null",
                  "+hydra.launcher.ray.init.num_cpus=2", "+hydra.launcher.ray.init.include_dashboard=false",
                  "hydra.launcher.ray.init.runtime_env.env_vars.MAGPO_NUM_THREADS='1'",
                  "hydra.launcher.ray.remote.num_gpus=0", "hydra.launcher.ray.remote.num_cpus=1",
                  "algorithm=magpo,mappo", *TINY, f"hydra.sweep.dir={tmp_path}"])
    finally:
        ray.shutdown()
    finished_magpo_and_mappo_runs(tmp_path)


@pytest.mark.parametrize("launcher, module", [("magpo_local", "hydra_joblib_launcher"),
                                              ("magpo_slurm", "hydra_submitit_launcher"),
                                              ("magpo_ray", "hydra_ray_launcher")])
def test_launcher_presets_compose(launcher, module):
    pytest.importorskip(f"hydra_plugins.{module}")
    with initialize_config_module(config_module="benchmarl_ext.conf", version_base=None):
        cfg = compose(config_name="config", overrides=["algorithm=magpo", *TINY, f"hydra/launcher={launcher}"],
                      return_hydra_config=True)
    settings = cfg.hydra.launcher
    assert module.split("_")[1] in settings._target_
    if launcher == "magpo_slurm":  # one GPU run per job, threads matched to its CPUs
        assert (settings.gpus_per_node, settings.cpus_per_task) == (1, 8)
        assert settings.setup == ["export MAGPO_NUM_THREADS=8"]
    if launcher == "magpo_ray":  # a running cluster, one GPU run per task, threads matched to its CPUs
        assert settings.ray.init.address == "auto"
        assert (settings.ray.remote.num_gpus, settings.ray.remote.num_cpus) == (1, 8)
        assert settings.ray.init.runtime_env.env_vars == {"MAGPO_NUM_THREADS": "8"}


@pytest.mark.parametrize("option, package, extra", [("hydra/launcher=magpo_ray", "hydra-ray-launcher", "ray"),
                                                    ("hydra/launcher=magpo_slurm", "hydra-submitit-launcher", "launchers"),
                                                    ("hydra/sweeper=magpo_optuna", "hydra-optuna-sweeper", "sweep")])
def test_a_missing_plugin_names_the_extra_before_anything_runs(option, package, extra, monkeypatch, tmp_path):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("hydra_plugins.") else find_spec(name, *a))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=rf"^{option}.*{package}.*\[{extra}\]"):
        cli.main(["run", "-m", option, "algorithm=magpo", *TINY])
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.slow
def test_tensorboard_logs_magpo_keys(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra (part of the test extra) is missing")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    cli.main(["run", "algorithm=magpo", "algorithm.guider_embed_dim=8", "algorithm.guider_heads=2", *TINY,
              "experiment.loggers=[tensorboard]", f"hydra.run.dir={run_dir}"])
    events = min(run_dir.rglob("events.out.tfevents.*"), key=lambda p: len(p.parts))  # not the hparams subfolder
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    for tag in ("eval_reward_episode_reward_mean", "eval_guider_reward_episode_reward_mean", "train_agents_loss_guider",
                "train_agents_loss_learner", "train_agents_learner_kl", "train_agents_mask_fraction",
                "train_agents_guider_clip_fraction"):  # TorchRL's logger writes train/agents/x as train_agents_x
        assert tag in tags, (tag, sorted(tags))
        assert len(accumulator.Scalars(tag)) == 2


@pytest.mark.slow
def test_benchmark_runs_go_through_a_launcher_and_finished_ones_are_reused(tmp_path, monkeypatch):
    """benchmarl_ext.benchmark_runs.run_many: a list of runs, each with its own overrides, through
    hydra/sweeper=magpo_runs and the joblib launcher; a second call launches nothing."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="the launchers extra (part of the test extra) is missing")
    from benchmarl_ext import runs as benchmark_runs

    runs = [("balance_magpo", ["algorithm=magpo", "seed=3", *TINY]), ("balance_mappo", ["algorithm=mappo", *TINY])]
    folders = benchmark_runs.run_many(runs, tmp_path, jobs=2)
    assert [f.parent.name for f in folders] == ["balance_magpo", "balance_mappo"]
    assert [f.name.split("_")[0] for f in folders] == ["magpo", "mappo"]
    assert all((f / "learning_curve.png").exists() for f in folders)
    assert "seed: 3" in (folders[0].parent / ".hydra" / "config.yaml").read_text()  # the run's own overrides
    monkeypatch.setattr(benchmark_runs.subprocess, "run", lambda *a, **k: pytest.fail("launched a finished run"))
    assert benchmark_runs.run_many(runs, tmp_path, jobs=2) == folders
    # a run whose overrides changed is not reused: it alone goes to the launcher again
    launched = []
    monkeypatch.setattr(benchmark_runs.subprocess, "run", lambda command, **k: launched.append(command))
    changed = [runs[0], ("balance_mappo", ["algorithm=mappo", "seed=1", *TINY])]
    with pytest.raises(RuntimeError, match=r"1 runs did not finish: balance_mappo"):
        benchmark_runs.run_many(changed, tmp_path, jobs=2)
    assert len(launched) == 1
    assert [r["name"] for r in json.loads((tmp_path / "runs.json").read_text())] == ["balance_mappo"]
    assert (folders[0] / "learning_curve.png").exists()


def test_random_level_is_the_evaluation_return_of_random_actions():
    """benchmarl_ext.benchmark_runs.random_policy_return on CoordSum-3x10 equals the same random rollout of
    CoordSumEnv summed by hand (fixed-length episodes, one reward for the team)."""
    import torch

    from benchmarl_ext import runs as benchmark_runs
    from magpo.envs.coordsum import GROUP, CoordSumEnv

    level = benchmark_runs.random_policy_return(["algorithm=mappo", "task=coordsum/3x10", "experiment=coordsum"], episodes=64)
    env = CoordSumEnv(3, 10, 30, batch_size=(64,), seed=0)
    torch.manual_seed(0)
    rollout = env.rollout(env.time_limit, break_when_any_done=False)
    assert level == pytest.approx(rollout.get(("next", GROUP, "reward"))[..., 0, 0].sum(-1).mean().item(), rel=1e-6)
    assert level > 0  # random actions hit some targets


def test_evaluation_return_counts_each_episode_up_to_its_first_done():
    """Steps after an episode's first done (an auto-reset's next episode) do not count; the
    group's reward is averaged over its agents; a group without one takes the env's reward."""
    import torch
    from tensordict import TensorDict

    from benchmarl_ext import runs as benchmark_runs

    done = torch.tensor([[0, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.bool).unsqueeze(-1)  # [episodes, time, 1]
    reward = torch.tensor([[1.0, 2.0, 100.0, 100.0], [1.0, 1.0, 1.0, 1.0]])
    per_agent = torch.stack([reward, 3 * reward], dim=-1).unsqueeze(-1)  # [episodes, time, 2 agents, 1]
    rollout = TensorDict({"next": {"done": done, "a": {"reward": per_agent}, "reward": reward.unsqueeze(-1)}}, batch_size=[2, 4])
    # episode 0: 2 * (1 + 2) = 6 (mean of the two agents: 2 x the reward); episode 1: 2 * 4 = 8
    assert benchmark_runs.evaluation_return(rollout, ["a"]) == pytest.approx(7.0)
    # group "b" has no reward of its own: the env's reward, (3 + 4) / 2
    assert benchmark_runs.evaluation_return(rollout, ["b"]) == pytest.approx(3.5)
    assert benchmark_runs.evaluation_return(rollout, ["a", "b"]) == pytest.approx(5.25)


@pytest.mark.slow
def test_a_failed_benchmark_run_is_named(tmp_path):
    from benchmarl_ext import runs as benchmark_runs

    with pytest.raises(RuntimeError, match=r"1 runs did not finish: bad_delta"):
        benchmark_runs.run_many([("bad_delta", ["algorithm=magpo", "algorithm.delta=0.5", *TINY])], tmp_path)
    assert "algorithm.delta" in (tmp_path / "multirun.log").read_text()


@pytest.mark.parametrize("content, message", [
    (None, "not a readable json file"),
    ("[]", "non-empty list"),
    ('[{"name": "a b", "overrides": []}]', "every run must be"),
    ('[{"name": "a", "overrides": ["x=1"]}, {"name": "a", "overrides": []}]', "appears twice"),
])
def test_a_bad_runs_file_is_refused_naming_the_field(tmp_path, content, message):
    from hydra_plugins.magpo_runs_sweeper import read_runs

    path = tmp_path / "runs.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=r"^hydra\.sweeper\.runs_file=.*" + message):
        read_runs(path)
