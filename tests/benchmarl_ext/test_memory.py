"""Memory in BenchMARL runs: the guider's memory over the episode (algorithm.guider_memory=gru or
retention) and recurrent learners and critics through BenchMARL's own model configs. Tiny sizes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from benchmarl.experiment.callback import Callback
from benchmarl.models import Gru, Lstm
from configs import build_experiment

from benchmarl_ext import cli
from benchmarl_ext.plots import read_scalar
from benchmarl_ext.registration import register

pytestmark = pytest.mark.filterwarnings("ignore")
register()

ENVS, STEPS = 4, 20
TINY = [
    "task=vmas/balance", "task.max_steps=15", "experiment=cpu",  # rollouts of 20 steps start inside episodes
    "experiment.max_n_frames=160", f"experiment.on_policy_collected_frames_per_batch={ENVS * STEPS}",
    f"experiment.on_policy_n_envs_per_worker={ENVS}", "experiment.on_policy_minibatch_size=40",
    "experiment.on_policy_n_minibatch_iters=2", "experiment.evaluation_interval=80",
    "experiment.evaluation_episodes=2",
    "algorithm=magpo_transformer", "algorithm.guider_embed_dim=8", "algorithm.guider_heads=2",
]
MLP = ["model.num_cells=[16,16]", "critic_model.num_cells=[16,16]"]
RECURRENT = ["model.hidden_size=16", "model.mlp_num_cells=[16]"]


def build(folder: Path, overrides: list[str], callbacks=()):
    return build_experiment(folder, [*TINY, *overrides], callbacks=callbacks)


class CheckCollectedBatches(Callback):
    """Before training on each batch, recompute the guider's log-probs over the stored rollouts."""

    def __init__(self, state_key):
        super().__init__()
        self.state_key = state_key
        self.gaps, self.batch_shapes, self.minibatch_shapes = [], [], []
        self.starts, self.state_at_starts, self.rollouts_in_mid_episode = 0, [], 0

    def on_batch_collected(self, batch):
        self.batch_shapes.append(tuple(batch.batch_size))
        start = batch.get("is_init").squeeze(-1)  # [envs, T]
        state = batch.get(self.state_key)  # [envs, T, ...]: the state entering each step
        self.starts += int(start.sum())
        self.rollouts_in_mid_episode += int((~start[:, 0]).sum())  # their first stored state matters
        self.state_at_starts.append(state[start].abs().max().item() if start.any() else 0.0)
        for_loss = self.experiment.algorithm.get_policy_for_loss("agents")
        with torch.no_grad():
            recomputed = for_loss.get_dist(batch.clone()).log_prob(batch.get(("agents", "action")))
        self.gaps.append((recomputed - batch.get(("agents", "log_prob"))).abs().max().item())

    def on_train_step(self, batch, group):
        self.minibatch_shapes.append(tuple(batch.batch_size))


@pytest.mark.slow
@pytest.mark.parametrize("memory, state_key", [
    (["algorithm.guider_memory=gru"], ("agents", "guider_memory")),
    (["algorithm.guider_memory=retention"], ("guider_retention", "agents")),  # the whole rollout at once
    (["algorithm.guider_memory=retention", "algorithm.guider_chunk=5"], ("guider_retention", "agents")),
], ids=["gru", "retention", "retention-chunks-of-5"])
@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "continuous"])
def test_memory_guider_stores_its_state_and_trains_on_whole_rollouts_with_the_collected_log_probs(
        tmp_path, memory, state_key, continuous):
    check = CheckCollectedBatches(state_key)
    experiment = build(tmp_path, [*MLP, *memory, f"experiment.prefer_continuous_actions={str(continuous).lower()}",
                                  "experiment.loggers=[]"], [check])
    experiment.run()
    assert check.batch_shapes == [(ENVS, STEPS)] * 2
    assert set(check.minibatch_shapes) == {(2, STEPS)}  # 40 frames: two whole rollouts
    assert check.starts >= ENVS and max(check.state_at_starts) == 0  # reset at every episode start
    assert check.rollouts_in_mid_episode > 0
    assert max(check.gaps) < 1e-5, check.gaps  # training's log-probs are collection's


@pytest.mark.slow
@pytest.mark.parametrize("model, network", [("layers/gru", Gru), ("layers/lstm", Lstm)])
def test_recurrent_learner_and_critic_with_the_memory_guider_end_to_end(tmp_path, model, network):
    run_dir = tmp_path / "run"
    overrides = [f"model={model}", *RECURRENT, f"model@critic_model={model}", "critic_model.hidden_size=16",
                 "critic_model.mlp_num_cells=[16]", "algorithm.guider_memory=gru"]
    cli.main(["run", *TINY, *overrides, f"hydra.run.dir={run_dir}"])
    (folder,) = [p for p in run_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    for key in ("eval_reward_episode_reward_mean", "eval_guider_reward_episode_reward_mean",
                "train_agents_loss_learner", "train_agents_learner_kl"):
        values = read_scalar(folder, key)
        assert len(values) == 2 and all(math.isfinite(v) for v in values.values()), key

    experiment = build(tmp_path / "built", overrides)  # what that run trained: a recurrent learner and critic
    learner = experiment.algorithm.get_learner_policy()
    assert any(isinstance(m, network) for m in learner.modules())
    assert any(isinstance(m, network) for m in experiment.algorithm.get_critic("agents").modules())
    experiment.close()


@pytest.mark.parametrize("guider", ["anchored", "residual"])
def test_a_guider_built_on_the_learner_refuses_a_recurrent_learner_before_any_environment(tmp_path, guider, monkeypatch):
    import benchmarl.experiment.experiment as bm_experiment

    monkeypatch.setattr(bm_experiment.Experiment, "_setup_task", lambda *a, **k: pytest.fail("an environment was built"))
    with pytest.raises(ValueError, match=r"^algorithm\.guider=" + guider + ".*cannot be recurrent"):
        build(tmp_path, ["model=layers/gru", *RECURRENT, "critic_model.num_cells=[16,16]", f"algorithm.guider={guider}"])
