"""MAGPO losses as TorchRL ``LossModule``s: ``GuiderClipLoss``, ``LearnerKLPPOLoss``, ``MAGPOLoss``.

They follow ``torchrl.objectives.ClipPPOLoss`` and inherit its machinery from
:class:`~torchrl.objectives.PPOLoss`: configurable keys (``set_keys``), functional parameters,
the value estimator (GAE by default, ``make_value_estimator``), the (optionally clipped) critic
loss and explained variance. The per-sample math is not here: it goes through the
:mod:`kernels` contract (``magpo_kernels.magpo_loss_categorical`` / ``magpo_kernels.magpo_loss_normal``).

Roles. ``actor_network`` is the *guider*, the policy that collected the data: its log-prob key
is the behaviour log-prob (``sample_log_prob``). ``learner_network`` is the decentralized
learner. Both are ``ProbabilisticTensorDictSequential``s whose ``get_dist`` returns one of
Categorical / MaskedCategorical / OneHotCategorical (discrete), or Normal / IndependentNormal /
TanhNormal (continuous); an auto-regressive guider reads the stored joint action from the
tensordict (teacher forcing) in ``get_dist``. Leading dims are the batch and the agents, e.g.
``[*B, n_agents]``; every row counts the same in the means.

Each loss back-propagates to its own side only (the other side enters through stop-gradient),
so ``loss_guider``, ``loss_learner`` and ``loss_critic`` can be back-propagated one after the
other, each with its own optimizer, as BenchMARL does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import ProbabilisticTensorDictSequential, TensorDictModule
from torch import Tensor, distributions as D
from torchrl.modules import MaskedCategorical
from torchrl.objectives import PPOLoss

import magpo_kernels
from magpo_kernels import LossOptions, MAGPOLossTerms

from .guiders import AnchoredGuider

__all__ = ["GuiderClipLoss", "LearnerKLPPOLoss", "LossOptions", "MAGPOLoss", "NonFiniteLossError"]

# The diagnostics of magpo_kernels.MAGPOLossTerms (its fields after the two losses), by the side they
# describe: the guider's loss outputs the first, the learner's the second, MAGPOLoss both.
GUIDER_DIAGNOSTICS = tuple(n for n in MAGPOLossTerms._fields[2:] if not n.startswith("learner_"))
LEARNER_DIAGNOSTICS = tuple(n for n in MAGPOLossTerms._fields[2:] if n.startswith("learner_"))
# Per sample, the product of the preceding agents' new/old ratios in a sequential (agent-by-agent)
# update (magpo.sequential); absent means 1 (the first agent, or a parallel update).
PRECEDING_RATIO_KEY = "preceding_ratio"


class NonFiniteLossError(RuntimeError):
    """A MAGPO loss term came out NaN or infinite; the message names the term."""


def _distribution_parameters(dist: D.Distribution, who: str):
    """``("categorical", logits [..., A], action_mask or None)`` or ``("normal", loc [..., D],
    scale [..., D])`` of a policy distribution (the underlying Normal of a TanhNormal)."""
    if isinstance(dist, D.Categorical):  # also MaskedCategorical, OneHotCategorical (TorchRL)
        return "categorical", dist.logits, dist.mask if isinstance(dist, MaskedCategorical) else None
    base = dist.base_dist if isinstance(dist, D.TransformedDistribution) else dist
    if isinstance(base, D.Independent) and base.reinterpreted_batch_ndims == 1:
        base = base.base_dist
    if not isinstance(base, D.Normal):
        raise TypeError(
            f"{who}: unsupported distribution {type(dist).__name__}; MAGPO losses support Categorical, "
            "MaskedCategorical, OneHotCategorical, Normal, IndependentNormal and TanhNormal"
        )
    return "normal", base.loc, base.scale


def _action_in_base_space(dist: D.Distribution, action: Tensor, behavior_log_prob: Tensor):
    """The stored action and behaviour log-prob where the kernels work: an action index for
    one-hot actions, and for a TanhNormal the pre-tanh action with the transforms' Jacobian
    added back to the stored log-prob (it does not depend on the policy parameters, and it is
    the same for guider and learner, which share the action space's transforms)."""
    if isinstance(dist, D.Categorical):
        return (action.argmax(-1) if action.shape == dist.logits.shape else action), behavior_log_prob
    value = action
    if isinstance(dist, D.TransformedDistribution):
        for transform in reversed(dist.transforms):
            value = transform.inv(value)
        jacobian = (dist.base_dist.log_prob(value) - dist.log_prob(action)).detach()
        if isinstance(dist.base_dist, D.Normal):  # per-dim log-probs: sum the action dims
            jacobian = jacobian.sum(-1)
        behavior_log_prob = behavior_log_prob + jacobian
    elif behavior_log_prob.shape == action.shape:  # a plain Normal stores per-dim log-probs
        behavior_log_prob = behavior_log_prob.sum(-1)
    return value, behavior_log_prob


def batch_advantage(loss: PPOLoss, tensordict: TensorDictBase) -> Tensor:
    """The batch's advantage, ``[*B, n_agents, 1]``; where the batch has none, ``loss``'s value
    estimator writes it into ``tensordict`` first (with the critic's detached parameters)."""
    advantage = tensordict.get(loss.tensor_keys.advantage, None)
    if advantage is None:
        if loss.critic_network is None:
            raise KeyError(
                f"{type(loss).__name__}: no {loss.tensor_keys.advantage!r} in the batch and no critic_network "
                "to estimate it; compute the advantage first (e.g. with GAE) or pass a critic"
            )
        loss.value_estimator(
            tensordict,
            params=loss._cached_critic_network_params_detached,
            target_params=loss.target_critic_network_params,
        )
        advantage = tensordict.get(loss.tensor_keys.advantage)
    return advantage


class _GuidedPPOLoss(PPOLoss):
    """Everything the three MAGPO losses share; subclasses pick which terms they output."""

    # Names of the loss_* and diagnostic entries this loss writes (set by subclasses).
    _losses: tuple[str, ...] = ()
    _diagnostics: tuple[str, ...] = ()
    _needs_critic = False

    # convert_to_functional checks the class's own __annotations__ (not inherited), so
    # __init_subclass__ copies these into every subclass.
    actor_network: TensorDictModule
    critic_network: TensorDictModule
    learner_network: TensorDictModule
    actor_network_params: TensorDictBase
    critic_network_params: TensorDictBase
    learner_network_params: TensorDictBase
    target_actor_network_params: TensorDictBase
    target_critic_network_params: TensorDictBase
    target_learner_network_params: TensorDictBase

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.__annotations__ = {**_GuidedPPOLoss.__annotations__, **cls.__dict__.get("__annotations__", {})}

    def __init__(
        self,
        guider_network: ProbabilisticTensorDictSequential,
        learner_network: ProbabilisticTensorDictSequential,
        critic_network: TensorDictModule | None = None,
        options: LossOptions = LossOptions(),
        *,
        entropy_coeff: float = 0.01,
        critic_coeff: float | None = None,
        loss_critic_type: str = "l2",
        clip_value: float | None = None,
        normalize_advantage: bool = True,
        normalize_advantage_exclude_dims: Sequence[int] = (),
        check_finite: bool = True,
    ):
        if not isinstance(options, LossOptions):
            raise TypeError(f"options must be a magpo.LossOptions, got {type(options).__name__}")
        if critic_network is None and self._needs_critic:
            raise ValueError(f"{type(self).__name__} needs a critic_network (use GuiderClipLoss + LearnerKLPPOLoss without one)")
        if not isinstance(entropy_coeff, (int, float)) or isinstance(entropy_coeff, bool) or entropy_coeff < 0:
            raise ValueError(f"entropy_coeff must be a float >= 0, got {entropy_coeff!r}")
        if critic_network is None and critic_coeff:
            raise ValueError(f"critic_coeff={critic_coeff} needs a critic_network")
        if critic_coeff is not None and critic_coeff < 0:
            raise ValueError(f"critic_coeff must be >= 0, got {critic_coeff}")
        if clip_value is not None and not clip_value > 0:
            raise ValueError(f"clip_value must be > 0 or None, got {clip_value}")
        super().__init__(
            guider_network,
            critic_network,
            entropy_bonus=True,
            entropy_coeff=float(entropy_coeff),
            critic_coeff=critic_coeff,
            loss_critic_type=loss_critic_type,
            normalize_advantage=normalize_advantage,
            normalize_advantage_exclude_dims=tuple(normalize_advantage_exclude_dims),
            clip_value=None if clip_value is None else float(clip_value),
        )
        self.convert_to_functional(learner_network, "learner_network")
        self.options = options
        self.check_finite = check_finite
        # An anchored guider's base is this loss's learner, read without gradient: the loss hands
        # it the learner output it computes anyway instead of letting it run the learner again.
        learner_modules = {id(m) for m in self.learner_network.modules()}
        self._anchored_cores = tuple(
            m for m in self.actor_network.modules()
            if isinstance(m, AnchoredGuider) and id(m.base_module()) in learner_modules
        )

    @property
    def guider_network(self) -> TensorDictModule:
        """The guider (the behaviour policy; stored as TorchRL's ``actor_network``)."""
        return self.actor_network

    def _set_in_keys(self):
        super()._set_in_keys()
        self._in_keys = sorted(set(self._in_keys) | set(self.learner_network.in_keys), key=str)

    @property
    def out_keys(self):
        if self._out_keys is None:
            keys = list(self._losses) + list(self._diagnostics)
            if self._has_critic and "loss_critic" in self._losses:
                keys.append("explained_variance")
                if self.clip_value is not None:
                    keys.append("value_clip_fraction")
            else:
                keys = [k for k in keys if k != "loss_critic"]
            self._out_keys = keys
        return self._out_keys

    @out_keys.setter
    def out_keys(self, values):
        self._out_keys = values

    # ------------------------------------------------------------------ helpers

    def _advantage(self, tensordict: TensorDictBase) -> Tensor:
        advantage = batch_advantage(self, tensordict)
        if self.normalize_advantage and advantage.numel() > 1:
            # Per minibatch, as in the authors' code: (A - mean) / (std + 1e-8), with the population
            # std (their jnp.std; torch.std would divide by n - 1).
            dims = [d for d in range(advantage.dim()) if d - advantage.dim() not in self._excluded_dims(advantage)]
            mean = advantage.mean(dim=dims, keepdim=True)
            std = advantage.std(dim=dims, keepdim=True, correction=0)
            advantage = (advantage - mean) / (std + 1e-8)
        return advantage

    def _excluded_dims(self, advantage: Tensor) -> set[int]:
        """normalize_advantage_exclude_dims as negative indices."""
        return {d if d < 0 else d - advantage.dim() for d in self.normalize_advantage_exclude_dims}

    def _dist(self, name: str, tensordict: TensorDictBase) -> D.Distribution:
        network = getattr(self, f"{name}_network")
        with getattr(self, f"{name}_network_params").to_module(network):
            return network.get_dist(tensordict)

    def _terms(self, tensordict: TensorDictBase, advantage: Tensor) -> magpo_kernels.MAGPOLossTerms:
        action = tensordict.get(self.tensor_keys.action)
        behavior_log_prob = tensordict.get(self.tensor_keys.sample_log_prob, None)
        if behavior_log_prob is None:
            raise KeyError(
                f"{type(self).__name__}: the behaviour log-prob {self.tensor_keys.sample_log_prob!r} is not in the "
                "batch; the guider must write it at collection (set it with set_keys(sample_log_prob=...))"
            )
        if behavior_log_prob.requires_grad or action.requires_grad:
            raise ValueError(f"{type(self).__name__}: the stored action and behaviour log-prob must not require grad")
        learner_dist = self._dist("learner", tensordict)  # writes the learner's outputs into tensordict
        with contextlib.ExitStack() as shared:
            for core in self._anchored_cores:
                shared.enter_context(core.given_base(tensordict.get(core.base_out_key)))
            guider_dist = self._dist("actor", tensordict)
        kind, g_first, g_second = _distribution_parameters(guider_dist, "guider")
        learner_kind, l_first, l_second = _distribution_parameters(learner_dist, "learner")
        if kind != learner_kind:
            raise TypeError(f"guider and learner distributions differ in kind: {kind} vs {learner_kind}")
        action, behavior = _action_in_base_space(guider_dist, action, behavior_log_prob)
        rows = action.shape if kind == "categorical" else action.shape[:-1]
        if advantage.dim() == len(rows) + 1 and advantage.shape[-1] == 1:
            advantage = advantage.squeeze(-1)
        try:
            advantage = advantage.expand(rows)
        except RuntimeError as err:
            raise ValueError(
                f"{type(self).__name__}: advantage {self.tensor_keys.advantage!r} of shape {tuple(advantage.shape)} "
                f"does not broadcast to the policy's rows {tuple(rows)}"
            ) from err
        if kind == "categorical":
            # g_second / l_second are the action masks of MaskedCategorical policies (or None)
            mask = g_second if l_second is None else (l_second if g_second is None else g_second & l_second)
            if mask is not None:
                mask = mask.expand(g_first.shape)

            def kernel(advantage: Tensor) -> magpo_kernels.MAGPOLossTerms:
                return magpo_kernels.magpo_loss_categorical(g_first, l_first, action, behavior, advantage, self.options,
                                                            action_mask=mask)
        else:
            def kernel(advantage: Tensor) -> magpo_kernels.MAGPOLossTerms:
                return magpo_kernels.magpo_loss_normal(g_first, g_second.expand_as(g_first), l_first,
                                                       l_second.expand_as(l_first), action, behavior, advantage,
                                                       self.options)
        terms = kernel(advantage)
        preceding = tensordict.get(PRECEDING_RATIO_KEY, None)
        if preceding is None:
            return terms
        # Sequential learners (magpo.sequential): the learner's lambda-weighted PPO term carries the
        # preceding learners' ratio product M of its sample; M > 0 factors out of PPO's min, so that
        # term is PPO on the advantage M * A. The guider's terms keep A. M is clipped to
        # 1 +- clip_epsilon, as A2PO clips its product: the guider drew the actions, and on one the
        # learner finds unlikely (a continuous action at its bound) a small step of a preceding
        # learner makes its ratio, and M unclipped, overflow (vmas/give_way, seed 0: loss 4e6, then inf).
        epsilon = self.options.clip_epsilon
        weight = preceding.detach().clamp(1 - epsilon, 1 + epsilon).reshape(*rows[:-1], 1)
        weighted = kernel(advantage * weight)
        return terms._replace(loss_learner=weighted.loss_learner, learner_kl=weighted.learner_kl,
                              learner_objective=weighted.learner_objective,
                              learner_clip_fraction=weighted.learner_clip_fraction)

    def _raise_if_not_finite(self, out: TensorDictBase, tensordict: TensorDictBase) -> None:
        losses = [out.get(key) for key in self.out_keys if key.startswith("loss_")]
        if torch.stack([loss.detach() for loss in losses]).isfinite().all():  # one sync per call
            return
        bad = [key for key, loss in zip(self.out_keys, losses) if not torch.isfinite(loss)]
        # The stored log-probs show the cause seen in practice: a continuous policy whose scale
        # collapsed at an action bound stores its clamped actions with log-probs of -1e3 or less,
        # where a tiny move of the policy's mean makes exp(log-ratio) overflow.
        behavior = tensordict.get(self.tensor_keys.sample_log_prob).detach()
        raise NonFiniteLossError(
            f"{type(self).__name__}: {', '.join(bad)} is not finite "
            f"({', '.join(f'{k}={out.get(k).item()}' for k in bad)}); the batch's stored log-probs of the taken "
            f"actions range over [{behavior.min().item():.4g}, {behavior.max().item():.4g}]. Common causes: a taken "
            "action that the action mask forbids, diverged parameters, or a scale collapsed to near zero, for "
            "example a continuous policy pinned at an action bound (stored log-probs far below zero; an entropy "
            "bonus, entropy_coeff > 0, keeps the scale up). Pass check_finite=False to skip this check."
        )

    # ------------------------------------------------------------------ forward

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        tensordict = tensordict.clone(False)
        advantage = self._advantage(tensordict)
        terms = self._terms(tensordict, advantage)
        values = dict(terms._asdict())
        values["loss_entropy"] = -self.entropy_coeff * terms.guider_entropy
        values["guider_entropy"] = terms.guider_entropy.detach()
        out = TensorDict({key: values[key] for key in self._losses + self._diagnostics if key in values})
        if self._has_critic and "loss_critic" in self._losses:
            loss_critic, value_clip_fraction, explained_variance = self.loss_critic(tensordict)
            out.set("loss_critic", loss_critic.mean())
            out.set("explained_variance", explained_variance.mean())
            if value_clip_fraction is not None:
                out.set("value_clip_fraction", value_clip_fraction)
        if self.check_finite:
            self._raise_if_not_finite(out, tensordict)
        self._clear_weakrefs(
            tensordict,
            out,
            "actor_network_params",
            "critic_network_params",
            "learner_network_params",
            "target_actor_network_params",
            "target_critic_network_params",
            "target_learner_network_params",
        )
        return out


class GuiderClipLoss(_GuidedPPOLoss):
    """The guider's loss (paper Eq. 8-9): double-clipped PPO, masked KL pull, entropy bonus.

    Outputs ``loss_guider`` (surrogate + masked KL(guider || sg(learner))), ``loss_entropy``
    (``-entropy_coeff * H(guider)``), ``loss_critic`` when a critic is given, and the guider's
    diagnostics (``guider_objective``, ``guider_kl``, ``mask_fraction``, ``guider_clip_fraction``,
    ``guider_entropy``, and ``explained_variance``, ``value_clip_fraction``). The learner is a
    constant here. Arguments as in :class:`MAGPOLoss`; the critic is optional (needed to
    estimate a missing advantage and to train it with ``loss_critic``).
    """

    _losses = ("loss_guider", "loss_entropy", "loss_critic")
    _diagnostics = GUIDER_DIAGNOSTICS


class LearnerKLPPOLoss(_GuidedPPOLoss):
    """The learner's loss (paper Eq. 10-11): imitation KL to the guider plus lambda x PPO.

    Outputs ``loss_learner`` (KL + ``options.aux_coef`` * clipped PPO on ``pi_theta(a) /
    mu_old(a)``) and the learner's diagnostics (``learner_kl``, ``learner_objective``,
    ``learner_clip_fraction``). The guider is a constant here, and the critic (optional) only
    estimates a missing advantage. Arguments as in :class:`MAGPOLoss`, positionally the
    guider first.
    """

    _losses = ("loss_learner",)
    _diagnostics = LEARNER_DIAGNOSTICS


class MAGPOLoss(_GuidedPPOLoss):
    """The whole MAGPO objective in one forward: guider, learner, critic and entropy.

    Outputs ``loss_guider``, ``loss_learner``, ``loss_critic``, ``loss_entropy``, every
    diagnostic of :class:`magpo_kernels.MAGPOLossTerms` (``guider_objective``, ``guider_kl``,
    ``learner_kl``, ``learner_objective``, ``mask_fraction``, ``guider_clip_fraction``,
    ``learner_clip_fraction``, ``guider_entropy``), ``explained_variance`` (and
    ``value_clip_fraction`` with ``clip_value``). Back-propagate ``loss_guider + loss_entropy``
    into the guider's optimizer, ``loss_learner`` into the learner's and ``loss_critic`` into
    the critic's; the graphs are disjoint.

    The two clip fractions are the share of rows where the clipped branch of PPO's ``min`` is
    the active one. TorchRL's ``ClipPPOLoss`` reports another statistic under ``clip_fraction``
    (every row whose ratio is outside ``[1 - eps, 1 + eps]``, whatever the advantage's sign),
    which counts more rows: the two are not comparable number for number.

    With ``LossOptions(delta=float("inf"), aux_coef=0)`` this is the CTDS baseline of the paper.

    Example:
        >>> loss = MAGPOLoss(guider, learner, critic, LossOptions(delta=1.5, aux_coef=1.0))
        >>> loss.set_keys(sample_log_prob=("agents", "log_prob"), action=("agents", "action"))
        >>> loss.make_value_estimator(gamma=0.99, lmbda=0.95)
        >>> out = loss(batch)
        >>> (out["loss_guider"] + out["loss_entropy"]).backward()

    Args:
        guider_network: the guider policy (collects the data; ``actor_network`` in TorchRL terms).
        learner_network: the decentralized learner.
        critic_network: the centralized critic (required here); estimates the advantage when
            the batch holds none and is trained with ``loss_critic``.
        options: :class:`magpo_kernels.LossOptions` (delta, clip_epsilon, aux_coef, learner_kl,
            backend), validated when built; the default is the package's default set.
        entropy_coeff: weight of the guider's entropy bonus, >= 0.
        critic_coeff: weight of the critic loss (TorchRL's meaning; None = 1.0 with a critic).
        loss_critic_type: ``"l2"`` (default), ``"l1"`` or ``"smooth_l1"``.
        clip_value: PPO value clipping range (the authors clip with clip_epsilon), or None.
        normalize_advantage: standardise the advantage per minibatch (default True).
        normalize_advantage_exclude_dims: dims kept separate when standardising.
        check_finite: raise :class:`NonFiniteLossError` naming the term if a loss is NaN/inf.
    """

    _losses = ("loss_guider", "loss_learner", "loss_critic", "loss_entropy")
    _diagnostics = MAGPOLossTerms._fields[2:]  # both sides' diagnostics
    _needs_critic = True
