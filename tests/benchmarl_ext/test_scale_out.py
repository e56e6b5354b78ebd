"""Scale-out and logging on existing engines: Hydra's launcher plugins through the presets in
conf/hydra/launcher, and TensorBoard through BenchMARL's logger. Tiny sizes."""

from __future__ import annotations

import importlib.util
import math
import sys
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


def test_joblib_multirun_runs_two_jobs_in_parallel_processes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="the launchers extra (part of the test extra) is missing")
    cli.main(["run", "-m", "hydra/launcher=magpo_local", "hydra.launcher.n_jobs=2", "algorithm=magpo,mappo", *TINY,
              "experiment.create_json=true", f"hydra.sweep.dir={tmp_path}"])
    folders = sorted(p for job in ("0", "1") for p in (tmp_path / job).iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [f.name.split("_")[0] for f in folders] == ["magpo", "mappo"]
    for folder in folders:
        values = read_scalar(folder, "eval_reward_episode_reward_mean")
        assert len(values) == 2 and all(math.isfinite(v) for v in values.values())
    # the multirun's BenchMARL json files are what the evaluation protocol reads; MAGPO's are its learner's
    if importlib.util.find_spec("rliable") is not None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
        import protocol

        curves, frames = protocol.read_curves(tmp_path)
        assert sorted(curves["vmas/balance"]) == ["magpo", "mappo"] and len(frames["vmas/balance"]) == 2
        learner = read_scalar(folders[0], "eval_reward_episode_reward_mean")
        assert curves["vmas/balance"]["magpo"][0] == pytest.approx([learner[k] for k in sorted(learner)], rel=1e-5)


@pytest.mark.parametrize("launcher, module", [("magpo_local", "hydra_joblib_launcher"),
                                              ("magpo_slurm", "hydra_submitit_launcher")])
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
