"""The authors' CoordSum recipe: experiment=coordsum_authors with algorithm=<method>_coordsum_<task>
composes to their published values, and the recipe's MAGPO runs end to end (tiny sizes)."""

from __future__ import annotations

import csv
import io
import math

import pytest
from benchmarl.hydra_config import (
    load_algorithm_config_from_hydra,
    load_experiment_config_from_hydra,
    load_model_config_from_hydra,
)
from benchmarl.models import GruConfig
from configs import build_experiment, compose_config

from benchmarl_ext import cli
from benchmarl_ext.plots import read_scalar
from benchmarl_ext.registration import frames_per_minibatch, register

pytestmark = pytest.mark.filterwarnings("ignore")
register()

# Rows of the authors' experiment_data/params.csv (commit d2ac38b), as published, for CoordSum.
PARAMS_CSV = """\
system_name,task,num_minibatches,max_grad_norm,n_embd,ppo_epochs,clip_eps,n_head,ent_coef,n_block,critic_lr,actor_lr,alpha,delta
mappo,3x10,8,5,,8,0.05,,0.00001,,0.0005,0.0005,,
mappo,3x30,8,5,,8,0.1,,0,,0.0005,0.0005,,
mappo,5x20,4,10,,8,0.1,,0.01,,0.00025,0.00025,,
mappo,8x15,4,10,,8,0.1,,0.00001,,0.0005,0.0005,,
ippo,3x10,8,5,,8,0.05,,0.00001,,0.0005,0.0005,,
ippo,3x30,8,5,,8,0.1,,0,,0.0005,0.0005,,
ippo,5x20,4,10,,8,0.1,,0.01,,0.00025,0.00025,,
ippo,8x15,4,10,,8,0.1,,0.00001,,0.0005,0.0005,,
magpo,3x10,8,0.5,32,10,0.05,1,0.01,2,0.00025,,2,1.3
magpo,3x30,4,0.5,64,15,0.1,1,0.01,1,0.0005,,8,1.2
magpo,5x20,8,0.5,64,15,0.2,2,0.01,2,0.0005,,4,1.1
magpo,8x15,8,0.5,64,15,0.2,1,0.01,2,0.001,,8,1.3
"""
ROWS = list(csv.DictReader(io.StringIO(PARAMS_CSV)))
FRAMES_PER_BATCH = 2 * 64 * 128  # update_batch_size x num_envs x rollout_length


def recipe(method: str, task: str):
    cfg, _ = compose_config([f"algorithm={method}_coordsum_{task}", f"task=coordsum/{task}", "experiment=coordsum_authors"])
    return (load_algorithm_config_from_hydra(cfg.algorithm), load_experiment_config_from_hydra(cfg.experiment),
            load_model_config_from_hydra(cfg.model), load_model_config_from_hydra(cfg.critic_model))


@pytest.mark.parametrize("row", ROWS, ids=[f"{r['system_name']}-{r['task']}" for r in ROWS])
def test_presets_hold_the_published_values(row):
    method, task = row["system_name"], row["task"]
    algorithm, experiment, model, critic_model = recipe(method, task)
    # shared: 20M frames in 1,220 iterations of 2 x 64 envs x 128 steps, Adam eps 1e-5, gamma 0.99
    assert experiment.collected_frames_per_batch(True) == FRAMES_PER_BATCH
    assert experiment.on_policy_n_envs_per_worker == 128 and experiment.max_n_frames == 1220 * FRAMES_PER_BATCH
    assert (experiment.adam_eps, experiment.gamma, algorithm.lmbda) == (1e-5, 0.99, 0.95)
    assert experiment.evaluation_interval * 122 == experiment.max_n_frames and experiment.evaluation_episodes == 32
    assert not experiment.evaluation_deterministic_actions
    for network in (model, critic_model):  # MLP-GRU-MLP, 128 units, ReLU
        assert isinstance(network, GruConfig) and network.hidden_size == 128 and list(network.mlp_num_cells) == [128]
    # per task
    assert experiment.on_policy_minibatch_size * int(row["num_minibatches"]) == FRAMES_PER_BATCH
    assert experiment.on_policy_n_minibatch_iters == int(row["ppo_epochs"])
    assert experiment.clip_grad_val == float(row["max_grad_norm"])
    assert experiment.lr == float(row["actor_lr"] or row["critic_lr"])  # MAGPO's sits in critic_lr
    assert algorithm.clip_epsilon == float(row["clip_eps"]) and algorithm.entropy_coef == float(row["ent_coef"])
    if method == "magpo":
        assert (algorithm.delta, algorithm.aux_coef) == (float(row["delta"]), float(row["alpha"]))
        assert (algorithm.guider_embed_dim, algorithm.guider_heads, algorithm.guider_layers) == (
            int(row["n_embd"]), int(row["n_head"]), int(row["n_block"]))
        assert (algorithm.guider_memory, algorithm.agent_order) == ("retention", "per_epoch")
        assert (algorithm.clip_value, algorithm.critic_coef) == (algorithm.clip_epsilon, 0.25)
        ctds, ctds_experiment, _, _ = recipe("ctds", task)  # CTDS: the same recipe, delta = inf, aux_coef = 0
        assert (ctds.delta, ctds.aux_coef) == (math.inf, 0.0)
        assert ctds.guider_embed_dim == algorithm.guider_embed_dim and ctds_experiment == experiment
    assert type(algorithm).__name__.lower() == f"{method}config"


def test_minibatches_follow_the_batch_and_must_split_it():
    cfg, _ = compose_config(["algorithm=magpo_coordsum_3x10", "task=coordsum/3x10", "experiment=coordsum"])
    assert load_experiment_config_from_hydra(cfg.experiment).on_policy_minibatch_size == 6400 // 8  # the CPU batch
    assert frames_per_minibatch(16384, 8) == 2048
    for bad, field in [((100, 8), "split into 8"), ((100, 0), ">= 1")]:
        with pytest.raises(ValueError, match=r"^experiment\.on_policy_minibatch_size.*" + field):
            frames_per_minibatch(*bad)


@pytest.mark.slow
def test_the_recipe_runs_with_a_recurrent_learner_and_the_retention_guider(tmp_path):
    tiny = ["task.time_limit=15", "experiment.on_policy_n_envs_per_worker=4",
            "experiment.on_policy_collected_frames_per_batch=80", "experiment.max_n_frames=160",
            "experiment.evaluation_interval=80", "experiment.evaluation_episodes=2", "experiment.create_json=false",
            "model.hidden_size=16", "model.mlp_num_cells=[16]", "critic_model.hidden_size=16",
            "critic_model.mlp_num_cells=[16]", "algorithm.guider_embed_dim=8"]
    command = ["algorithm=magpo_coordsum_3x10", "task=coordsum/3x10", "experiment=coordsum_authors", *tiny]
    experiment = build_experiment(tmp_path, command)
    assert experiment.algorithm.has_rnn and experiment.algorithm.guider_memory == "retention"
    assert experiment.algorithm.guider_decay_scaling == 0.8 and experiment.algorithm.guider_chunk is None  # theirs
    assert type(experiment.model_config).__name__ == "GruConfig"
    experiment.close()

    run_dir = tmp_path / "run"
    cli.main(["run", *command, f"hydra.run.dir={run_dir}"])
    (folder,) = [p for p in run_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert folder.name.startswith("magpo_") and "_gru_" in folder.name  # the recurrent learner
    for key in ("eval_reward_episode_reward_mean", "eval_guider_reward_episode_reward_mean", "train_agents_learner_kl"):
        values = read_scalar(folder, key)
        assert len(values) == 2 and all(math.isfinite(v) for v in values.values()), key
