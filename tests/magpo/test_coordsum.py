"""CoordSum dynamics: rewards 2/1/0, the majority-vote guesser, memories, batches, seeding."""

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import check_env_specs

from magpo.envs import TASKS, CoordSumEnv


def play(env, actions):
    """Step with ``actions`` ([*B, n] per step); returns the team rewards per step."""
    rewards = []
    td = env.reset() if not hasattr(env, "_started") else None
    env._started = True
    for action in actions:
        td = TensorDict({"agents": TensorDict({"action": torch.as_tensor(action)}, [*env.batch_size, env.n_agents])}, env.batch_size)
        out = env.step(td)
        rewards.append(out["next", "agents", "reward"][..., 0, 0].clone())
    return torch.stack(rewards)


def with_targets(env, targets):
    env.reset()
    env._targets[...] = torch.as_tensor(targets).expand_as(env._targets) if torch.as_tensor(targets).dim() == 0 else torch.as_tensor(targets)
    env._started = True
    return env


def test_specs_and_observation():
    env = CoordSumEnv(batch_size=(3,), seed=0)
    check_env_specs(env)
    obs = env.reset()["agents", "observation"]
    assert obs.shape == (3, 3, 5)
    assert (obs[..., 0] == obs[..., :1, 0]).all()  # every agent sees the same target
    assert torch.equal(obs[0, :, 2:], torch.eye(3))  # one-hot ids


def test_rewards_and_majority_vote_guesser_by_hand():
    env = with_targets(CoordSumEnv(n_agents=3, num_actions=10, maxval=30, seed=0), 5)
    rewards = play(env, [
        [0, 2, 3],  # sum 5; no record: guess 0 == a0 -> 1
        [1, 1, 3],  # records {0:1}: guess 0 != 1 -> 2
        [1, 2, 2],  # {0:1, 1:1} tie -> smallest 0 != 1 -> 2
        [1, 0, 4],  # {0:1, 1:2} -> guess 1 == 1 -> 1, then {0:1, 1:3}
        [0, 0, 0],  # sum 0 misses -> 0 (still recorded: {0:2, 1:3})
        [1, 2, 2],  # guess 1 == 1 -> 1, then {0:2, 1:4}
        [0, 2, 3],  # guess 1 != 0 -> 2
    ])
    assert rewards.tolist() == [1.0, 2.0, 2.0, 1.0, 0.0, 1.0, 2.0]


@pytest.mark.parametrize("memory, expected", [("authors", 1.0), ("per_target", 2.0)])
def test_authors_memory_shares_rows_beyond_num_actions(memory, expected):
    # num_actions 4: targets 5 and 6 are both >= num_actions - 1, so the authors' code files them
    # in the same (last) row; the paper's per-target memory keeps them apart.
    env = with_targets(CoordSumEnv(n_agents=3, num_actions=4, maxval=10, memory=memory, seed=0), torch.tensor([5, 5, 6] + [0] * 98))
    rewards = play(env, [[3, 1, 1], [3, 1, 1], [3, 2, 1]])
    # after two records of a0 = 3 for target 5, target 6's guess is 3 (shared row) or 0 (own row)
    assert rewards[2].item() == expected


def test_memory_resets_between_episodes():
    env = with_targets(CoordSumEnv(n_agents=3, num_actions=10, maxval=30, time_limit=3, seed=0), 5)
    assert play(env, [[1, 1, 3], [1, 1, 3], [1, 1, 3]]).tolist() == [2.0, 1.0, 1.0]
    with_targets(env, 5)
    assert play(env, [[1, 1, 3]]).tolist() == [2.0]  # the record of episode 1 is gone: guess 0


@pytest.mark.parametrize("mode, ending, other", [("terminate", "terminated", "truncated"), ("truncate", "truncated", "terminated")])
def test_episode_ends_after_time_limit(mode, ending, other):
    env = CoordSumEnv(batch_size=(2,), time_limit=7, time_limit_mode=mode, seed=1)
    rollout = env.rollout(20, break_when_any_done=True)
    assert rollout.batch_size == (2, 7)
    assert rollout["next", "done"][:, -1].all() and not rollout["next", "done"][:, :-1].any()
    assert rollout["next", ending][:, -1].all() and not rollout["next", ending][:, :-1].any()
    assert not rollout["next", other].any()


@pytest.mark.parametrize("mode", ["terminate", "truncate"])
def test_gae_bootstraps_past_the_time_limit_only_when_truncating(mode):
    from torchrl.objectives.value.functional import generalized_advantage_estimate

    rollout = CoordSumEnv(time_limit=4, time_limit_mode=mode, seed=0).rollout(4)
    reward = rollout["next", "agents", "reward"][:, 0]  # [T, 1]: the team reward
    value, next_value = torch.zeros(4, 1), torch.full((4, 1), 10.0)  # V = 0 now, 10 after each step
    advantage, _ = generalized_advantage_estimate(
        0.9, 0.95, value, next_value, reward, rollout["next", "done"], rollout["next", "terminated"]
    )
    last = reward[-1] + (9.0 if mode == "truncate" else 0.0)  # gamma * V(s_T) only for a time-out
    torch.testing.assert_close(advantage[-1], last)


def test_games_in_a_batch_are_independent():
    env = with_targets(CoordSumEnv(n_agents=3, num_actions=10, maxval=30, batch_size=(2,), seed=0), 5)
    rewards = play(env, [[[1, 1, 3], [0, 2, 3]], [[1, 1, 3], [0, 0, 0]]])
    assert rewards.tolist() == [[2.0, 1.0], [1.0, 0.0]]
    # resetting game 1 only keeps game 0's record
    env.reset(TensorDict({"_reset": torch.tensor([[False], [True]])}, [2]))
    env._targets[:, env._t[0]] = 5
    env._targets[1, 0] = 5
    rewards = play(env, [[[1, 1, 3], [1, 1, 3]]])
    assert rewards.tolist() == [[1.0, 2.0]]


def test_seeding_makes_targets_reproducible():
    targets = lambda seed: CoordSumEnv(batch_size=(4,), seed=seed).reset()["agents", "observation"][..., 0, 0]  # noqa: E731
    assert torch.equal(targets(3), targets(3))
    assert not torch.equal(targets(3), targets(4))
    env = CoordSumEnv(batch_size=(4,))
    env.set_seed(3)
    assert torch.equal(env.reset()["agents", "observation"][..., 0, 0], targets(3))


def test_tasks_and_bad_arguments():
    assert TASKS == {"3x10": (3, 10, 30), "3x30": (3, 30, 50), "5x20": (5, 20, 80), "8x15": (8, 15, 100)}
    for kwargs, name in ((dict(n_agents=1), "n_agents"), (dict(num_actions=1), "num_actions"), (dict(maxval=0), "maxval"),
                         (dict(time_limit=0), "time_limit"), (dict(memory="global"), "memory"),
                         (dict(time_limit_mode="stop"), "time_limit_mode")):
        with pytest.raises(ValueError, match=name):
            CoordSumEnv(**kwargs)
