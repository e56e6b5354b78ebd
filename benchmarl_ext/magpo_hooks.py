"""MAGPO's schedules between and within training iterations, as BenchMARL callbacks that the
algorithm registers for itself (:meth:`benchmarl_ext.algorithm.Magpo.training_hooks`).

Each hook is built only when its option is on, from the algorithm's validated values, so none
of them asks what algorithm it serves. ``MagpoExperiment`` adds whatever hooks the algorithm
hands it right after building it (after BenchMARL pickled the run's callbacks, so a reloaded
run gets them from its algorithm again, not twice).

* :class:`GuiderLearningRate` (``algorithm.guider_lr``): the guider's optimizer at its own rate.
* :class:`GuiderWarmup` (``algorithm.guider_warmup_frames``): rate 0 for the first frames.
* :class:`PerEpochAgentOrder` (``algorithm.agent_order=per_epoch``): a training order per epoch.
* :class:`GuiderBacktrack` (``algorithm.backtrack=true``): the guider reset to the learner
  after each iteration (paper Section 4.1, step 4).
* :class:`AdaptiveDelta` (``algorithm.delta=auto``): the owner of the current delta, which it
  pushes into the loss, logs and checkpoints.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict

from benchmarl.experiment.callback import Callback
from tensordict import TensorDictBase

from magpo import DeltaSchedule

GUIDER_OPTIMIZER = "loss_guider"  # the key of the guider's optimizer in every group


def set_guider_rate(experiment, rate: float) -> None:
    """The learning rate of every group's guider optimizer."""
    for optimizers in experiment.optimizers.values():
        for param_group in optimizers[GUIDER_OPTIMIZER].param_groups:
            param_group["lr"] = rate


class GuiderLearningRate(Callback):
    """BenchMARL gives every optimizer ``experiment.lr``; the guider learns at ``rate`` instead."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def on_setup(self) -> None:
        set_guider_rate(self.experiment, self.rate)


class GuiderWarmup(Callback):
    """Before each training iteration, the guider's optimizer gets learning rate 0 while the frames
    collected so far (this batch included) are at most ``frames``, and ``rate`` after. The anchored
    guider's correction then stays exactly zero, so mu = pi, the learner's KL term is zero and its
    update is plain clipped PPO on its own samples. Adam's moments still accumulate while the rate
    is 0, so the first real steps are not cold-started. Set from the frame count at every batch, so
    a resumed run gets the same rates."""

    def __init__(self, frames: int, rate: float):
        super().__init__()
        self.frames, self.rate = frames, rate

    def on_batch_collected(self, batch: TensorDictBase) -> None:
        set_guider_rate(self.experiment, 0.0 if self.experiment.total_frames <= self.frames else self.rate)


class PerEpochAgentOrder(Callback):
    """A new random agent order for the guider's training log-probs at the start of every PPO
    epoch (the authors' scheme; collection keeps agent 0 first)."""

    def on_batch_collected(self, batch: TensorDictBase) -> None:
        self._steps = dict.fromkeys(self.experiment.train_group_map, 0)
        for group in self._steps:
            self.experiment.algorithm.draw_training_order(group)

    def on_train_step(self, batch: TensorDictBase, group: str) -> None:
        config, on_policy = self.experiment.config, self.experiment.on_policy
        per_epoch = -(-config.train_batch_size(on_policy) // config.train_minibatch_size(on_policy))
        self._steps[group] += 1
        if self._steps[group] % per_epoch == 0:
            self.experiment.algorithm.draw_training_order(group)


class GuiderBacktrack(Callback):
    """Resets the anchored or residual guider to its learner after every training iteration."""

    def on_train_end(self, training_td: TensorDictBase, group: str) -> None:
        self.experiment.algorithm.backtrack(group)


class AdaptiveDelta(Callback):
    """The current delta of every group: starts at ``schedule.start``; after each group's training
    iteration it logs the delta used (``train/<group>/delta``), sets the next one from the
    iteration's mean KL(guider || learner) and hands it to the group's loss. Checkpointed under
    the state's ``"delta"`` entry (``{group: delta}``)."""

    def __init__(self, schedule: DeltaSchedule):
        super().__init__()
        self.schedule = schedule
        self.current: Dict[str, float] = {}

    def on_setup(self) -> None:
        self.current = {group: self.schedule.start for group in self.experiment.group_map}
        self._hand_to_losses()

    def _hand_to_losses(self) -> None:
        for group, delta in self.current.items():
            loss = self.experiment.losses[group]
            loss.options = replace(loss.options, delta=delta)

    def on_train_end(self, training_td: TensorDictBase, group: str) -> None:
        used = self.current[group]
        self.current[group] = self.schedule.next_delta(used, training_td.get("learner_kl").mean().item())
        self._hand_to_losses()
        self.experiment.logger.log({f"train/{group}/delta": used}, step=self.experiment.n_iters_performed)

    def on_state_dict(self, state_dict: Dict[str, Any]) -> None:
        state_dict["delta"] = dict(self.current)

    def on_load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if "delta" not in state_dict:
            raise ValueError("algorithm.delta=auto: the checkpoint holds no delta to resume from (written with a fixed delta?)")
        self.current = dict(state_dict["delta"])
        self._hand_to_losses()
