"""A configuration fuzz, run as a new user would: two fields at a time drawn from valid, extreme
and invalid pools (``config_pools.py``), for every MAGPO guider, CTDS, MAT and MAPPO, on a
continuous (VMAS balance) and a discrete (CoordSum) task. Each example must train one tiny
iteration with finite losses, be refused before any environment is built with a message naming
a field, or stop at a non-finite loss with a message naming the term."""

from __future__ import annotations

import csv
import math
import re
import tempfile
from pathlib import Path

import pytest
from benchmarl.experiment import Experiment
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarl_ext.experiment import NonFiniteTrainingLoss
from config_pools import NOT_FUZZED, POOLS
from configs import build_experiment, compose_config
from magpo import NonFiniteLossError

pytestmark = pytest.mark.filterwarnings("ignore")

SIZES = ["experiment.max_n_frames=80", "experiment.on_policy_collected_frames_per_batch=80",
         "experiment.on_policy_minibatch_size=40", "experiment.on_policy_n_minibatch_iters=2",
         "experiment.evaluation_interval=80", "experiment.evaluation_episodes=2", "experiment.checkpoint_at_end=false",
         "model.num_cells=[16,16]", "critic_model.num_cells=[16,16]"]
TASKS = {"vmas/balance": ["experiment=cpu", "task.max_steps=20", "experiment.on_policy_n_envs_per_worker=4"],
         "coordsum/3x10": ["experiment=coordsum", "task.time_limit=10", "experiment.on_policy_n_envs_per_worker=8"]}
ALGORITHMS = {"magpo": ["algorithm.guider_embed_dim=8", "algorithm.guider_heads=2"],
              "magpo_transformer": ["algorithm.guider_embed_dim=8", "algorithm.guider_heads=2"],
              "magpo_residual": ["algorithm.guider_embed_dim=8", "algorithm.guider_heads=2"],
              "ctds": ["algorithm.guider_embed_dim=8", "algorithm.guider_heads=2"],
              "mat": ["algorithm.embed_dim=8", "algorithm.heads=2"],
              "mappo": [], "happo": [], "a2po": []}
FIELD = re.compile(r"\b(algorithm|experiment|task)\.(\w+)")


def fields_of(algorithm: str, task: str) -> dict[str, set[str]]:
    cfg, _ = compose_config([f"algorithm={algorithm}", f"task={task}", TASKS[task][0]])
    return {"algorithm": set(cfg.algorithm), "experiment": set(cfg.experiment), "task": set(cfg.task)}


FIELDS = {(a, t): fields_of(a, t) for a in ALGORITHMS for t in TASKS}


def pool(group: str, task: str) -> dict:
    return POOLS["task"][task] if group == "task" else POOLS[group]


def test_every_field_of_the_yaml_has_a_pool_or_a_reason():
    for (algorithm, task), groups in FIELDS.items():
        for group, names in groups.items():
            missing = names - set(pool(group, task)) - NOT_FUZZED.get(group, set())
            assert not missing, f"{algorithm} on {task}: {group} fields {sorted(missing)} have no pool in config_pools.py"


@st.composite
def examples(draw):
    algorithm = draw(st.sampled_from(sorted(ALGORITHMS)))
    task = draw(st.sampled_from(sorted(TASKS)))
    candidates = sorted((group, name) for group, names in FIELDS[algorithm, task].items()
                        for name in names if name in pool(group, task))
    chosen = draw(st.lists(st.sampled_from(candidates), min_size=2, max_size=2, unique=True))
    drawn = []
    for group, name in chosen:
        valid, extreme, invalid = pool(group, task)[name]
        drawn.append(f"{group}.{name}={draw(st.sampled_from(valid + extreme + invalid))}")
    return algorithm, task, drawn


def train_losses_are_finite(folder: Path) -> None:
    scalars = [p for p in folder.rglob("scalars/train_*loss*.csv")]
    assert scalars, f"no training loss was logged under {folder}"
    for path in scalars:
        with path.open() as f:
            for step, value in csv.reader(f):
                assert math.isfinite(float(value)), f"{path.name} step {step}: {value}"


def outcome(algorithm: str, task: str, drawn: list[str], folder: Path, monkeypatch) -> str:
    """'trained', 'refused' or 'stopped', after asserting the promise each outcome carries."""
    built = []
    setup_task = Experiment._setup_task
    monkeypatch.setattr(Experiment, "_setup_task", lambda self: (built.append(True), setup_task(self))[1])
    overrides = [f"algorithm={algorithm}", f"task={task}", *TASKS[task], *SIZES, *ALGORITHMS[algorithm], *drawn,
                 "experiment.loggers=[csv]"]
    try:
        experiment = build_experiment(folder, overrides)
        experiment.run()
    except (NonFiniteLossError, NonFiniteTrainingLoss) as error:
        assert built and re.search(r"loss_\w+", str(error)), str(error)
        return "stopped"
    except Exception as error:  # a refusal: before any environment, naming a field of the config
        named = FIELD.findall(str(error))
        assert not built, f"{drawn}: refused only after an environment was built: {type(error).__name__}: {error}"
        assert named, f"{drawn}: refused without naming a field: {type(error).__name__}: {error}"
        return "refused"
    train_losses_are_finite(folder)
    return "trained"


@pytest.mark.slow
@settings(max_examples=50, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(example=examples())
def test_config_fuzz(example):
    algorithm, task, drawn = example
    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as monkeypatch:
        outcome(algorithm, task, drawn, Path(folder), monkeypatch)


EXTREMES = ["algorithm.entropy_coef=10", "algorithm.clip_epsilon=1e-6", "experiment.lr=1.0", "experiment.gamma=0"]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm, extra", [
    ("magpo", ["algorithm.aux_coef=1e6", "algorithm.delta=1.0001"]),
    ("magpo_transformer", ["algorithm.aux_coef=1e6", "algorithm.delta=1.0001"]),
    ("mappo", []),
])
def test_extreme_but_valid_values_never_train_on_nan(tmp_path, monkeypatch, algorithm, extra):
    """Trains with finite losses, or stops at the first non-finite loss naming the term."""
    for task in TASKS:
        result = outcome(algorithm, task, [*EXTREMES, *extra], tmp_path / task.replace("/", "_"), monkeypatch)
        assert result in ("trained", "stopped"), result
