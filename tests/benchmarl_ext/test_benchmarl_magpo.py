"""MAGPO in BenchMARL: the `benchmarl` command end to end, learner-only evaluation,
backtracking, checkpoints and resume (exactness, safety and bad values: test_trust.py). Tiny sizes."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import configs
import pytest
import torch
from torchrl.envs.utils import ExplorationType, set_exploration_type

from benchmarl_ext import cli
from benchmarl_ext import experiment as experiment_module
from benchmarl_ext.plots import read_scalar
from benchmarl_ext.registration import register
from magpo.guiders import SequentialGuiderSampler, TeacherForcedGuider

pytestmark = pytest.mark.filterwarnings("ignore")
register()

TINY = [
    "task=vmas/balance",
    "task.max_steps=20",
    "experiment=cpu",
    "experiment.max_n_frames=160",
    "experiment.on_policy_collected_frames_per_batch=80",
    "experiment.on_policy_n_envs_per_worker=4",
    "experiment.on_policy_minibatch_size=40",
    "experiment.on_policy_n_minibatch_iters=2",
    "experiment.evaluation_interval=80",
    "experiment.evaluation_episodes=2",
    "model.num_cells=[16,16]",
    "critic_model.num_cells=[16,16]",
]
SMALL_GUIDER = ["algorithm.guider_embed_dim=8", "algorithm.guider_heads=2"]


def run_command(tmp_path: Path, overrides: list[str]) -> Path:
    """`benchmarl run ...` in-process; returns the experiment folder."""
    run_dir = tmp_path / "run"
    cli.main(["run", *TINY, *overrides, f"hydra.run.dir={run_dir}"])
    (folder,) = [p for p in run_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return folder


def compose_config(overrides: list[str]):
    return configs.compose_config([*TINY, *overrides])


def make_experiment(tmp_path: Path, overrides: list[str]):
    return configs.build_experiment(tmp_path, [*TINY, *overrides])


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, name",
    [
        (["algorithm=magpo", *SMALL_GUIDER], "magpo"),
        (["algorithm=magpo_transformer", *SMALL_GUIDER], "magpo"),
        (["algorithm=magpo", "experiment.prefer_continuous_actions=false", "algorithm.guider=residual",
          "algorithm.backtrack=true", "algorithm.agent_order=fixed", "algorithm.guider_embed_dim=8"], "magpo"),
        (["algorithm=ctds", *SMALL_GUIDER], "ctds"),
        (["algorithm=mappo"], "mappo"),
        (["algorithm=mat", "algorithm.embed_dim=8", "algorithm.heads=2"], "mat"),
    ],
    ids=["magpo-continuous", "magpo-transformer-continuous", "magpo-discrete-residual-backtrack", "ctds", "mappo", "mat"],
)
def test_benchmarl_run_end_to_end(tmp_path, overrides, name):
    folder = run_command(tmp_path, overrides)
    assert folder.name.startswith(name)
    evaluation = read_scalar(folder, "eval_reward_episode_reward_mean")
    assert len(evaluation) == 2 and all(math.isfinite(v) for v in evaluation.values())
    assert (folder / "learning_curve.png").stat().st_size > 0
    assert list((folder / "checkpoints").glob("checkpoint_160.pt"))
    if name in ("magpo", "ctds"):
        assert len(read_scalar(folder, "eval_guider_reward_episode_reward_mean")) == 2
        for term in ("loss_guider", "loss_learner", "loss_critic", "mask_fraction", "guider_kl", "learner_kl",
                     "guider_clip_fraction", "learner_clip_fraction", "guider_entropy", "explained_variance"):
            values = read_scalar(folder, f"train_agents_{term}")
            assert len(values) == 2 and all(math.isfinite(v) for v in values.values()), term
        if name == "ctds":
            assert set(read_scalar(folder, "train_agents_mask_fraction").values()) == {0.0}


def test_evaluation_uses_the_learner_on_own_observations_only(tmp_path):
    experiment = make_experiment(tmp_path, ["algorithm=magpo", *SMALL_GUIDER, "experiment.loggers=[csv]"])
    policies = []
    rollout = experiment.test_env.rollout

    def recording_rollout(*args, policy, **kwargs):
        policies.append(policy)
        return rollout(*args, policy=policy, **kwargs)

    experiment.test_env.rollout = recording_rollout
    experiment._evaluation_loop()
    learner_policy, guider_policy = policies  # learner first (eval/...), then the guider (eval_guider/...)
    guider_parts = (TeacherForcedGuider, SequentialGuiderSampler)
    assert not any(isinstance(m, guider_parts) for m in learner_policy.modules())
    assert any(isinstance(m, SequentialGuiderSampler) for m in guider_policy.modules())
    guider_params = {id(p) for p in experiment.algorithm.get_guider_policy().parameters()}
    assert guider_params.isdisjoint(id(p) for p in learner_policy.parameters())

    # perturbing the other agents' observations leaves each agent's evaluation action unchanged
    observation = experiment.test_env.reset()
    n_agents = observation["agents", "observation"].shape[-2]
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        actions = learner_policy(observation.clone())["agents", "action"]
        for agent in range(n_agents):
            perturbed = observation.clone()
            others = [a for a in range(n_agents) if a != agent]
            perturbed["agents", "observation"][..., others, :] += 10 * torch.randn_like(
                perturbed["agents", "observation"][..., others, :]
            )
            moved = learner_policy(perturbed)["agents", "action"]
            torch.testing.assert_close(moved[..., agent, :], actions[..., agent, :], rtol=0, atol=0)
            assert not torch.allclose(moved[..., others, :], actions[..., others, :])
    experiment.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    "guider", [["algorithm=magpo_residual"], ["algorithm=magpo", "algorithm.backtrack=true"]], ids=["residual", "anchored"]
)
def test_backtrack_resets_the_guider_after_each_training_iteration(tmp_path, guider):
    experiment = make_experiment(
        # the magpo_residual preset (guider=residual, backtrack=true), or the anchored guider backtracking
        tmp_path, [*guider, "algorithm.guider_embed_dim=8", "experiment.evaluation=false",
                   "experiment.checkpoint_at_end=false"]
    )
    experiment.run()  # two iterations; the last one ends with a backtrack
    algorithm = experiment.algorithm
    last_layer = algorithm._guider_cores["agents"].correction[-1].weight
    assert experiment.optimizers["agents"]["loss_guider"].state[last_layer]["exp_avg"].abs().sum() > 0  # it did learn
    guider = algorithm.get_policy_for_loss("agents")
    learner = algorithm._learners["agents"]
    for seed in range(3):
        data = experiment.test_env.reset()
        torch.manual_seed(seed)
        data["agents", "observation"] = torch.randn_like(data["agents", "observation"])
        data["agents", "action"] = torch.rand_like(experiment.test_env.full_action_spec.rand()["agents", "action"]) * 2 - 1
        data["agents", "agent_order"] = torch.argsort(torch.rand(*data["agents"].batch_size), -1)
        with torch.no_grad():
            g, l = guider.get_dist(data.clone()), learner.get_dist(data.clone())
        torch.testing.assert_close(g.loc, l.loc, rtol=0, atol=0)
        torch.testing.assert_close(g.scale, l.scale, rtol=0, atol=0)


@pytest.mark.slow
def test_anchored_guider_reads_the_trained_learner_and_learns_at_its_own_rate(tmp_path):
    experiment = make_experiment(
        tmp_path, ["algorithm=magpo", "algorithm.guider=anchored", "algorithm.guider_embed_dim=8",
                   "algorithm.guider_lr=0.002", "experiment.evaluation=false", "experiment.checkpoint_at_end=false"]
    )
    algorithm = experiment.algorithm
    assert [g["lr"] for g in experiment.optimizers["agents"]["loss_guider"].param_groups] == [0.002]
    assert [g["lr"] for g in experiment.optimizers["agents"]["loss_learner"].param_groups] == [experiment.config.lr]
    core = algorithm._guider_cores["agents"]
    learner_net = algorithm._learner_params_module("agents")
    assert core.base_module() is learner_net  # the live learner, not a copy
    before = [p.clone() for p in learner_net.parameters()]
    experiment.run()  # two iterations: the learner and the correction both move
    assert any(not torch.equal(a, b) for a, b in zip(before, learner_net.parameters()))
    assert core.correction[-1].weight.abs().sum() > 0
    with torch.no_grad():
        core.correction[-1].weight.zero_()
        core.correction[-1].bias.zero_()
        data = experiment.test_env.reset()
        data["agents", "action"] = experiment.test_env.full_action_spec.rand()["agents", "action"]
        data["agents", "agent_order"] = torch.argsort(torch.rand(*data["agents"].batch_size), -1)
        g = algorithm.get_policy_for_loss("agents").get_dist(data.clone())
        l = algorithm._learners["agents"].get_dist(data.clone())
    torch.testing.assert_close(g.loc, l.loc, rtol=0, atol=0)  # base == the trained learner
    torch.testing.assert_close(g.scale, l.scale, rtol=0, atol=0)


class _GuiderRecorder(experiment_module.Callback):
    """After every training iteration: the guider optimizer's rate and the correction's last layer."""

    def __init__(self):
        super().__init__()
        self.rates, self.last_layers = [], []

    def on_train_end(self, training_td, group):
        self.rates.append([g["lr"] for g in self.experiment.optimizers[group]["loss_guider"].param_groups])
        last = self.experiment.algorithm._guider_cores[group].correction[-1]
        self.last_layers.append(torch.cat([last.weight.flatten(), last.bias]).detach().clone())


@pytest.mark.slow
def test_guider_warmup_holds_the_anchored_guider_at_the_learner_then_lets_it_learn(tmp_path):
    recorder = _GuiderRecorder()
    experiment = configs.build_experiment(
        tmp_path, [*TINY, "algorithm=magpo", "algorithm.guider_embed_dim=8", "algorithm.guider_lr=0.002",
                   "algorithm.guider_warmup_frames=80", "experiment.evaluation=false",
                   "experiment.checkpoint_at_end=false"], callbacks=[recorder],
    )
    experiment.run()  # two iterations of 80 frames: the first within the warm-up, the second after it
    assert recorder.rates == [[0.0], [0.002]]
    assert not recorder.last_layers[0].any()  # mu = pi through the warm-up: the correction is exactly zero
    assert recorder.last_layers[1].any()  # then it learns
    state = experiment.optimizers["agents"]["loss_guider"].state_dict()["state"]
    # Adam counted the warm-up's steps (2 epochs x 2 minibatches per iteration), so it is not cold-started
    assert {int(s["step"]) for s in state.values()} == {8}


def test_magpo_held_at_its_learner_with_mappos_settings_updates_as_mappo_does(tmp_path):
    """The whole BenchMARL pipeline, not only the loss: with the same seed, MAGPO's learner and
    critic start as MAPPO's actor and critic (building the guider does not draw from the global
    random stream), and on a batch MAPPO collected, MAGPO with MAPPO's PPO settings and a guider
    held at its learner computes MAPPO's advantages, losses and gradients."""
    common = [*TINY, "experiment.evaluation=false", "experiment.checkpoint_at_end=false", "seed=3"]
    mappo = make_experiment(tmp_path / "mappo", [*common, "algorithm=mappo"])
    magpo = make_experiment(tmp_path / "magpo", [*common, "algorithm=magpo", "algorithm.entropy_coef=0.0",
                                                 "algorithm.normalize_advantage=false", "algorithm.lmbda=0.9"])
    mappo_loss, magpo_loss = mappo.losses["agents"], magpo.losses["agents"]
    actor = list(mappo_loss.actor_network_params.flatten_keys().values())
    learner = list(magpo_loss.learner_network_params.flatten_keys().values())
    critics = [list(loss.critic_network_params.flatten_keys().values()) for loss in (mappo_loss, magpo_loss)]
    for a, b in [*zip(actor, learner), *zip(*critics)]:
        torch.testing.assert_close(b, a, rtol=0, atol=0)

    batch = next(iter(mappo.collector))
    mappo_batch = mappo.algorithm.process_batch("agents", batch.clone()).reshape(-1)
    magpo_batch = magpo.algorithm.process_batch("agents", batch.clone()).reshape(-1)
    for key in (("agents", "advantage"), ("agents", "value_target")):
        torch.testing.assert_close(magpo_batch[key], mappo_batch[key], rtol=0, atol=0)
    n_agents = magpo_batch["agents"].batch_size[-1]
    magpo_batch["agents", "agent_order"] = torch.arange(n_agents).expand(*magpo_batch["agents"].batch_size)
    mappo_out, magpo_out = mappo_loss(mappo_batch), magpo_loss(magpo_batch)
    torch.testing.assert_close(magpo_out["loss_learner"], mappo_out["loss_objective"])
    torch.testing.assert_close(magpo_out["loss_critic"], mappo_out["loss_critic"])
    (mappo_out["loss_objective"] + mappo_out["loss_critic"]).backward()
    (magpo_out["loss_learner"] + magpo_out["loss_critic"]).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in actor)
    for a, b in [*zip(actor, learner), *zip(*critics)]:
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_guider_evaluation_leaves_training_unchanged(tmp_path, monkeypatch):
    """eval_guider/... is a diagnostic: a run that also evaluates its guider trains exactly as one
    that does not. Without keeping the random streams, the guider's rollouts would draw agent
    orders from torch's generator and move VMAS's own stream, which the training environments
    share with the test environment, and every later batch would differ."""
    overrides = ["algorithm=magpo", "experiment.max_n_frames=240", "experiment.checkpoint_at_end=false", "seed=1"]
    with_guider = make_experiment(tmp_path / "with", overrides)
    with_guider.run()
    monkeypatch.setattr(experiment_module.MagpoExperiment, "_evaluate_guider", lambda self, guider: None)
    without = make_experiment(tmp_path / "without", overrides)
    without.run()
    assert read_scalar(with_guider.folder_name, "eval_guider_reward_episode_reward_mean")  # it did evaluate
    assert not read_scalar(without.folder_name, "eval_guider_reward_episode_reward_mean")
    for name in ("collection_reward_reward_mean", "train_agents_loss_learner", "train_agents_loss_guider",
                 "train_agents_loss_critic", "eval_reward_episode_reward_mean"):
        logged = read_scalar(with_guider.folder_name, name)
        assert len(logged) == 3 and logged == read_scalar(without.folder_name, name), name


@pytest.mark.slow
def test_checkpoint_holds_everything_and_resume_continues(tmp_path):
    overrides = ["algorithm=magpo", *SMALL_GUIDER, "experiment.evaluation=false"]
    first = make_experiment(tmp_path / "a", overrides)
    first.run()
    (checkpoint,) = (Path(first.folder_name) / "checkpoints").glob("checkpoint_*.pt")
    assert not list(checkpoint.parent.glob("*.partial"))  # written atomically
    saved = torch.load(checkpoint, weights_only=False)
    assert set(saved["optimizers"]["agents"]) == {"loss_guider", "loss_learner", "loss_critic"}
    assert saved["optimizers"]["agents"]["loss_guider"]["state"]  # Adam moments, not empty

    cfg, task_name = compose_config(overrides + ["experiment.max_n_frames=240"])
    (tmp_path / "b").mkdir()
    cfg.experiment.save_folder = str(tmp_path / "b")
    cfg.experiment.restore_file = str(checkpoint)
    resumed = cli.build_experiment(cfg, task_name)
    for key, value in first.losses["agents"].state_dict().items():
        torch.testing.assert_close(resumed.losses["agents"].state_dict()[key], value, rtol=0, atol=0, msg=key)
    for name, optimizer in first.optimizers["agents"].items():
        restored = resumed.optimizers["agents"][name].state_dict()["state"]
        for index, state in optimizer.state_dict()["state"].items():
            for k in ("exp_avg", "exp_avg_sq", "step"):
                torch.testing.assert_close(restored[index][k], state[k], rtol=0, atol=0)
    assert resumed.n_iters_performed == first.n_iters_performed == 2
    resumed.run()  # continues from iteration 2 to 3 (240 frames)
    assert resumed.n_iters_performed == 3 and resumed.total_frames == 240


@pytest.mark.slow
def test_compiled_networks_compute_the_eager_losses_and_gradients(tmp_path):
    """compile_feed_forward compiles, in place, every feed-forward stack of the guider (its
    correction), the learner and the critic, keeping the state_dict keys; on one collected batch
    the losses and every parameter's gradient equal the eager ones up to float rounding."""
    experiment = make_experiment(tmp_path, ["algorithm=magpo", "experiment.evaluation=false"])
    loss = experiment.losses["agents"]
    batch = experiment.algorithm.process_batch("agents", next(iter(experiment.collector)).clone()).reshape(-1)
    params = [p for p in loss.parameters() if p.requires_grad]

    def losses_and_gradients():
        torch.manual_seed(0)  # the entropy of a TanhNormal is estimated from samples
        out = loss(batch.clone())
        total = sum(out[k] for k in ("loss_guider", "loss_entropy", "loss_learner", "loss_critic"))
        return [out[k].detach() for k in ("loss_guider", "loss_learner", "loss_critic")], torch.autograd.grad(total, params, allow_unused=True)

    keys = loss.state_dict().keys()
    eager = losses_and_gradients()
    networks = [loss.actor_network, loss.learner_network, loss.critic_network]
    assert not any(getattr(m, "_compiled_call_impl", None) is not None for n in networks for m in n.modules())  # off by default
    assert experiment_module.compile_feed_forward(networks) == 3
    assert loss.state_dict().keys() == keys

    def compiled_in(policy):
        return sum(getattr(m, "_compiled_call_impl", None) is not None for m in policy.modules())

    # collection (the guider: its correction, on the learner's network, which it holds by reference)
    # and evaluation (the learner) run these same modules
    assert compiled_in(experiment.policy) == 1 and compiled_in(experiment.algorithm.get_learner_policy()) == 1
    assert compiled_in(experiment.algorithm._guider_cores["agents"].base_module()) == 1
    compiled = losses_and_gradients()
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-6)
    assert sum(g is not None for g in eager[1]) >= 12  # every layer's weight and bias, of all three networks
    for got, expected in zip(compiled[1], eager[1]):
        assert (got is None) == (expected is None)
        if expected is not None:
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm, stacks", [("magpo", 3), ("mappo", 2)])
def test_compile_networks_from_the_config(tmp_path, algorithm, stacks):
    """compile_networks=true compiles every algorithm's stacks (MAGPO: guider correction, learner,
    critic; MAPPO: actor, critic) and the run trains and evaluates with them."""
    experiment = make_experiment(tmp_path, [f"algorithm={algorithm}", "compile_networks=true"])
    loss = experiment.losses["agents"]
    networks = [v for v in vars(loss).values() if isinstance(v, torch.nn.Module)]
    compiled = {id(m) for n in networks for m in n.modules() if getattr(m, "_compiled_call_impl", None) is not None}
    assert len(compiled) == stacks
    experiment.run()
    assert all(math.isfinite(v) for v in read_scalar(Path(experiment.folder_name), "eval_reward_episode_reward_mean").values())


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["magpo", "mappo"])
def test_absolute_metric_reevaluates_the_best_evaluation_and_writes_the_json(tmp_path, algorithm, monkeypatch):
    overrides = [f"algorithm={algorithm}", *(SMALL_GUIDER if algorithm == "magpo" else []),
                 "experiment.create_json=true", "absolute_metric_episodes=5", "experiment.max_n_frames=240"]
    experiment = make_experiment(tmp_path, overrides)
    evaluated = experiment.algorithm.get_learner_policy() if algorithm == "magpo" else experiment.policy

    def tensors(policy):  # its parameters and buffers (a state dict also holds specs)
        return {k: v.clone() for k, v in policy.state_dict().items() if isinstance(v, torch.Tensor)}

    # The three evaluations (after iterations 0, 1, 2) score 1, 3, 2, so the best is the middle one,
    # neither the first nor the trained parameters at the end; the absolute metric's own returns are real.
    scores, at_evaluation, rollout_calls = [1.0, 3.0, 2.0], [], []
    real_mean_return = experiment_module.mean_episode_return

    def scored(rollouts, groups):
        if len(at_evaluation) < len(scores):
            at_evaluation.append(tensors(evaluated))
            return torch.tensor([scores[len(at_evaluation) - 1]])
        return real_mean_return(rollouts, groups)

    rollouts = experiment._rollouts

    def spy(policy, episodes):
        rollout_calls.append(tensors(policy))
        return rollouts(policy, episodes)

    monkeypatch.setattr(experiment_module, "mean_episode_return", scored)
    monkeypatch.setattr(experiment, "_rollouts", spy)
    experiment.run()

    assert len(at_evaluation) == 3 and experiment._best.mean_return == 3.0 and experiment._best.total_frames == 160
    assert any(not torch.equal(at_evaluation[1][k], at_evaluation[2][k]) for k in at_evaluation[1])  # it trained on
    for key, value in at_evaluation[1].items():  # the last rollouts of the run, the absolute metric's: best parameters
        torch.testing.assert_close(rollout_calls[-1][key], value, rtol=0, atol=0, msg=key)
    for key, value in tensors(evaluated).items():  # and the trained parameters are back afterwards
        torch.testing.assert_close(value, at_evaluation[2][key], rtol=0, atol=0, msg=key)
    (json_file,) = Path(experiment.folder_name).glob("*.json")
    run = json.loads(json_file.read_text())["vmas"]["balance"][algorithm]["seed_0"]
    returns = run["absolute_metrics"]["return"]
    assert len(returns) == 6  # 5 episodes, rounded up to whole rollouts of 2 vectorized environments
    assert run["absolute_metrics"]["best_step_count"] == [160]
    logged = read_scalar(experiment.folder_name, "absolute_reward_episode_reward_mean")
    assert list(logged) == [3] and logged[3] == pytest.approx(sum(returns) / len(returns), rel=1e-5)
    assert read_scalar(experiment.folder_name, "absolute_best_evaluation_frames") == {3: 160.0}
    checkpoint = torch.load(next((Path(experiment.folder_name) / "checkpoints").glob("*.pt")), weights_only=False)
    assert checkpoint["best_evaluation"]["mean_return"] == 3.0  # a resumed run keeps its best


def test_resume_command_reloads_a_run(tmp_path):
    folder = run_command(tmp_path, ["algorithm=magpo", *SMALL_GUIDER, "experiment.evaluation=false"])
    (checkpoint,) = (folder / "checkpoints").glob("checkpoint_*.pt")
    experiment = cli.reload_experiment(str(checkpoint))
    assert type(experiment).__name__ == "MagpoExperiment" and experiment.n_iters_performed == 2
    experiment.close()


@pytest.mark.slow
def test_per_epoch_order_draws_one_permutation_per_epoch(tmp_path, monkeypatch):
    from benchmarl_ext.algorithm import Magpo

    drawn = []
    draw = Magpo.draw_training_order

    def record(self, group):
        draw(self, group)
        drawn.append(self._guider_samplers[group].teacher_forced.training_order.clone())

    monkeypatch.setattr(Magpo, "draw_training_order", record)
    experiment = make_experiment(tmp_path, ["algorithm=magpo", *SMALL_GUIDER, "algorithm.agent_order=per_epoch",
                                            "experiment.evaluation=false"])
    teacher_forced = experiment.algorithm._guider_samplers["agents"].teacher_forced
    assert experiment.losses["agents"].actor_network.module[0] is teacher_forced  # the loss reads the order set here
    experiment.run()
    # 2 iterations x (one at collection + one after each of the 2 epochs of 2 minibatches)
    assert len(drawn) == 2 * (1 + 2)
    assert all(sorted(order.tolist()) == [0, 1, 2, 3] for order in drawn)
    assert len({tuple(order.tolist()) for order in drawn}) > 1


@pytest.mark.slow
def test_auto_delta_follows_the_rule_is_logged_and_checkpointed(tmp_path):
    from magpo import DeltaSchedule

    experiment = make_experiment(tmp_path, ["algorithm=magpo", *SMALL_GUIDER, "algorithm.delta=auto",
                                            "algorithm.delta_target_kl=1e-6", "experiment.max_n_frames=240"])
    experiment.run()
    folder = Path(experiment.folder_name)
    used = read_scalar(folder, "train_agents_delta")
    kl = read_scalar(folder, "train_agents_learner_kl")  # the mean over each iteration's steps
    schedule = DeltaSchedule(target_kl=1e-6, low=1.1, high=3.0)
    expected = [schedule.start]
    for step in range(2):
        expected.append(schedule.next_delta(expected[-1], kl[step]))
    assert [used[s] for s in sorted(used)] == pytest.approx(expected, rel=1e-6)
    assert expected[1] < expected[0]  # a random transformer guider is far from the learner: tighter
    (checkpoint,) = (folder / "checkpoints").glob("checkpoint_*.pt")
    saved = torch.load(checkpoint, weights_only=False)["delta"]["agents"]
    assert saved == pytest.approx(schedule.next_delta(expected[-1], kl[2]), rel=1e-6)


def test_mat_collects_and_evaluates_with_the_auto_regressive_policy_and_says_so(tmp_path, caplog):
    from benchmarl_ext.mat import CENTRALIZED_EXECUTION

    with caplog.at_level("WARNING"):
        experiment = make_experiment(tmp_path, ["algorithm=mat", "algorithm.embed_dim=8", "algorithm.heads=2"])
    assert CENTRALIZED_EXECUTION in caplog.text
    sampler = experiment.algorithm._samplers["agents"]
    assert list(experiment.policy) == [sampler]  # collection and BenchMARL's evaluation both use it
    assert experiment.losses["agents"].actor_network.module[0] is sampler.teacher_forced  # PPO on the same network
    data = experiment.collector.env.reset()
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        sampler(data)
        recomputed = experiment.losses["agents"].actor_network.get_dist(data.clone()).log_prob(data["agents", "action"])
    torch.testing.assert_close(recomputed, data["agents", "log_prob"], rtol=1e-5, atol=1e-5)
    experiment.close()


def test_plain_benchmarl_experiment_is_refused(tmp_path):
    from benchmarl.hydra_config import load_experiment_from_hydra

    cfg, task_name = compose_config(["algorithm=magpo", *SMALL_GUIDER])
    cfg.experiment.save_folder = str(tmp_path)
    with pytest.raises(TypeError, match="MagpoExperiment"):
        load_experiment_from_hydra(cfg, task_name)


@pytest.mark.slow
def test_wandb_is_offline_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cli.main(["--help"])
    assert os.environ["WANDB_MODE"] == "offline"


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["mappo", "magpo_coordsum_3x10", "mat"])
def test_coordsum_tasks_through_the_command(tmp_path, algorithm):
    run_dir = tmp_path / "run"
    cli.main([
        "run", f"algorithm={algorithm}", "task=coordsum/3x10", "task.time_limit=10", "experiment=coordsum",
        "experiment.max_n_frames=160", "experiment.on_policy_collected_frames_per_batch=80",
        "experiment.on_policy_n_envs_per_worker=8", "experiment.on_policy_minibatch_size=40",
        "experiment.on_policy_n_minibatch_iters=2", "experiment.evaluation_interval=80", "experiment.evaluation_episodes=2",
        "model.num_cells=[16,16]", "critic_model.num_cells=[16,16]", f"hydra.run.dir={run_dir}",
    ])
    (folder,) = [p for p in run_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    returns = read_scalar(folder, "eval_reward_episode_reward_mean")
    assert len(returns) == 2 and all(0 <= v <= 2 * 10 for v in returns.values())  # rewards are 0/1/2 per step
