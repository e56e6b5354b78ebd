"""Plain-PyTorch reference of the MAGPO per-sample loss (paper Eq. 8-11), any device.

This file is the one place where the MAGPO loss math is written down; every other backend (the
Triton kernels) is tested against it. Read top to bottom it follows the paper:

* ``_magpo_terms`` is Eq. 8-11 on per-row scalars (log-probs, KLs, entropy);
* ``categorical_terms`` and ``normal_terms`` turn distribution parameters into those scalars.

A *row* is one (env, time, agent) sample; leading dims are flattened implicitly, every output is
a mean over all rows. Arithmetic runs in float32 at least (float64 inputs stay float64).

Gradient routing (what lets BenchMARL back-propagate the two losses one after the other): in
``loss_guider`` the learner is a constant (the ``sg`` of Eq. 9), in ``loss_learner`` the guider
is. Only ``loss_guider``, ``loss_learner`` and ``guider_entropy`` carry gradients; the other
fields are detached diagnostics.

Input validation lives in :mod:`magpo_kernels.api`; these functions assume checked inputs.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from magpo_kernels.options import LossOptions

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class MAGPOLossTerms(NamedTuple):
    """Scalar means over rows of the MAGPO loss terms (see :func:`magpo_kernels.magpo_loss_categorical`).

    ``loss_guider``, ``loss_learner`` and ``guider_entropy`` are differentiable; the rest are
    detached diagnostics.
    """

    loss_guider: Tensor
    loss_learner: Tensor
    guider_objective: Tensor
    guider_kl: Tensor
    learner_kl: Tensor
    learner_objective: Tensor
    mask_fraction: Tensor
    guider_clip_fraction: Tensor
    learner_clip_fraction: Tensor
    guider_entropy: Tensor


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype the math runs in: float32, or float64 if any input is float64."""
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def _clipped_surrogate(ratio: Tensor, clipped_ratio: Tensor, advantage: Tensor):
    """PPO's pessimistic surrogate ``-min(ratio*A, clipped_ratio*A)``, per row.

    Returns the loss and a bool tensor that is True where the clipped branch is the active one
    (strictly smaller). Ties take the unclipped branch, so the gradient is defined everywhere
    and every backend follows the same rule.
    """
    unclipped_gain = ratio * advantage
    clipped_gain = clipped_ratio * advantage
    clipped = clipped_gain < unclipped_gain
    return -torch.where(clipped, clipped_gain, unclipped_gain), clipped


def _magpo_terms(
    guider_log_prob: Tensor,
    learner_log_prob: Tensor,
    behavior_log_prob: Tensor,
    advantage: Tensor,
    guider_kl_rows: Tensor,
    learner_kl_rows: Tensor,
    guider_entropy_rows: Tensor,
    options: LossOptions,
) -> MAGPOLossTerms:
    """Eq. 8-11 of the paper on per-row scalars (all of shape ``[rows]``).

    ``guider_kl_rows`` is KL(guider || sg(learner)) with gradient to the guider only and
    ``learner_kl_rows`` the learner's imitation KL with gradient to the learner only.
    ``behavior_log_prob`` and ``advantage`` are data (no gradient).
    """
    behavior_log_prob = behavior_log_prob.detach()
    advantage = advantage.detach()
    clip_epsilon, aux_coef = options.clip_epsilon, options.aux_coef
    log_delta = math.log(options.delta)  # +inf when delta is inf: no clip, mask never on (CTDS)

    # ---- Guider (Eq. 8-9): PPO with a double-clipped ratio; the learner is a constant here.
    learner_const = learner_log_prob.detach()
    log_rho = guider_log_prob - learner_const  # log mu_phi(a) / sg(pi_theta(a))
    log_learner_over_old = learner_const - behavior_log_prob  # log pi_theta(a) / mu_old(a)
    # r = mu_phi(a) / mu_old(a) = rho * pi_theta(a) / mu_old(a). Both ratios take the same
    # float path, so where no clamp is active r2 == r bit for bit and no row counts as clipped
    # through rounding alone.
    ratio = torch.exp(log_rho + log_learner_over_old)
    # clip(rho, 1/delta, delta) * pi_theta(a) / mu_old(a), formed in log space
    bounded_ratio = torch.exp(log_rho.clamp(-log_delta, log_delta) + log_learner_over_old)
    double_clipped = bounded_ratio.clamp(1.0 - clip_epsilon, 1.0 + clip_epsilon)
    guider_surrogate, guider_clipped = _clipped_surrogate(ratio, double_clipped, advantage)
    # m = 1 where rho is outside the open band (1/delta, delta): only there the KL pulls.
    out_of_band = (log_rho <= -log_delta) | (log_rho >= log_delta)
    masked_kl = torch.where(out_of_band, guider_kl_rows, torch.zeros_like(guider_kl_rows))
    guider_objective = guider_surrogate.mean()
    guider_kl = masked_kl.mean()  # averaged over ALL rows, as in the authors' code

    # ---- Learner (Eq. 10-11): imitation KL plus aux_coef (lambda) times PPO on r_l.
    learner_ratio = torch.exp(learner_log_prob - behavior_log_prob)  # pi_theta(a) / mu_old(a)
    learner_surrogate, learner_clipped = _clipped_surrogate(
        learner_ratio, learner_ratio.clamp(1.0 - clip_epsilon, 1.0 + clip_epsilon), advantage
    )
    learner_objective = learner_surrogate.mean()
    learner_kl = learner_kl_rows.mean()

    dtype = guider_objective.dtype
    return MAGPOLossTerms(
        loss_guider=guider_objective + guider_kl,
        loss_learner=learner_kl + aux_coef * learner_objective,
        guider_objective=guider_objective.detach(),
        guider_kl=guider_kl.detach(),
        learner_kl=learner_kl.detach(),
        learner_objective=learner_objective.detach(),
        mask_fraction=out_of_band.to(dtype).mean(),
        guider_clip_fraction=guider_clipped.to(dtype).mean(),
        learner_clip_fraction=learner_clipped.to(dtype).mean(),
        guider_entropy=guider_entropy_rows.mean(),
    )


# ------------------------------------------------------------------------------ categorical


def _categorical_kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) per row from log-probs ``[rows, A]``, summed over p's support only.

    Lanes outside p's support (log_p = -inf, masked actions) contribute exactly 0, and their
    inputs are replaced before the product so that no inf * 0 reaches the backward pass.
    """
    support = log_p > -math.inf
    safe_log_p = torch.where(support, log_p, torch.zeros_like(log_p))
    safe_log_q = torch.where(support, log_q, torch.zeros_like(log_q))
    terms = safe_log_p.exp() * (safe_log_p - safe_log_q)
    return torch.where(support, terms, torch.zeros_like(terms)).sum(-1)


def categorical_terms(
    guider_logits: Tensor,
    learner_logits: Tensor,
    action: Tensor,
    behavior_log_prob: Tensor,
    advantage: Tensor,
    options: LossOptions,
    action_mask: Tensor | None = None,
) -> MAGPOLossTerms:
    """MAGPO terms for categorical policies. Shapes: logits ``[..., A]``, action ``[...]``.

    Masked actions (``action_mask`` False, or logits already -inf) have probability 0 under both
    policies and contribute nothing to the KLs and the entropy.
    """
    dtype = compute_dtype(guider_logits, learner_logits, behavior_log_prob, advantage)
    num_actions = guider_logits.shape[-1]
    guider_logits = guider_logits.to(dtype).reshape(-1, num_actions)
    learner_logits = learner_logits.to(dtype).reshape(-1, num_actions)
    if action_mask is not None:
        allowed = action_mask.reshape(-1, num_actions)
        guider_logits = guider_logits.masked_fill(~allowed, -math.inf)
        learner_logits = learner_logits.masked_fill(~allowed, -math.inf)
    guider_log_probs = torch.log_softmax(guider_logits, dim=-1)
    learner_log_probs = torch.log_softmax(learner_logits, dim=-1)

    index = action.reshape(-1, 1).long()
    guider_log_prob = guider_log_probs.gather(-1, index).squeeze(-1)
    learner_log_prob = learner_log_probs.gather(-1, index).squeeze(-1)

    guider_const, learner_const = guider_log_probs.detach(), learner_log_probs.detach()
    guider_kl_rows = _categorical_kl(guider_log_probs, learner_const)
    if options.learner_kl == "forward":  # KL(sg(guider) || learner): the authors' code
        learner_kl_rows = _categorical_kl(guider_const, learner_log_probs)
    else:  # KL(learner || sg(guider)): paper Eq. 10
        learner_kl_rows = _categorical_kl(learner_log_probs, guider_const)
    guider_entropy_rows = -_categorical_kl(guider_log_probs, torch.zeros_like(guider_const))

    return _magpo_terms(
        guider_log_prob,
        learner_log_prob,
        behavior_log_prob.to(dtype).reshape(-1),
        advantage.to(dtype).reshape(-1),
        guider_kl_rows,
        learner_kl_rows,
        guider_entropy_rows,
        options,
    )


# ------------------------------------------------------------------------------ normal


def _normal_log_prob(loc: Tensor, scale: Tensor, value: Tensor) -> Tensor:
    """log N(value; loc, scale) summed over the last (action) dim: ``[rows, D] -> [rows]``."""
    z = (value - loc) / scale
    return (-0.5 * z * z - scale.log() - _HALF_LOG_2PI).sum(-1)


def _normal_kl(loc_p: Tensor, scale_p: Tensor, loc_q: Tensor, scale_q: Tensor) -> Tensor:
    """KL(N(loc_p, scale_p) || N(loc_q, scale_q)) summed over the last dim.

    Written with the scale ratio (not the variances) so that scales from 1e-4 to 1e4 neither
    overflow nor cancel.
    """
    var_ratio = (scale_p / scale_q).pow(2)
    mean_term = ((loc_p - loc_q) / scale_q).pow(2)
    return (0.5 * (var_ratio + mean_term - 1.0 - var_ratio.log())).sum(-1)


def normal_terms(
    guider_loc: Tensor,
    guider_scale: Tensor,
    learner_loc: Tensor,
    learner_scale: Tensor,
    action: Tensor,
    behavior_log_prob: Tensor,
    advantage: Tensor,
    options: LossOptions,
) -> MAGPOLossTerms:
    """MAGPO terms for diagonal Normal policies. Shapes: loc/scale/action ``[..., D]``.

    For TanhNormal policies pass the pre-tanh action and the behaviour log-prob of the
    underlying Normal: the tanh Jacobian cancels in every ratio and KL (docs/design.md, "TanhNormal").
    """
    dtype = compute_dtype(guider_loc, guider_scale, learner_loc, learner_scale, behavior_log_prob, advantage)
    dim = guider_loc.shape[-1]
    g_loc, g_scale = guider_loc.to(dtype).reshape(-1, dim), guider_scale.to(dtype).reshape(-1, dim)
    l_loc, l_scale = learner_loc.to(dtype).reshape(-1, dim), learner_scale.to(dtype).reshape(-1, dim)
    value = action.to(dtype).reshape(-1, dim)

    guider_log_prob = _normal_log_prob(g_loc, g_scale, value)
    learner_log_prob = _normal_log_prob(l_loc, l_scale, value)

    g_loc_c, g_scale_c, l_loc_c, l_scale_c = (t.detach() for t in (g_loc, g_scale, l_loc, l_scale))
    guider_kl_rows = _normal_kl(g_loc, g_scale, l_loc_c, l_scale_c)
    if options.learner_kl == "forward":
        learner_kl_rows = _normal_kl(g_loc_c, g_scale_c, l_loc, l_scale)
    else:
        learner_kl_rows = _normal_kl(l_loc, l_scale, g_loc_c, g_scale_c)
    guider_entropy_rows = (0.5 + _HALF_LOG_2PI + g_scale.log()).sum(-1)

    return _magpo_terms(
        guider_log_prob,
        learner_log_prob,
        behavior_log_prob.to(dtype).reshape(-1),
        advantage.to(dtype).reshape(-1),
        guider_kl_rows,
        learner_kl_rows,
        guider_entropy_rows,
        options,
    )
