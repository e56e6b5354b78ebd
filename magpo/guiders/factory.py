"""Building a guider for one agent group: :func:`make_guider` (from the group's specs) and
:func:`make_guider_policies` (a core wrapped as the loss's and the collector's policies)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict.nn import (
    NormalParamExtractor,
    ProbabilisticTensorDictModule,
    ProbabilisticTensorDictSequential,
    TensorDictModule,
    TensorDictModuleBase,
)
from tensordict.utils import NestedKey
from torch.distributions import Categorical
from torchrl.data import Composite, TensorSpec
from torchrl.modules import IndependentNormal, MaskedCategorical, TanhNormal

from magpo.guiders.common import GUIDER_KINDS, GUIDER_MEMORIES, GuiderCore, GuiderSpec
from magpo.guiders.corrected import AnchoredGuider, ResidualGuider
from magpo.guiders.sampling import ActionDraw, GumbelMaxDraw, NormalDraw, SequentialGuiderSampler, TeacherForcedGuider
from magpo.guiders.transformer import TransformerGuider


def make_guider_policies(
    core: GuiderCore,
    head_modules: Sequence[TensorDictModuleBase],
    distribution: ProbabilisticTensorDictModule,
    *,
    group: str,
    params_key: NestedKey,
    order_key: NestedKey,
    agent_order: str,
    action_shape: Sequence[int],
    action_dtype: torch.dtype,
    draw: ActionDraw | None = None,
):
    """Wrap a guider core as (policy for the loss, policy for collection).

    ``head_modules`` map ``params_key`` to the distribution's inputs (e.g. a Normal parameter
    extractor; none for logits); ``distribution`` is the ``ProbabilisticTensorDictModule`` that
    writes the action and, with ``return_log_prob=True``, its log-prob. ``draw``, when given,
    must sample exactly as that head does (:class:`GumbelMaxDraw`, :class:`NormalDraw`); the
    sampler then draws the noise once per environment step (:class:`SequentialGuiderSampler`).
    Both policies share every parameter.
    """
    if not distribution.return_log_prob:
        raise ValueError("the guider's distribution module needs return_log_prob=True")
    action_key = distribution.out_keys[0]
    teacher_forced = TeacherForcedGuider(core, action_key, order_key, params_key)
    for_loss = ProbabilisticTensorDictSequential(teacher_forced, *head_modules, distribution)
    head = ProbabilisticTensorDictSequential(*head_modules, distribution)
    for_collection = SequentialGuiderSampler(
        teacher_forced, head, group, distribution.log_prob_key, agent_order, action_shape, action_dtype, draw
    )
    return for_loss, for_collection


def memory_entry(memory: str, group: str, n_agents: int, width: int, heads: int):
    """``(key, shape)`` of the state a guider with ``memory`` keeps per environment step, or None
    (``"none"``): the GRU's ``[n_agents, width]`` under the group, or the retention's
    ``[heads, width / heads, width / heads]`` under ``("guider_retention", group)`` (one state
    per environment: retention mixes the agents). An environment primer creates it (zeros)."""
    if memory == "gru":
        return (group, "guider_memory"), (n_agents, width)
    if memory == "retention":
        return ("guider_retention", group), (heads, width // heads, width // heads)
    return None


def make_guider(
    kind: str,
    *,
    group: str,
    observation_spec: Composite,
    action_spec: TensorSpec,
    continuous: bool,
    state_spec: Composite | None = None,
    learner_module: TensorDictModuleBase | None = None,
    width: int = 64,
    heads: int = 4,
    layers: int = 1,
    agent_order: str = "random",
    memory: str = "none",
    decay_scaling: float = 0.8,
    chunk: int | None = None,
    action_mask: bool = False,
    scale_mapping: str = "biased_softplus_1.0",
    tanh_normal: bool = True,
    device: torch.device | str | None = None,
):
    """Build a guider of one agent group from its specs: core, distribution head, both policies.

    Args:
        kind: one of :data:`GUIDER_KINDS`.
        group: the agent group; entries are read and written under it.
        observation_spec: the group's unbatched observation entries, each ``[n_agents, ...]``;
            every leaf is an input.
        action_spec: the group's unbatched action spec, ``[n_agents]`` (discrete indices) or
            ``[n_agents, D]`` (continuous).
        continuous: Normal actions (TanhNormal bounded to the spec, or IndependentNormal) rather
            than categorical ones.
        state_spec: optional global state, one leaf ``[...]``.
        learner_module: for ``anchored``/``residual``, the learner's module that writes its raw
            distribution parameters to ``(group, "logits")`` (the anchored guider reads it live,
            the residual guider copies it).
        width: transformer embedding size, or the correction's hidden size.
        heads, layers: transformer attention heads (dividing ``width``) and layers.
        agent_order: ``"random"`` (a stored permutation per step), ``"fixed"``, or ``"per_epoch"``
            (collect in the fixed order; the trainer sets ``training_order`` per epoch).
        memory: ``"none"``, ``"gru"`` or ``"retention"`` (transformer only): a state over the
            episode, stored where :func:`memory_entry` says; the batch needs ``"is_init"`` and
            the loss whole rollouts (:mod:`magpo.guiders.transformer`).
        decay_scaling, chunk: the retention memory's decay scaling (Sable's, in (0, 1]) and
            training chunk in steps (None: the whole rollout).
        action_mask: discrete actions read ``(group, "action_mask")``.
        scale_mapping: Normal scale mapping of the parameter extractor (continuous).
        tanh_normal: TanhNormal (True) or IndependentNormal (False) for continuous actions.
        device: where the core's parameters live.

    Returns:
        ``(core, for_loss, for_collection)``: the network, the teacher-forced policy (the loss's
        ``actor_network``; parameters in ``(group, "guider_logits")``) and the sampling policy
        (writes ``(group, "action")``, ``(group, "log_prob")``, ``(group, "agent_order")``).
    """
    if kind not in GUIDER_KINDS:
        raise ValueError(f"guider must be one of {GUIDER_KINDS}, got {kind!r}")
    if memory not in GUIDER_MEMORIES:
        raise ValueError(f"guider memory must be one of {GUIDER_MEMORIES}, got {memory!r}")
    if memory != "none" and kind != "transformer":
        raise ValueError(f"guider memory {memory!r} needs the transformer guider, got {kind!r}")
    if kind != "transformer" and learner_module is None:
        raise ValueError(f"the {kind} guider is built on the learner: pass learner_module")
    spec = GuiderSpec.of_group(group, observation_spec, action_spec, continuous, state_spec)
    action_size = spec.action_size
    params_key = (group, "guider_logits")
    if kind == "transformer":
        entry = memory_entry(memory, group, spec.n_agents, width, heads)
        core = TransformerGuider(spec, embed_dim=width, num_heads=heads, num_layers=layers,
                                 memory_key=entry[0] if entry else None, memory=memory, decay_scaling=decay_scaling,
                                 chunk=chunk)
    else:
        corrected = AnchoredGuider if kind == "anchored" else ResidualGuider
        core = corrected(learner_module, (group, "logits"), spec, hidden_dim=width)
    core = core.to(device)

    if continuous:
        extractor = NormalParamExtractor(scale_mapping=scale_mapping)
        head = [
            TensorDictModule(
                extractor, in_keys=[params_key], out_keys=[(group, "guider_loc"), (group, "guider_scale")],
            )
        ]
        bounds = (action_spec.space.low, action_spec.space.high) if tanh_normal else (None, None)
        distribution = ProbabilisticTensorDictModule(
            in_keys={"loc": (group, "guider_loc"), "scale": (group, "guider_scale")},
            out_keys=[(group, "action")],
            distribution_class=TanhNormal if tanh_normal else IndependentNormal,
            distribution_kwargs={"low": bounds[0], "high": bounds[1]} if tanh_normal else {},
            return_log_prob=True,
            log_prob_key=(group, "log_prob"),
        )
        draw = NormalDraw(extractor, action_size, *bounds)
    else:
        head = []
        mask_key = (group, "action_mask") if action_mask else None
        distribution = ProbabilisticTensorDictModule(
            in_keys={"logits": params_key, "mask": mask_key} if action_mask else {"logits": params_key},
            out_keys=[(group, "action")],
            distribution_class=MaskedCategorical if action_mask else Categorical,
            return_log_prob=True,
            log_prob_key=(group, "log_prob"),
        )
        draw = GumbelMaxDraw(action_size, mask_key)
    for_loss, for_collection = make_guider_policies(
        core, head, distribution, group=group, params_key=params_key, order_key=(group, "agent_order"),
        agent_order=agent_order, action_shape=action_spec.shape, action_dtype=action_spec.dtype, draw=draw,
    )
    return core, for_loss, for_collection
