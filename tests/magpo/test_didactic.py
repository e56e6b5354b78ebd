"""The didactic game of the paper's Section 3, trained with MAGPOLoss."""

import math

import pytest
import torch

from magpo import LossOptions, didactic


def test_magpo_learner_solves_the_didactic_game():
    history = didactic.train(LossOptions(delta=1.5, aux_coef=1.0), iterations=40, seed=0)
    guider_success, learner_success = history[-1]
    assert learner_success >= 0.95
    assert history[0][1] < 0.2  # it starts near the random level (6/125 = 0.048)


def test_ctds_learner_lags_its_guider():
    # CTDS: the guider solves the game but its joint strategy does not factorize, so the
    # decentralized learner falls well short of it (the imitation gap of the paper's Section 3).
    guider_success, learner_success = didactic.train(LossOptions(delta=math.inf, aux_coef=0.0), iterations=40, seed=1)[-1]
    assert guider_success >= 0.95
    assert learner_success <= guider_success - 0.2


def test_distilling_the_papers_stochastic_teacher_succeeds_about_half_the_time():
    # the teacher always succeeds, yet its independent students can only match its marginals
    teacher_success = didactic.success_probability(didactic.stochastic_teacher_logits(didactic.JOINT))
    assert teacher_success == pytest.approx(1.0)
    assert didactic.distill_stochastic_teacher(iterations=300, seed=0) == pytest.approx(0.5, abs=0.05)


def test_success_probability_is_exact():
    uniform = torch.zeros(len(didactic.JOINT), didactic.AGENTS, didactic.ACTIONS)
    assert didactic.success_probability(uniform) == pytest.approx(6 / 125)  # permutations of 4+4+2 and 4+3+3


@pytest.mark.parametrize("kwargs, name", [(dict(iterations=0), "iterations"), (dict(batch=0), "batch"), (dict(lr=0.0), "lr")])
def test_bad_arguments(kwargs, name):
    args = dict(options=LossOptions(), iterations=1, seed=0)
    with pytest.raises(ValueError, match=name):
        didactic.train(**{**args, **kwargs})
