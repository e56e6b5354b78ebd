"""The MAGPO loss contract: argument checks and backend dispatch.

Both entry points take the hyperparameters as one :class:`LossOptions` (validated when it was
built), check every tensor before any computation (ValueError / TypeError naming the argument),
then run the chosen backend. The math itself is in :mod:`magpo_kernels.reference`.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
from torch import Tensor

from magpo_kernels.options import LossOptions
from magpo_kernels.reference import MAGPOLossTerms, categorical_terms, normal_terms


def _check_options(options) -> None:
    if not isinstance(options, LossOptions):
        raise TypeError(f"options must be a magpo_kernels.LossOptions, got {type(options).__name__}")


def _check_tensor(name: str, value, *, floating: bool | None = None) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if floating is True and not value.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {value.dtype}")
    if floating is False and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
        raise TypeError(f"{name} must have an integer dtype, got {value.dtype}")
    return value


def _check_shape(name: str, value: Tensor, shape: torch.Size, meaning: str) -> None:
    if value.shape != shape:
        raise ValueError(f"{name} must have shape {tuple(shape)} ({meaning}), got {tuple(value.shape)}")


def _check_same_device(named: dict[str, Tensor | None]) -> torch.device:
    present = {name: t for name, t in named.items() if t is not None}
    devices = {t.device for t in present.values()}
    if len(devices) > 1:
        listing = ", ".join(f"{name} on {t.device}" for name, t in present.items())
        raise ValueError(f"all tensors must be on one device, got {listing}")
    return devices.pop()


@functools.cache
def triton_available() -> bool:
    """True when the ``triton`` package can be imported (Linux); CUDA is checked per call."""
    return importlib.util.find_spec("triton") is not None


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "reference"
    return backend


def magpo_loss_categorical(
    guider_logits: Tensor,
    learner_logits: Tensor,
    action: Tensor,
    behavior_log_prob: Tensor,
    advantage: Tensor,
    options: LossOptions,
    *,
    action_mask: Tensor | None = None,
) -> MAGPOLossTerms:
    """MAGPO guider and learner losses for categorical policies (paper Eq. 8-11).

    Args:
        guider_logits: ``[..., A]`` float, the guider's logits for the taken step (the
            auto-regressive guider already conditioned on the previous agents' actions).
        learner_logits: ``[..., A]`` float, the decentralized learner's logits.
        action: ``[...]`` integer, the taken action of each row.
        behavior_log_prob: ``[...]`` float, log mu_old(action) stored at collection.
        advantage: ``[...]`` float, already normalised if wanted.
        options: the hyperparameters and the backend (:class:`LossOptions`).
        action_mask: optional ``[..., A]`` bool, True for allowed actions. Masked actions get
            probability 0 under both policies. A row whose taken action is masked has no
            finite loss (the loss modules report it).

    Returns:
        :class:`MAGPOLossTerms` of scalar means over all rows. ``loss_guider`` is
        differentiable w.r.t. the guider logits only, ``loss_learner`` w.r.t. the learner
        logits only, ``guider_entropy`` w.r.t. the guider logits; the rest are detached.
    """
    _check_options(options)
    _check_tensor("guider_logits", guider_logits, floating=True)
    _check_tensor("learner_logits", learner_logits, floating=True)
    _check_tensor("action", action, floating=False)
    _check_tensor("behavior_log_prob", behavior_log_prob, floating=True)
    _check_tensor("advantage", advantage, floating=True)
    if guider_logits.dim() < 1 or guider_logits.shape[-1] < 1:
        raise ValueError(f"guider_logits must have shape [..., A] with A >= 1, got {tuple(guider_logits.shape)}")
    rows_shape = guider_logits.shape[:-1]
    if rows_shape.numel() == 0:
        raise ValueError(f"guider_logits holds no rows (shape {tuple(guider_logits.shape)})")
    _check_shape("learner_logits", learner_logits, guider_logits.shape, "same as guider_logits")
    _check_shape("action", action, rows_shape, "guider_logits' leading dims")
    _check_shape("behavior_log_prob", behavior_log_prob, rows_shape, "guider_logits' leading dims")
    _check_shape("advantage", advantage, rows_shape, "guider_logits' leading dims")
    if action_mask is not None:
        _check_tensor("action_mask", action_mask)
        if action_mask.dtype != torch.bool:
            raise TypeError(f"action_mask must have dtype torch.bool, got {action_mask.dtype}")
        _check_shape("action_mask", action_mask, guider_logits.shape, "same as guider_logits")
    device = _check_same_device(
        dict(
            guider_logits=guider_logits,
            learner_logits=learner_logits,
            action=action,
            behavior_log_prob=behavior_log_prob,
            advantage=advantage,
            action_mask=action_mask,
        )
    )
    if _resolve_backend(options.backend, device) == "triton":
        from magpo_kernels.magpo_categorical import triton_categorical

        return triton_categorical(guider_logits, learner_logits, action, behavior_log_prob, advantage, options, action_mask)
    return categorical_terms(guider_logits, learner_logits, action, behavior_log_prob, advantage, options, action_mask)


def magpo_loss_normal(
    guider_loc: Tensor,
    guider_scale: Tensor,
    learner_loc: Tensor,
    learner_scale: Tensor,
    action: Tensor,
    behavior_log_prob: Tensor,
    advantage: Tensor,
    options: LossOptions,
) -> MAGPOLossTerms:
    """MAGPO guider and learner losses for diagonal Normal policies (paper Eq. 8-11).

    Args:
        guider_loc, guider_scale, learner_loc, learner_scale: ``[..., D]`` float, scale > 0.
        action: ``[..., D]`` float, in the Normal's own space (pre-tanh for a TanhNormal).
        behavior_log_prob: ``[...]`` float, log mu_old(action) of the Normal, summed over D.
        advantage: ``[...]`` float.
        options: as in :func:`magpo_loss_categorical`.

    Returns:
        :class:`MAGPOLossTerms`; log-probs, KLs and entropies sum over the D action dims.
    """
    _check_options(options)
    named = dict(
        guider_loc=guider_loc,
        guider_scale=guider_scale,
        learner_loc=learner_loc,
        learner_scale=learner_scale,
        action=action,
        behavior_log_prob=behavior_log_prob,
        advantage=advantage,
    )
    for name, value in named.items():
        _check_tensor(name, value, floating=True)
    if guider_loc.dim() < 1 or guider_loc.shape[-1] < 1:
        raise ValueError(f"guider_loc must have shape [..., D] with D >= 1, got {tuple(guider_loc.shape)}")
    rows_shape = guider_loc.shape[:-1]
    if rows_shape.numel() == 0:
        raise ValueError(f"guider_loc holds no rows (shape {tuple(guider_loc.shape)})")
    for name in ("guider_scale", "learner_loc", "learner_scale", "action"):
        _check_shape(name, named[name], guider_loc.shape, "same as guider_loc")
    _check_shape("behavior_log_prob", behavior_log_prob, rows_shape, "guider_loc's leading dims")
    _check_shape("advantage", advantage, rows_shape, "guider_loc's leading dims")
    device = _check_same_device(named)
    args = (guider_loc, guider_scale, learner_loc, learner_scale, action, behavior_log_prob, advantage, options)
    if _resolve_backend(options.backend, device) == "triton":
        from magpo_kernels.magpo_normal import triton_normal

        return triton_normal(*args)
    return normal_terms(*args)
