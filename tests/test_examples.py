"""The plain-TorchRL example trains end to end (tiny sizes)."""

import importlib.util
import math
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "magpo_vmas_torchrl.py"


def load_example():
    spec = importlib.util.spec_from_file_location("magpo_vmas_torchrl", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_example_trains_and_evaluates_the_learner():
    history = load_example().main(
        ["--frames", "240", "--frames-per-batch", "120", "--n-envs", "4", "--max-steps", "30", "--minibatch", "60",
         "--hidden", "16", "--epochs", "1"]
    )
    assert [frames for frames, _ in history] == [120, 240]
    assert all(math.isfinite(ret) for _, ret in history)


def test_example_rejects_bad_sizes(capsys):
    with pytest.raises(SystemExit):
        load_example().main(["--minibatch", "5000", "--frames-per-batch", "3000"])
    assert "--minibatch" in capsys.readouterr().err
