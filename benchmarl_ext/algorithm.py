"""MAGPO (and its CTDS ablation) as a BenchMARL algorithm.

``Magpo`` extends BenchMARL's public ``Mappo``: the decentralized learner is exactly MAPPO's
actor (its ``_get_policy_for_loss``), the critic is MAPPO's centralized critic and GAE is
computed in MAPPO's ``process_batch``. On top, MAGPO adds the centralized auto-regressive
guider (:mod:`magpo.guiders`), which collects the data, and trains guider, learner and critic
with :class:`magpo.MAGPOLoss`, each with its own optimizer (keys ``loss_guider``,
``loss_learner``, ``loss_critic``).

Evaluation must use the learner, not the collecting guider: BenchMARL's plain ``Experiment``
evaluates the collection policy, so ``Magpo`` only runs inside an experiment that declares
``evaluates_learner`` (:class:`benchmarl_ext.experiment.MagpoExperiment`, which the ``benchmarl``
command uses) and refuses a plain ``Experiment``.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Type

import torch
from benchmarl.algorithms.common import Algorithm
from benchmarl.algorithms.mappo import Mappo, MappoConfig
from benchmarl.experiment.callback import Callback
from benchmarl.models.common import ModelConfig
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase, TensorDictSequential
from torchrl.data import Composite, Unbounded
from torchrl.envs import Compose, EnvBase, InitTracker, TensorDictPrimer, TransformedEnv
from torchrl.objectives import ValueEstimators

from benchmarl_ext.agent_by_agent import (
    AgentByAgentUpdate,
    refuse_shared_actors,
    stored_action_log_prob,
    with_preceding_ratio,
)
from benchmarl_ext.checks import check_ppo_fields
from benchmarl_ext.magpo_hooks import (
    AdaptiveDelta,
    GuiderBacktrack,
    GuiderLearningRate,
    GuiderWarmup,
    PerEpochAgentOrder,
)
from magpo import DeltaSchedule, LossOptions, MAGPOLoss
from magpo.guiders import AGENT_ORDERS, EPISODE_START_KEY, GUIDER_KINDS, GUIDER_MEMORIES, make_guider, memory_entry

LEARNER_UPDATES = ("parallel", "sequential")


def guider_for_group(algorithm: Mappo, group: str, continuous: bool, kind: str, **options):
    """:func:`magpo.guiders.make_guider` for ``group`` of a BenchMARL (MAPPO-family) algorithm:
    its observation, state, action and action-mask specs, Normal head settings and device.
    ``options``: ``width``, ``heads``, ``layers``, ``agent_order``, ``memory`` and ``learner_module``."""
    return make_guider(
        kind,
        group=group,
        observation_spec=algorithm.observation_spec[group],
        action_spec=algorithm.action_spec[group, "action"],
        continuous=continuous,
        state_spec=algorithm.state_spec,
        action_mask=algorithm.action_mask_spec is not None,
        scale_mapping=algorithm.scale_mapping,
        tanh_normal=algorithm.use_tanh_normal,
        device=algorithm.device,
        **options,
    )


class Magpo(Mappo):
    """Multi-Agent Guided Policy Optimization (arXiv 2507.18059) in BenchMARL.

    Args (besides MAPPO's, see :class:`MagpoConfig` for the meaning of each field):
        loss_options: the loss hyperparameters, built and validated once by the config.
        delta_schedule: how delta adapts between iterations (``delta: auto``), or None (fixed).
        guider, guider_memory, guider_decay_scaling, guider_chunk, guider_embed_dim, guider_heads,
        guider_layers, guider_lr,
        guider_warmup_frames, agent_order, backtrack, normalize_advantage, clip_value, learner_update.
    """

    def __init__(
        self,
        loss_options: LossOptions,
        delta_schedule: Optional[DeltaSchedule],
        guider: str,
        guider_memory: str,
        guider_decay_scaling: float,
        guider_chunk: Optional[int],
        guider_embed_dim: int,
        guider_heads: int,
        guider_layers: int,
        guider_lr: Optional[float],
        guider_warmup_frames: int,
        agent_order: str,
        backtrack: bool,
        normalize_advantage: bool,
        clip_value: Optional[float],
        learner_update: str,
        **kwargs,
    ):
        super().__init__(**kwargs)
        # a capability flag, not an isinstance check: the experiment module imports this one
        if not getattr(self.experiment, "evaluates_learner", False):
            raise TypeError(
                "MAGPO collects with the guider but must be evaluated with the decentralized learner; a plain "
                "benchmarl Experiment would evaluate the guider. Use benchmarl_ext.experiment.MagpoExperiment "
                "(the `benchmarl run` command of this package does)."
            )
        self.loss_options = loss_options
        self.delta_schedule = delta_schedule
        self.guider_type = guider
        self.guider_memory = guider_memory
        self.guider_decay_scaling = guider_decay_scaling
        self.guider_chunk = guider_chunk
        if guider_memory != "none":
            # whole rollouts in the buffer and in every minibatch: the guider reruns its memory over them
            self.has_rnn = True
        self.guider_embed_dim = guider_embed_dim
        self.guider_heads = guider_heads
        self.guider_layers = guider_layers
        self.guider_lr = guider_lr
        self.guider_warmup_frames = guider_warmup_frames
        self.agent_order = agent_order
        self.backtrack_enabled = backtrack
        self.normalize_advantage = normalize_advantage
        self.clip_value = clip_value
        self.learner_update = learner_update
        self._updates: dict[str, AgentByAgentUpdate] = {}
        self._learners: dict[str, TensorDictModule] = {}
        self._guider_cores: dict[str, torch.nn.Module] = {}
        self._guider_samplers: dict[str, TensorDictModuleBase] = {}
        for group, agents in self.group_map.items():
            if len(agents) < 1:
                raise ValueError(f"task group {group!r} has no agents; MAGPO needs at least one agent per group")

    # ------------------------------------------------------------------ policies

    def _get_policy_for_loss(self, group: str, model_config: ModelConfig, continuous: bool) -> TensorDictModule:
        """The guider for the loss (teacher forcing); also builds the learner and the sampler."""
        learner = super()._get_policy_for_loss(group, model_config, continuous)
        self._learners[group] = learner
        # The guider's initial parameters come from a fork of the CPU generator, so what is drawn
        # next (the critic, then collection) is what MAPPO draws: with the same seed, a MAGPO run's
        # learner and critic start as MAPPO's actor and critic, and the two runs pair.
        with torch.random.fork_rng(devices=[]):
            core, for_loss, for_collection = guider_for_group(
                self, group, continuous, self.guider_type,
                learner_module=None if self.guider_type == "transformer" else self._learner_params_module(group),
                width=self.guider_embed_dim, heads=self.guider_heads, layers=self.guider_layers,
                agent_order=self.agent_order, memory=self.guider_memory, decay_scaling=self.guider_decay_scaling,
                chunk=self.guider_chunk,
            )
        self._guider_cores[group] = core
        self._guider_samplers[group] = for_collection
        return for_loss

    def _learner_params_module(self, group: str) -> TensorDictModuleBase:
        """The learner's module that writes ``(group, "logits")`` (MAPPO's actor network)."""
        key = (group, "logits")
        for module in self._learners[group].modules():
            if isinstance(module, TensorDictModuleBase) and list(module.out_keys) == [key]:
                return module
        raise RuntimeError(f"no module of the learner writes {key}")

    def _get_policy_for_collection(self, policy_for_loss: TensorDictModule, group: str, continuous: bool) -> TensorDictModule:
        """Collection uses the guider, agent after agent."""
        return self._guider_samplers[group]

    def process_env_fun(self, env_fun: Callable[[], EnvBase]) -> Callable[[], EnvBase]:
        """A guider with memory needs the episode starts (``is_init``; BenchMARL adds them for a
        recurrent model already) and its state, zero after every reset, in the environment."""
        if self.guider_memory == "none":
            return env_fun
        entries = {}  # the composite of every group's state entry, nested as its key
        for group, agents in self.group_map.items():
            key, shape = memory_entry(self.guider_memory, group, len(agents), self.guider_embed_dim, self.guider_heads)
            leaf = Unbounded(shape=shape, device=self.device)
            # an entry under the group has the group's agent dim; the retention's, one per environment, has none
            parent = Composite({key[1]: leaf}, shape=(len(agents),) if key[0] == group else (), device=self.device)
            entries.setdefault(key[0], []).append(parent)
        state_spec = Composite({
            name: parents[0] if len(parents) == 1 else Composite(
                {k: v for p in parents for k, v in p.items()}, device=self.device)
            for name, parents in entries.items()
        })

        def with_memory() -> EnvBase:
            env = env_fun()
            tracked = EPISODE_START_KEY in env.observation_spec.keys()
            transforms = ([] if tracked else [InitTracker(init_key=EPISODE_START_KEY)]) + [
                TensorDictPrimer(state_spec.clone(), reset_key="_reset", expand_specs=True)
            ]
            return TransformedEnv(env, Compose(*transforms))

        return with_memory

    def get_learner_policy(self) -> TensorDictSequential:
        """The decentralized learners of all groups: each agent acts on its own observation."""
        return TensorDictSequential(*(self._learners[group] for group in self.group_map))

    def get_guider_policy(self) -> TensorDictSequential:
        """The guiders of all groups (the centralized-execution reference)."""
        return TensorDictSequential(*(self._guider_samplers[group] for group in self.group_map))

    def draw_training_order(self, group: str) -> None:
        """``agent_order="per_epoch"``: one random permutation of ``group``'s agents under which the
        guider's log-probs are recomputed until the next call (a PPO epoch)."""
        teacher_forced = self._guider_samplers[group].teacher_forced
        teacher_forced.training_order = torch.randperm(teacher_forced.core.n_agents, device=self.device)

    def training_hooks(self) -> List[Callback]:
        """The callbacks that carry MAGPO's schedules (:mod:`benchmarl_ext.magpo_hooks`), one per
        option that is on; ``MagpoExperiment`` registers them once this algorithm is built."""
        hooks: List[Callback] = []
        if self.guider_lr is not None:
            hooks.append(GuiderLearningRate(self.guider_lr))
        if self.backtrack_enabled:
            hooks.append(GuiderBacktrack())
        if self.guider_warmup_frames:
            rate = self.guider_lr if self.guider_lr is not None else self.experiment_config.lr
            hooks.append(GuiderWarmup(self.guider_warmup_frames, rate))
        if self.agent_order == "per_epoch":
            hooks.append(PerEpochAgentOrder())
        if self.delta_schedule is not None:
            hooks.append(AdaptiveDelta(self.delta_schedule))
        return hooks

    @torch.no_grad()
    def backtrack(self, group: str) -> None:
        """Paper step 4: reset the (anchored or residual) guider to the learner, in place."""
        self._guider_cores[group].reset_to(self._learner_params_module(group))

    # ------------------------------------------------------------------ loss

    def _get_loss(self, group: str, policy_for_loss: TensorDictModule, continuous: bool):
        loss_module = MAGPOLoss(
            policy_for_loss,
            self._learners[group],
            self.get_critic(group),
            self.loss_options,
            entropy_coeff=self.entropy_coef,
            critic_coeff=self.critic_coef,
            loss_critic_type=self.loss_critic_type,
            clip_value=self.clip_value,
            normalize_advantage=self.normalize_advantage,
        )
        loss_module.set_keys(
            reward=(group, "reward"),
            action=(group, "action"),
            done=(group, "done"),
            terminated=(group, "terminated"),
            advantage=(group, "advantage"),
            value_target=(group, "value_target"),
            value=(group, "state_value"),
            sample_log_prob=(group, "log_prob"),
        )
        loss_module.make_value_estimator(ValueEstimators.GAE, gamma=self.experiment_config.gamma, lmbda=self.lmbda)
        return loss_module, False

    def _get_parameters(self, group: str, loss: MAGPOLoss) -> Dict[str, Iterable]:
        return {
            "loss_guider": list(loss.actor_network_params.flatten_keys().values()),
            "loss_learner": list(loss.learner_network_params.flatten_keys().values()),
            "loss_critic": list(loss.critic_network_params.flatten_keys().values()),
        }

    def process_batch(self, group: str, batch: TensorDictBase) -> TensorDictBase:
        batch = super().process_batch(group, batch)
        return with_preceding_ratio(batch) if self.learner_update == "sequential" else batch

    def agent_by_agent_update(self, group: str) -> Optional[AgentByAgentUpdate]:
        """``learner_update=sequential``: the learners of ``group`` take their turns one after another
        in a fresh random order; the guider and the critic take their epochs in the first turn.
        None (the paper's parallel update) otherwise."""
        if self.learner_update != "sequential":
            return None
        if group not in self._updates:
            loss = self.get_loss_and_updater(group)[0]
            self._updates[group] = AgentByAgentUpdate(
                len(self.group_map[group]), "random", stored_action_log_prob(loss, "learner", group),
                per_agent_loss="loss_learner", first_turn_only=("loss_guider", "loss_critic"),
                on_turn=lambda agent, position: None, advantage_key=(group, "advantage"),
            )
        return self._updates[group]

    def process_loss_vals(self, group: str, loss_vals: TensorDictBase) -> TensorDictBase:
        # the entropy bonus trains the guider: step it with the guider's optimizer
        loss_vals.set("loss_guider", loss_vals["loss_guider"] + loss_vals["loss_entropy"])
        del loss_vals["loss_entropy"]
        update = self.agent_by_agent_update(group)
        if update is not None:
            for name in set(loss_vals.keys()) - set(update.loss_names_to_step(loss_vals.keys())):
                del loss_vals[name]
        return loss_vals


class Ctds(Magpo):
    """The CTDS baseline of the paper (Sec. 5): MAGPO with delta = inf and aux_coef = 0.

    A separate class only so that BenchMARL names its runs ``ctds``; the presets in
    ``conf/algorithm/ctds.yaml`` set the two values.
    """


@dataclass
class MagpoConfig(MappoConfig):
    """Configuration of :class:`Magpo`; every field is documented in ``conf/algorithm/magpo.yaml``."""

    # Every value lives in conf/algorithm/magpo.yaml (BenchMARL's rule: the dataclass is the
    # schema, the YAML holds the defaults); __post_init__ checks them.
    delta: Any = MISSING  # a number > 1, or "auto"
    delta_target_kl: float = MISSING
    delta_bounds: List[float] = MISSING
    aux_coef: float = MISSING
    learner_kl: str = MISSING
    guider: str = MISSING
    guider_memory: str = MISSING
    guider_decay_scaling: float = MISSING
    guider_chunk: Optional[int] = MISSING
    guider_embed_dim: int = MISSING
    guider_heads: int = MISSING
    guider_layers: int = MISSING
    guider_lr: Optional[float] = MISSING
    guider_warmup_frames: int = MISSING
    agent_order: str = MISSING
    backtrack: bool = MISSING
    normalize_advantage: bool = MISSING
    clip_value: Optional[float] = MISSING
    backend: str = MISSING
    learner_update: str = MISSING

    def __post_init__(self):
        self.delta_schedule = None
        delta = self.delta
        if isinstance(delta, str):
            if delta != "auto":
                raise ValueError(f"algorithm.delta must be a number > 1 or 'auto', got {delta!r}")
            bounds = list(self.delta_bounds) if not isinstance(self.delta_bounds, (str, bytes)) else None
            if bounds is None or len(bounds) != 2:
                raise ValueError(f"algorithm.delta_bounds must be [low, high], got {self.delta_bounds!r}")
            try:
                self.delta_schedule = DeltaSchedule(target_kl=self.delta_target_kl, low=bounds[0], high=bounds[1])
            except ValueError as err:  # DeltaSchedule's messages start with the field's name
                raise ValueError(f"algorithm.{err}") from None
            delta = self.delta_schedule.start
        try:  # the loss options are validated here, once, and travel to the kernel as this object
            self.loss_options = LossOptions(
                delta=delta, clip_epsilon=self.clip_epsilon, aux_coef=self.aux_coef, learner_kl=self.learner_kl,
                backend=self.backend,
            )
        except (TypeError, ValueError) as err:  # LossOptions' messages start with the field's name
            raise type(err)(f"algorithm.{err}") from None
        if self.guider not in GUIDER_KINDS:
            raise ValueError(f"algorithm.guider must be one of {GUIDER_KINDS}, got {self.guider!r}")
        if self.guider_memory not in GUIDER_MEMORIES:
            raise ValueError(f"algorithm.guider_memory must be one of {GUIDER_MEMORIES}, got {self.guider_memory!r}")
        if self.guider_memory != "none" and self.guider != "transformer":
            raise ValueError(
                f"algorithm.guider_memory={self.guider_memory} needs algorithm.guider=transformer, got {self.guider!r}"
            )
        scaling = self.guider_decay_scaling
        if isinstance(scaling, bool) or not isinstance(scaling, (int, float)) or not 0 < scaling <= 1:
            raise ValueError(f"algorithm.guider_decay_scaling must be in (0, 1] (the retention's decays stay in (0, 1)), "
                             f"got {scaling!r}")
        chunk = self.guider_chunk
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise ValueError(f"algorithm.guider_chunk must be an integer >= 1 (steps) or null (the whole rollout), got {chunk!r}")
        if self.agent_order not in AGENT_ORDERS:
            raise ValueError(f"algorithm.agent_order must be one of {AGENT_ORDERS}, got {self.agent_order!r}")
        if self.backtrack and self.guider not in ("anchored", "residual"):
            raise ValueError(
                f"algorithm.backtrack=true needs algorithm.guider=anchored or residual (a guider that can be reset "
                f"exactly to the learner), got guider={self.guider!r}"
            )
        for name in ("guider_embed_dim", "guider_heads", "guider_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"algorithm.{name} must be an integer >= 1, got {value!r}")
        if (self.guider == "transformer" or self.guider_memory == "retention") and self.guider_embed_dim % self.guider_heads:
            raise ValueError(
                f"algorithm.guider_embed_dim ({self.guider_embed_dim}) must be divisible by algorithm.guider_heads "
                f"({self.guider_heads})"
            )
        if self.guider_lr is not None and not (isinstance(self.guider_lr, (int, float)) and 0 < self.guider_lr < 1):
            raise ValueError(f"algorithm.guider_lr must be in (0, 1) or null (the experiment's lr), got {self.guider_lr!r}")
        warmup = self.guider_warmup_frames
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"algorithm.guider_warmup_frames must be an integer >= 0 (0: off), got {warmup!r}")
        if warmup and self.guider != "anchored":
            # only the anchored guider is the learner while its correction is held at zero
            raise ValueError(
                f"algorithm.guider_warmup_frames > 0 needs algorithm.guider=anchored (the guider that equals the "
                f"learner while it is not trained), got guider={self.guider!r}"
            )
        if self.clip_value is not None and not self.clip_value > 0:
            raise ValueError(f"algorithm.clip_value must be > 0 or null, got {self.clip_value}")
        if self.learner_update not in LEARNER_UPDATES:
            raise ValueError(f"algorithm.learner_update must be one of {LEARNER_UPDATES}, got {self.learner_update!r}")
        check_ppo_fields(self)

    def check_experiment(self, config) -> None:
        """Sequential learners need one learner per agent, and a retention chunk must divide the
        rollout (called before anything is built)."""
        if self.learner_update == "sequential":
            refuse_shared_actors(config, "algorithm.learner_update=sequential")
        if self.guider_memory == "retention" and self.guider_chunk is not None:
            rollout = config.on_policy_collected_frames_per_batch // config.on_policy_n_envs_per_worker
            if rollout % self.guider_chunk:
                raise ValueError(
                    f"algorithm.guider_chunk ({self.guider_chunk} steps) must divide the rollout length, "
                    f"experiment.on_policy_collected_frames_per_batch / experiment.on_policy_n_envs_per_worker = {rollout} steps"
                )

    def check_model(self, model_config: ModelConfig) -> None:
        """Refuse a learner model the guider cannot serve (called before anything is built).

        The anchored and residual guiders run the learner's network at collection on single
        steps, without the hidden state a recurrent learner carries: their log-probs would not
        be the ones training recomputes over the rollout."""
        if self.guider != "transformer" and model_config.is_rnn:
            raise ValueError(
                f"algorithm.guider={self.guider} builds on the learner's network, which cannot be recurrent "
                f"(model={type(model_config).__name__}); use a feed-forward model (model=layers/mlp) or "
                f"algorithm.guider=transformer"
            )

    def get_algorithm(self, experiment) -> Algorithm:
        """The algorithm, given the validated :class:`LossOptions` and :class:`DeltaSchedule` in
        place of the fields they were built from (``clip_epsilon`` also stays: MAPPO's
        constructor takes it)."""
        consumed = ("delta", "delta_target_kl", "delta_bounds", "aux_coef", "learner_kl", "backend")
        fields = {k: v for k, v in self.__dict__.items() if k not in consumed}
        return self.associated_class()(**fields, experiment=experiment)

    @staticmethod
    def associated_class() -> Type[Algorithm]:
        return Magpo


@dataclass
class CtdsConfig(MagpoConfig):
    """Configuration of :class:`Ctds` (same fields as :class:`MagpoConfig`)."""

    @staticmethod
    def associated_class() -> Type[Algorithm]:
        return Ctds
