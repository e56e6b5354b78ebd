"""``MagpoExperiment``: BenchMARL's Experiment with the evaluation, checkpoint and backtracking
behaviour MAGPO needs, and the checks and resume guarantees every run deserves
(docs/design.md, "BenchMARL").

* Evaluation: BenchMARL evaluates ``experiment.policy``, the collection policy. For MAGPO that
  is the guider, so an algorithm that offers ``get_learner_policy()`` is evaluated with it: every
  ``eval/...`` number comes from the decentralized learners (each agent on its own observation),
  and the policy of its ``get_guider_policy()`` (the centralized-execution reference) is logged
  under ``eval_guider/...``. Other algorithms evaluate as in BenchMARL.
  :meth:`MagpoExperiment.evaluate` prints its numbers and writes them to
  ``evaluations/<checkpoint>.json``, not into the training logs.
* Up-front checks: every ``experiment.*`` value is range-checked, every ``task.*`` value of a
  VMAS or PettingZoo task is tried on a throwaway environment (:mod:`benchmarl_ext.task_checks`),
  and a checkpoint to resume is read and validated before any environment of the run, logger or
  file is touched.
* Checkpoints hold every optimizer's state and every global random generator's state, and are
  written atomically. Exact resume: at each periodic checkpoint every environment (collection
  and evaluation) is reseeded from the torch generator and reset, and a resumed run does the
  same from the restored generators, so a run resumed from iteration k equals the straight
  run bit for bit (same machine, versions and thread count). Its csv logs drop the rows written
  after the checkpoint, so steps are not repeated.
* An algorithm's own schedules (MAGPO's: :mod:`benchmarl_ext.magpo_hooks`) are callbacks that
  it hands over through ``training_hooks()``; they are added once the algorithm is built.
* An algorithm that updates its agents one at a time (HAPPO, A2PO, MAGPO's sequential learners)
  offers ``agent_by_agent_update(group)``: that group's optimizer calls go through it
  (:mod:`benchmarl_ext.agent_by_agent`).
* ``compile_networks=true``: ``torch.compile`` of every feed-forward network of the policies and
  critics (:func:`compile_feed_forward`), for any algorithm.
* The absolute metric (``absolute_metric_episodes=N``, the field's protocol, Gorsane et al. 2022):
  the parameters of the best evaluation seen during training (for MAGPO the learner's) are kept,
  in checkpoints too, and at the end of the run evaluated again on N episodes; logged as
  ``absolute/...`` and written to the run's json as its ``absolute_metrics``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import sys
from pathlib import Path
from typing import Dict, List

import torch
from benchmarl.environments import Task
from benchmarl.experiment import Experiment
from benchmarl.experiment.callback import Callback
from benchmarl.utils import seed_everything
from tensordict import TensorDictBase

from benchmarl_ext.checkpoints import read_checkpoint, rng_state, save_atomically, set_rng_state, trim_scalar_logs
from benchmarl_ext.checks import check_experiment_config, check_ppo_fields
from benchmarl_ext.plots import area_under_curve
from benchmarl_ext.task_checks import check_task


class EvaluationCurve(Callback):
    """Keeps ``(total frames, mean evaluation return)`` of every evaluation of the policy BenchMARL
    evaluates (for MAGPO, the learner): the objective of a hyperparameter sweep."""

    def __init__(self):
        super().__init__()
        self.points: List[tuple[int, float]] = []

    def on_evaluation_end(self, rollouts: List[TensorDictBase]) -> None:
        mean_return = mean_episode_return(rollouts, self.experiment.group_map).mean().item()
        self.points.append((self.experiment.total_frames, mean_return))

    def objective(self, kind: str) -> float:
        """``final``: the last evaluation's return; ``auc``: the trapezoid mean over frames."""
        if not self.points:
            raise RuntimeError("no evaluation ran: set experiment.evaluation=true for a sweep objective")
        return self.points[-1][1] if kind == "final" else area_under_curve(self.points)


class BestEvaluation(Callback):
    """Keeps the parameters of the evaluated policy (for MAGPO, the learner) at its best evaluation
    so far (mean return over episodes and groups): what the absolute metric evaluates again."""

    def __init__(self):
        super().__init__()
        self.mean_return = -float("inf")
        self.total_frames: int | None = None
        self.policy_state: Dict[str, torch.Tensor] | None = None

    def on_evaluation_end(self, rollouts: List[TensorDictBase]) -> None:
        mean_return = mean_episode_return(rollouts, self.experiment.group_map).mean().item()
        if mean_return > self.mean_return:
            self.mean_return, self.total_frames = mean_return, self.experiment.total_frames
            self.policy_state = copy.deepcopy(self.experiment.policy.state_dict())

    def state_dict(self) -> Dict:
        return {"mean_return": self.mean_return, "total_frames": self.total_frames, "policy": self.policy_state}

    def load_state_dict(self, state: Dict) -> None:
        self.mean_return, self.total_frames = state["mean_return"], state["total_frames"]
        self.policy_state = state["policy"]


@contextlib.contextmanager
def random_streams_kept():
    """Run the block, then put back every random stream a training run draws from: the global
    generators (BenchMARL's own evaluation keeps those too) and VMAS's, which all VMAS environments
    of a process share (the class attribute ``Environment.vmas_random_state``): without it, a reset
    of the test environment would move the training environments' next initial states."""
    state = rng_state()
    vmas_environment = sys.modules.get("vmas.simulator.environment.environment")
    shared = vmas_environment.Environment.vmas_random_state if vmas_environment is not None else None
    vmas_state = list(shared) if shared is not None else None
    try:
        yield
    finally:
        set_rng_state(state)
        if shared is not None:
            shared[:] = vmas_state


def mean_episode_return(rollouts: List[TensorDictBase], groups) -> torch.Tensor:
    """Per-episode return averaged over the agent groups, ``[n_episodes]``: BenchMARL's json ``return``."""
    return torch.stack([episode_returns(rollouts, group) for group in groups]).mean(0)


def episode_returns(rollouts: List[TensorDictBase], group: str) -> torch.Tensor:
    """Per-episode return of ``group`` as BenchMARL's evaluation logs it: each rollout cut at its
    first done, rewards summed over time and averaged over the group's agents."""
    returns = []
    for rollout in rollouts:
        done = rollout.get(("next", "done")).reshape(rollout.batch_size[0], -1).any(-1)
        first = done.nonzero()
        if len(first):
            rollout = rollout[: first[0, 0] + 1]
        reward_key = ("next", group, "reward")
        reward = rollout.get(reward_key) if reward_key in rollout.keys(True) else rollout.get(("next", "reward"))
        returns.append(reward.sum(0).mean())
    return torch.stack(returns)


def _is_feed_forward(module: torch.nn.Module) -> bool:
    """An ``nn.Sequential`` (torchrl's ``MLP`` is one) of Linear layers and element-wise layers only."""
    elementwise = (torch.nn.Linear, torch.nn.LayerNorm, torch.nn.Dropout, torch.nn.Identity)
    return isinstance(module, torch.nn.Sequential) and len(module) > 0 and all(
        isinstance(layer, elementwise) or type(layer).__module__ == "torch.nn.modules.activation" for layer in module
    )


def compile_feed_forward(networks: List[torch.nn.Module]) -> int:
    """``torch.compile`` in place every feed-forward stack inside ``networks`` (each stack once)
    and return how many there were. ``nn.Module.compile`` keeps the parameters and their
    state_dict keys, so optimizers, TorchRL's functional parameter swaps and checkpoints are
    unaffected. The tensor arithmetic of those stacks (forward and backward) is what compiles
    without graph breaks; the TensorDict plumbing around them stays eager."""
    seen = set()
    for network in networks:
        for module in network.modules():
            if id(module) not in seen and _is_feed_forward(module):
                seen.add(id(module))
                module.compile()
    return len(seen)


class NonFiniteTrainingLoss(RuntimeError):
    """A training loss term came out NaN or infinite; the message names the group and the term."""


def _finite_losses_hook(group: str):
    """A forward hook for a group's loss module (any algorithm whose loss does not check itself, as
    MAGPO's does, with the cause it can see): the run stops at the first non-finite ``loss_*``
    term, naming it, before it reaches an optimizer, instead of training on NaN. One host sync
    per minibatch."""

    def hook(module, args, out) -> None:
        terms = {key: out.get(key) for key in out.keys() if isinstance(key, str) and key.startswith("loss_")}
        if not terms or torch.cat([v.detach().float().flatten() for v in terms.values()]).isfinite().all():
            return
        bad = ", ".join(f"{key}={value.tolist()}" for key, value in terms.items() if not torch.isfinite(value).all())
        raise NonFiniteTrainingLoss(
            f"group {group}: the training loss is not finite ({bad}); the run stops here rather than train on it. "
            "Extreme settings (a large experiment.lr, algorithm.entropy_coef or algorithm.aux_coef) are the usual cause."
        )

    return hook


class MagpoExperiment(Experiment):
    """A BenchMARL ``Experiment`` that any algorithm can use; MAGPO requires it.

    To compose its configuration with Hydra from Python (``magpo``/``ctds`` algorithms,
    ``coordsum/*`` tasks), call :func:`benchmarl_ext.registration.register` first; the
    ``benchmarl`` command does.
    """

    evaluates_learner = True  # what Magpo checks: eval/... comes from the decentralized learner

    def __init__(self, task, algorithm_config, model_config, seed, config, critic_model_config=None, callbacks=None,
                 absolute_metric_episodes: int = 0, compile_networks: bool = False):
        check_experiment_config(config, algorithm_config.on_policy())
        check_ppo_fields(algorithm_config)  # BenchMARL's MAPPO and IPPO check none of theirs
        if not isinstance(compile_networks, bool):
            raise ValueError(f"compile_networks must be true or false, got {compile_networks!r}")
        self.compile_networks = compile_networks
        if isinstance(absolute_metric_episodes, bool) or not isinstance(absolute_metric_episodes, int) or absolute_metric_episodes < 0:
            raise ValueError(
                f"absolute_metric_episodes must be an integer >= 0 (0: off; the protocol's 10 x experiment."
                f"evaluation_episodes), got {absolute_metric_episodes!r}"
            )
        if absolute_metric_episodes and not config.evaluation:
            raise ValueError("absolute_metric_episodes > 0 needs experiment.evaluation=true (it re-evaluates the best evaluation)")
        self.absolute_metric_episodes = absolute_metric_episodes
        self._trained = False  # set when this process runs the training loop (the absolute metric follows it)
        check_model = getattr(algorithm_config, "check_model", None)  # MAGPO's guider refuses some learners
        if check_model is not None:
            check_model(model_config)
        check_experiment = getattr(algorithm_config, "check_experiment", None)  # e.g. per-agent actors
        if check_experiment is not None:
            check_experiment(config)
        task = task.get_task() if isinstance(task, Task) else task
        with random_streams_kept():  # the probe environment draws from no stream the run uses
            check_task(task, config.prefer_continuous_actions and task.supports_continuous_actions())
        self._run_identity = {
            "algorithm": algorithm_config.associated_class().__name__.lower(),
            "task": f"{task.env_name().lower()}/{task.name.lower()}",
        }
        # Read and validated before BenchMARL builds (and writes) anything.
        self._checkpoint = (
            read_checkpoint(config.restore_file, map_location=config.restore_map_location, **self._run_identity)
            if config.restore_file is not None
            else None
        )
        self._resume_rng = None
        callbacks = list(callbacks or [])
        self._best = BestEvaluation() if absolute_metric_episodes else None
        if self._best is not None:
            callbacks.append(self._best)
        super().__init__(task, algorithm_config, model_config, seed, config, critic_model_config, callbacks)

    def _setup_algorithm(self):
        super()._setup_algorithm()
        if self.compile_networks:
            # every algorithm's networks alike (MAPPO's too), so that comparisons stay fair
            # TorchRL losses hold their networks as plain attributes (their parameters are
            # registered apart, for the functional calls): actor, critic, value, mixer networks...
            networks = [v for loss in self.losses.values() for v in vars(loss).values() if isinstance(v, torch.nn.Module)]
            compile_feed_forward(networks)  # the collection and evaluation policies are these modules too
        for group, loss in self.losses.items():
            if not getattr(loss, "check_finite", False):  # MAGPO's loss checks itself, with the cause
                loss.register_forward_hook(_finite_losses_hook(group))
        # The algorithm's own schedules. BenchMARL pickled the run's callbacks before building the
        # algorithm (_setup_name), so these are not among them and a reloaded run is not given them twice.
        training_hooks = getattr(self.algorithm, "training_hooks", None)
        for hook in training_hooks() if training_hooks is not None else []:
            hook.experiment = self
            self.callbacks.append(hook)

    def _optimizer_loop(self, group: str) -> TensorDictBase:
        agent_by_agent = getattr(self.algorithm, "agent_by_agent_update", None)
        update = agent_by_agent(group) if agent_by_agent is not None else None
        if update is None:
            return super()._optimizer_loop(group)
        slots = self.config.n_optimizer_steps(self.on_policy) * -(
            -self.config.train_batch_size(self.on_policy) // self.config.train_minibatch_size(self.on_policy))
        return update.optimizer_call(lambda: super(MagpoExperiment, self)._optimizer_loop(group),
                                     self.replay_buffers[group], self.optimizers[group], slots)

    def _deployed_policy(self):
        """The policy that ``eval/...`` evaluates: the algorithm's decentralized learner where it
        collects with another policy (``get_learner_policy``), else the collection policy."""
        get_learner_policy = getattr(self.algorithm, "get_learner_policy", None)
        return get_learner_policy() if get_learner_policy is not None else self.policy

    # ------------------------------------------------------------------ evaluation

    def _evaluation_loop(self):
        collection_policy = self.policy
        self.policy = self._deployed_policy()
        try:
            super()._evaluation_loop()  # logs eval/... (for MAGPO: the learner)
        finally:
            self.policy = collection_policy
        get_guider_policy = getattr(self.algorithm, "get_guider_policy", None)
        if get_guider_policy is not None:
            self._evaluate_guider(get_guider_policy())

    @torch.no_grad()
    def _rollouts(self, policy, episodes: int) -> List[TensorDictBase]:
        """At least ``episodes`` evaluation episodes of ``policy`` on the test environment, as
        BenchMARL's evaluation runs them (its exploration type; a vectorized environment gives
        ``evaluation_episodes`` per rollout, so ``episodes`` is rounded up to a multiple)."""
        from torchrl.envs.utils import ExplorationType, set_exploration_type

        exploration = (
            ExplorationType.DETERMINISTIC if self.config.evaluation_deterministic_actions else ExplorationType.RANDOM
        )
        rollouts = []
        with set_exploration_type(exploration):
            while len(rollouts) < episodes:
                if self.test_env.batch_size == ():
                    rollouts.append(self.test_env.rollout(
                        max_steps=self.max_steps, policy=policy, auto_cast_to_device=True, break_when_any_done=True,
                    ))
                else:
                    rollouts += self.test_env.rollout(
                        max_steps=self.max_steps, policy=policy, auto_cast_to_device=True, break_when_any_done=False,
                    ).unbind(0)
        return rollouts

    @torch.no_grad()
    def _evaluate_guider(self, guider) -> None:
        """Roll out the policy ``guider`` (centralized execution) and log it under eval_guider/.... A
        diagnostic: it draws from no random stream that training uses (:func:`random_streams_kept`),
        so a run trains as it would without it."""
        with random_streams_kept():
            rollouts = self._rollouts(guider, self.config.evaluation_episodes)
        to_log = {}
        group_means = []
        for group in self.group_map:
            returns = episode_returns(rollouts, group)
            to_log[f"eval_guider/{group}/reward/episode_reward_mean"] = returns.mean().item()
            group_means.append(returns.mean())
        to_log["eval_guider/reward/episode_reward_mean"] = torch.stack(group_means).mean().item()
        self.logger.log(to_log, step=self.n_iters_performed)

    def close(self) -> None:
        """The absolute metric, once, when this process has trained the run to its end (not after
        ``benchmarl evaluate`` or an interrupted run); then BenchMARL's close."""
        finished = self.n_iters_performed >= self.config.get_max_n_iters(self.on_policy)
        if self._trained and finished and self._best is not None and self._best.policy_state is not None:
            self._trained = False  # once
            self.absolute_metric()
        super().close()

    @torch.no_grad()
    def absolute_metric(self) -> Dict[str, float]:
        """Evaluate the parameters of the best evaluation so far on ``absolute_metric_episodes``
        episodes (the evaluated policy: for MAGPO the learner), then put the current parameters
        back. Logs ``absolute/reward/episode_reward_mean`` (and per group) and the best
        evaluation's frame count at the current iteration, and writes the per-episode returns to
        the run's json (``experiment.create_json``) as its ``absolute_metrics``, in place of
        BenchMARL's entry there (the largest single-episode return seen, not the protocol's metric)."""
        policy = self._deployed_policy()
        current = copy.deepcopy(policy.state_dict())
        policy.load_state_dict(self._best.policy_state)
        try:
            rollouts = self._rollouts(policy, self.absolute_metric_episodes)
        finally:
            policy.load_state_dict(current)
        per_group = {group: episode_returns(rollouts, group) for group in self.group_map}
        returns = mean_episode_return(rollouts, self.group_map)
        to_log = {f"absolute/{group}/reward/episode_reward_mean": r.mean().item() for group, r in per_group.items()}
        to_log["absolute/reward/episode_reward_mean"] = returns.mean().item()
        to_log["absolute/best_evaluation_frames"] = self._best.total_frames
        self.logger.log(to_log, step=self.n_iters_performed)
        writer = self.logger.json_writer
        if writer is not None:
            metrics = {f"{group}_return": r.tolist() for group, r in per_group.items()}
            # best_step_count marks the entry as this metric (benchmarl_ext/protocol.py reads it)
            writer.run_data["absolute_metrics"] = {**metrics, "return": returns.tolist(),
                                                   "best_step_count": [self._best.total_frames]}
            partial = writer.path.with_name(writer.path.name + ".partial")
            partial.write_text(json.dumps(writer.data, indent=4))
            partial.replace(writer.path)
        print(f"absolute metric: {to_log['absolute/reward/episode_reward_mean']:.6g} over {len(rollouts)} episodes of "
              f"the best evaluation (at {self._best.total_frames} frames, {self._best.mean_return:.6g})")
        return to_log

    def evaluate(self) -> Dict[str, float]:
        """One evaluation of the current (restored) policies; prints the numbers and writes them to
        ``<run>/evaluations/<checkpoint name>.json``. The training logs are not touched."""
        recorder = _Recorder()
        loggers, json_writer = self.logger.loggers, self.logger.json_writer
        self.logger.loggers, self.logger.json_writer = [recorder], None
        try:
            seed_everything(self.seed)
            self._evaluation_loop()
        finally:
            self.logger.loggers, self.logger.json_writer = loggers, json_writer
        results = {name: value for name, value in recorder.values.items() if name.startswith("eval")}
        source = Path(self.config.restore_file).stem if self.config.restore_file else f"iteration_{self.n_iters_performed}"
        out = self.folder_name / "evaluations" / f"{source}.json"
        out.parent.mkdir(exist_ok=True)
        record = {"checkpoint": self.config.restore_file, "iteration": self.n_iters_performed,
                  "total_frames": self.total_frames, "seed": self.seed, **results}
        partial = out.with_name(out.name + ".partial")
        partial.write_text(json.dumps(record, indent=2))
        partial.replace(out)
        policies = "learner" if hasattr(self.algorithm, "get_learner_policy") else "policy"
        print(f"evaluation of {source} ({self.config.evaluation_episodes} episodes, {policies}):")
        for name, value in results.items():
            print(f"  {name} = {value:.6g}")
        print(f"written to {out}")
        return results

    # ------------------------------------------------------------------ checkpoints and resume

    def _setup_name(self) -> None:
        # BenchMARL rewrites the run's config.pkl when a run is restored; keep the original so a
        # resume or an evaluation that fails later changes no file of the run.
        original = None
        if self.config.restore_file is not None:
            pickled = Path(self.config.restore_file).resolve().parent.parent / "config.pkl"
            original = (pickled, pickled.read_bytes()) if pickled.is_file() else None
        super()._setup_name()
        if original is not None and (self.folder_name / "config.pkl").resolve() == original[0]:
            original[0].write_bytes(original[1])

    def state_dict(self):
        state = super().state_dict()
        state["optimizers"] = {
            group: {name: optimizer.state_dict() for name, optimizer in optimizers.items()}
            for group, optimizers in self.optimizers.items()
        }
        state["rng"] = rng_state()
        state["run"] = dict(self._run_identity, groups=list(self.group_map), seed=self.seed)
        if self._best is not None:  # the absolute metric's best parameters so far
            state["best_evaluation"] = self._best.state_dict()
        return state

    def load_state_dict(self, state_dict: Dict) -> None:
        super().load_state_dict(state_dict)
        for group, optimizers in state_dict["optimizers"].items():
            for name, optimizer_state in optimizers.items():
                self.optimizers[group][name].load_state_dict(optimizer_state)
        self._resume_rng = state_dict["rng"]
        if self._best is not None and "best_evaluation" in state_dict:
            self._best.load_state_dict(state_dict["best_evaluation"])

    def _load_experiment(self) -> "MagpoExperiment":
        state, self._checkpoint = self._checkpoint, None  # read and validated in __init__
        saved_groups = state["run"]["groups"]
        if saved_groups != list(self.group_map):
            raise ValueError(
                f"checkpoint {self.config.restore_file}: agent groups {saved_groups}, this run has {list(self.group_map)}"
            )
        self.load_state_dict(state)
        trim_scalar_logs(self.folder_name / self.name, first_step=self.n_iters_performed)
        return self

    def _collection_loop(self):
        self._trained = True
        if self._resume_rng is not None:  # continue the generators exactly where the checkpoint left them
            set_rng_state(self._resume_rng)
            self._resume_rng = None
            self._restart_environments()
        super()._collection_loop()

    def _restart_environments(self) -> None:
        """Reseed every environment from the torch generator and reset the collection ones: the
        state a resumed run can rebuild exactly, since environments do not save theirs."""
        if self.config.collect_with_grad:
            return  # BenchMARL keeps that path's environment state in a local variable
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        self.test_env.set_seed(self.collector.set_seed(seed))
        self.collector.reset()

    def _save_experiment(self) -> None:
        """BenchMARL's checkpointing (same folder, names and retention), written atomically,
        followed by the environment restart that resuming from it repeats."""
        checkpoint = self.folder_name / "checkpoints" / f"checkpoint_{self.total_frames}.pt"
        if self._checkpointed_files and self._checkpointed_files[-1] == checkpoint:
            return  # the final save right after a periodic one at the same frame count
        if self.config.keep_checkpoints_num is not None:
            while len(self._checkpointed_files) >= self.config.keep_checkpoints_num:
                self._checkpointed_files.popleft().unlink(missing_ok=False)
        checkpoint.parent.mkdir(parents=False, exist_ok=True)
        save_atomically(self.state_dict(), checkpoint)
        self._checkpointed_files.append(checkpoint)
        if self.n_iters_performed < self.config.get_max_n_iters(self.on_policy):
            self._restart_environments()


class _Recorder:
    """A torchrl-logger stand-in that keeps the last value of every scalar (for ``evaluate``)."""

    def __init__(self):
        self.values: Dict[str, float] = {}

    def log_scalar(self, name: str, value, step=None) -> None:
        self.values[name] = float(value)
