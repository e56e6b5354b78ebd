"""The TorchRL loss modules: gradient routing, keys, state, distribution families, GAE, checks."""

from __future__ import annotations

import dataclasses
import math

import magpo_kernels
import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import distributions as D
from torchrl.modules import IndependentNormal, MaskedCategorical, OneHotCategorical, ProbabilisticActor, TanhNormal

from magpo import GuiderClipLoss, LearnerKLPPOLoss, LossOptions, MAGPOLoss, NonFiniteLossError

OPTION_FIELDS = [f.name for f in dataclasses.fields(LossOptions)]

BATCH, AGENTS, OBS, ACTIONS = 6, 3, 4, 5
KEYS = dict(
    action=("agents", "action"),
    sample_log_prob=("agents", "log_prob"),
    advantage=("agents", "advantage"),
    value_target=("agents", "value_target"),
    value=("agents", "state_value"),
    reward=("agents", "reward"),
    done=("agents", "done"),
    terminated=("agents", "terminated"),
)


def make_actor(in_key, family):
    """A per-agent policy over ``("agents", in_key)`` with the given distribution family."""
    if family in ("tanh_normal", "normal"):
        net = torch.nn.Sequential(torch.nn.Linear(OBS, 2 * 2), NormalParamExtractor())
        module = TensorDictModule(net, [("agents", in_key)], [("agents", "loc"), ("agents", "scale")])
        dist = TanhNormal if family == "tanh_normal" else IndependentNormal
        in_keys = {"loc": ("agents", "loc"), "scale": ("agents", "scale")}
    else:
        module = TensorDictModule(torch.nn.Linear(OBS, ACTIONS), [("agents", in_key)], [("agents", "logits")])
        dist = {"categorical": D.Categorical, "masked": MaskedCategorical, "onehot": OneHotCategorical}[family]
        in_keys = {"logits": ("agents", "logits")}
        if family == "masked":
            in_keys["mask"] = ("agents", "action_mask")
    return ProbabilisticActor(
        module,
        in_keys=in_keys,
        out_keys=[("agents", "action")],
        distribution_class=dist,
        return_log_prob=True,
        log_prob_key=("agents", "log_prob"),
    )


def make_setup(family="categorical", loss_class=MAGPOLoss, seed=0, with_advantage=True, **loss_kwargs):
    torch.manual_seed(seed)
    guider = make_actor("state", family)
    learner = make_actor("observation", family)
    critic = TensorDictModule(torch.nn.Linear(OBS, 1), [("agents", "state")], [("agents", "state_value")])
    agents = TensorDict(
        {"observation": torch.randn(BATCH, AGENTS, OBS), "state": torch.randn(BATCH, AGENTS, OBS)},
        [BATCH, AGENTS],
    )
    if family == "masked":
        mask = torch.rand(BATCH, AGENTS, ACTIONS) > 0.4
        mask[..., 0] = True
        agents["action_mask"] = mask
    batch = TensorDict({"agents": agents}, [BATCH])
    with torch.no_grad():
        guider(batch)  # collection: the guider acts and stores the behaviour log-prob
    if with_advantage:
        batch["agents", "advantage"] = torch.randn(BATCH, AGENTS, 1)
        batch["agents", "value_target"] = torch.randn(BATCH, AGENTS, 1)
    options = LossOptions(**{k: loss_kwargs.pop(k) for k in OPTION_FIELDS if k in loss_kwargs})
    loss = loss_class(guider, learner, None if loss_class is LearnerKLPPOLoss else critic, options, **loss_kwargs)
    loss.set_keys(**KEYS)
    return loss, batch, guider, learner, critic


def grads_of(module):
    return [p.grad for p in module.parameters()]


@pytest.mark.parametrize("family", ["categorical", "masked", "onehot", "normal", "tanh_normal"])
def test_each_loss_trains_only_its_own_parameters(family):
    loss, batch, guider, learner, critic = make_setup(family)
    out = loss(batch)
    routes = {"loss_guider": guider, "loss_entropy": guider, "loss_learner": learner, "loss_critic": critic}
    for key, owner in routes.items():
        loss.zero_grad(set_to_none=True)
        out[key].backward(retain_graph=True)
        for module in (guider, learner, critic):
            got = [g is not None and bool(g.abs().sum() > 0) for g in grads_of(module)]
            if module is owner:
                assert any(got), (key, family)
            else:
                assert not any(got), (key, type(module).__name__, family)


def test_sequential_backward_without_retain_graph():
    # BenchMARL back-propagates each loss key in turn without retain_graph.
    loss, batch, *_ = make_setup()
    out = loss(batch)
    (out["loss_guider"] + out["loss_entropy"]).backward()
    out["loss_learner"].backward()
    out["loss_critic"].backward()


@pytest.mark.parametrize("family", ["categorical", "tanh_normal"])
def test_module_matches_independent_torch_distributions(family):
    """The module's wiring (dist parameters, Jacobian, advantage normalisation) checked against
    a direct computation with torch.distributions."""
    loss, batch, guider, learner, _ = make_setup(family, delta=1.3, aux_coef=0.5, learner_kl="reverse")
    out = loss(batch)
    with torch.no_grad():
        g_dist, l_dist = guider.get_dist(batch), learner.get_dist(batch)
        action = batch["agents", "action"]
        behavior = batch["agents", "log_prob"]
        adv = batch["agents", "advantage"].squeeze(-1)
        adv = (adv - adv.mean()) / (adv.std(correction=0) + 1e-8)  # population std, as the authors
        log_g, log_l = g_dist.log_prob(action), l_dist.log_prob(action)  # Jacobians cancel in ratios
        if family == "tanh_normal":
            base_g, base_l = D.Normal(g_dist.loc, g_dist.scale), D.Normal(l_dist.loc, l_dist.scale)
            kl_gl = D.kl_divergence(base_g, base_l).sum(-1)
            kl_lg = D.kl_divergence(base_l, base_g).sum(-1)
            entropy = base_g.entropy().sum(-1)
        else:
            kl_gl, kl_lg, entropy = D.kl_divergence(g_dist, l_dist), D.kl_divergence(l_dist, g_dist), g_dist.entropy()
        r = (log_g - behavior).exp()
        rho = (log_g - log_l).exp()
        r2 = (rho.clamp(1 / 1.3, 1.3) * (log_l - behavior).exp()).clamp(0.8, 1.2)
        mask = ((rho <= 1 / 1.3) | (rho >= 1.3)).float()
        objective = -torch.minimum(r * adv, r2 * adv).mean()
        rl = (log_l - behavior).exp()
        learner_objective = -torch.minimum(rl * adv, rl.clamp(0.8, 1.2) * adv).mean()
    assert out["guider_objective"].item() == pytest.approx(objective.item(), rel=1e-4, abs=1e-5)
    assert out["guider_kl"].item() == pytest.approx((mask * kl_gl).mean().item(), rel=1e-4, abs=1e-6)
    assert out["learner_kl"].item() == pytest.approx(kl_lg.mean().item(), rel=1e-4)
    assert out["learner_objective"].item() == pytest.approx(learner_objective.item(), rel=1e-4, abs=1e-5)
    assert out["loss_learner"].item() == pytest.approx(kl_lg.mean().item() + 0.5 * learner_objective.item(), rel=1e-4)
    assert out["guider_entropy"].item() == pytest.approx(entropy.mean().item(), rel=1e-4)
    assert out["loss_entropy"].item() == pytest.approx(-0.01 * entropy.mean().item(), rel=1e-4)
    assert out["mask_fraction"].item() == pytest.approx(mask.mean().item())


def test_fresh_batch_has_ratio_one_for_tanh_normal():
    # Right after collection the guider is mu_old: the Jacobian-corrected behaviour log-prob must
    # equal the Normal log-prob at the pre-tanh action, so r = 1 and delta = inf gives -mean(A).
    loss, batch, *_ = make_setup("tanh_normal", delta=math.inf, normalize_advantage=False)
    out = loss(batch)
    assert out["guider_objective"].item() == pytest.approx(-batch["agents", "advantage"].mean().item(), abs=1e-4)
    assert out["guider_clip_fraction"].item() == 0.0


def test_output_keys_per_loss():
    magpo, batch, *_ = make_setup()
    assert set(magpo(batch).keys()) == set(magpo.out_keys)
    assert {"loss_guider", "loss_learner", "loss_critic", "loss_entropy", "explained_variance"} <= set(magpo.out_keys)
    guider_loss, batch, *_ = make_setup(loss_class=GuiderClipLoss)
    assert set(guider_loss(batch).keys()) == set(guider_loss.out_keys)
    assert "loss_learner" not in guider_loss.out_keys and "loss_guider" in guider_loss.out_keys
    learner_loss, batch, *_ = make_setup(loss_class=LearnerKLPPOLoss)
    out = learner_loss(batch)
    assert set(out.keys()) == {"loss_learner", "learner_kl", "learner_objective", "learner_clip_fraction"}


def test_gae_through_make_value_estimator():
    loss, batch, *_ = make_setup(with_advantage=False, clip_value=0.2)
    batch["next"] = TensorDict(
        {
            "agents": TensorDict(
                {
                    "state": torch.randn(BATCH, AGENTS, OBS),
                    "observation": torch.randn(BATCH, AGENTS, OBS),
                    "reward": torch.randn(BATCH, AGENTS, 1),
                    "done": torch.zeros(BATCH, AGENTS, 1, dtype=torch.bool),
                    "terminated": torch.zeros(BATCH, AGENTS, 1, dtype=torch.bool),
                },
                [BATCH, AGENTS],
            )
        },
        [BATCH],
    )
    with torch.no_grad():
        loss.critic_network(batch)  # the stored value, used by clip_value
        loss.critic_network(batch["next"])
    loss.make_value_estimator(gamma=0.9, lmbda=0.8)
    out = loss(batch)
    assert "value_clip_fraction" in out.keys() and torch.isfinite(out["loss_critic"])
    assert loss.value_estimator.gamma.item() == pytest.approx(0.9)


def test_advantage_normalisation_is_on_by_default_and_can_be_switched_off():
    loss_on, batch, *_ = make_setup(delta=math.inf)
    loss_off, batch_off, *_ = make_setup(delta=math.inf, normalize_advantage=False)
    batch["agents", "advantage"] = batch["agents", "advantage"] * 100 + 50
    batch_off["agents", "advantage"] = batch["agents", "advantage"]
    assert abs(loss_on(batch)["guider_objective"].item()) < 5
    assert abs(loss_off(batch_off)["guider_objective"].item()) > 5


def test_set_keys_and_unknown_key():
    loss, batch, *_ = make_setup()
    batch["agents", "my_adv"] = batch["agents", "advantage"] * 2
    loss.set_keys(advantage=("agents", "my_adv"))
    assert loss.tensor_keys.advantage == ("agents", "my_adv")
    assert torch.isfinite(loss(batch)["loss_guider"])
    with pytest.raises(ValueError):
        loss.set_keys(not_a_key="x")
    del batch["agents", "log_prob"]
    with pytest.raises(KeyError, match="behaviour log-prob"):
        loss(batch)


def test_state_dict_round_trip():
    loss, batch, *_ = make_setup(seed=0)
    other, *_ = make_setup(seed=1)
    assert not torch.allclose(loss(batch)["loss_guider"], other(batch)["loss_guider"])
    other.load_state_dict(loss.state_dict())
    for key in ("loss_guider", "loss_learner", "loss_critic"):
        assert torch.equal(loss(batch)[key], other(batch)[key]), key
    assert {k.split(".")[0] for k in loss.state_dict()} >= {
        "actor_network_params",
        "learner_network_params",
        "critic_network_params",
    }


def test_non_finite_loss_names_the_term():
    loss, batch, *_ = make_setup()
    batch["agents", "log_prob"] = torch.full_like(batch["agents", "log_prob"], math.nan)
    with pytest.raises(NonFiniteLossError, match="loss_guider"):
        loss(batch)
    loss.check_finite = False
    assert torch.isnan(loss(batch)["loss_guider"])


def test_non_finite_loss_reports_the_stored_log_probs():
    # A continuous policy pinned at an action bound stores its clamped actions with log-probs far
    # below zero; there the ratio to the current policy overflows.
    loss, batch, *_ = make_setup("tanh_normal")
    batch["agents", "log_prob"][0, 0] = -1e4
    batch["agents", "advantage"][0, 0] = -1.0
    with pytest.raises(NonFiniteLossError, match=r"log-probs of the taken actions range over \[-1e\+04, ") as error:
        loss(batch)
    assert "entropy_coeff > 0" in str(error.value)


def test_shared_parameters_are_the_policies_own():
    loss, _, guider, learner, _ = make_setup()
    # functional params are the same Parameter objects, so a collector sees optimizer updates
    assert {id(p) for p in guider.parameters()} == {id(p) for p in loss.actor_network_params.values(True, True)}
    assert {id(p) for p in learner.parameters()} == {id(p) for p in loss.learner_network_params.values(True, True)}
    assert loss.guider_network is loss.actor_network


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(delta=1.0), "delta"),
        (dict(clip_epsilon=1.5), "clip_epsilon"),
        (dict(aux_coef=-1.0), "aux_coef"),
        (dict(learner_kl="sideways"), "learner_kl"),
        (dict(backend="tpu"), "backend"),
        (dict(entropy_coeff=-0.1), "entropy_coeff"),
        (dict(clip_value=-1.0), "clip_value"),
        (dict(critic_coeff=-1.0), "critic_coeff"),
    ],
)
def test_bad_constructor_arguments(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        make_setup(**kwargs)


def test_magpo_needs_a_critic():
    guider, learner = make_actor("state", "categorical"), make_actor("observation", "categorical")
    with pytest.raises(ValueError, match="critic_network"):
        MAGPOLoss(guider, learner, None)


def test_reference_backend_can_be_forced():
    loss, batch, *_ = make_setup(backend="reference")
    assert loss.options.backend == "reference"
    assert torch.isfinite(loss(batch)["loss_guider"])
    assert magpo_kernels.BACKENDS == ("auto", "reference", "triton")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("family", ["masked", "tanh_normal"])
def test_triton_backend_matches_reference_in_the_module(family):
    # On CPU this runs Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
    outs, grads = {}, {}
    for backend in ("reference", "triton"):
        loss, batch, guider, learner, _ = make_setup(family, backend=backend, seed=3)
        out = loss(batch)
        (out["loss_guider"] + out["loss_entropy"] + out["loss_learner"]).backward()
        outs[backend] = out
        grads[backend] = [p.grad for p in list(guider.parameters()) + list(learner.parameters())]
    for key in outs["reference"].keys():
        torch.testing.assert_close(outs["triton"][key], outs["reference"][key], rtol=1e-4, atol=1e-5, msg=key)
    for got, want in zip(grads["triton"], grads["reference"]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
