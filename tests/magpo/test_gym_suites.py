"""RWARE and LBF as TorchRL environments: the paper's tasks, specs, seeding, time limits, errors."""

from __future__ import annotations

import sys

import pytest
import torch
from torchrl.envs.utils import check_env_specs

from magpo.envs.gym_suites import SUITES, MultiAgentGymEnv, make_game

pytest.importorskip("rware", reason="the rware extra (part of the test extra) is missing")
pytest.importorskip("lbforaging", reason="the lbf extra (part of the test extra) is missing")

# the authors' scenario files: agents, and for RWARE (shelf rows, columns, request queue), for
# LBF (grid size, foods, field of view, forced cooperation)
RWARE = {"tiny-2ag": (2, 1, 3, 2), "tiny-2ag-hard": (2, 1, 3, 1), "small-4ag": (4, 2, 3, 4), "medium-6ag": (6, 2, 5, 6),
         "large-8ag-hard": (8, 3, 5, 4), "xlarge-4ag": (4, 4, 5, 4)}
LBF = {"15x15-3p-5f": (3, 15, 5, 15, False), "2s-8x8-2p-2f-coop": (2, 8, 2, 2, True), "10x10-3p-3f": (3, 10, 3, 10, False)}


def test_the_papers_task_names():
    assert len(SUITES["rware"].tasks) == 15 and len(SUITES["lbf"].tasks) == 7
    assert set(RWARE) <= set(SUITES["rware"].tasks) and set(LBF) <= set(SUITES["lbf"].tasks)


@pytest.mark.parametrize("task", RWARE)
def test_rware_games_follow_the_authors_scenarios(task):
    agents, rows, columns, queue = RWARE[task]
    game = make_game("rware", task).unwrapped
    assert (game.n_agents, game.request_queue_size, game.max_steps) == (agents, queue, 500)
    reference = type(game)(shelf_columns=columns, column_height=8, shelf_rows=rows, n_agents=agents, msg_bits=0,
                           sensor_range=1, request_queue_size=queue, max_inactivity_steps=None, max_steps=500,
                           reward_type=game.reward_type)
    assert game.grid_size == reference.grid_size


@pytest.mark.parametrize("task", LBF)
def test_lbf_games_follow_the_authors_scenarios(task):
    agents, size, foods, sight, coop = LBF[task]
    game = make_game("lbf", task).unwrapped
    assert (len(game.players), game.field.shape, game.max_num_food, game.sight, game.force_coop) == (
        agents, (size, size), foods, sight, coop)
    assert game._max_episode_steps == 100


@pytest.mark.parametrize("suite, task", [("rware", "tiny-2ag"), ("lbf", "2s-8x8-2p-2f-coop")])
def test_specs_rollout_seeding_and_time_limit(suite, task):
    env = MultiAgentGymEnv(suite, task, time_limit=7, seed=3)
    rollout = env.rollout(20, break_when_any_done=True)
    assert rollout.batch_size == (7,) and rollout["next", "done"][-1].item() and not rollout["next", "done"][:-1].any()
    assert rollout["agents", "observation"].shape[-2] == env.n_agents
    for _ in range(4):  # LBF's own reset(seed) depends on the previous episode; set_seed starts a fresh game
        env.set_seed(3)
        torch.testing.assert_close(env.reset()["agents", "observation"], rollout["agents", "observation"][0], rtol=0, atol=0)
        env.rollout(3)
    other = MultiAgentGymEnv(suite, task, seed=4).reset()["agents", "observation"]
    assert not torch.equal(other, rollout["agents", "observation"][0])
    check_env_specs(env)


def test_bad_names_and_a_missing_package(monkeypatch):
    with pytest.raises(ValueError, match=r"rware task must be one of \['tiny-2ag'"):
        make_game("rware", "tiny-3ag")
    with pytest.raises(ValueError, match="suite must be one of"):
        make_game("smax", "3m")
    with pytest.raises(ValueError, match="time_limit"):
        make_game("lbf", "8x8-2p-2f-coop", time_limit=0)
    monkeypatch.setitem(sys.modules, "lbforaging", None)  # makes `import lbforaging` fail as if it were not installed
    with pytest.raises(ImportError, match=r"lbforaging package.*\[lbf\]"):
        make_game("lbf", "8x8-2p-2f-coop")
