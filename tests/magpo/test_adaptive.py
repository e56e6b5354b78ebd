"""delta: auto, the rule: tighten above the target KL, loosen below it, hold near it, stay in bounds."""

import math

import pytest

from magpo import DeltaSchedule


def test_rule_tightens_loosens_and_holds():
    schedule = DeltaSchedule(target_kl=0.01, low=1.05, high=4.0, factor=2.0)
    assert schedule.start == 1.5
    assert schedule.next_delta(1.5, 0.02) == pytest.approx(1.25)  # gap too wide: (delta - 1) / 2
    assert schedule.next_delta(1.5, 0.005) == pytest.approx(2.0)  # gap too narrow: (delta - 1) * 2
    assert schedule.next_delta(1.5, 0.01) == 1.5  # within [target / 1.5, 1.5 x target]
    assert schedule.next_delta(1.5, 0.0149) == 1.5 and schedule.next_delta(1.5, 0.0067) == 1.5


def test_bounds_hold_and_delta_stays_above_one():
    schedule = DeltaSchedule(target_kl=0.01, low=1.1, high=3.0)
    delta = schedule.start
    for _ in range(50):
        delta = schedule.next_delta(delta, math.inf)
    assert delta == 1.1
    for _ in range(50):
        delta = schedule.next_delta(delta, 0.0)
    assert delta == 3.0
    assert DeltaSchedule(low=2.0, high=3.0).start == 2.0  # the default start moved into the bounds


@pytest.mark.parametrize(
    "kwargs, field",
    [(dict(target_kl=0.0), "delta_target_kl"), (dict(target_kl=math.nan), "delta_target_kl"),
     (dict(low=1.0), "delta_bounds"), (dict(low=3.0, high=2.0), "delta_bounds"), (dict(high=math.inf), "delta_bounds"),
     (dict(start=5.0), "delta start"), (dict(factor=1.0), "delta factor")],
)
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        DeltaSchedule(**kwargs)
