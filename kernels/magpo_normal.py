"""Fused MAGPO loss for diagonal Normal policies: one Triton pass over (env x time x agent) rows.

Each program takes ``BLOCK_R`` rows as a ``[BLOCK_R, BLOCK_D]`` tile (D <= 64 action dims), so
every row's guider and learner parameters are read once. It computes the log-probs of the
taken action, both KLs and the guider's entropy (summed over D), applies the row math of
Eq. 8-11 (:func:`magpo_kernels.triton_common.magpo_row_math`), writes per-program sums of the eight
statistics and, when gradients are needed, the fp32 per-row gradients (not yet divided by the
row count) that ``backward`` scales by the incoming gradients. TanhNormal policies use this on
the underlying Normal (the tanh Jacobian cancels; see docs/design.md, "TanhNormal").

Per dim, with z = (x - loc) / scale, c = d surrogate / d log-prob, m the out-of-band mask:
    d log N / d loc = z / scale,     d log N / d scale = (z^2 - 1) / scale
    d KL(P||Q) / d loc_P = (loc_P - loc_Q) / scale_Q^2,  d / d scale_P = scale_P / scale_Q^2 - 1 / scale_P
    d KL(P||Q) / d loc_Q = (loc_Q - loc_P) / scale_Q^2,  d / d scale_Q = 1 / scale_Q - (scale_P^2 + (loc_P - loc_Q)^2) / scale_Q^3
    d H / d scale = 1 / scale
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from magpo_kernels.reference import MAGPOLossTerms, compute_dtype
from magpo_kernels.triton_common import (
    NUM_STATS,
    as_rows,
    check_triton_device,
    finish_terms,
    log_of_delta,
    magpo_row_math,
    scale_add,
    store_partials,
)

MAX_ACTION_DIM = 64
TILE_ELEMENTS = 2048  # rows per program = TILE_ELEMENTS // BLOCK_D
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@triton.jit
def _kl_normal(loc_p, scale_p, loc_q, scale_q):
    """Per-dim KL(N(loc_p, scale_p) || N(loc_q, scale_q)) in the ratio form of the reference."""
    var_ratio = (scale_p / scale_q) * (scale_p / scale_q)
    mean_term = ((loc_p - loc_q) / scale_q) * ((loc_p - loc_q) / scale_q)
    return 0.5 * (var_ratio + mean_term - 1.0 - tl.log(var_ratio))


@triton.jit
def _normal_kernel(
    g_loc_ptr, g_scale_ptr, l_loc_ptr, l_scale_ptr, action_ptr, behavior_ptr, advantage_ptr,
    partial_ptr, grad_g_loc_ptr, grad_g_scale_ptr, grad_entropy_ptr, grad_l_loc_ptr, grad_l_scale_ptr,
    num_rows, dim,
    g_loc_rs, g_loc_cs, g_scale_rs, g_scale_cs, l_loc_rs, l_loc_cs, l_scale_rs, l_scale_cs,
    action_rs, action_cs, behavior_stride, advantage_stride,
    log_delta, clip_epsilon, aux_coef, REVERSE_KL: tl.constexpr,
    HALF_LOG_2PI: tl.constexpr, GUIDER_GRAD: tl.constexpr, LEARNER_GRAD: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < num_rows
    cols = tl.arange(0, BLOCK_D)
    ok = row_ok[:, None] & (cols[None, :] < dim)
    r2 = rows[:, None]
    c2 = cols[None, :]
    # padded lanes load loc 0, scale 1, x 0: finite, and every sum masks them out
    g_loc = tl.load(g_loc_ptr + r2 * g_loc_rs + c2 * g_loc_cs, mask=ok, other=0.0).to(tl.float32)
    g_scale = tl.load(g_scale_ptr + r2 * g_scale_rs + c2 * g_scale_cs, mask=ok, other=1.0).to(tl.float32)
    l_loc = tl.load(l_loc_ptr + r2 * l_loc_rs + c2 * l_loc_cs, mask=ok, other=0.0).to(tl.float32)
    l_scale = tl.load(l_scale_ptr + r2 * l_scale_rs + c2 * l_scale_cs, mask=ok, other=1.0).to(tl.float32)
    x = tl.load(action_ptr + r2 * action_rs + c2 * action_cs, mask=ok, other=0.0).to(tl.float32)

    z_g = (x - g_loc) / g_scale
    z_l = (x - l_loc) / l_scale
    guider_lp = tl.sum(tl.where(ok, -0.5 * z_g * z_g - tl.log(g_scale) - HALF_LOG_2PI, 0.0), axis=1)
    learner_lp = tl.sum(tl.where(ok, -0.5 * z_l * z_l - tl.log(l_scale) - HALF_LOG_2PI, 0.0), axis=1)
    kl_gl = tl.sum(tl.where(ok, _kl_normal(g_loc, g_scale, l_loc, l_scale), 0.0), axis=1)
    kl_lg = tl.sum(tl.where(ok, _kl_normal(l_loc, l_scale, g_loc, g_scale), 0.0), axis=1)
    entropy = tl.sum(tl.where(ok, 0.5 + HALF_LOG_2PI + tl.log(g_scale), 0.0), axis=1)
    if REVERSE_KL:
        learner_kl = kl_lg
    else:
        learner_kl = kl_gl

    behavior_lp = tl.load(behavior_ptr + rows * behavior_stride, mask=row_ok, other=0.0).to(tl.float32)
    advantage = tl.load(advantage_ptr + rows * advantage_stride, mask=row_ok, other=0.0).to(tl.float32)
    (g_surrogate, g_clipped, out_of_band, g_coef, l_surrogate, l_clipped, l_coef) = magpo_row_math(
        guider_lp, learner_lp, behavior_lp, advantage, log_delta, clip_epsilon
    )
    masked_kl = tl.where(out_of_band, kl_gl, 0.0)
    store_partials(
        partial_ptr, pid, row_ok, g_surrogate, masked_kl, learner_kl, l_surrogate, out_of_band, g_clipped, l_clipped, entropy
    )

    out = r2 * dim + c2
    if GUIDER_GRAD:
        mask_on = tl.where(out_of_band, 1.0, 0.0)[:, None]
        inv_l_var = 1.0 / (l_scale * l_scale)
        d_loc = g_coef[:, None] * z_g / g_scale + mask_on * (g_loc - l_loc) * inv_l_var
        d_scale = g_coef[:, None] * (z_g * z_g - 1.0) / g_scale + mask_on * (g_scale * inv_l_var - 1.0 / g_scale)
        tl.store(grad_g_loc_ptr + out, d_loc, mask=ok)
        tl.store(grad_g_scale_ptr + out, d_scale, mask=ok)
        tl.store(grad_entropy_ptr + out, 1.0 / g_scale, mask=ok)
    if LEARNER_GRAD:
        if REVERSE_KL:  # KL(learner || guider): the learner is P
            inv_g_var = 1.0 / (g_scale * g_scale)
            kl_loc = (l_loc - g_loc) * inv_g_var
            kl_scale = l_scale * inv_g_var - 1.0 / l_scale
        else:  # KL(guider || learner): the learner is Q
            kl_loc = (l_loc - g_loc) / (l_scale * l_scale)
            kl_scale = 1.0 / l_scale - (g_scale * g_scale + (g_loc - l_loc) * (g_loc - l_loc)) / (l_scale * l_scale * l_scale)
        d_loc = kl_loc + aux_coef * l_coef[:, None] * z_l / l_scale
        d_scale = kl_scale + aux_coef * l_coef[:, None] * (z_l * z_l - 1.0) / l_scale
        tl.store(grad_l_loc_ptr + out, d_loc, mask=ok)
        tl.store(grad_l_scale_ptr + out, d_scale, mask=ok)


class MAGPONormalFunction(torch.autograd.Function):
    """Fused forward (terms + gradient buffers) and a backward that scales the buffers.

    Outputs the ten :class:`MAGPOLossTerms` fields; only ``loss_guider``, ``loss_learner`` and
    ``guider_entropy`` are differentiable.
    """

    @staticmethod
    def forward(ctx, guider_loc, guider_scale, learner_loc, learner_scale, action, behavior_log_prob, advantage, options):
        dim = guider_loc.shape[-1]
        gm, gs, lm, ls, x = (as_rows(t, dim) for t in (guider_loc, guider_scale, learner_loc, learner_scale, action))
        b, adv = as_rows(behavior_log_prob, None), as_rows(advantage, None)
        num_rows = gm.shape[0]
        block_d = triton.next_power_of_2(dim)
        block_r = max(1, TILE_ELEMENTS // block_d)
        programs = triton.cdiv(num_rows, block_r)
        device = gm.device
        partials = torch.empty(programs, NUM_STATS, dtype=torch.float32, device=device)
        guider_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        learner_grad = ctx.needs_input_grad[2] or ctx.needs_input_grad[3]
        buffer = lambda: torch.empty(num_rows, dim, dtype=torch.float32, device=device)  # noqa: E731
        g_loc_grad, g_scale_grad, entropy_grad = (buffer(), buffer(), buffer()) if guider_grad else (None,) * 3
        l_loc_grad, l_scale_grad = (buffer(), buffer()) if learner_grad else (None,) * 2
        _normal_kernel[(programs,)](
            gm, gs, lm, ls, x, b, adv,
            partials, g_loc_grad, g_scale_grad, entropy_grad, l_loc_grad, l_scale_grad,
            num_rows, dim,
            gm.stride(0), gm.stride(1), gs.stride(0), gs.stride(1), lm.stride(0), lm.stride(1),
            ls.stride(0), ls.stride(1), x.stride(0), x.stride(1), b.stride(0), adv.stride(0),
            log_delta=log_of_delta(options.delta), clip_epsilon=options.clip_epsilon, aux_coef=options.aux_coef,
            REVERSE_KL=options.learner_kl == "reverse",
            HALF_LOG_2PI=HALF_LOG_2PI, GUIDER_GRAD=guider_grad, LEARNER_GRAD=learner_grad,
            BLOCK_R=block_r, BLOCK_D=block_d,
        )
        loss_dtype = compute_dtype(guider_loc, guider_scale, learner_loc, learner_scale, behavior_log_prob, advantage)
        outputs = finish_terms(partials, num_rows, options.aux_coef, loss_dtype)
        ctx.mark_non_differentiable(*outputs[2:9])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(g_loc_grad, g_scale_grad, entropy_grad, l_loc_grad, l_scale_grad)
        ctx.num_rows = num_rows
        ctx.like = tuple((t.shape, t.dtype) for t in (guider_loc, guider_scale, learner_loc, learner_scale))
        return outputs

    @staticmethod
    def backward(ctx, d_loss_guider, d_loss_learner, *diagnostics_and_entropy):
        d_entropy = diagnostics_and_entropy[-1]
        g_loc_grad, g_scale_grad, entropy_grad, l_loc_grad, l_scale_grad = ctx.saved_tensors
        g_loc_like, g_scale_like, l_loc_like, l_scale_like = ctx.like
        n = ctx.num_rows
        grads = [None, None, None, None]
        if ctx.needs_input_grad[0]:
            grads[0] = scale_add(g_loc_grad, d_loss_guider, None, None, g_loc_like, n)
        if ctx.needs_input_grad[1]:
            grads[1] = scale_add(g_scale_grad, d_loss_guider, entropy_grad, d_entropy, g_scale_like, n)
        if ctx.needs_input_grad[2]:
            grads[2] = scale_add(l_loc_grad, d_loss_learner, None, None, l_loc_like, n)
        if ctx.needs_input_grad[3]:
            grads[3] = scale_add(l_scale_grad, d_loss_learner, None, None, l_scale_like, n)
        return (*grads, None, None, None, None)


def triton_normal(guider_loc, guider_scale, learner_loc, learner_scale, action, behavior_log_prob, advantage,
                  options) -> MAGPOLossTerms:
    """The Triton backend of :func:`magpo_kernels.magpo_loss_normal` (inputs already checked)."""
    check_triton_device(guider_loc)
    dim = guider_loc.shape[-1]
    if dim > MAX_ACTION_DIM:
        raise ValueError(f"backend='triton' supports action dims D <= {MAX_ACTION_DIM}, got D={dim}; use backend='reference'")
    outputs = MAGPONormalFunction.apply(
        guider_loc, guider_scale, learner_loc, learner_scale, action.detach(), behavior_log_prob.detach(),
        advantage.detach(), options,
    )
    return MAGPOLossTerms(*outputs)
