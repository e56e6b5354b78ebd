"""An independent float64 NumPy implementation of the MAGPO loss, row by row, for the tests.

Written from the paper's Eq. 8-11 and docs/design.md with explicit per-row loops and
textbook formulas (probabilities, not log-space tricks), so that it shares no code with
kernels/reference.py.
"""

from __future__ import annotations

import math

import numpy as np

FIELDS = (
    "loss_guider",
    "loss_learner",
    "guider_objective",
    "guider_kl",
    "learner_kl",
    "learner_objective",
    "mask_fraction",
    "guider_clip_fraction",
    "learner_clip_fraction",
    "guider_entropy",
)


def _softmax(logits, allowed):
    z = np.where(allowed, logits, -np.inf)
    z = z - z[allowed].max()
    e = np.where(allowed, np.exp(z), 0.0)
    return e / e.sum()


def _kl_discrete(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def _row_loss(lg, ll, lb, adv, kl_gl, kl_learner, entropy, delta, eps, aux):
    mu, pi, old = math.exp(lg), math.exp(ll), math.exp(lb)
    r = mu / old
    rho = mu / pi
    r2 = min(max(min(max(rho, 1 / delta), delta) * pi / old, 1 - eps), 1 + eps)
    g_obj = -min(r * adv, r2 * adv)
    g_clipped = r2 * adv < r * adv
    m = 1.0 if (rho <= 1 / delta or rho >= delta) else 0.0
    rl = pi / old
    rl2 = min(max(rl, 1 - eps), 1 + eps)
    l_obj = -min(rl * adv, rl2 * adv)
    l_clipped = rl2 * adv < rl * adv
    return dict(
        guider_objective=g_obj,
        guider_kl=m * kl_gl,
        learner_kl=kl_learner,
        learner_objective=l_obj,
        mask_fraction=m,
        guider_clip_fraction=float(g_clipped),
        learner_clip_fraction=float(l_clipped),
        guider_entropy=entropy,
    )


def _finish(rows, aux):
    out = {k: float(np.mean([row[k] for row in rows])) for k in rows[0]}
    out["loss_guider"] = out["guider_objective"] + out["guider_kl"]
    out["loss_learner"] = out["learner_kl"] + aux * out["learner_objective"]
    return out


def categorical(g_logits, l_logits, action, lb, adv, *, delta, eps, aux, learner_kl="forward", mask=None):
    """All contract fields for categorical inputs given as float64 NumPy arrays."""
    num_actions = g_logits.shape[-1]
    g_logits = g_logits.reshape(-1, num_actions)
    l_logits = l_logits.reshape(-1, num_actions)
    mask = np.ones_like(g_logits, dtype=bool) if mask is None else mask.reshape(-1, num_actions)
    rows = []
    for g, l, a, b, A, m in zip(g_logits, l_logits, action.reshape(-1), lb.reshape(-1), adv.reshape(-1), mask):
        p, q = _softmax(g, m), _softmax(l, m)
        kl_gl = _kl_discrete(p, q)
        kl_learner = kl_gl if learner_kl == "forward" else _kl_discrete(q, p)
        entropy = -sum(pi * math.log(pi) for pi in p if pi > 0)
        rows.append(_row_loss(math.log(p[a]), math.log(q[a]), b, A, kl_gl, kl_learner, entropy, delta, eps, aux))
    return _finish(rows, aux)


def _normal_logpdf(x, mu, s):
    return -((x - mu) ** 2) / (2 * s * s) - math.log(s) - 0.5 * math.log(2 * math.pi)


def _kl_normal(m1, s1, m2, s2):
    return math.log(s2 / s1) + (s1 * s1 + (m1 - m2) ** 2) / (2 * s2 * s2) - 0.5


def normal(g_loc, g_scale, l_loc, l_scale, action, lb, adv, *, delta, eps, aux, learner_kl="forward"):
    """All contract fields for diagonal Normal inputs given as float64 NumPy arrays."""
    dim = g_loc.shape[-1]
    flat = [x.reshape(-1, dim) for x in (g_loc, g_scale, l_loc, l_scale, action)]
    rows = []
    for gm, gs, lm, ls, x, b, A in zip(*flat, lb.reshape(-1), adv.reshape(-1)):
        lg = sum(_normal_logpdf(*v) for v in zip(x, gm, gs))
        ll = sum(_normal_logpdf(*v) for v in zip(x, lm, ls))
        kl_gl = sum(_kl_normal(*v) for v in zip(gm, gs, lm, ls))
        kl_lg = sum(_kl_normal(*v) for v in zip(lm, ls, gm, gs))
        entropy = sum(0.5 + 0.5 * math.log(2 * math.pi) + math.log(s) for s in gs)
        kl_learner = kl_gl if learner_kl == "forward" else kl_lg
        rows.append(_row_loss(lg, ll, b, A, kl_gl, kl_learner, entropy, delta, eps, aux))
    return _finish(rows, aux)
