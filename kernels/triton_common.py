"""What the fused MAGPO kernels share: the per-row math of Eq. 8-11, the backward scaling
kernel, the reduction of per-program partials into the contract's terms, device checks.

The row math mirrors ``magpo_kernels.reference._magpo_terms`` line for line (same float path for
``r`` and the bounded ratio, same tie rule), plus the derivative of each surrogate with
respect to the taken action's log-prob: in the clipped branch it is exactly zero (a clamp is
strictly active there), in the unclipped branch it is ``-ratio * A``.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from magpo_kernels.reference import MAGPOLossTerms

# Per-row statistics each kernel sums per program: the contract's fields after the two losses,
# in their order (store_partials writes its arguments as columns in this order; finish_terms
# reads them back by name).
STATS = MAGPOLossTerms._fields[2:]
NUM_STATS = len(STATS)


def interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1`` (Triton's NumPy simulator: CPU tensors, fp32 only)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_triton_device(tensor: torch.Tensor) -> None:
    """backend='triton' needs CUDA tensors, or CPU tensors under TRITON_INTERPRET=1."""
    if tensor.device.type == "cuda" or (interpreting() and tensor.device.type == "cpu"):
        return
    raise ValueError(
        f"backend='triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 set before "
        f"importing kernels), got tensors on {tensor.device}; use backend='reference' or 'auto'"
    )


def as_rows(tensor: torch.Tensor, width: int | None) -> torch.Tensor:
    """View ``[..., width]`` as ``[rows, width]`` (``[...]`` as ``[rows]``), copying only when
    the leading dims cannot be merged; the kernels take any strides."""
    return tensor.reshape(-1) if width is None else tensor.reshape(-1, width)


def finish_terms(partials: torch.Tensor, num_rows: int, aux_coef: float, loss_dtype: torch.dtype):
    """Sum per-program partials ``[programs, NUM_STATS]`` (fp32) into row means.

    Returns the contract's ten fields as a tuple in :class:`MAGPOLossTerms` order, in
    ``loss_dtype``: float32, or float64 when an input was float64.
    """
    means = (partials.sum(0, dtype=torch.float64) / num_rows).to(loss_dtype)
    stat = dict(zip(STATS, means.unbind()))
    return (
        stat["guider_objective"] + stat["guider_kl"],
        stat["learner_kl"] + aux_coef * stat["learner_objective"],
        *stat.values(),
    )


@triton.jit
def magpo_row_math(guider_lp, learner_lp, behavior_lp, advantage, log_delta, clip_epsilon):
    """Eq. 8-11 on fp32 row vectors. Returns (guider surrogate, guider clipped, out of band,
    d guider surrogate / d guider_lp, learner surrogate, learner clipped, d learner surrogate /
    d learner_lp)."""
    log_rho = guider_lp - learner_lp
    log_learner_over_old = learner_lp - behavior_lp
    ratio = tl.exp(log_rho + log_learner_over_old)
    bounded = tl.exp(tl.minimum(tl.maximum(log_rho, -log_delta), log_delta) + log_learner_over_old)
    double_clipped = tl.minimum(tl.maximum(bounded, 1.0 - clip_epsilon), 1.0 + clip_epsilon)
    gain = ratio * advantage
    clipped_gain = double_clipped * advantage
    guider_clipped = clipped_gain < gain
    guider_surrogate = -tl.where(guider_clipped, clipped_gain, gain)
    guider_coef = tl.where(guider_clipped, 0.0, -gain)
    out_of_band = (log_rho <= -log_delta) | (log_rho >= log_delta)

    learner_ratio = tl.exp(learner_lp - behavior_lp)
    learner_gain = learner_ratio * advantage
    learner_clipped_gain = tl.minimum(tl.maximum(learner_ratio, 1.0 - clip_epsilon), 1.0 + clip_epsilon) * advantage
    learner_clipped = learner_clipped_gain < learner_gain
    learner_surrogate = -tl.where(learner_clipped, learner_clipped_gain, learner_gain)
    learner_coef = tl.where(learner_clipped, 0.0, -learner_gain)
    return guider_surrogate, guider_clipped, out_of_band, guider_coef, learner_surrogate, learner_clipped, learner_coef


@triton.jit
def store_partials(
    partial_ptr, pid, row_ok,
    guider_surrogate, masked_kl, learner_kl, learner_surrogate, out_of_band, guider_clipped, learner_clipped, entropy,
):
    """Write this program's sums of the STATS (rows outside the tensor count 0)."""
    base = partial_ptr + pid.to(tl.int64) * 8  # len(STATS)
    tl.store(base + 0, tl.sum(tl.where(row_ok, guider_surrogate, 0.0), axis=0))
    tl.store(base + 1, tl.sum(tl.where(row_ok, masked_kl, 0.0), axis=0))
    tl.store(base + 2, tl.sum(tl.where(row_ok, learner_kl, 0.0), axis=0))
    tl.store(base + 3, tl.sum(tl.where(row_ok, learner_surrogate, 0.0), axis=0))
    tl.store(base + 4, tl.sum(tl.where(row_ok & out_of_band, 1.0, 0.0), axis=0))
    tl.store(base + 5, tl.sum(tl.where(row_ok & guider_clipped, 1.0, 0.0), axis=0))
    tl.store(base + 6, tl.sum(tl.where(row_ok & learner_clipped, 1.0, 0.0), axis=0))
    tl.store(base + 7, tl.sum(tl.where(row_ok, entropy, 0.0), axis=0))


@triton.jit
def _scale_add_kernel(x_ptr, y_ptr, a_ptr, b_ptr, out_ptr, numel, HAS_Y: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offsets < numel
    out = tl.load(x_ptr + offsets, mask=ok, other=0.0) * tl.load(a_ptr)
    if HAS_Y:
        out += tl.load(y_ptr + offsets, mask=ok, other=0.0) * tl.load(b_ptr)
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=ok)


def scale_add(x, a, y, b, like: tuple[torch.Size, torch.dtype], num_rows: int):
    """``(a * x + b * y) / num_rows`` with ``like = (shape, dtype)`` of the input, in one pass.

    ``x``/``y`` are the fp32 gradient buffers written by the forward kernel, ``a``/``b`` the
    incoming gradients (0-dim device tensors, never read on the host; ``None`` means zero).
    Returns None when both are None (no gradient flows to that input).
    """
    if a is None and b is None:
        return None
    if a is None:
        x, a, y, b = y, b, None, None
    shape, dtype = like
    out = torch.empty(shape, dtype=dtype, device=x.device)
    numel = out.numel()
    block = 1024
    _scale_add_kernel[(triton.cdiv(numel, block),)](
        x,
        y,
        (a.float() / num_rows).reshape(1),
        None if b is None else (b.float() / num_rows).reshape(1),
        out,
        numel,
        HAS_Y=y is not None and b is not None,
        BLOCK=block,
    )
    return out


def log_of_delta(delta: float) -> float:
    """log(delta), a run-time kernel argument (inf for the CTDS setting delta = inf)."""
    return math.log(delta)
