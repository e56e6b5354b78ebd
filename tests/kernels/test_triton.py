"""The Triton backend against the PyTorch reference: values and gradients.

On CPU these run under TRITON_INTERPRET=1 (see tests/conftest.py): fp32 and small shapes.
Tests marked ``gpu`` need CUDA (half precision, large row counts) and skip cleanly without it.
"""

from __future__ import annotations

import dataclasses
import math

import magpo_kernels
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from magpo_kernels import LossOptions, api

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # interpreter: padded rows
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
FIELDS = magpo_kernels.MAGPOLossTerms._fields


def categorical_case(rows, num_actions, seed=0, masked=True, scale=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    guider = scale * torch.randn(rows, num_actions, generator=g)
    learner = guider + scale * torch.randn(rows, num_actions, generator=g)
    action = torch.randint(num_actions, (rows,), generator=g)
    behavior = torch.log_softmax(guider + 0.5 * torch.randn(rows, num_actions, generator=g), -1)
    behavior = behavior.gather(-1, action[:, None]).squeeze(-1)
    advantage = torch.randn(rows, generator=g)
    mask = None
    if masked:
        mask = torch.rand(rows, num_actions, generator=g) > 0.4
        mask[torch.arange(rows), action] = True
    to = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    return (to(guider.to(dtype)), to(learner.to(dtype)), to(action), to(behavior), to(advantage)), to(mask)


def run_both(fn, tensors, differentiable, options, weights=(2.0, -1.5, 0.25), **kwargs):
    """Run the float64 reference (the oracle) and Triton on the inputs as given; returns
    {backend: (terms, grads)}, using non-unit grad outputs."""
    results = {}
    for backend in ("reference", "triton"):
        oracle = backend == "reference"
        inputs = [
            (t.double() if oracle and t.is_floating_point() else t).detach().clone().requires_grad_(i in differentiable)
            for i, t in enumerate(tensors)
        ]
        terms = fn(*inputs, options=dataclasses.replace(options, backend=backend), **kwargs)
        total = weights[0] * terms.loss_guider + weights[1] * terms.loss_learner + weights[2] * terms.guider_entropy
        total.backward()
        results[backend] = terms, [inputs[i].grad for i in differentiable]
    return results


def assert_close(results, rtol=1e-4, atol=1e-5, grad_atol_fraction=0.0):
    """Triton's fp32 terms and gradients agree with the float64 reference. ``grad_atol_fraction``
    widens the gradient atol to that fraction of the largest gradient entry (fp32 softmax
    gradients are exact only up to the row's largest term)."""
    (ref_terms, ref_grads), (tri_terms, tri_grads) = results["reference"], results["triton"]
    for field in FIELDS:
        torch.testing.assert_close(
            getattr(tri_terms, field).double(), getattr(ref_terms, field).double(), rtol=rtol, atol=atol,
            equal_nan=False, msg=lambda m, f=field: f"{f}: {m}",
        )
    for got, want in zip(tri_grads, ref_grads):
        tolerance = max(atol, grad_atol_fraction * want.abs().max().item())
        torch.testing.assert_close(got.double(), want, rtol=rtol, atol=tolerance)


@pytest.mark.parametrize("rows, num_actions", [(1, 1), (3, 2), (37, 7), (130, 5), (9, 300)])
@pytest.mark.parametrize("delta", [1.3, math.inf])
@pytest.mark.parametrize("learner_kl", ["forward", "reverse"])
def test_categorical_matches_reference(rows, num_actions, delta, learner_kl):
    tensors, mask = categorical_case(rows, num_actions, masked=num_actions > 1)
    results = run_both(
        magpo_kernels.magpo_loss_categorical, tensors, differentiable=(0, 1),
        options=LossOptions(delta=delta, clip_epsilon=0.2, aux_coef=0.7, learner_kl=learner_kl), action_mask=mask,
    )
    assert_close(results)


def test_categorical_all_masked_but_one_and_huge_logits():
    # logits of +-1e4 with a learner near the guider and the guider's likely action taken, so
    # every ratio stays finite (a far-off behaviour policy would make r = exp(1e4) = inf in both
    # backends, correctly)
    g = torch.Generator().manual_seed(5)
    guider = 1e4 * torch.randn(16, 6, generator=g)
    learner = guider + 3 * torch.randn(16, 6, generator=g)
    action = guider.argmax(-1)
    behavior = torch.log_softmax(guider + torch.randn(16, 6, generator=g), -1).gather(-1, action[:, None]).squeeze(-1)
    mask = torch.rand(16, 6, generator=g) > 0.3
    mask[:4] = False
    mask[torch.arange(16), action] = True  # rows 0-3: only the taken action allowed
    tensors = tuple(t.to(DEVICE) for t in (guider, learner, action, behavior, torch.randn(16, generator=g)))
    mask = mask.to(DEVICE)
    results = run_both(
        magpo_kernels.magpo_loss_categorical, tensors, differentiable=(0, 1),
        options=LossOptions(delta=1.5, clip_epsilon=0.2, aux_coef=1.0), action_mask=mask,
    )
    for terms, grads in results.values():
        assert all(torch.isfinite(getattr(terms, f)) for f in FIELDS)
        assert all(torch.isfinite(g).all() for g in grads)
    assert_close(results, rtol=1e-4, atol=2e-3)  # KLs of ~1e4 logits: fp32 rounding of ~1e4 * eps


def test_categorical_noncontiguous_and_multidim_inputs():
    tensors, mask = categorical_case(4 * 5, 6)
    guider, learner, action, behavior, advantage = tensors
    # [time, agents, A] built from transposed storage: no leading dim is contiguous
    t = lambda x: x.reshape(5, 4, *x.shape[1:]).transpose(0, 1)  # noqa: E731
    nc = (t(guider), t(learner), t(action), t(behavior), t(advantage))
    assert not nc[0].is_contiguous()
    results = run_both(
        magpo_kernels.magpo_loss_categorical, nc, differentiable=(0, 1),
        options=LossOptions(delta=1.4, clip_epsilon=0.1, aux_coef=2.0), action_mask=t(mask),
    )
    assert_close(results)
    assert results["triton"][1][0].shape == nc[0].shape


@pytest.mark.parametrize("side", [0, 1])
def test_one_side_requiring_grad(side):
    tensors, mask = categorical_case(11, 4)
    results = run_both(
        magpo_kernels.magpo_loss_categorical, tensors, differentiable=(side,),
        options=LossOptions(delta=1.5, clip_epsilon=0.2, aux_coef=1.0), action_mask=mask,
    )
    assert_close(results)


def test_gradients_come_back_in_the_input_dtype():
    tensors, _ = categorical_case(8, 3, masked=False)
    guider = tensors[0].double().requires_grad_()
    terms = magpo_kernels.magpo_loss_categorical(guider, *tensors[1:], options=LossOptions(delta=1.5, clip_epsilon=0.2, aux_coef=1.0, backend="triton"))
    (terms.loss_guider * 2.0).backward()
    assert guider.grad.dtype == torch.float64 and terms.loss_guider.dtype == torch.float64


def test_only_one_output_used_gets_no_gradient_elsewhere():
    tensors, _ = categorical_case(8, 3, masked=False)
    guider, learner = (t.clone().requires_grad_() for t in tensors[:2])
    terms = magpo_kernels.magpo_loss_categorical(guider, learner, *tensors[2:], options=LossOptions(delta=1.5, clip_epsilon=0.2, aux_coef=1.0, backend="triton"))
    (grad_learner,) = torch.autograd.grad(terms.loss_learner, (learner,), retain_graph=True)
    assert torch.isfinite(grad_learner).all()
    assert torch.autograd.grad(terms.loss_learner, (guider,), allow_unused=True) == (None,)


def normal_case(rows, dim, seed=0, scale_range=(0.3, 1.3)):
    g = torch.Generator().manual_seed(seed)
    lo, hi = scale_range
    g_loc = torch.randn(rows, dim, generator=g)
    g_scale = lo + (hi - lo) * torch.rand(rows, dim, generator=g)
    l_loc = g_loc + 0.5 * g_scale * torch.randn(rows, dim, generator=g)  # offsets in units of the scale
    l_scale = g_scale * (0.5 + torch.rand(rows, dim, generator=g))
    action = g_loc + g_scale * torch.randn(rows, dim, generator=g)
    behavior = torch.distributions.Normal(g_loc + 0.1 * g_scale, g_scale).log_prob(action).sum(-1)
    advantage = torch.randn(rows, generator=g)
    return tuple(t.to(DEVICE) for t in (g_loc, g_scale, l_loc, l_scale, action, behavior, advantage))


def decision_margin(guider_lp, learner_lp, behavior_lp, delta, clip_epsilon):
    """Smallest float64 distance of any row's log-ratio to a mask or clip threshold. Where it is
    ~0 one ulp flips a branch and the two backends may rightly differ, so property tests skip
    such draws."""
    log_rho = (guider_lp - learner_lp).double()
    log_old = (learner_lp - behavior_lp).double()
    log_r = log_rho + log_old
    edges = [math.log1p(-clip_epsilon), math.log1p(clip_epsilon)]
    gaps = [(log_r - e).abs() for e in edges] + [((learner_lp - behavior_lp).double() - e).abs() for e in edges]
    if math.isfinite(delta):
        gaps += [(log_rho.abs() - math.log(delta)).abs()]
        gaps += [(log_rho.clamp(-math.log(delta), math.log(delta)) + log_old - e).abs() for e in edges]
    return torch.stack(gaps).min().item()


@pytest.mark.parametrize("rows, dim", [(1, 1), (37, 3), (130, 4), (5, 64)])
@pytest.mark.parametrize("delta", [1.3, math.inf])
@pytest.mark.parametrize("learner_kl", ["forward", "reverse"])
def test_normal_matches_reference(rows, dim, delta, learner_kl):
    results = run_both(
        magpo_kernels.magpo_loss_normal, normal_case(rows, dim), differentiable=(0, 1, 2, 3),
        options=LossOptions(delta=delta, clip_epsilon=0.2, aux_coef=0.7, learner_kl=learner_kl),
    )
    assert_close(results, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("scale_range", [(1e-3, 2e-3), (50.0, 100.0)])
def test_normal_extreme_scales(scale_range):
    results = run_both(
        magpo_kernels.magpo_loss_normal, normal_case(23, 4, scale_range=scale_range), differentiable=(0, 1, 2, 3),
        options=LossOptions(delta=1.5, clip_epsilon=0.2, aux_coef=1.0),
    )
    for terms, grads in results.values():
        assert all(torch.isfinite(getattr(terms, f)) for f in FIELDS)
        assert all(torch.isfinite(g).all() for g in grads)
    assert_close(results, rtol=1e-3, atol=1e-3)


def test_normal_broadcast_scale_from_expand():
    g_loc, g_scale, l_loc, l_scale, action, behavior, advantage = normal_case(12, 3)
    shared = torch.full((1, 3), 0.7, device=DEVICE)  # state-independent scale, expanded (stride 0)
    results = {}
    for backend in ("reference", "triton"):
        scale = shared.clone().requires_grad_()
        terms = magpo_kernels.magpo_loss_normal(
            g_loc, scale.expand(12, 3), l_loc, l_scale, action, behavior, advantage,
            options=LossOptions(delta=1.5, clip_epsilon=0.2, aux_coef=1.0, backend=backend),
        )
        (2.0 * terms.loss_guider).backward()
        results[backend] = scale.grad
    torch.testing.assert_close(results["triton"], results["reference"], rtol=1e-4, atol=1e-5)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(
    rows=st.integers(1, 70),
    num_actions=st.integers(1, 40),
    logit_scale=st.floats(0.01, 30.0),
    delta=st.sampled_from([1.05, 1.5, 4.0, math.inf]),
    clip_epsilon=st.floats(0.01, 0.9),
    aux_coef=st.floats(0.0, 8.0),
    learner_kl=st.sampled_from(["forward", "reverse"]),
    masked=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_categorical(rows, num_actions, logit_scale, delta, clip_epsilon, aux_coef, learner_kl, masked, seed):
    tensors, mask = categorical_case(rows, num_actions, seed=seed, masked=masked, scale=logit_scale)
    guider, learner, action, behavior, _ = (t.double() for t in tensors)
    if mask is not None:
        guider, learner = guider.masked_fill(~mask, -math.inf), learner.masked_fill(~mask, -math.inf)
    log_p = lambda z: torch.log_softmax(z, -1).gather(-1, action[:, None].long()).squeeze(-1)  # noqa: E731
    assume(decision_margin(log_p(guider), log_p(learner), behavior, delta, clip_epsilon) > 1e-4)
    results = run_both(
        magpo_kernels.magpo_loss_categorical, tensors, differentiable=(0, 1),
        options=LossOptions(delta=delta, clip_epsilon=clip_epsilon, aux_coef=aux_coef, learner_kl=learner_kl), action_mask=mask,
    )
    assert_close(results, rtol=1e-3, atol=1e-4 * max(1.0, logit_scale), grad_atol_fraction=1e-5)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(rows=st.integers(1, 70), dim=st.integers(1, 16), seed=st.integers(0, 2**16),
       delta=st.sampled_from([1.1, 2.0, math.inf]), learner_kl=st.sampled_from(["forward", "reverse"]))
def test_property_normal(rows, dim, seed, delta, learner_kl):
    case = normal_case(rows, dim, seed=seed)
    g_loc, g_scale, l_loc, l_scale, action, behavior, _ = (t.double() for t in case)
    log_n = lambda loc, scale: torch.distributions.Normal(loc, scale).log_prob(action).sum(-1)  # noqa: E731
    assume(decision_margin(log_n(g_loc, g_scale), log_n(l_loc, l_scale), behavior, delta, 0.2) > 1e-4)
    results = run_both(
        magpo_kernels.magpo_loss_normal, case, differentiable=(0, 1, 2, 3),
        options=LossOptions(delta=delta, clip_epsilon=0.2, aux_coef=1.0, learner_kl=learner_kl),
    )
    assert_close(results, rtol=1e-3, atol=1e-4)


def test_auto_picks_triton_only_for_cuda_tensors_when_triton_is_installed(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # devices only: no GPU needed
    monkeypatch.setattr(api, "triton_available", lambda: True)
    assert api._resolve_backend("auto", cuda) == "triton"
    assert api._resolve_backend("auto", cpu) == "reference"
    assert api._resolve_backend("reference", cuda) == "reference"
    assert api._resolve_backend("triton", cpu) == "triton"  # forced: the kernel entry then refuses CPU tensors
    monkeypatch.setattr(api, "triton_available", lambda: False)
    assert api._resolve_backend("auto", cuda) == "reference"


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    tensors, _ = categorical_case(4, 3, masked=False)
    tensors = tuple(t.cpu() for t in tensors)
    with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors"):
        magpo_kernels.magpo_loss_categorical(*tensors, options=LossOptions(delta=1.5, clip_epsilon=0.2, aux_coef=1.0, backend="triton"))


def test_triton_normal_rejects_wide_actions():
    with pytest.raises(ValueError, match="D <= 64"):
        magpo_kernels.magpo_loss_normal(*normal_case(2, 65), options=LossOptions(delta=1.5, clip_epsilon=0.2, aux_coef=1.0, backend="triton"))


@gpu
@pytest.mark.parametrize("dtype, rtol", [(torch.float16, 2e-2), (torch.bfloat16, 5e-2)])
def test_half_precision_inputs_give_gradients_in_input_dtype(dtype, rtol):
    tensors, mask = categorical_case(1000, 16, dtype=dtype)
    results = run_both(
        magpo_kernels.magpo_loss_categorical, tensors, differentiable=(0, 1),
        options=LossOptions(delta=1.5, clip_epsilon=0.2, aux_coef=1.0), action_mask=mask,
    )
    for got, want in zip(results["triton"][1], results["reference"][1]):
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), want.float(), rtol=rtol, atol=rtol * want.abs().max().item())


@gpu
def test_many_rows_and_wide_actions_on_gpu():
    tensors, mask = categorical_case(1 << 20, 16)
    assert_close(run_both(magpo_kernels.magpo_loss_categorical, tensors, differentiable=(0, 1), options=LossOptions(delta=1.5),
                          action_mask=mask), rtol=1e-3, atol=1e-5)
    tensors, mask = categorical_case(4096, 1024)
    assert_close(run_both(magpo_kernels.magpo_loss_categorical, tensors, differentiable=(0, 1), options=LossOptions(delta=1.5),
                          action_mask=mask), rtol=1e-3, atol=1e-5)
    assert_close(run_both(magpo_kernels.magpo_loss_normal, normal_case(1 << 20, 4), differentiable=(0, 1, 2, 3),
                          options=LossOptions(delta=1.5, clip_epsilon=0.2, aux_coef=1.0)), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("family", ["categorical", "normal"])
def test_delta_clip_and_aux_reach_one_compiled_kernel(family, monkeypatch):
    """delta, clip and aux are run-time arguments: launches that differ only in them have the same
    specialisation key, the one Triton's JIT caches compiled kernels under (``delta=auto`` moves
    delta every iteration and must not recompile). The key is computed by Triton's own binder for
    the compiled (not interpreted) form of the kernel, so this holds without a GPU too."""
    from magpo_kernels import magpo_categorical, magpo_normal
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    module, name = (magpo_categorical, "_categorical_kernel") if family == "categorical" else (magpo_normal, "_normal_kernel")
    kernel, launches = getattr(module, name), []

    class RecordedLaunches:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launches.append((args, kwargs))
                return kernel[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(module, name, RecordedLaunches())
    tensors = categorical_case(16, 5, masked=False)[0] if family == "categorical" else normal_case(16, 3)
    entry = magpo_kernels.magpo_loss_categorical if family == "categorical" else magpo_kernels.magpo_loss_normal
    settings = [(1.3, 0.2, 1.0), (2.5, 0.1, 0.5), (math.inf, 0.3, 4.0)]
    for delta, clip, aux in settings:
        inputs = [t.detach().clone().requires_grad_(t.is_floating_point() and i < (2 if family == "categorical" else 4))
                  for i, t in enumerate(tensors)]
        entry(*inputs, options=LossOptions(delta=delta, clip_epsilon=clip, aux_coef=aux, backend="triton"))

    compiled = JITFunction(kernel.fn)  # the interpreter's function is the same Python source
    binder = create_function_from_signature(compiled.signature, compiled.params, BaseBackend)
    keys = [binder(*args, **kwargs)[1] for args, kwargs in launches]
    assert len(launches) == len(settings) and all(key == keys[0] for key in keys)
    names = [p.name for p in compiled.params]
    for argument in ("log_delta", "clip_epsilon", "aux_coef"):
        assert not compiled.params[names.index(argument)].is_constexpr
        assert len({kwargs[argument] for _, kwargs in launches}) == len(settings)  # the values did differ
