"""Agent-by-agent PPO (magpo.sequential): HAPPO's M factor against a hand computation, one agent
against TorchRL's PPO, A2PO against HAPPO where its extra clip is inactive, the agent orders, and
MAGPO's learner term with the preceding ratio."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import distributions as D
from torchrl.modules import ProbabilisticActor
from torchrl.objectives import ClipPPOLoss

from magpo import LossOptions, MAGPOLoss
from magpo.sequential import PRECEDING_RATIO_KEY, AgentByAgentPPOLoss, agent_order, position_clip

OBS, ACTIONS = 4, 3
KEYS = dict(action=("agents", "action"), sample_log_prob=("agents", "log_prob"), advantage=("agents", "advantage"),
            value_target=("agents", "value_target"), value=("agents", "state_value"))


def actor(in_key="observation"):
    module = TensorDictModule(torch.nn.Linear(OBS, ACTIONS), [("agents", in_key)], [("agents", "logits")])
    return ProbabilisticActor(module, in_keys={"logits": ("agents", "logits")}, out_keys=[("agents", "action")],
                              distribution_class=D.Categorical, return_log_prob=True, log_prob_key=("agents", "log_prob"))


def critic():
    return TensorDictModule(torch.nn.Linear(OBS, 1), [("agents", "observation")], [("agents", "state_value")])


def batch(n_samples: int, n_agents: int, seed: int = 0, preceding=None) -> TensorDict:
    """Samples with stored actions, old log-probs a little off the actor's (so ratios differ from
    1), advantages and value targets; ``state`` too, for a guider."""
    generator = torch.Generator().manual_seed(seed)
    shape = (n_samples, n_agents)
    td = TensorDict({
        "agents": TensorDict({
            "observation": torch.randn(*shape, OBS, generator=generator),
            "state": torch.randn(*shape, OBS, generator=generator),
            "action": torch.randint(ACTIONS, shape, generator=generator),
            "advantage": torch.randn(*shape, 1, generator=generator),
            "value_target": torch.randn(*shape, 1, generator=generator),
        }, batch_size=shape),
    }, batch_size=(n_samples,))
    if preceding is not None:
        td.set(PRECEDING_RATIO_KEY, preceding)
    return td


def with_old_log_prob(td: TensorDict, policy, seed: int = 1, spread: float = 0.3) -> TensorDict:
    with torch.no_grad():
        log_prob = policy.get_dist(td).log_prob(td["agents", "action"])
    noise = spread * torch.randn(log_prob.shape, generator=torch.Generator().manual_seed(seed))
    td.set(("agents", "log_prob"), log_prob + noise)
    return td


def loss_of(policy, correction="happo", **kwargs) -> AgentByAgentPPOLoss:
    loss = AgentByAgentPPOLoss(policy, critic(), correction=correction, entropy_coeff=0.0, **kwargs)
    loss.set_keys(**KEYS)
    return loss


def test_happo_objective_is_the_preceding_ratio_times_the_clipped_surrogate_by_hand():
    torch.manual_seed(0)
    policy = actor()
    preceding = torch.tensor([0.5, 1.0, 1.7, 2.5])
    td = with_old_log_prob(batch(4, 3, preceding=preceding), policy)
    loss = loss_of(policy, clip_epsilon=0.2)
    loss.agent = 1
    out = loss(td)
    with torch.no_grad():
        log_prob = policy.get_dist(td).log_prob(td["agents", "action"])[:, 1]
    ratio = (log_prob - td["agents", "log_prob"][:, 1]).exp()
    advantage = td["agents", "advantage"][:, 1, 0]
    by_hand = [-float(m) * min(float(r) * float(a), min(max(float(r), 0.8), 1.2) * float(a))
               for m, r, a in zip(preceding, ratio, advantage)]
    assert out["loss_objective"].item() == pytest.approx(sum(by_hand) / 4, rel=1e-6)
    assert out["preceding_ratio"].item() == pytest.approx(preceding.mean().item())


def test_with_one_agent_happo_is_ppo_on_the_same_batch():
    torch.manual_seed(0)
    policy = actor()
    td = with_old_log_prob(batch(16, 1), policy, spread=0.5)
    happo = loss_of(policy)
    happo.agent = 0
    ppo = ClipPPOLoss(policy, critic(), clip_epsilon=0.2, entropy_coeff=0.0, normalize_advantage=False)
    ppo.set_keys(**KEYS)
    ours, theirs = happo(td.clone()), ppo(td.clone())
    assert ours["loss_objective"].item() == pytest.approx(theirs["loss_objective"].item(), rel=1e-6)
    ours_grad = torch.autograd.grad(ours["loss_objective"], list(happo.actor_network_params.values(True, True)))
    theirs_grad = torch.autograd.grad(theirs["loss_objective"], list(ppo.actor_network_params.values(True, True)))
    for a, b in zip(ours_grad, theirs_grad):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_the_loss_of_an_agent_has_gradient_only_in_its_own_rows():
    """The per-agent actor's weights stacked as one tensor [n_agents, ...], as BenchMARL's
    share_policy_params=false networks hold them: the agent-1 loss touches row 1 alone."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(3, ACTIONS, OBS))

    class PerAgent(torch.nn.Module):
        def forward(self, observation):
            return torch.einsum("...ao,aco->...ac", observation, weight)

    module = TensorDictModule(PerAgent(), [("agents", "observation")], [("agents", "logits")])
    policy = ProbabilisticActor(module, in_keys={"logits": ("agents", "logits")}, out_keys=[("agents", "action")],
                                distribution_class=D.Categorical, return_log_prob=True, log_prob_key=("agents", "log_prob"))
    td = with_old_log_prob(batch(8, 3, preceding=torch.rand(8) + 0.5), policy)
    loss = loss_of(policy)
    loss.agent = 1
    out = loss(td)
    (grad,) = torch.autograd.grad(out["loss_objective"], [weight])
    assert grad[1].abs().sum() > 0 and grad[0].abs().sum() == 0 and grad[2].abs().sum() == 0


def test_a2po_is_happo_for_the_first_agent_whatever_the_ratios():
    """The first agent in the order has no preceding agent (M = 1), and with clip_floor = 1 its
    clip is PPO's: A2PO's objective is HAPPO's, value and gradient."""
    torch.manual_seed(0)
    policy = actor()
    td = with_old_log_prob(batch(32, 3), policy, spread=0.6)  # many ratios outside 1 +- 0.2
    happo, a2po = loss_of(policy), loss_of(policy, "a2po", clip_floor=1.0)
    for loss in (happo, a2po):
        loss.agent, loss.position = 2, 1
    h, a = happo(td.clone()), a2po(td.clone())
    assert h["clip_fraction"] > 0
    assert a["loss_objective"].item() == pytest.approx(h["loss_objective"].item(), rel=1e-6)


def test_a2po_is_happo_when_its_clips_are_inactive():
    """With M inside A2PO's own clip and every ratio inside the trust region, A2PO's clipped
    product is M and neither clip is active: the two objectives and gradients agree."""
    torch.manual_seed(0)
    policy = actor()
    td = with_old_log_prob(batch(32, 3, preceding=1 + 0.08 * (torch.rand(32) * 2 - 1)), policy, spread=0.01)
    happo, a2po = loss_of(policy), loss_of(policy, "a2po", preceding_clip=0.1, clip_floor=1.0)
    for loss in (happo, a2po):
        loss.agent, loss.position = 0, 2
    h, a = happo(td.clone()), a2po(td.clone())
    assert h["clip_fraction"] == 0 and a["clip_fraction"] == 0
    assert a["loss_objective"].item() == pytest.approx(h["loss_objective"].item(), rel=1e-6)
    grads = [torch.autograd.grad(out["loss_objective"], list(loss.actor_network_params.values(True, True)))
             for out, loss in ((h, happo), (a, a2po))]
    for x, y in zip(*grads):
        torch.testing.assert_close(x, y)


def test_a2po_clips_the_preceding_product_on_its_own():
    torch.manual_seed(0)
    policy = actor()
    far = with_old_log_prob(batch(8, 2, preceding=torch.full((8,), 3.0)), policy, spread=0.0)
    near = with_old_log_prob(batch(8, 2, preceding=torch.full((8,), 1.1)), policy, spread=0.0)
    loss = loss_of(policy, "a2po", preceding_clip=0.1, clip_floor=1.0)
    loss.agent, loss.position = 1, 2
    # ratio 1: l = clip(M) = 1.1 in both, then PPO's clip (1.2) is inactive: the same objective
    assert loss(far)["loss_objective"].item() == pytest.approx(loss(near)["loss_objective"].item(), rel=1e-6)


def test_position_clip_widens_with_the_position():
    assert position_clip(0.2, 1, 4, floor=1.0) == pytest.approx(0.2)
    assert [position_clip(0.2, k, 4, floor=0.5) for k in (1, 2, 3, 4)] == pytest.approx([0.125, 0.15, 0.175, 0.2])


def test_random_order_is_a_fresh_permutation_each_iteration_from_the_seeded_generator():
    torch.manual_seed(3)
    orders = [list(agent_order("random", 5)) for _ in range(6)]
    assert all(sorted(o) == list(range(5)) for o in orders)
    assert len({tuple(o) for o in orders}) > 1
    torch.manual_seed(3)
    assert [list(agent_order("random", 5)) for _ in range(6)] == orders


def test_semi_greedy_order_takes_the_largest_score_at_even_positions():
    scores = torch.tensor([0.1, 5.0, 0.3, 2.0, 0.2])
    asked = []

    def score(left):
        asked.append(list(left))
        return scores[left]

    torch.manual_seed(0)
    order = list(agent_order("semi_greedy", 5, score))
    assert sorted(order) == list(range(5))
    for position in (2, 4):  # 1-based even positions: the best agent among those left
        left = asked[position // 2 - 1]
        assert order[position - 1] == max(left, key=lambda i: scores[i])
    with pytest.raises(ValueError, match="order rule"):
        list(agent_order("alphabetical", 3))


def test_sequential_magpo_weights_only_the_learners_ppo_term():
    """MAGPOLoss with a preceding ratio: the learner's lambda-weighted PPO term is PPO on M * A
    (the learner's loss moves by exactly aux_coef times that change), and the guider's terms
    and the learner's KL are those of the plain loss."""
    torch.manual_seed(0)
    guider, learner = actor("state"), actor("observation")
    loss = MAGPOLoss(guider, learner, critic(), LossOptions(delta=1.5, aux_coef=2.0, clip_epsilon=0.2),
                     normalize_advantage=False)
    loss.set_keys(**KEYS)
    td = with_old_log_prob(batch(16, 3), guider)
    preceding = 0.85 + 0.3 * torch.rand(16)  # inside 1 +- clip_epsilon
    plain, weighted = loss(td.clone()), loss(td.clone().set(PRECEDING_RATIO_KEY, preceding))
    for key in ("loss_guider", "guider_objective", "guider_kl", "mask_fraction", "learner_kl", "loss_critic"):
        assert weighted[key].item() == pytest.approx(plain[key].item(), rel=1e-6), key
    assert weighted["learner_objective"].item() != pytest.approx(plain["learner_objective"].item())
    expected = plain["learner_kl"] + 2.0 * weighted["learner_objective"]
    assert weighted["loss_learner"].item() == pytest.approx(expected.item(), rel=1e-5)
    # M = 1 everywhere: the plain loss
    ones = loss(td.clone().set(PRECEDING_RATIO_KEY, torch.ones(16)))
    assert ones["loss_learner"].item() == pytest.approx(plain["loss_learner"].item(), rel=1e-6)
    # M is clipped to 1 +- clip_epsilon: a huge (or overflowed) product counts as 1.2
    huge = loss(td.clone().set(PRECEDING_RATIO_KEY, torch.full((16,), float("inf"))))
    capped = loss(td.clone().set(PRECEDING_RATIO_KEY, torch.full((16,), 1.2)))
    assert huge["loss_learner"].item() == pytest.approx(capped["loss_learner"].item(), rel=1e-6)


@pytest.mark.parametrize("kwargs, field", [
    (dict(correction="coppo"), "correction"), (dict(clip_epsilon=1.0), "clip_epsilon"),
    (dict(preceding_clip=0.0), "preceding_clip"), (dict(preceding_clip=1.5), "preceding_clip"),
    (dict(clip_floor=0.0), "clip_floor"), (dict(clip_floor=1.5), "clip_floor"),
])
def test_bad_options_are_refused_naming_them(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        AgentByAgentPPOLoss(actor(), critic(), **kwargs)
