"""benchmarks/protocol.py: the field's evaluation protocol through rliable, on synthetic curves
whose answers are known."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rliable", reason="the report extra (part of the test extra) is missing")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import protocol  # noqa: E402

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
