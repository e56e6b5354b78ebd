"""The demo command's Hydra config (shipped YAML) and its run."""

import math

import pytest
from hydra import compose, initialize_config_module

from benchmarl_ext import demo


def compose_demo(overrides):
    with initialize_config_module(config_module="benchmarl_ext.conf", version_base=None):
        return compose(config_name="demo", overrides=overrides)


def test_shipped_config_holds_both_presets():
    cfg = compose_demo([])
    assert cfg.methods.magpo.delta == 1.5 and cfg.methods.magpo.aux_coef == 1.0
    assert math.isinf(cfg.methods.ctds.delta) and cfg.methods.ctds.aux_coef == 0.0


def test_demo_run_prints_and_returns_learner_success(capsys):
    means = demo.run(compose_demo(["iterations=40", "seeds=1", "~methods.ctds"]))
    assert means["magpo"] >= 0.95
    assert "mean learner success" in capsys.readouterr().out


@pytest.mark.parametrize("override, name", [("iterations=0", "iterations"), ("seeds=-1", "seeds")])
def test_bad_values_stop_before_training(override, name):
    with pytest.raises(ValueError, match=name):
        demo.run(compose_demo([override]))


def test_bad_loss_value_names_the_field():
    with pytest.raises(ValueError, match="delta"):
        demo.run(compose_demo(["iterations=1", "seeds=1", "methods.magpo.delta=0.9"]))


@pytest.mark.slow
def test_the_command_writes_no_file(tmp_path):
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "benchmarl_ext.demo", "iterations=1", "seeds=1"], cwd=tmp_path, check=True,
                   capture_output=True)
    assert list(tmp_path.iterdir()) == []
