"""MAGPO on a VMAS scenario with plain TorchRL: a collector, MAGPOLoss, three optimizers.

No BenchMARL or Hydra: the guider is a ``magpo.guiders.TransformerGuider`` built by ``make_guider``, the learner and the
centralized critic are TorchRL ``MultiAgentMLP``s. Collection uses the guider (agent after
agent); the printed evaluation return is the decentralized learner's.

    python examples/magpo_vmas_torchrl.py                    # balance, 60k frames, a few minutes on 2 cores
    python examples/magpo_vmas_torchrl.py --scenario navigation --frames 120000
"""

from __future__ import annotations

import argparse

import torch
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.collectors import Collector
from torchrl.data import Composite, LazyTensorStorage, SamplerWithoutReplacement, TensorDictReplayBuffer
from torchrl.envs import RewardSum, TransformedEnv
from torchrl.envs.libs.vmas import VmasEnv
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import MultiAgentMLP, ProbabilisticActor, TanhNormal

from magpo import LossOptions, MAGPOLoss
from magpo.guiders import make_guider

GROUP = "agents"


def make_env(scenario: str, num_envs: int, max_steps: int, device: str, seed: int):
    env = VmasEnv(scenario=scenario, num_envs=num_envs, continuous_actions=True, max_steps=max_steps, device=device, seed=seed)
    return TransformedEnv(env, RewardSum(in_keys=[env.reward_key], out_keys=[(GROUP, "episode_reward")]))


def make_modules(env, hidden: int, device: str):
    """(guider for the loss, guider for collection, learner, critic)."""
    n_agents = env.n_agents
    obs_dim = env.observation_spec[GROUP, "observation"].shape[-1]
    action_spec = env.full_action_spec[env.action_key]
    action_dim = action_spec.shape[-1]
    bounds = {"low": action_spec.space.low, "high": action_spec.space.high}

    learner_net = nn.Sequential(
        MultiAgentMLP(obs_dim, 2 * action_dim, n_agents, centralised=False, share_params=True, device=device,
                      depth=2, num_cells=hidden, activation_class=nn.Tanh),
        NormalParamExtractor(),
    )
    learner = ProbabilisticActor(
        TensorDictModule(learner_net, [(GROUP, "observation")], [(GROUP, "loc"), (GROUP, "scale")]),
        spec=action_spec, in_keys=[(GROUP, "loc"), (GROUP, "scale")], out_keys=[env.action_key],
        distribution_class=TanhNormal, distribution_kwargs=bounds, return_log_prob=True, log_prob_key=(GROUP, "log_prob"),
    )
    _, guider, guider_collect = make_guider(
        "transformer", group=GROUP, continuous=True, width=64, heads=4, device=device,
        observation_spec=Composite(observation=env.full_observation_spec_unbatched[GROUP, "observation"], shape=(n_agents,)),
        action_spec=env.full_action_spec_unbatched[env.action_key],
    )
    critic = TensorDictModule(
        MultiAgentMLP(obs_dim, 1, n_agents, centralised=True, share_params=True, device=device, depth=2,
                      num_cells=hidden, activation_class=nn.Tanh),
        [(GROUP, "observation")], [(GROUP, "state_value")],
    )
    return guider, guider_collect, learner, critic


@torch.no_grad()
def evaluate(env, policy, max_steps: int) -> float:
    """Mean episode return of ``policy`` (deterministic actions) over the env's batch."""
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        rollout = env.rollout(max_steps, policy=policy, break_when_any_done=False)
    return rollout.get(("next", GROUP, "reward")).sum(-3).mean().item()


def main(argv=None) -> list[tuple[int, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="balance")
    parser.add_argument("--frames", type=int, default=60_000, help="total frames, >= frames-per-batch")
    parser.add_argument("--frames-per-batch", type=int, default=3000)
    parser.add_argument("--n-envs", type=int, default=30)
    parser.add_argument("--max-steps", type=int, default=100, help="episode length")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--minibatch", type=int, default=750)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--delta", type=float, default=LossOptions.delta)
    parser.add_argument("--aux-coef", type=float, default=LossOptions.aux_coef)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    for name in ("frames", "frames_per_batch", "n_envs", "max_steps", "epochs", "minibatch", "hidden"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.frames < args.frames_per_batch or args.minibatch > args.frames_per_batch:
        parser.error("need --minibatch <= --frames-per-batch <= --frames")

    torch.manual_seed(args.seed)
    env = make_env(args.scenario, args.n_envs, args.max_steps, args.device, args.seed)
    eval_env = make_env(args.scenario, 8, args.max_steps, args.device, args.seed + 1)
    guider, guider_collect, learner, critic = make_modules(env, args.hidden, args.device)
    try:
        options = LossOptions(delta=args.delta, aux_coef=args.aux_coef)
    except (TypeError, ValueError) as err:
        parser.error(f"--{str(err).replace('_', '-', 1)}")  # LossOptions names the field first
    loss = MAGPOLoss(guider, learner, critic, options, entropy_coeff=0.01)
    loss.set_keys(
        reward=(GROUP, "reward"), action=env.action_key, sample_log_prob=(GROUP, "log_prob"), value=(GROUP, "state_value"),
        done=(GROUP, "done"), terminated=(GROUP, "terminated"),
    )
    loss.make_value_estimator(gamma=0.99, lmbda=0.95)
    optimizers = {
        "loss_guider": torch.optim.Adam(guider.parameters(), args.lr),
        "loss_learner": torch.optim.Adam(learner.parameters(), args.lr),
        "loss_critic": torch.optim.Adam(critic.parameters(), args.lr),
    }
    collector = Collector(env, guider_collect, frames_per_batch=args.frames_per_batch, total_frames=args.frames, device=args.device)
    buffer = TensorDictReplayBuffer(
        storage=LazyTensorStorage(args.frames_per_batch, device=args.device), sampler=SamplerWithoutReplacement(),
        batch_size=args.minibatch,
    )
    history = []
    frames = 0
    for batch in collector:
        frames += batch.numel()
        # the team's done and reward, per agent (the shape the loss keys expect)
        agent_shape = batch.get(("next", GROUP, "reward")).shape
        for key in ("done", "terminated"):
            batch.set(("next", GROUP, key), batch.get(("next", key)).unsqueeze(-1).expand(agent_shape))
        with torch.no_grad():
            loss.value_estimator(batch, params=loss.critic_network_params, target_params=loss.target_critic_network_params)
        buffer.extend(batch.reshape(-1))
        for _ in range(args.epochs * (args.frames_per_batch // args.minibatch)):
            out = loss(buffer.sample())
            totals = {
                "loss_guider": out["loss_guider"] + out["loss_entropy"],
                "loss_learner": out["loss_learner"],
                "loss_critic": out["loss_critic"],
            }
            for name, total in totals.items():
                total.backward()
                nn.utils.clip_grad_norm_([p for g in optimizers[name].param_groups for p in g["params"]], 0.5)
                optimizers[name].step()
                optimizers[name].zero_grad()
        collector.update_policy_weights_()
        learner_return = evaluate(eval_env, learner, args.max_steps)
        history.append((frames, learner_return))
        print(
            f"frames {frames:7d}  learner eval return {learner_return:8.2f}  "
            f"mask {out['mask_fraction'].item():.3f}  KL {out['learner_kl'].item():.3f}",
            flush=True,
        )
    collector.shutdown()
    return history


if __name__ == "__main__":
    main()
