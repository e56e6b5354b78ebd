"""The shipped Optuna sweeper preset: a tiny 2-trial TPE search end to end, and its bad values."""

from __future__ import annotations

import pytest
import yaml

from benchmarl_ext import cli
from benchmarl_ext.plots import read_scalar

pytestmark = pytest.mark.filterwarnings("ignore")
pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the sweep extra (part of the test extra) is missing")

TINY = [
    "algorithm=magpo", "task=vmas/balance", "task.max_steps=20", "experiment=cpu", "experiment.max_n_frames=160",
    "experiment.on_policy_collected_frames_per_batch=80", "experiment.on_policy_n_envs_per_worker=4",
    "experiment.on_policy_minibatch_size=40", "experiment.on_policy_n_minibatch_iters=2",
    "experiment.evaluation_interval=80", "experiment.evaluation_episodes=2", "model.num_cells=[16,16]",
    "critic_model.num_cells=[16,16]", "algorithm.guider_heads=2",
]


def sweep(tmp_path, extra):
    cli.main(["run", "-m", "hydra/sweeper=magpo_optuna", "hydra.sweeper.n_trials=2",
              "hydra.sweeper.sampler.n_startup_trials=1", *TINY, *extra, f"hydra.sweep.dir={tmp_path}"])
    return yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())


def trial_objectives(tmp_path, kind):
    values = []
    for trial in sorted(p for p in tmp_path.iterdir() if p.is_dir() and p.name.isdigit()):
        (folder,) = [p for p in trial.iterdir() if p.is_dir() and not p.name.startswith(".")]
        curve = read_scalar(folder, "eval_reward_episode_reward_mean")
        returns = [curve[step] for step in sorted(curve)]
        values.append(returns[-1] if kind == "final" else sum(returns) / len(returns))  # equal frame spacing
    return values


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["final", "auc"])
def test_two_trial_search_maximises_the_learner_objective(tmp_path, objective):
    results = sweep(tmp_path, [f"objective={objective}"])
    objectives = trial_objectives(tmp_path, objective)
    assert len(objectives) == 2
    assert results["best_value"] == pytest.approx(max(objectives), abs=1e-5)
    params = results["best_params"]
    assert params["algorithm.delta"] in (1.1, 1.2, 1.3, 1.5, 2.0, 3.0)
    assert params["algorithm.aux_coef"] in (0.0, 1.0, 2.0, 4.0, 8.0)
    assert 1e-4 <= params["algorithm.guider_lr"] <= 3e-3


def test_a_range_outside_the_domain_fails_naming_the_field(tmp_path, monkeypatch, capfd):
    import benchmarl.experiment.experiment as bm_experiment

    def no_env(*args, **kwargs):
        raise AssertionError("an environment was built")

    monkeypatch.setattr(bm_experiment.Experiment, "_setup_task", no_env)
    with pytest.raises(SystemExit):  # Hydra reports a failed job and exits
        sweep(tmp_path, ["algorithm.delta=choice(0.5,0.9)"])  # a command-line range replaces the preset's
    assert "algorithm.delta must be > 1" in capfd.readouterr().err


def test_unknown_objective_is_refused(tmp_path, capfd):
    with pytest.raises(SystemExit):
        cli.main(["run", *TINY, "objective=median", f"hydra.run.dir={tmp_path}"])
    assert "objective must be one of ['final', 'auc'], got 'median'" in capfd.readouterr().err
