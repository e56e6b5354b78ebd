"""``MagpoExperiment``: BenchMARL's Experiment with the evaluation, checkpoint and backtracking
behaviour MAGPO needs (docs/design.md, "BenchMARL").

* Evaluation: BenchMARL evaluates ``experiment.policy``, the collection policy. For MAGPO that
  is the guider, so here every ``eval/...`` number comes from the decentralized learners (each
  agent on its own observation), and the guider's own evaluation (the centralized-execution
  reference) is logged under ``eval_guider/...``. Other algorithms evaluate as in BenchMARL.
* Checkpoints also hold every optimizer's state (BenchMARL's do not, so a resumed run would
  restart Adam's moments) and are written atomically (temporary file, then rename).
* Backtracking (``algorithm.backtrack=true``): after each group's optimizer steps the residual
  guider is reset to the learner, through the public ``on_train_end`` callback.
"""

from __future__ import annotations

import os
from typing import Dict, List

import torch
from benchmarl.experiment import Experiment
from benchmarl.experiment.callback import Callback
from tensordict import TensorDictBase

from benchmarl_ext.algorithm import Magpo


class GuiderBacktrack(Callback):
    """Resets a residual guider to its learner after every training iteration (paper step 4)."""

    def on_train_end(self, training_td: TensorDictBase, group: str) -> None:
        algorithm = self.experiment.algorithm
        if isinstance(algorithm, Magpo) and algorithm.backtrack_enabled:
            algorithm.backtrack(group)


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


class MagpoExperiment(Experiment):
    """A BenchMARL ``Experiment`` that any algorithm can use; MAGPO requires it.

    To compose its configuration with Hydra from Python (``magpo``/``ctds`` algorithms,
    ``coordsum/*`` tasks), call :func:`benchmarl_ext.registration.register` first; the
    ``benchmarl`` command does.
    """

    evaluates_learner = True  # what Magpo checks: eval/... comes from the decentralized learner

    def __init__(self, *args, callbacks=None, **kwargs):
        callbacks = list(callbacks or [])
        if not any(isinstance(c, GuiderBacktrack) for c in callbacks):
            callbacks.append(GuiderBacktrack())
        super().__init__(*args, callbacks=callbacks, **kwargs)

    def _setup_algorithm(self):
        super()._setup_algorithm()
        if isinstance(self.algorithm, Magpo) and self.algorithm.guider_lr is not None:
            # BenchMARL gives every optimizer experiment.lr; the guider may learn at its own rate.
            for optimizers in self.optimizers.values():
                for param_group in optimizers["loss_guider"].param_groups:
                    param_group["lr"] = self.algorithm.guider_lr

    # ------------------------------------------------------------------ evaluation

    def _evaluation_loop(self):
        if not isinstance(self.algorithm, Magpo):
            return super()._evaluation_loop()
        collection_policy = self.policy
        self.policy = self.algorithm.get_learner_policy()
        try:
            super()._evaluation_loop()  # logs eval/... for the learner
        finally:
            self.policy = collection_policy
        self._evaluate_guider()

    @torch.no_grad()
    def _evaluate_guider(self) -> None:
        """Roll out the guider (centralized execution) and log it under eval_guider/...."""
        from torchrl.envs.utils import ExplorationType, set_exploration_type

        exploration = (
            ExplorationType.DETERMINISTIC if self.config.evaluation_deterministic_actions else ExplorationType.RANDOM
        )
        with set_exploration_type(exploration):
            if self.test_env.batch_size == ():
                rollouts = [
                    self.test_env.rollout(
                        max_steps=self.max_steps, policy=self.algorithm.get_guider_policy(),
                        auto_cast_to_device=True, break_when_any_done=True,
                    )
                    for _ in range(self.config.evaluation_episodes)
                ]
            else:
                rollouts = list(
                    self.test_env.rollout(
                        max_steps=self.max_steps, policy=self.algorithm.get_guider_policy(),
                        auto_cast_to_device=True, break_when_any_done=False,
                    ).unbind(0)
                )
        to_log = {}
        group_means = []
        for group in self.group_map:
            returns = episode_returns(rollouts, group)
            to_log[f"eval_guider/{group}/reward/episode_reward_mean"] = returns.mean().item()
            group_means.append(returns.mean())
        to_log["eval_guider/reward/episode_reward_mean"] = torch.stack(group_means).mean().item()
        self.logger.log(to_log, step=self.n_iters_performed)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self):
        state = super().state_dict()
        state["optimizers"] = {
            group: {name: optimizer.state_dict() for name, optimizer in optimizers.items()}
            for group, optimizers in self.optimizers.items()
        }
        return state

    def load_state_dict(self, state_dict: Dict) -> None:
        super().load_state_dict(state_dict)
        for group, optimizers in state_dict.get("optimizers", {}).items():
            for name, optimizer_state in optimizers.items():
                self.optimizers[group][name].load_state_dict(optimizer_state)

    def _save_experiment(self) -> None:
        """BenchMARL's checkpointing (same folder, names and retention), written atomically."""
        if self.config.keep_checkpoints_num is not None:
            while len(self._checkpointed_files) >= self.config.keep_checkpoints_num:
                self._checkpointed_files.popleft().unlink(missing_ok=False)
        folder = self.folder_name / "checkpoints"
        folder.mkdir(parents=False, exist_ok=True)
        checkpoint = folder / f"checkpoint_{self.total_frames}.pt"
        partial = checkpoint.with_name(checkpoint.name + ".partial")
        try:
            torch.save(self.state_dict(), partial)
            os.replace(partial, checkpoint)
        finally:
            partial.unlink(missing_ok=True)
        self._checkpointed_files.append(checkpoint)
