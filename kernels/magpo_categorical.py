"""Fused MAGPO loss for categorical policies: one Triton pass over (env x time x agent) rows.

Each program takes ``BLOCK_R`` rows and walks their ``A`` columns in tiles of ``BLOCK_A``:

1. an online pass keeps, per row and per policy, the running max, the sum-exp of the other
   lanes (so log-sum-exp = max + log1p(rest) stays exact when one action has almost all the
   mass) and the exp-weighted sums that give both KLs and the guider's entropy (masked lanes
   load as -inf and are kept out by ``tl.where``);
2. the row math of Eq. 8-11 (:func:`magpo_kernels.triton_common.magpo_row_math`) turns the taken
   action's log-probs into the surrogates, the mask and the clip flags; the program writes its
   sums of the eight statistics (summed on the host side by ``torch.sum``: deterministic, no
   atomics);
3. when gradients are needed, a second walk over the tiles writes d loss_guider / d guider
   logits, d entropy / d guider logits and d loss_learner / d learner logits (fp32, per row,
   not yet divided by the row count). ``backward`` scales them by the incoming gradients.

Gradients (per row, p = guider probs, q = learner probs, one-hot e_a, c = d surrogate / d log-prob;
1 - p on the taken lane is formed as -expm1(log p), exact where p rounds to 1 in fp32):
    guider:  c_g (e_a - p) + m p (log p - log q - KL(p||q));  entropy: -p (log p + H)
    learner: forward KL: q - p, reverse KL: q (log q - log p - KL(q||p));  plus aux c_l (e_a - q)
"""

from __future__ import annotations

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

MAX_BLOCK_A = 256  # widest column tile; wider action spaces loop over tiles
TILE_ELEMENTS = 4096  # rows per program = TILE_ELEMENTS // BLOCK_A (several rows for small A)


@triton.jit
def _log1p(x):
    """log(1 + x) to a few ulps for x >= 0 (Goldberg's trick; the interpreter has no libdevice)."""
    u = 1.0 + x
    return tl.where(u == 1.0, x, tl.log(u) * (x / (u - 1.0)))


@triton.jit
def _online_softmax_step(z, old_max, old_rest, col):
    """Fold one ``[BLOCK_R, BLOCK_A]`` tile of logits (-inf = not in the support) into a row's
    running max and ``rest`` = sum of exp(z - max) over every lane but one max lane.

    Returns (new max, new rest, factor that rescales sums over earlier tiles, exp(z - new max)).
    Keeping the max lane's 1 out of ``rest`` lets log-sum-exp be formed as max + log1p(rest).
    """
    neg_inf = float("-inf")
    tile_max = tl.max(z, axis=1)
    new_max = tl.maximum(old_max, tile_max)
    scale = tl.where(old_max > neg_inf, tl.exp(old_max - new_max), 0.0)
    valid = z > neg_inf
    e = tl.where(valid, tl.exp(tl.where(valid, z, 0.0) - tl.where(valid, new_max[:, None], 0.0)), 0.0)
    moved = tile_max > old_max  # the row's max lane is in this tile: leave one such lane out
    excluded = moved[:, None] & (col[None, :] == tl.argmax(z, axis=1)[:, None])
    tile_rest = tl.sum(tl.where(excluded, 0.0, e), axis=1)
    new_rest = tl.where(moved, (old_rest + 1.0) * scale, old_rest) + tile_rest
    return new_max, new_rest, scale, e


@triton.jit
def _load_logits(g_ptr, l_ptr, mask_ptr, rows, cols, ok, g_row_stride, g_col_stride, l_row_stride, l_col_stride,
                 mask_row_stride, mask_col_stride, HAS_MASK: tl.constexpr):
    """One ``[BLOCK_R, BLOCK_A]`` tile of guider and learner logits in fp32; lanes outside the
    tensor or forbidden by the action mask load as -inf (outside both supports)."""
    neg_inf = float("-inf")
    z_g = tl.load(g_ptr + rows[:, None] * g_row_stride + cols[None, :] * g_col_stride, mask=ok, other=neg_inf).to(tl.float32)
    z_l = tl.load(l_ptr + rows[:, None] * l_row_stride + cols[None, :] * l_col_stride, mask=ok, other=neg_inf).to(tl.float32)
    if HAS_MASK:
        allowed = tl.load(mask_ptr + rows[:, None] * mask_row_stride + cols[None, :] * mask_col_stride, mask=ok, other=0) != 0
        z_g = tl.where(allowed, z_g, neg_inf)
        z_l = tl.where(allowed, z_l, neg_inf)
    return z_g, z_l


@triton.jit
def _onehot_minus(taken, p, log_p):
    """e_a - p. On the taken lane 1 - p is formed as -expm1(log p): when p is within a few ulps
    of 1, 1 - exp(log p) keeps no correct digit while the ratio multiplying it can be ~1e8."""
    small = log_p > -1e-3
    expm1 = tl.where(small, log_p * (1.0 + log_p * (0.5 + log_p * (1.0 / 6.0))), p - 1.0)
    return tl.where(taken, -expm1, -p)


@triton.jit
def _categorical_kernel(
    g_ptr, l_ptr, action_ptr, behavior_ptr, advantage_ptr, mask_ptr,
    partial_ptr, grad_guider_ptr, grad_entropy_ptr, grad_learner_ptr,
    num_rows, num_actions,
    g_row_stride, g_col_stride, l_row_stride, l_col_stride,
    action_stride, behavior_stride, advantage_stride, mask_row_stride, mask_col_stride,
    log_delta, clip_epsilon, aux_coef, REVERSE_KL: tl.constexpr,
    HAS_MASK: tl.constexpr, GUIDER_GRAD: tl.constexpr, LEARNER_GRAD: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_A: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < num_rows
    action = tl.load(action_ptr + rows * action_stride, mask=row_ok, other=0).to(tl.int64)
    action_ok = row_ok & (action >= 0) & (action < num_actions)  # never read out of bounds

    neg_inf = float("-inf")
    col = tl.arange(0, BLOCK_A)
    g_max = tl.full([BLOCK_R], neg_inf, tl.float32)
    l_max = tl.full([BLOCK_R], neg_inf, tl.float32)
    g_rest = tl.zeros([BLOCK_R], tl.float32)  # sum exp(z_g - g_max) over all lanes but one max lane
    l_rest = tl.zeros([BLOCK_R], tl.float32)
    g_cross = tl.zeros([BLOCK_R], tl.float32)  # sum exp(z_g - g_max) (z_g - z_l)
    l_cross = tl.zeros([BLOCK_R], tl.float32)  # sum exp(z_l - l_max) (z_l - z_g)
    g_self = tl.zeros([BLOCK_R], tl.float32)  # sum exp(z_g - g_max) (z_g - g_max)
    for start in range(0, num_actions, BLOCK_A):
        cols = start + col
        ok = row_ok[:, None] & (cols[None, :] < num_actions)
        z_g, z_l = _load_logits(g_ptr, l_ptr, mask_ptr, rows, cols, ok, g_row_stride, g_col_stride, l_row_stride,
                                l_col_stride, mask_row_stride, mask_col_stride, HAS_MASK)
        g_old, g_rest_old = g_max, g_rest
        g_max, g_rest, g_scale, e_g = _online_softmax_step(z_g, g_max, g_rest, col)
        l_max, l_rest, l_scale, e_l = _online_softmax_step(z_l, l_max, l_rest, col)
        in_g = z_g > neg_inf
        in_l = z_l > neg_inf
        g_minus_l = tl.where(in_g, z_g - tl.where(in_g, z_l, 0.0), 0.0)
        l_minus_g = tl.where(in_l, z_l - tl.where(in_l, z_g, 0.0), 0.0)
        g_cross = g_cross * g_scale + tl.sum(e_g * g_minus_l, axis=1)
        l_cross = l_cross * l_scale + tl.sum(e_l * l_minus_g, axis=1)
        # g_self is centred on the running max; re-centring adds (old - new) * old sum
        shift = tl.where(g_old > neg_inf, g_old - g_max, 0.0)
        g_self = g_scale * (g_self + shift * (1.0 + g_rest_old))
        g_self += tl.sum(e_g * tl.where(in_g, z_g - tl.where(in_g, g_max[:, None], 0.0), 0.0), axis=1)

    # log-sum-exp = max + log1p(rest): exact even when one action holds almost all the mass
    g_log_sum = _log1p(g_rest)
    l_log_sum = _log1p(l_rest)
    g_sum = 1.0 + g_rest
    l_sum = 1.0 + l_rest
    kl_gl = g_cross / g_sum - (g_max - l_max) - (g_log_sum - l_log_sum)  # KL(guider || learner)
    kl_lg = l_cross / l_sum - (l_max - g_max) - (l_log_sum - g_log_sum)  # KL(learner || guider)
    entropy = g_log_sum - g_self / g_sum
    if REVERSE_KL:
        learner_kl = kl_lg
    else:
        learner_kl = kl_gl

    z_g_a = tl.load(g_ptr + rows * g_row_stride + action * g_col_stride, mask=action_ok, other=neg_inf).to(tl.float32)
    z_l_a = tl.load(l_ptr + rows * l_row_stride + action * l_col_stride, mask=action_ok, other=neg_inf).to(tl.float32)
    if HAS_MASK:
        allowed_a = tl.load(mask_ptr + rows * mask_row_stride + action * mask_col_stride, mask=action_ok, other=0) != 0
        z_g_a = tl.where(allowed_a, z_g_a, neg_inf)
        z_l_a = tl.where(allowed_a, z_l_a, neg_inf)
    guider_lp = (z_g_a - g_max) - g_log_sum
    learner_lp = (z_l_a - l_max) - l_log_sum
    behavior_lp = tl.load(behavior_ptr + rows * behavior_stride, mask=row_ok, other=0.0).to(tl.float32)
    advantage = tl.load(advantage_ptr + rows * advantage_stride, mask=row_ok, other=0.0).to(tl.float32)
    (g_surrogate, g_clipped, out_of_band, g_coef, l_surrogate, l_clipped, l_coef) = magpo_row_math(
        guider_lp, learner_lp, behavior_lp, advantage, log_delta, clip_epsilon
    )
    masked_kl = tl.where(out_of_band, kl_gl, 0.0)
    store_partials(
        partial_ptr, pid, row_ok, g_surrogate, masked_kl, learner_kl, l_surrogate, out_of_band, g_clipped, l_clipped, entropy
    )

    if GUIDER_GRAD or LEARNER_GRAD:
        mask_on = tl.where(out_of_band, 1.0, 0.0)
        for start in range(0, num_actions, BLOCK_A):
            cols = start + col
            ok = row_ok[:, None] & (cols[None, :] < num_actions)
            z_g, z_l = _load_logits(g_ptr, l_ptr, mask_ptr, rows, cols, ok, g_row_stride, g_col_stride, l_row_stride,
                                    l_col_stride, mask_row_stride, mask_col_stride, HAS_MASK)
            in_g = z_g > neg_inf
            in_l = z_l > neg_inf
            log_p = tl.where(in_g, (z_g - tl.where(in_g, g_max[:, None], 0.0)) - g_log_sum[:, None], 0.0)
            log_q = tl.where(in_l, (z_l - tl.where(in_l, l_max[:, None], 0.0)) - l_log_sum[:, None], 0.0)
            p = tl.where(in_g, tl.exp(log_p), 0.0)
            q = tl.where(in_l, tl.exp(log_q), 0.0)
            taken = cols[None, :] == action[:, None]
            out = rows[:, None] * num_actions + cols[None, :]
            if GUIDER_GRAD:
                kl_grad = p * (log_p - log_q - kl_gl[:, None])
                grad_g = g_coef[:, None] * _onehot_minus(taken, p, log_p) + mask_on[:, None] * kl_grad
                tl.store(grad_guider_ptr + out, grad_g, mask=ok)
                tl.store(grad_entropy_ptr + out, -p * (log_p + entropy[:, None]), mask=ok)
            if LEARNER_GRAD:
                if REVERSE_KL:
                    kl_grad_l = q * (log_q - log_p - kl_lg[:, None])
                else:
                    kl_grad_l = q - p
                grad_l = kl_grad_l + aux_coef * l_coef[:, None] * _onehot_minus(taken, q, log_q)
                tl.store(grad_learner_ptr + out, grad_l, mask=ok)


def _block_sizes(num_actions: int) -> tuple[int, int]:
    block_a = min(triton.next_power_of_2(num_actions), MAX_BLOCK_A)
    return max(1, TILE_ELEMENTS // block_a), block_a


class MAGPOCategoricalFunction(torch.autograd.Function):
    """Fused forward (terms + gradient buffers) and a backward that scales the buffers.

    Outputs the ten :class:`MAGPOLossTerms` fields; only ``loss_guider``, ``loss_learner`` and
    ``guider_entropy`` are differentiable.
    """

    @staticmethod
    def forward(ctx, guider_logits, learner_logits, action, behavior_log_prob, advantage, action_mask, options):
        num_actions = guider_logits.shape[-1]
        g = as_rows(guider_logits, num_actions)
        l = as_rows(learner_logits, num_actions)
        a = as_rows(action, None)
        b = as_rows(behavior_log_prob, None)
        adv = as_rows(advantage, None)
        m = None if action_mask is None else as_rows(action_mask, num_actions)
        num_rows = g.shape[0]
        block_r, block_a = _block_sizes(num_actions)
        programs = triton.cdiv(num_rows, block_r)
        device = g.device
        partials = torch.empty(programs, NUM_STATS, dtype=torch.float32, device=device)
        guider_grad = ctx.needs_input_grad[0]
        learner_grad = ctx.needs_input_grad[1]
        buffer = lambda: torch.empty(num_rows, num_actions, dtype=torch.float32, device=device)  # noqa: E731
        grad_g = buffer() if guider_grad else None
        grad_e = buffer() if guider_grad else None
        grad_l = buffer() if learner_grad else None
        _categorical_kernel[(programs,)](
            g, l, a, b, adv, m,
            partials, grad_g, grad_e, grad_l,
            num_rows, num_actions,
            g.stride(0), g.stride(1), l.stride(0), l.stride(1),
            a.stride(0), b.stride(0), adv.stride(0),
            0 if m is None else m.stride(0), 0 if m is None else m.stride(1),
            log_delta=log_of_delta(options.delta), clip_epsilon=options.clip_epsilon, aux_coef=options.aux_coef,
            REVERSE_KL=options.learner_kl == "reverse", HAS_MASK=m is not None, GUIDER_GRAD=guider_grad, LEARNER_GRAD=learner_grad,
            BLOCK_R=block_r, BLOCK_A=block_a,
        )
        loss_dtype = compute_dtype(guider_logits, learner_logits, behavior_log_prob, advantage)
        outputs = finish_terms(partials, num_rows, options.aux_coef, loss_dtype)
        ctx.mark_non_differentiable(*outputs[2:9])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(grad_g, grad_e, grad_l)
        ctx.num_rows = num_rows
        ctx.like = ((guider_logits.shape, guider_logits.dtype), (learner_logits.shape, learner_logits.dtype))
        return outputs

    @staticmethod
    def backward(ctx, d_loss_guider, d_loss_learner, *diagnostics_and_entropy):
        d_entropy = diagnostics_and_entropy[-1]
        grad_g, grad_e, grad_l = ctx.saved_tensors
        guider_like, learner_like = ctx.like
        d_guider = d_learner = None
        if ctx.needs_input_grad[0]:
            d_guider = scale_add(grad_g, d_loss_guider, grad_e, d_entropy, guider_like, ctx.num_rows)
        if ctx.needs_input_grad[1]:
            d_learner = scale_add(grad_l, d_loss_learner, None, None, learner_like, ctx.num_rows)
        return d_guider, d_learner, None, None, None, None, None


def triton_categorical(guider_logits, learner_logits, action, behavior_log_prob, advantage, options,
                       action_mask=None) -> MAGPOLossTerms:
    """The Triton backend of :func:`magpo_kernels.magpo_loss_categorical` (inputs already checked)."""
    check_triton_device(guider_logits)
    outputs = MAGPOCategoricalFunction.apply(
        guider_logits, learner_logits, action, behavior_log_prob.detach(), advantage.detach(), action_mask, options
    )
    return MAGPOLossTerms(*outputs)
