"""The kernels contract (reference backend) against an independent float64 NumPy implementation,
finite-difference gradients, the double-clip cases, masking and argument checks."""

from __future__ import annotations

import math

import magpo_kernels
import numpy as np
import numpy_magpo
import pytest
import torch
from magpo_kernels import LossOptions
from magpo_kernels.reference import _magpo_terms

F64 = torch.float64


def categorical_inputs(shape=(5, 3), num_actions=6, seed=0, dtype=F64, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    guider = torch.randn(*shape, num_actions, generator=g, dtype=dtype)
    learner = guider + spread * torch.randn(*shape, num_actions, generator=g, dtype=dtype)
    action = torch.randint(num_actions, shape, generator=g)
    behavior = torch.log_softmax(guider + 0.3 * torch.randn(*shape, num_actions, generator=g, dtype=dtype), -1)
    behavior = behavior.gather(-1, action[..., None]).squeeze(-1)
    advantage = torch.randn(*shape, generator=g, dtype=dtype)
    return guider, learner, action, behavior, advantage


def normal_inputs(shape=(4, 3), dim=3, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    g_loc = torch.randn(*shape, dim, generator=g, dtype=dtype)
    g_scale = torch.rand(*shape, dim, generator=g, dtype=dtype) + 0.3
    l_loc = g_loc + 0.7 * torch.randn(*shape, dim, generator=g, dtype=dtype)
    l_scale = g_scale * (0.6 + torch.rand(*shape, dim, generator=g, dtype=dtype))
    action = g_loc + g_scale * torch.randn(*shape, dim, generator=g, dtype=dtype)
    behavior = torch.distributions.Normal(g_loc + 0.1, g_scale).log_prob(action).sum(-1)
    advantage = torch.randn(*shape, generator=g, dtype=dtype)
    return g_loc, g_scale, l_loc, l_scale, action, behavior, advantage


def assert_matches(terms, expected, rtol=1e-9, atol=1e-10):
    for field in numpy_magpo.FIELDS:
        got = getattr(terms, field).item()
        assert math.isclose(got, expected[field], rel_tol=rtol, abs_tol=atol), (field, got, expected[field])


@pytest.mark.parametrize("learner_kl", ["forward", "reverse"])
@pytest.mark.parametrize("delta", [1.2, 2.0, math.inf])
def test_categorical_matches_numpy(delta, learner_kl):
    guider, learner, action, behavior, advantage = categorical_inputs()
    mask = torch.rand(guider.shape, generator=torch.Generator().manual_seed(3)) > 0.3
    mask.scatter_(-1, action[..., None], True)  # the taken action is always allowed
    terms = magpo_kernels.magpo_loss_categorical(
        guider, learner, action, behavior, advantage, options=LossOptions(delta=delta, clip_epsilon=0.2, aux_coef=0.7, learner_kl=learner_kl),
        action_mask=mask,
    )
    expected = numpy_magpo.categorical(
        *(t.numpy() for t in (guider, learner, action, behavior, advantage)),
        delta=delta, eps=0.2, aux=0.7, learner_kl=learner_kl, mask=mask.numpy(),
    )
    assert_matches(terms, expected)
    if delta != math.inf:
        assert 0 < expected["mask_fraction"] < 1  # the data exercises both sides of the band


@pytest.mark.parametrize("learner_kl", ["forward", "reverse"])
@pytest.mark.parametrize("delta", [1.3, math.inf])
def test_normal_matches_numpy(delta, learner_kl):
    inputs = normal_inputs()
    terms = magpo_kernels.magpo_loss_normal(*inputs, options=LossOptions(delta=delta, clip_epsilon=0.1, aux_coef=2.0, learner_kl=learner_kl))
    expected = numpy_magpo.normal(
        *(t.numpy() for t in inputs), delta=delta, eps=0.1, aux=2.0, learner_kl=learner_kl
    )
    assert_matches(terms, expected)


def test_hand_worked_single_row():
    # One row, A = 2: guider p = (0.8, 0.2), learner q = (0.5, 0.5), action 0, mu_old(0) = 0.5,
    # advantage 1, delta 1.5, eps 0.2. rho = 1.6 > delta, so the mask is on and
    # r = 1.6, r2 = clip(clip(1.6, 2/3, 1.5) * 0.5 / 0.5, 0.8, 1.2) = 1.2, objective = -1.2.
    guider = torch.tensor([[math.log(0.8), math.log(0.2)]], dtype=F64)
    learner = torch.zeros(1, 2, dtype=F64)
    terms = magpo_kernels.magpo_loss_categorical(
        guider, learner, torch.tensor([0]), torch.tensor([math.log(0.5)], dtype=F64), torch.tensor([1.0], dtype=F64),
        options=LossOptions(delta=1.5, clip_epsilon=0.2, aux_coef=0.5),
    )
    kl = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)
    assert terms.guider_objective.item() == pytest.approx(-1.2)
    assert terms.mask_fraction.item() == 1.0 and terms.guider_clip_fraction.item() == 1.0
    assert terms.guider_kl.item() == pytest.approx(kl)
    assert terms.loss_guider.item() == pytest.approx(-1.2 + kl)
    # learner: r_l = 0.5 / 0.5 = 1, inside the clip: objective -1; loss = kl + 0.5 * (-1)
    assert terms.learner_objective.item() == pytest.approx(-1.0)
    assert terms.loss_learner.item() == pytest.approx(kl - 0.5)
    assert terms.guider_entropy.item() == pytest.approx(-(0.8 * math.log(0.8) + 0.2 * math.log(0.2)))


# ------------------------------------------------------------------------------ gradients


@pytest.mark.parametrize("learner_kl", ["forward", "reverse"])
def test_categorical_gradcheck(learner_kl):
    guider, learner, action, behavior, advantage = categorical_inputs(shape=(4, 2), num_actions=4, seed=1)
    mask = torch.ones_like(guider, dtype=torch.bool)
    mask[0, 0, (action[0, 0] + 1) % 4] = False
    opts = dict(options=LossOptions(delta=1.4, clip_epsilon=0.2, aux_coef=1.5, learner_kl=learner_kl), action_mask=mask)

    # Each side is varied alone: the other side enters its loss through stop-gradient, so a
    # finite difference across both would (rightly) disagree with the routed gradient.
    def guider_side(g):
        t = magpo_kernels.magpo_loss_categorical(g, learner, action, behavior, advantage, **opts)
        return t.loss_guider, t.guider_entropy

    def learner_side(lg):
        return magpo_kernels.magpo_loss_categorical(guider, lg, action, behavior, advantage, **opts).loss_learner

    torch.autograd.gradcheck(guider_side, (guider.clone().requires_grad_(),))
    torch.autograd.gradcheck(learner_side, (learner.clone().requires_grad_(),))


@pytest.mark.parametrize("learner_kl", ["forward", "reverse"])
def test_normal_gradcheck(learner_kl):
    g_loc, g_scale, l_loc, l_scale, action, behavior, advantage = normal_inputs(shape=(3, 2), dim=2, seed=2)
    opts = dict(options=LossOptions(delta=1.3, clip_epsilon=0.2, aux_coef=0.5, learner_kl=learner_kl))

    def guider_side(gm, gs):
        t = magpo_kernels.magpo_loss_normal(gm, gs, l_loc, l_scale, action, behavior, advantage, **opts)
        return t.loss_guider, t.guider_entropy

    def learner_side(lm, ls):
        return magpo_kernels.magpo_loss_normal(g_loc, g_scale, lm, ls, action, behavior, advantage, **opts).loss_learner

    torch.autograd.gradcheck(guider_side, (g_loc.clone().requires_grad_(), g_scale.clone().requires_grad_()))
    torch.autograd.gradcheck(learner_side, (l_loc.clone().requires_grad_(), l_scale.clone().requires_grad_()))


def test_each_loss_reaches_only_its_own_side():
    guider, learner, action, behavior, advantage = categorical_inputs()
    guider.requires_grad_()
    learner.requires_grad_()
    behavior.requires_grad_()
    advantage.requires_grad_()
    t = magpo_kernels.magpo_loss_categorical(guider, learner, action, behavior, advantage, options=LossOptions(delta=1.5, clip_epsilon=0.2, aux_coef=1))
    g_grads = torch.autograd.grad(t.loss_guider, (guider, learner, behavior, advantage), allow_unused=True, retain_graph=True)
    l_grads = torch.autograd.grad(t.loss_learner, (guider, learner, behavior, advantage), allow_unused=True)
    assert g_grads[0] is not None and g_grads[0].abs().sum() > 0
    assert g_grads[1:] == (None, None, None)
    assert l_grads[1] is not None and l_grads[1].abs().sum() > 0
    assert l_grads[0] is None and l_grads[2:] == (None, None)
    for field in ("guider_objective", "guider_kl", "learner_kl", "learner_objective", "mask_fraction"):
        assert not getattr(t, field).requires_grad, field


# ------------------------------------------------------------------------------ double clip


def _single_row_grad(log_rho, advantage, delta=1.5, eps=0.2):
    """d loss_guider / d log mu_phi(a) for one row with mu_old = pi (so r = rho); KL terms zero."""
    guider_lp = torch.tensor([log_rho], dtype=F64, requires_grad=True)
    zero = torch.zeros(1, dtype=F64)
    terms = _magpo_terms(
        guider_lp, zero, zero, torch.tensor([advantage], dtype=F64), zero, zero, zero,
        options=LossOptions(delta=delta, clip_epsilon=eps, aux_coef=0.0),
    )
    (grad,) = torch.autograd.grad(terms.loss_guider, guider_lp)
    return grad.item(), terms.mask_fraction.item()


@pytest.mark.parametrize(
    "rho, advantage, stopped",
    [
        (2.0, +1.0, True),  # A > 0 pushes rho up, already above delta: stopped
        (0.4, +1.0, False),  # A > 0 pushes rho up, towards the learner: flows
        (2.0, -1.0, False),  # A < 0 pushes rho down, towards the learner: flows
        (0.4, -1.0, True),  # A < 0 pushes rho down, already below 1/delta: stopped
    ],
)
def test_double_clip_stops_gradient_only_away_from_learner(rho, advantage, stopped):
    grad, mask = _single_row_grad(math.log(rho), advantage)
    assert mask == 1.0  # out of band in all four cases: the KL pull is on
    if stopped:
        assert grad == 0.0
    else:  # d(-r * A)/d log mu = -r * A with r = rho here
        assert grad == pytest.approx(-rho * advantage)


@pytest.mark.parametrize("rho", [0.7, 0.95, 1.0, 1.05, 1.4])
def test_inside_band_is_plain_ppo_and_mask_off(rho):
    delta, eps = 1.5, 0.2
    grad, mask = _single_row_grad(math.log(rho), 1.0, delta=delta, eps=eps)
    assert mask == 0.0
    # plain PPO on r = rho: gradient -r*A inside the clip or when the clip is not active
    # (r < 1 - eps with A > 0 keeps the unclipped branch), zero when r > 1 + eps.
    assert grad == pytest.approx(0.0 if rho > 1 + eps else -rho)


def test_mask_is_on_only_out_of_band():
    delta = 1.5
    log_rho = torch.log(torch.tensor([0.5, 1 / 1.49, 1.0, 1.49, 1.51, 3.0], dtype=F64))
    zero = torch.zeros_like(log_rho)
    kl = torch.arange(1.0, 7.0, dtype=F64)
    terms = _magpo_terms(log_rho, zero, zero, zero, kl, zero, zero, options=LossOptions(delta=delta, clip_epsilon=0.2, aux_coef=0.0))
    assert terms.mask_fraction.item() == pytest.approx(3 / 6)
    assert terms.guider_kl.item() == pytest.approx((1 + 5 + 6) / 6)  # rows 0, 4, 5; mean over ALL rows


def test_delta_inf_is_plain_ppo_without_kl():
    guider, learner, action, behavior, advantage = categorical_inputs(spread=3.0)
    t = magpo_kernels.magpo_loss_categorical(guider, learner, action, behavior, advantage, options=LossOptions(delta=math.inf, clip_epsilon=0.2, aux_coef=1))
    ratio = (torch.log_softmax(guider, -1).gather(-1, action[..., None]).squeeze(-1) - behavior).exp()
    ppo = -torch.minimum(ratio * advantage, ratio.clamp(0.8, 1.2) * advantage).mean()
    assert t.guider_objective.item() == pytest.approx(ppo.item())
    assert t.mask_fraction.item() == 0.0 and t.guider_kl.item() == 0.0
    assert t.loss_guider.item() == pytest.approx(ppo.item())


def test_kl_direction_switch():
    guider, learner, action, behavior, advantage = categorical_inputs(spread=2.0)
    fwd, rev = (
        magpo_kernels.magpo_loss_categorical(guider, learner, action, behavior, advantage, LossOptions(aux_coef=0.0, learner_kl=kl))
        for kl in ("forward", "reverse")
    )
    p, q = torch.distributions.Categorical(logits=guider), torch.distributions.Categorical(logits=learner)
    assert fwd.learner_kl.item() == pytest.approx(torch.distributions.kl_divergence(p, q).mean().item())
    assert rev.learner_kl.item() == pytest.approx(torch.distributions.kl_divergence(q, p).mean().item())
    assert abs(fwd.learner_kl.item() - rev.learner_kl.item()) > 1e-3
    assert fwd.loss_guider.item() == rev.loss_guider.item()  # the guider does not depend on it


# ------------------------------------------------------------------------------ numerics


def test_masked_and_all_but_one_masked_rows_stay_finite():
    guider, learner, action, behavior, advantage = categorical_inputs(shape=(4,), num_actions=5, dtype=torch.float32)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[0] = False
    mask[0, action[0]] = True  # only the taken action allowed
    mask[1, (action[1] + 1) % 5] = False
    guider[2, (action[2] + 2) % 5] = -math.inf  # pre-masked logits, no mask entry
    learner[2, (action[2] + 2) % 5] = -math.inf
    guider.requires_grad_()
    learner.requires_grad_()
    t = magpo_kernels.magpo_loss_categorical(guider, learner, action, behavior, advantage, options=LossOptions(delta=1.5, clip_epsilon=0.2, aux_coef=1), action_mask=mask)
    for field in numpy_magpo.FIELDS:
        assert torch.isfinite(getattr(t, field)), field
    (t.loss_guider + t.loss_learner - t.guider_entropy).backward()
    assert torch.isfinite(guider.grad).all() and torch.isfinite(learner.grad).all()
    assert (guider.grad[~mask] == 0).all() and (learner.grad[~mask] == 0).all()
    # row 0 has a single allowed action: probability 1, no KL and no entropy
    single = magpo_kernels.magpo_loss_categorical(guider[:1], learner[:1], action[:1], behavior[:1], advantage[:1], options=LossOptions(delta=1.5, clip_epsilon=0.2, aux_coef=1), action_mask=mask[:1])
    assert single.learner_kl.item() == 0.0 and single.guider_entropy.item() == 0.0


def test_large_logits_and_extreme_scales_stay_finite():
    guider, learner, action, behavior, advantage = categorical_inputs(dtype=torch.float32)
    t = magpo_kernels.magpo_loss_categorical(guider * 1e4, -learner * 1e4, action, behavior, advantage, options=LossOptions(delta=1.5, clip_epsilon=0.2, aux_coef=1))
    for field in numpy_magpo.FIELDS:
        assert torch.isfinite(getattr(t, field)), field
    g_loc, g_scale, l_loc, l_scale, action, behavior, advantage = normal_inputs(dtype=torch.float32)
    t = magpo_kernels.magpo_loss_normal(g_loc, g_scale * 1e-3, l_loc, l_scale * 1e3, action, behavior, advantage, options=LossOptions(delta=1.5, clip_epsilon=0.2, aux_coef=1))
    for field in ("guider_kl", "learner_kl", "guider_entropy", "mask_fraction"):
        assert torch.isfinite(getattr(t, field)), field


def test_half_precision_inputs_compute_in_float32():
    guider, learner, action, behavior, advantage = categorical_inputs(dtype=torch.float32)
    full = magpo_kernels.magpo_loss_categorical(guider, learner, action, behavior, advantage, options=LossOptions(delta=1.5, clip_epsilon=0.2, aux_coef=1))
    g16 = guider.bfloat16().requires_grad_()
    half = magpo_kernels.magpo_loss_categorical(g16, learner.bfloat16(), action, behavior, advantage, options=LossOptions(delta=1.5, clip_epsilon=0.2, aux_coef=1))
    assert half.loss_guider.dtype == torch.float32
    assert half.guider_entropy.item() == pytest.approx(full.guider_entropy.item(), rel=2e-2)
    half.loss_guider.backward()
    assert g16.grad.dtype == torch.bfloat16


# ------------------------------------------------------------------------------ bad input


GOOD = dict(options=LossOptions(delta=1.5, clip_epsilon=0.2, aux_coef=1.0))


@pytest.mark.parametrize(
    "field, error",
    [
        (dict(delta=1.0), ValueError),
        (dict(delta=0.5), ValueError),
        (dict(delta=float("nan")), TypeError),
        (dict(delta="2"), TypeError),
        (dict(clip_epsilon=0.0), ValueError),
        (dict(clip_epsilon=1.0), ValueError),
        (dict(aux_coef=-0.1), ValueError),
        (dict(aux_coef=math.inf), ValueError),
        (dict(aux_coef=True), TypeError),
        (dict(learner_kl="both"), ValueError),
        (dict(backend="cuda"), ValueError),
    ],
)
def test_bad_hyperparameters_are_refused_when_the_options_are_built(field, error):
    (name,) = field
    with pytest.raises(error, match=f"^{name} "):  # the message starts with the field's name
        LossOptions(**field)


def test_options_are_frozen_plain_floats_and_required_by_the_contract():
    options = LossOptions(delta=2, aux_coef=0)
    assert type(options.delta) is float and type(options.aux_coef) is float
    with pytest.raises(AttributeError):
        options.delta = 3.0
    with pytest.raises(TypeError, match="options must be a magpo_kernels.LossOptions"):
        magpo_kernels.magpo_loss_categorical(*categorical_inputs(), options=dict(delta=1.5))


def test_bad_tensors():
    guider, learner, action, behavior, advantage = categorical_inputs()
    cases = [
        ((guider, learner[..., :-1], action, behavior, advantage), {}, ValueError, "learner_logits"),
        ((guider, learner, action.double(), behavior, advantage), {}, TypeError, "action"),
        ((guider, learner, action[:-1], behavior, advantage), {}, ValueError, "action"),
        ((guider, learner, action, behavior[..., None], advantage), {}, ValueError, "behavior_log_prob"),
        ((guider, learner, action, behavior, advantage.long()), {}, TypeError, "advantage"),
        ((guider.long(), learner, action, behavior, advantage), {}, TypeError, "guider_logits"),
        ((guider, learner, action, behavior, advantage), dict(action_mask=torch.ones_like(guider)), TypeError, "action_mask"),
        ((guider, learner, action, behavior, advantage), dict(action_mask=torch.ones(3, dtype=torch.bool)), ValueError, "action_mask"),
        ((guider, learner, action, behavior, advantage.to("meta")), {}, ValueError, "advantage on meta"),
        ((guider[:0], learner[:0], action[:0], behavior[:0], advantage[:0]), {}, ValueError, "no rows"),
        ((guider.numpy(), learner, action, behavior, advantage), {}, TypeError, "guider_logits"),
    ]
    for args, extra, error, name in cases:
        with pytest.raises(error, match=name):
            magpo_kernels.magpo_loss_categorical(*args, **GOOD, **extra)
    g_loc, g_scale, l_loc, l_scale, action, behavior, advantage = normal_inputs()
    with pytest.raises(ValueError, match="learner_scale"):
        magpo_kernels.magpo_loss_normal(g_loc, g_scale, l_loc, l_scale[..., :1], action, behavior, advantage, **GOOD)
    with pytest.raises(TypeError, match="action"):
        magpo_kernels.magpo_loss_normal(g_loc, g_scale, l_loc, l_scale, action.long(), behavior, advantage, **GOOD)


def test_numpy_reference_is_independent_of_torch_formulas():
    # guards the test oracle itself on a value worked by hand: KL((.5,.5) || (.25,.75))
    assert numpy_magpo._kl_discrete([0.5, 0.5], [0.25, 0.75]) == pytest.approx(
        0.5 * math.log(2) + 0.5 * math.log(2 / 3)
    )
    assert np.isclose(numpy_magpo._kl_normal(0.0, 1.0, 1.0, 2.0), math.log(2) + (1 + 1) / 8 - 0.5)
