"""The auto-regressive guiders: teacher forcing vs sequential sampling, causality, orders, reset."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import (
    NormalParamExtractor,
    ProbabilisticTensorDictModule,
    ProbabilisticTensorDictSequential,
    TensorDictModule,
)
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.data import Categorical as CategoricalSpec
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import IndependentNormal, MaskedCategorical, TanhNormal
from torchrl.objectives import ClipPPOLoss

from magpo import GuiderClipLoss, LearnerKLPPOLoss, LossOptions
from magpo.guiders import (
    AnchoredGuider,
    GuiderSpec,
    GumbelMaxDraw,
    NormalDraw,
    ResidualGuider,
    TransformerGuider,
    make_guider,
    make_guider_policies,
)

BATCH, AGENTS, OBS, ACTIONS, DIMS = 6, 4, 5, 4, 2
OBS_KEY, PARAMS_KEY = ("agents", "observation"), ("agents", "guider_params")
MEMORY_KEY = ("agents", "guider_memory")


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(BATCH, AGENTS, ACTIONS, generator=g) > 0.3
    mask[..., 0] = True
    agents = TensorDict({"observation": torch.randn(BATCH, AGENTS, OBS, generator=g), "action_mask": mask}, [BATCH, AGENTS])
    return TensorDict({"agents": agents}, [BATCH])


def build(kind, continuous, agent_order="random", seed=0, memory=False, draw=True):
    """A guider over a linear learner; ``draw``: the sampler draws its noise once per step (as
    ``make_guider``'s do), else the head acts at every step."""
    torch.manual_seed(seed)
    size = DIMS if continuous else ACTIONS
    param_dim = 2 * DIMS if continuous else ACTIONS
    spec = GuiderSpec((OBS_KEY,), None, OBS, None, AGENTS, size, not continuous, param_dim)
    learner_net = TensorDictModule(torch.nn.Linear(OBS, param_dim), [OBS_KEY], [("agents", "logits")])
    if kind == "transformer":
        core = TransformerGuider(spec, embed_dim=16, num_heads=2, memory_key=MEMORY_KEY if memory else None)
    else:
        corrected = ResidualGuider if kind == "residual" else AnchoredGuider
        core = corrected(learner_net, ("agents", "logits"), spec, hidden_dim=16)
        torch.nn.init.normal_(core.correction[-1].weight, std=0.5)  # a guider that differs from the learner
    if continuous:
        extractor = NormalParamExtractor()
        head = [TensorDictModule(extractor, [PARAMS_KEY], [("agents", "guider_loc"), ("agents", "guider_scale")])]
        dist = ProbabilisticTensorDictModule(
            in_keys={"loc": ("agents", "guider_loc"), "scale": ("agents", "guider_scale")}, out_keys=[("agents", "action")],
            distribution_class=TanhNormal, return_log_prob=True, log_prob_key=("agents", "log_prob"),
        )
        shape, dtype = (AGENTS, DIMS), torch.float32
        action_draw = NormalDraw(extractor, DIMS, -1.0, 1.0)  # TanhNormal's default bounds
    else:
        head = []
        dist = ProbabilisticTensorDictModule(
            in_keys={"logits": PARAMS_KEY, "mask": ("agents", "action_mask")}, out_keys=[("agents", "action")],
            distribution_class=MaskedCategorical, return_log_prob=True, log_prob_key=("agents", "log_prob"),
        )
        shape, dtype = (AGENTS,), torch.long
        action_draw = GumbelMaxDraw(ACTIONS, ("agents", "action_mask"))
    for_loss, for_collection = make_guider_policies(
        core, head, dist, group="agents", params_key=PARAMS_KEY, order_key=("agents", "agent_order"),
        agent_order=agent_order, action_shape=shape, action_dtype=dtype, draw=action_draw if draw else None,
    )
    return core, learner_net, for_loss, for_collection


CASES = [(k, c) for k in ("transformer", "residual", "anchored") for c in (False, True)]


@pytest.mark.parametrize("draw", [True, False])
@pytest.mark.parametrize("kind, continuous", CASES)
def test_teacher_forced_log_prob_equals_sequential_sampling(kind, continuous, draw):
    _, _, for_loss, for_collection = build(kind, continuous, draw=draw)
    data = batch()
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        for_collection(data)
        teacher_forced = for_loss.get_dist(data.clone()).log_prob(data["agents", "action"])
    torch.testing.assert_close(teacher_forced, data["agents", "log_prob"], rtol=1e-5, atol=1e-5)
    if not continuous:  # sampled actions respect the mask
        taken = data["agents", "action_mask"].gather(-1, data["agents", "action"][..., None])
        assert taken.all()


@pytest.mark.parametrize("kind, continuous", CASES)
def test_each_agent_sees_exactly_the_actions_before_it(kind, continuous):
    _, _, for_loss, for_collection = build(kind, continuous)
    data = batch()
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        for_collection(data)
    params = lambda td: for_loss.module[0](td.clone())[PARAMS_KEY]  # noqa: E731
    order = data["agents", "agent_order"]
    rows = torch.arange(BATCH)
    for step in range(AGENTS):
        changed = data.clone()
        action = changed["agents", "action"].clone()
        agent = order[:, step]
        action[rows, agent] = (action[rows, agent] + 1) % ACTIONS if not continuous else -action[rows, agent]
        changed["agents", "action"] = action
        difference = (params(changed) - params(data)).abs().flatten(2).amax(-1)  # [B, agents]
        positions = torch.argsort(order, -1)
        later = positions > step
        assert (difference[~later] < 1e-6).all(), "an agent's output moved with its own or a later action"
        if step < AGENTS - 1:
            assert (difference[later] > 1e-7).all(), "a later agent ignored an earlier action"


def _with_memory_inputs(data, seed=0):
    g = torch.Generator().manual_seed(seed)
    data[MEMORY_KEY] = torch.randn(BATCH, AGENTS, 16, generator=g)
    data["is_init"] = torch.rand(BATCH, 1, generator=g) > 0.5
    return data


@pytest.mark.parametrize("kind, continuous, memory", [(k, c, False) for k, c in CASES] + [("transformer", False, True)])
def test_step_by_step_decoding_equals_the_full_decoder(kind, continuous, memory):
    """decode_next (incremental: the transformer keeps its attention keys and values, the corrected
    guiders their first layer's fixed part and the running sum of the earlier actions' embeddings)
    gives each agent's row of the full, teacher-forced decode, with the actions of the agents after
    it still unset (up to rounding: the sums run in another order)."""
    core, *_ = build(kind, continuous, memory=memory)
    data = batch(1)
    if memory:
        _with_memory_inputs(data)
    order = torch.argsort(torch.rand(BATCH, AGENTS, generator=torch.Generator().manual_seed(2)), -1)
    action = torch.randn(BATCH, AGENTS, DIMS) if continuous else torch.randint(ACTIONS, (BATCH, AGENTS))
    with torch.no_grad():
        context = core.context(data, order)
        full = core.decode(context, action)
        state, chosen = core.start_decoding(context), torch.zeros_like(action)
        rows = torch.arange(BATCH)
        for step in range(AGENTS):
            row, state = core.decode_next(context, state, order, step, chosen)
            torch.testing.assert_close(row, full[rows, order[:, step]], rtol=1e-5, atol=1e-6)
            chosen[rows, order[:, step]] = action[rows, order[:, step]]  # the agent acts


@pytest.mark.parametrize("draw", [True, False])
@pytest.mark.parametrize("kind, continuous", CASES)
def test_sampling_draws_what_agent_after_agent_full_decoding_draws(kind, continuous, draw):
    """The sampler's random stream and result are those of the plain scheme: at every step the
    whole teacher-forced decode on the actions so far, and the acting agent's action kept, drawn
    from its row with noise drawn for every agent before the first step (with a draw), or by the
    head drawing for every agent at every step (without). Incremental decoding changes the rows
    by rounding only."""
    core, _, _, for_collection = build(kind, continuous, draw=draw)
    data = batch(3)
    torch.manual_seed(5)
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        sampled = for_collection(data.clone())
        torch.manual_seed(5)
        order = for_collection._order(torch.Size([BATCH]), torch.device("cpu"))
        noise = for_collection.draw.noise(order.shape, torch.device("cpu")) if draw else None
        action = torch.zeros_like(sampled["agents", "action"])
        log_prob = torch.zeros(BATCH, AGENTS)
        context, rows = core.context(data, order), torch.arange(BATCH)
        head_inputs = data.select(*for_collection.head.in_keys, strict=False)
        for step in range(AGENTS):
            params = core.decode(context, action)
            agent = order[:, step]
            if draw:
                action[rows, agent] = for_collection.draw(params, noise, head_inputs)[rows, agent]
            else:
                acted = for_collection.head(head_inputs.clone().set(PARAMS_KEY, params))
                action[rows, agent] = acted["agents", "action"][rows, agent]
                log_prob[rows, agent] = acted["agents", "log_prob"][rows, agent]
        if draw:
            log_prob = for_collection.head.get_dist(head_inputs.clone().set(PARAMS_KEY, params)).log_prob(action)
    assert torch.equal(sampled["agents", "agent_order"], order)
    exact = dict(rtol=1e-5, atol=1e-5)
    if continuous:
        torch.testing.assert_close(sampled["agents", "action"], action, **exact)
    else:  # the same noise against (nearly) the same parameters: the same actions
        assert torch.equal(sampled["agents", "action"], action)
    torch.testing.assert_close(sampled["agents", "log_prob"], log_prob, **exact)
    torch.testing.assert_close(sampled[PARAMS_KEY], params, **exact)


@pytest.mark.parametrize("bounds", [(-1.0, 1.0), (torch.tensor([-2.0, 0.0]), torch.tensor([3.0, 0.5])), None])
def test_normal_draw_is_torchrl_rsample_and_deterministic_sample(bounds):
    """The same noise gives TorchRL's own draw, bit for bit: TanhNormal with the identity and a
    non-trivial map onto its bounds, and IndependentNormal; zero noise its deterministic action."""
    g = torch.Generator().manual_seed(0)
    params = 3 * torch.randn(BATCH, AGENTS, 2 * DIMS, generator=g)  # wide: some tanh saturate
    extractor = NormalParamExtractor()
    loc, scale = extractor(params)
    if bounds is None:
        dist, draw = IndependentNormal(loc, scale), NormalDraw(extractor, DIMS)
    else:
        dist, draw = TanhNormal(loc, scale, low=bounds[0], high=bounds[1]), NormalDraw(extractor, DIMS, *bounds)
    torch.manual_seed(3)
    expected = dist.rsample()
    torch.manual_seed(3)
    noise = draw.noise(torch.Size([BATCH, AGENTS]), torch.device("cpu"))
    assert torch.equal(draw(params, noise, None), expected)
    assert torch.equal(draw(params, torch.zeros_like(noise), None), dist.deterministic_sample)


def test_gumbel_max_draw_samples_the_masked_softmax_and_zero_noise_gives_the_mode():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, ACTIONS, generator=g)
    mask = torch.tensor([[True] * ACTIONS, [True, False, True, False], [False, False, True, False]])
    draw = GumbelMaxDraw(ACTIONS, ("agents", "action_mask"))
    draws = 200_000
    inputs = TensorDict({"agents": {"action_mask": mask.expand(draws, 3, ACTIONS)}}, [draws])
    torch.manual_seed(0)
    actions = draw(logits.expand(draws, 3, ACTIONS), draw.noise(torch.Size([draws, 3]), torch.device("cpu")), inputs)
    frequencies = torch.nn.functional.one_hot(actions, ACTIONS).float().mean(0)
    expected = MaskedCategorical(logits=logits, mask=mask).probs
    assert (frequencies[~mask] == 0).all()  # masked-out actions are never drawn
    torch.testing.assert_close(frequencies, expected, rtol=0, atol=4e-3)  # about 4 standard errors
    mode = draw(logits, torch.zeros(3, ACTIONS), TensorDict({"agents": {"action_mask": mask}}))
    assert torch.equal(mode, MaskedCategorical(logits=logits, mask=mask).deterministic_sample)


def test_gumbel_noise_is_finite_even_where_the_exponential_draw_is_zero(monkeypatch):
    draw = GumbelMaxDraw(ACTIONS, ("agents", "action_mask"))
    monkeypatch.setattr(torch.Tensor, "exponential_", lambda self: self.zero_())  # the worst draw
    noise = draw.noise(torch.Size([2, AGENTS]), torch.device("cpu"))
    assert torch.isfinite(noise).all()
    mask = torch.tensor([False, True, False, False]).expand(2, AGENTS, ACTIONS)
    actions = draw(torch.zeros(2, AGENTS, ACTIONS), noise, TensorDict({"agents": {"action_mask": mask}}))
    assert (actions == 1).all()  # never a masked action


@pytest.mark.parametrize("kind, continuous", CASES)
def test_deterministic_sampling_with_a_draw_equals_the_heads_deterministic_actions(kind, continuous):
    _, _, _, with_draw = build(kind, continuous, agent_order="fixed")
    _, _, _, with_head = build(kind, continuous, agent_order="fixed", draw=False)
    data = batch()
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        state = torch.get_rng_state()
        drawn = with_draw(data.clone())
        assert torch.equal(torch.get_rng_state(), state)  # no noise drawn
        headed = with_head(data.clone())
    for key in [("agents", "action"), ("agents", "log_prob"), PARAMS_KEY]:
        torch.testing.assert_close(drawn[key], headed[key], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("continuous", [False, True])
def test_make_guider_samples_with_its_heads_draw(continuous):
    """make_guider's samplers draw the noise once per step (a bounded TanhNormal with a
    non-trivial map onto its bounds, a masked categorical) and store the teacher-forced log-probs."""
    torch.manual_seed(0)
    param_dim = 2 * DIMS if continuous else ACTIONS
    learner_net = TensorDictModule(torch.nn.Linear(OBS, param_dim), [OBS_KEY], [("agents", "logits")])
    spec = (Bounded(torch.tensor([-2.0, 0.0]).expand(AGENTS, DIMS), torch.tensor([3.0, 0.5]).expand(AGENTS, DIMS),
                    shape=(AGENTS, DIMS)) if continuous else CategoricalSpec(ACTIONS, shape=(AGENTS,)))
    core, for_loss, for_collection = make_guider(
        "anchored", group="agents", observation_spec=Composite(observation=Unbounded((AGENTS, OBS))),
        action_spec=spec, continuous=continuous, learner_module=learner_net, width=16, action_mask=not continuous,
    )
    assert isinstance(for_collection.draw, NormalDraw if continuous else GumbelMaxDraw)
    torch.nn.init.normal_(core.correction[-1].weight, std=0.5)
    data = batch()
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        for_collection(data)
        teacher_forced = for_loss.get_dist(data.clone()).log_prob(data["agents", "action"])
    torch.testing.assert_close(teacher_forced, data["agents", "log_prob"], rtol=1e-5, atol=1e-5)
    action = data["agents", "action"]
    if continuous:
        assert ((action >= spec.space.low) & (action <= spec.space.high)).all()
    else:
        assert data["agents", "action_mask"].gather(-1, action[..., None]).all()


def test_orders_random_per_step_or_fixed():
    _, _, _, random_order = build("transformer", False, agent_order="random")
    _, _, _, fixed_order = build("transformer", False, agent_order="fixed")
    with torch.no_grad():
        orders = random_order(batch())["agents", "agent_order"]
        fixed = fixed_order(batch())["agents", "agent_order"]
    assert (orders.sort(-1).values == torch.arange(AGENTS)).all()  # permutations
    assert len({tuple(o) for o in orders.tolist()}) > 1
    assert (fixed == torch.arange(AGENTS)).all()
    with pytest.raises(ValueError, match="agent_order"):
        build("transformer", False, agent_order="alphabetical")


def test_per_epoch_order_collects_in_the_fixed_order_and_trains_under_the_set_permutation():
    _, _, for_loss, for_collection = build("transformer", False, agent_order="per_epoch")
    data = batch()
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        for_collection(data)
        assert (data["agents", "agent_order"] == torch.arange(AGENTS)).all()
        teacher_forced = for_loss.module[0]
        collected = for_loss.get_dist(data.clone()).log_prob(data["agents", "action"])
        torch.testing.assert_close(collected, data["agents", "log_prob"], rtol=1e-5, atol=1e-5)  # no order set

        permutation = torch.tensor([2, 0, 3, 1])
        teacher_forced.training_order = permutation
        permuted = for_loss.get_dist(data.clone()).log_prob(data["agents", "action"])
        stored = data.clone()
        stored["agents", "agent_order"] = permutation.expand(BATCH, AGENTS)  # the same order, stored
        teacher_forced.training_order = None
        torch.testing.assert_close(permuted, for_loss.get_dist(stored).log_prob(stored["agents", "action"]), rtol=0, atol=0)
        assert not torch.allclose(permuted, collected)  # so the first epoch's ratio is not 1


@pytest.mark.parametrize("kind", ["residual", "anchored"])
@pytest.mark.parametrize("continuous", [False, True])
def test_backtrack_makes_guider_equal_learner_on_random_inputs(continuous, kind):
    core, learner_net, for_loss, for_collection = build(kind, continuous)
    assert core.depends_on_previous_actions()  # build() gives a non-zero correction
    with torch.no_grad():
        for p in learner_net.parameters():  # the learner moves on (a residual guider's copy is now stale)
            p.add_(torch.randn_like(p))
    base_params = [id(p) for p in core.parameters()]
    core.reset_to(learner_net)
    assert [id(p) for p in core.parameters()] == base_params  # in place: optimizers keep working
    for seed in range(3):
        data = batch(seed)
        with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
            for_collection(data)
            guider_params = for_loss.module[0](data.clone())[PARAMS_KEY]
            learner_params = learner_net(data.clone())["agents", "logits"]
        torch.testing.assert_close(guider_params, learner_params, rtol=0, atol=0)
    assert not core.depends_on_previous_actions()


def test_an_anchored_guider_is_reset_only_to_its_own_learner():
    core, _, _, _ = build("anchored", False)
    with pytest.raises(ValueError, match="anchored on"):
        core.reset_to(TensorDictModule(torch.nn.Linear(OBS, ACTIONS), [OBS_KEY], [("agents", "logits")]))


@pytest.mark.parametrize("draw", [True, False])
@pytest.mark.parametrize("continuous", [False, True])
def test_guider_equal_to_its_learner_samples_every_agent_in_one_pass(continuous, draw, monkeypatch):
    core, learner_net, for_loss, for_collection = build("residual", continuous, draw=draw)
    passes = []  # the sampler's calls of the core: one decode_next per agent, or one decode for all
    for name in ("decode", "decode_next"):
        method = getattr(core, name)
        monkeypatch.setattr(core, name, lambda *args, method=method, name=name: passes.append(name) or method(*args))
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        for_collection(batch())
        assert passes.count("decode_next") == AGENTS  # a non-zero correction: agent after agent
        core.reset_to(learner_net)
        passes.clear()
        torch.manual_seed(7)
        data = for_collection(batch())
        assert passes == ["decode"]
        if draw:  # the same noise: agent after agent would have drawn the very same actions
            monkeypatch.setattr(core, "depends_on_previous_actions", lambda: True)
            torch.manual_seed(7)
            one_by_one = for_collection(batch())
            for key in [("agents", "action"), ("agents", "log_prob"), ("agents", "agent_order")]:
                assert torch.equal(one_by_one[key], data[key]), key
        # exact, not an approximation: no agent's parameters move with the others' actions ...
        changed = data.clone()
        action = changed["agents", "action"]
        changed["agents", "action"] = -action if continuous else (action + 1) % ACTIONS
        params = lambda td: for_loss.module[0](td.clone())[PARAMS_KEY]  # noqa: E731
        torch.testing.assert_close(params(changed), params(data), rtol=0, atol=0)
        # ... and the stored log-probs are the teacher-forced ones under the stored order
        teacher_forced = for_loss.get_dist(data.clone()).log_prob(data["agents", "action"])
    torch.testing.assert_close(teacher_forced, data["agents", "log_prob"], rtol=1e-5, atol=1e-5)
    assert (data["agents", "agent_order"].sort(-1).values == torch.arange(AGENTS)).all()


def _zero_correction_guider(core, for_loss, learner_net, continuous):
    """mu == pi exactly: the guider's parameters are the learner's on fresh random inputs."""
    for seed in range(3):
        data = batch(seed)
        with torch.no_grad():
            data["agents", "action"] = torch.randn(BATCH, AGENTS, DIMS) if continuous else torch.randint(ACTIONS, (BATCH, AGENTS))
            data["agents", "agent_order"] = torch.argsort(torch.rand(BATCH, AGENTS), -1)
            guider_params = for_loss.module[0](data.clone())[PARAMS_KEY]
            learner_params = learner_net(data.clone())["agents", "logits"]
        torch.testing.assert_close(guider_params, learner_params, rtol=0, atol=0)


@pytest.mark.parametrize("continuous", [False, True])
def test_anchored_guider_starts_at_the_learner_and_follows_it(continuous):
    torch.manual_seed(0)
    core, learner_net, for_loss, _ = build("anchored", continuous)
    core._zero_correction()  # as constructed (build() perturbs it to test causality)
    spec = GuiderSpec((OBS_KEY,), None, OBS, None, AGENTS, ACTIONS, True, ACTIONS)
    assert AnchoredGuider(learner_net, ("agents", "logits"), spec).depends_on_previous_actions() is False  # a new one is zero: mu_0 = pi_0
    _zero_correction_guider(core, for_loss, learner_net, continuous)
    with torch.no_grad():
        for p in learner_net.parameters():  # a learner update moves the guider with it, no reset needed
            p.add_(torch.randn_like(p))
    _zero_correction_guider(core, for_loss, learner_net, continuous)


def test_anchored_guider_owns_only_its_correction_and_its_loss_never_reaches_the_learner():
    core, learner_net, for_loss, for_collection = build("anchored", False)
    learner_ids = {id(p) for p in learner_net.parameters()}
    assert learner_ids.isdisjoint(id(p) for p in core.parameters())
    assert not any(k.startswith("_learner") for k in core.state_dict())  # checkpoints hold the learner once
    assert set(learner_net.in_keys) <= set(for_collection.in_keys)
    data = batch()
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        for_collection(data)
    for_loss.get_dist(data).log_prob(data["agents", "action"]).sum().backward()
    assert all(p.grad is None for p in learner_net.parameters())
    assert core.correction[-1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("continuous", [False, True])
def test_loss_hands_the_anchored_guider_its_learner_output_with_the_same_result(continuous):
    """The loss runs the learner once per forward and gives its output to the anchored guider as
    the base; losses and gradients are bit-identical to the guider running the learner itself."""
    core, learner_net, for_loss, for_collection = build("anchored", continuous)
    learner = _learner_over(learner_net, continuous)
    data = batch()
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        for_collection(data)
    data["agents", "advantage"] = torch.randn(BATCH, AGENTS, 1, generator=torch.Generator().manual_seed(1))
    calls = []
    learner_net.module.register_forward_hook(lambda *_: calls.append(1))

    def run(share):
        loss = guided_loss(for_loss, learner)
        assert loss._anchored_cores == (core,)
        if not share:
            loss._anchored_cores = ()
        calls.clear()
        out = loss(data.clone())
        for p in [*core.parameters(), *learner_net.parameters()]:
            p.grad = None
        (out["loss_guider"] + out["loss_entropy"] + out["loss_learner"]).backward()
        grads = [p.grad.clone() for p in [*core.parameters(), *learner_net.parameters()] if p.grad is not None]
        return out, grads, len(calls)

    shared, shared_grads, shared_calls = run(True)
    alone, alone_grads, alone_calls = run(False)
    assert (shared_calls, alone_calls) == (1, 2)
    assert set(shared.keys()) == set(alone.keys())
    for key in shared.keys():
        assert torch.equal(shared[key], alone[key]), key
    assert len(shared_grads) == len(alone_grads) > 0
    assert all(torch.equal(a, b) for a, b in zip(shared_grads, alone_grads))
    assert core._given_base is None  # nothing is kept once the loss returns


def test_loss_does_not_share_with_an_anchored_guider_over_another_network():
    _, _, for_loss, _ = build("anchored", False)
    other = TensorDictModule(torch.nn.Linear(OBS, ACTIONS), [OBS_KEY], [("agents", "logits")])
    learner = ProbabilisticTensorDictSequential(
        other, ProbabilisticTensorDictModule(in_keys={"logits": ("agents", "logits")}, out_keys=[("agents", "action")],
                                             distribution_class=MaskedCategorical),
    )
    assert guided_loss(for_loss, learner)._anchored_cores == ()


@pytest.mark.parametrize("continuous", [False, True])
def test_learner_update_is_ppo_while_the_anchored_correction_is_zero(continuous):
    """While mu == pi (zero correction), the learner's imitation KL has zero gradient and its
    lambda x PPO term on pi / mu_old is TorchRL's ClipPPOLoss: with aux_coef 1, MAGPO's learner
    takes MAPPO's step. Checked after a learner update moved pi off the collecting policy, so
    ratios differ from 1 and some are clipped."""
    core, learner_net, for_loss, for_collection = build("anchored", continuous)
    core._zero_correction()
    learner = _learner_over(learner_net, continuous)
    data = batch()
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        for_collection(data)
        for p in learner_net.parameters():  # pi moves off mu_old; the guider follows it
            p.add_(0.3 * torch.randn_like(p))
    data["agents", "advantage"] = torch.randn(BATCH, AGENTS, 1, generator=torch.Generator().manual_seed(1))

    def learner_grads(loss, key):
        for p in learner_net.parameters():
            p.grad = None
        out = loss(data.clone())
        out[key].backward()
        return out, [p.grad.clone() for p in learner_net.parameters()]

    magpo = guided_loss(for_loss, learner, normalize_advantage=False)
    ppo = ClipPPOLoss(learner, clip_epsilon=0.2, entropy_bonus=False, normalize_advantage=False)
    ppo.set_keys(action=("agents", "action"), sample_log_prob=("agents", "log_prob"), advantage=("agents", "advantage"))
    out, magpo_grads = learner_grads(magpo, "loss_learner")
    ppo_out, ppo_grads = learner_grads(ppo, "loss_objective")
    assert out["learner_kl"].abs().item() < 1e-6
    assert 0 < out["learner_clip_fraction"].item() < 1  # the test reaches both sides of the clip
    torch.testing.assert_close(out["loss_learner"], ppo_out["loss_objective"], rtol=1e-5, atol=1e-6)
    for mine, theirs in zip(magpo_grads, ppo_grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)


def _learner_over(learner_net, continuous):
    """The decentralized learner policy over ``learner_net``'s parameters."""
    if continuous:
        return ProbabilisticTensorDictSequential(
            learner_net, TensorDictModule(NormalParamExtractor(), [("agents", "logits")], [("agents", "loc"), ("agents", "scale")]),
            ProbabilisticTensorDictModule(in_keys={"loc": ("agents", "loc"), "scale": ("agents", "scale")},
                                          out_keys=[("agents", "action")], distribution_class=TanhNormal),
        )
    return ProbabilisticTensorDictSequential(
        learner_net, ProbabilisticTensorDictModule(in_keys={"logits": ("agents", "logits"), "mask": ("agents", "action_mask")},
                                                   out_keys=[("agents", "action")], distribution_class=MaskedCategorical),
    )


def guided_loss(guider, learner, **kwargs):
    """The guider and learner halves of MAGPO in one loss (no critic: the batch holds the advantage)."""
    loss = _BothSides(guider, learner, options=LossOptions(delta=1.5, aux_coef=1.0), **kwargs)
    loss.set_keys(action=("agents", "action"), sample_log_prob=("agents", "log_prob"), advantage=("agents", "advantage"))
    return loss


class _BothSides(GuiderClipLoss):
    _losses = ("loss_guider", "loss_learner", "loss_entropy")
    _diagnostics = GuiderClipLoss._diagnostics + LearnerKLPPOLoss._diagnostics


# ---------------------------------------------------------------- memory over the episode

STEPS = 7


def collect_rollout(for_collection, starts, seed=0):
    """Collect ``STEPS`` steps of ``BATCH`` environments as a TorchRL collector would, carrying
    the guider's state from ("next", memory) to the next step; ``starts`` [BATCH, STEPS] marks
    episode starts. The carried state is NOT zeroed at a start (a primer would), so the guider's
    own reset is what the test sees. Returns the rollout stacked with time last, [BATCH, STEPS]."""
    state = torch.randn(BATCH, AGENTS, 16, generator=torch.Generator().manual_seed(seed + 100))
    steps = []
    for t in range(STEPS):
        data = batch(seed * STEPS + t)
        data["is_init"] = starts[:, t, None]
        data.set(MEMORY_KEY, state)
        for_collection(data)
        state = data["next", *MEMORY_KEY]
        steps.append(data)
    return torch.stack(steps, dim=1)


def starts_pattern():
    starts = torch.zeros(BATCH, STEPS, dtype=torch.bool)
    starts[:, 0] = torch.arange(BATCH) % 2 == 0  # half begin their rollout with a fresh episode
    starts[1, 4] = starts[2, 3] = True  # episodes that end inside the rollout
    return starts


@pytest.mark.parametrize("continuous", [False, True])
def test_memory_guider_recomputes_the_collected_log_probs_over_the_rollout(continuous):
    _, _, for_loss, for_collection = build("transformer", continuous, memory=True)
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        rollout = collect_rollout(for_collection, starts_pattern())
        assert rollout.batch_size == (BATCH, STEPS)
        recomputed = for_loss.get_dist(rollout.clone()).log_prob(rollout["agents", "action"])
        torch.testing.assert_close(recomputed, rollout["agents", "log_prob"], rtol=1e-5, atol=1e-5)
        # training reads the stored state at the first step only: later ones are recomputed
        scrambled = rollout.clone()
        scrambled.get(MEMORY_KEY)[:, 1:] = torch.randn(BATCH, STEPS - 1, AGENTS, 16)
        torch.testing.assert_close(for_loss.get_dist(scrambled).log_prob(rollout["agents", "action"]), recomputed,
                                   rtol=0, atol=0)


def test_memory_is_reset_at_episode_starts_and_carries_within_an_episode():
    _, _, for_loss, for_collection = build("transformer", False, memory=True)
    starts = starts_pattern()
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        rollout = collect_rollout(for_collection, starts)
    params = lambda td: for_loss.module[0](td.clone())[PARAMS_KEY]  # noqa: E731
    base = params(rollout)
    # another stored state at t = 0: only the environments that did not start an episode there move
    changed = rollout.clone()
    changed.get(MEMORY_KEY)[:, 0] = torch.randn(BATCH, AGENTS, 16)
    moved = (params(changed) - base).abs().flatten(2).amax(-1)  # [BATCH, STEPS]
    assert (moved[starts[:, 0]] == 0).all()
    assert (moved[~starts[:, 0], 0] > 1e-6).all()
    # another observation at t = 1 reaches env 1's later steps up to its reset at t = 4, not beyond
    changed = rollout.clone()
    changed.get(("agents", "observation"))[1, 1] = torch.randn(AGENTS, OBS)
    moved = (params(changed) - base)[1].abs().flatten(1).amax(-1)  # [STEPS] of env 1
    assert moved[0] == 0 and (moved[1:4] > 1e-6).all() and (moved[4:] == 0).all()


def test_memory_guider_gradient_flows_through_the_rollout():
    core, _, for_loss, for_collection = build("transformer", False, memory=True)
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        rollout = collect_rollout(for_collection, torch.zeros(BATCH, STEPS, dtype=torch.bool))
    observation = rollout["agents", "observation"].clone().requires_grad_(True)
    rollout["agents", "observation"] = observation
    for_loss.get_dist(rollout).log_prob(rollout["agents", "action"])[:, -1].sum().backward()
    assert (observation.grad[:, 0].abs().sum((-1, -2)) > 0).all()  # the last step's loss reaches the first step
    assert core.recurrence.weight_hh.grad.abs().sum() > 0


def test_memory_needs_the_transformer_and_a_known_kind():
    from torchrl.data import Categorical as CategoricalSpec
    from torchrl.data import Composite, Unbounded

    specs = dict(group="agents", observation_spec=Composite(observation=Unbounded((AGENTS, OBS))),
                 action_spec=CategoricalSpec(ACTIONS, shape=(AGENTS,)), continuous=False)
    learner_net = TensorDictModule(torch.nn.Linear(OBS, ACTIONS), [OBS_KEY], [("agents", "logits")])
    with pytest.raises(ValueError, match="memory must be one of"):
        make_guider("transformer", **specs, memory="lstm")
    with pytest.raises(ValueError, match="needs the transformer guider"):
        make_guider("anchored", **specs, memory="gru", learner_module=learner_net)
    core, _, for_collection = make_guider("transformer", **specs, memory="gru", width=16, heads=2)
    assert core.memory_key == MEMORY_KEY
    assert {MEMORY_KEY, "is_init"} <= set(for_collection.in_keys) and ("next", *MEMORY_KEY) in for_collection.out_keys
