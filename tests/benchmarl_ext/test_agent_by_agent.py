"""Agent-by-agent updates in BenchMARL's loop (benchmarl_ext.agent_by_agent): an agent's step
changes its own parameter rows and Adam moments only, the preceding ratio left in the buffer is
the product over the agents' turns, the orders are fresh seeded permutations, and tiny runs of
happo, a2po and MAGPO's sequential learners train on VMAS (continuous) and CoordSum (discrete)."""

from __future__ import annotations

import pytest
import torch
from benchmarl.experiment.callback import Callback
from configs import COORDSUM, SMALL_GUIDER, VMAS
from configs import build_experiment as build

from benchmarl_ext.agent_by_agent import check_per_agent, own_rows_only
from magpo.sequential import PRECEDING_RATIO_KEY

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.usefixtures("one_thread")]


def adam_step(weight, optimizer, max_norm=None):
    """Backward of a loss over every row, an optional gradient clip, one Adam step; returns the
    clipped norm (what BenchMARL logs)."""

    def step():
        optimizer.zero_grad()
        (weight ** 2).sum().backward()
        norm = torch.nn.utils.clip_grad_norm_([weight], max_norm) if max_norm else torch.tensor(0.0)
        optimizer.step()
        return norm

    return step


@pytest.mark.parametrize("warm", [True, False], ids=["adam-moments", "no-adam-state-yet"])
def test_an_agents_step_changes_only_its_own_rows_and_moments(warm):
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(3, 4, 2))
    optimizer = torch.optim.Adam([weight], lr=0.1)
    if warm:  # every row has moments from an earlier (parallel) step
        adam_step(weight, optimizer)()
    before = weight.detach().clone()
    moments = {k: v.clone() for k, v in optimizer.state[weight].items() if k != "step"} if warm else {}
    norm = own_rows_only(adam_step(weight, optimizer, max_norm=1e6), optimizer, agent=1, n_agents=3)
    assert not torch.equal(weight[1], before[1])
    assert torch.equal(weight[[0, 2]], before[[0, 2]])
    for key in ("exp_avg", "exp_avg_sq"):
        expected = moments[key][[0, 2]] if warm else torch.zeros_like(before[[0, 2]])
        assert torch.equal(optimizer.state[weight][key][[0, 2]], expected), key
    # the gradient clip saw agent 1's gradient alone (d/dw w^2 = 2w)
    assert norm.item() == pytest.approx((2 * before[1]).norm().item(), rel=1e-6)
    assert not weight._backward_hooks  # the masks are removed


def test_shared_parameters_are_refused():
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.randn(4, 2))])
    with pytest.raises(ValueError, match="share_policy_params=false"):
        check_per_agent(optimizer, 3, "loss_objective")


class Iterations(Callback):
    """Per iteration: the order the group's agents were updated in, and whether each agent's actor
    rows moved; after training, the preceding ratio left in the buffer against its recomputation."""

    def __init__(self, policy_key: str):
        super().__init__()
        self.policy_key = policy_key
        self.orders, self.moved, self.ratio_errors = [], [], []

    def _params(self):
        loss = self.experiment.losses["agents"]
        return [p.detach().clone() for p in getattr(loss, f"{self.policy_key}_network_params").values(True, True)]

    def on_batch_collected(self, batch):
        self.before = self._params()

    def on_train_end(self, training_td, group):
        update = self.experiment.algorithm.agent_by_agent_update(group)
        self.orders.append(list(update.last_order))
        after = self._params()
        self.moved.append([all(not torch.equal(a[i], b[i]) for a, b in zip(after, self.before))
                           for i in range(update.n_agents)])
        data = self.experiment.replay_buffers[group].storage.get(slice(0, len(self.experiment.replay_buffers[group].storage)))
        with torch.no_grad():
            now = update.log_prob(data)
        # M after the last turn: the product over every agent of new / iteration-start log-prob;
        # for HAPPO the iteration's start is the stored behaviour log-prob
        if self.policy_key == "actor":
            expected = (now - data.get((group, "log_prob"))).sum(-1).exp()
            self.ratio_errors.append((data.get(PRECEDING_RATIO_KEY) - expected).abs().max().item())


RUNS = {
    "happo-vmas": (["algorithm=happo", *VMAS], "actor"),
    "happo-coordsum": (["algorithm=happo", *COORDSUM], "actor"),
    "a2po-vmas": (["algorithm=a2po", *VMAS], "actor"),
    "a2po-coordsum": (["algorithm=a2po", *COORDSUM], "actor"),
    "magpo-sequential-vmas": (["algorithm=magpo", "algorithm.learner_update=sequential",
                               "experiment.share_policy_params=false", *SMALL_GUIDER, *VMAS], "learner"),
    "magpo-sequential-transformer-coordsum": (["algorithm=magpo_transformer", "algorithm.learner_update=sequential",
                                               "experiment.share_policy_params=false", *SMALL_GUIDER, *COORDSUM], "learner"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(RUNS))
def test_agents_are_updated_one_after_another(tmp_path, case):
    overrides, policy = RUNS[case]
    record = Iterations(policy)
    experiment = build(tmp_path / "run", [*overrides, "experiment.max_n_frames=240"], callbacks=[record])
    experiment.run()
    n_agents = len(experiment.group_map["agents"])
    assert len(record.orders) == 3 and all(sorted(o) == list(range(n_agents)) for o in record.orders)
    assert all(all(moved) for moved in record.moved)  # every agent had its turn
    assert len(record.ratio_errors) == (3 if policy == "actor" else 0)
    assert all(error < 1e-4 for error in record.ratio_errors)
    # the same seed draws the same orders
    again = Iterations(policy)
    build(tmp_path / "again", [*overrides, "experiment.max_n_frames=240"], callbacks=[again]).run()
    assert again.orders == record.orders
