"""benchmarl_ext.protocol: the field's evaluation protocol through rliable, on synthetic curves
whose answers are known."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rliable", reason="the report extra (part of the test extra) is missing")
from benchmarl_ext import protocol  # noqa: E402  (after the skip: it needs rliable)

FRAMES = [1000, 2000, 3000]


def write_curves(path: Path, returns: dict[tuple[str, str], list[list[float]]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task", "algorithm", "seed", "frames", "eval_return"])
        for (task, algorithm), seeds in returns.items():
            for seed, curve in enumerate(seeds):
                writer.writerows([task, algorithm, seed, x, y] for x, y in zip(FRAMES, curve))
    return path


def test_a_dominating_algorithm_wins_every_comparison(tmp_path):
    rng = np.random.default_rng(0)
    returns = {}
    for task, scale in (("a", 1.0), ("b", 100.0)):  # very different scales: normalisation makes them comparable
        returns[task, "good"] = [list(scale * (2 + rng.random(3))) for _ in range(5)]
        returns[task, "bad"] = [list(scale * rng.random(3)) for _ in range(5)]
    path = write_curves(tmp_path / "toy_curves.csv", returns)
    curves, frames = protocol.read_curves(path)
    scores = protocol.normalised(curves)
    assert scores["good"].shape == (5, 2, 3) and scores["good"].min() >= 0 and scores["good"].max() <= 1
    assert scores["good"][:, :, -1].min() > scores["bad"][:, :, -1].max()

    report = protocol.report(path, "good", reps=1000).read_text()
    assert "| good | bad | 1.000 [1.000, 1.000] |" in report  # probability of improvement
    assert (tmp_path / "toy_protocol.png").stat().st_size > 0
    mean, low, high = protocol.interval([1.0, 2.0, 3.0, 4.0, 5.0], reps=1000)
    assert mean == 3.0 and 1.0 <= low < 3.0 < high <= 5.0


def test_ragged_tables_are_refused(tmp_path):
    returns = {("a", "x"): [[0.0, 1.0, 2.0]] * 3, ("a", "y"): [[0.0, 1.0, 2.0]] * 2}
    with pytest.raises(ValueError, match="same number of seeds"):
        protocol.read_curves(write_curves(tmp_path / "ragged_curves.csv", returns))


def write_benchmarl_json(folder: Path, returns: dict[tuple[str, str], list[list[float]]]) -> None:
    """Each run's json written by BenchMARL's own JsonWriter, one folder per run, evaluation
    episodes scattered around the wanted mean."""
    import torch
    from benchmarl.experiment.logger import JsonWriter

    for (task, algorithm), seeds in returns.items():
        environment, task_name = task.split("/")
        for seed, curve in enumerate(seeds):
            run = folder / f"{algorithm}_{task_name}_{seed}"
            run.mkdir(parents=True)
            writer = JsonWriter(str(run), f"{algorithm}.json", algorithm, task_name, environment, seed)
            for step, (frames, value) in enumerate(zip(FRAMES, curve)):
                episodes = torch.tensor([value - 1.0, value, value + 1.0])
                writer.write(frames, {"agents_return": episodes, "return": episodes}, step)
    (folder / "evaluations").mkdir()  # what `benchmarl evaluate` writes: not a marl-eval record
    (folder / "evaluations" / "checkpoint_3000.json").write_text('{"learner": {"return": 1.0}}')


def test_benchmarl_json_folders_give_the_same_curves_as_the_csv(tmp_path):
    pytest.importorskip("benchmarl")
    rng = np.random.default_rng(1)
    returns = {(task, algorithm): [list(rng.random(3)) for _ in range(3)]
               for task in ("vmas/balance", "vmas/navigation") for algorithm in ("magpo", "mappo")}
    write_benchmarl_json(tmp_path / "multirun", returns)
    from_json, frames_json = protocol.read_curves(tmp_path / "multirun")
    from_csv, frames_csv = protocol.read_curves(write_curves(tmp_path / "same_curves.csv", returns))
    assert sorted(from_json) == ["vmas/balance", "vmas/navigation"]
    for task in from_csv:
        assert list(frames_json[task]) == list(frames_csv[task]) == FRAMES
        for algorithm in from_csv[task]:
            np.testing.assert_allclose(from_json[task][algorithm], from_csv[task][algorithm], rtol=1e-6)
    report = protocol.report(tmp_path / "multirun", "magpo", reps=1000)
    assert report == tmp_path / "multirun" / "multirun_protocol.md"
    assert "| vmas/balance |" in report.read_text()


def test_the_absolute_metric_is_read_only_where_every_run_has_it(tmp_path):
    pytest.importorskip("benchmarl")
    import json

    returns = {("vmas/balance", a): [[0.0, 1.0, 2.0]] * 3 for a in ("magpo", "mappo")}
    write_benchmarl_json(tmp_path / "multirun", returns)
    # BenchMARL's own entry (the largest single-episode return): not the protocol's metric
    assert protocol.read_absolute_metrics(tmp_path / "multirun") is None
    assert "absolute metric" not in protocol.report(tmp_path / "multirun", "magpo", reps=1000).read_text()
    for path in (tmp_path / "multirun").glob("*_*_*/*.json"):  # the runs' files: what absolute_metric_episodes writes
        data = json.loads(path.read_text())
        (run,) = [seeds for tasks in data.values() for algorithms in tasks.values() for seeds in algorithms.values()]
        (record,) = run.values()
        seed, value = int(path.parent.name.rsplit("_", 1)[1]), 10.0 if "magpo" in path.name else 5.0
        record["absolute_metrics"] = {"return": [value + seed - 1.0, value + seed + 1.0], "best_step_count": [2000]}
        path.write_text(json.dumps(data))
    absolute = protocol.read_absolute_metrics(tmp_path / "multirun")
    np.testing.assert_allclose(absolute["vmas/balance"]["magpo"], [10.0, 11.0, 12.0])
    np.testing.assert_allclose(absolute["vmas/balance"]["mappo"], [5.0, 6.0, 7.0])
    text = protocol.report(tmp_path / "multirun", "magpo", reps=1000).read_text()
    assert "## Per task: absolute metric, mean [95% CI]" in text and "| vmas/balance | 11.000 [" in text


def test_a_folder_without_benchmarl_json_is_refused(tmp_path):
    (tmp_path / "evaluations").mkdir()
    (tmp_path / "evaluations" / "checkpoint.json").write_text('{"learner": 1}')
    with pytest.raises(ValueError, match="no BenchMARL json files"):
        protocol.read_curves(tmp_path)
