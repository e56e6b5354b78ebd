"""Reading BenchMARL's csv scalars and drawing learning curves."""

from __future__ import annotations

import csv
from pathlib import Path

# What a learning-curve plot shows: csv scalar name -> legend label.
CURVES = {
    "eval_reward_episode_reward_mean": "evaluation (MAGPO: the decentralized learner)",
    "eval_guider_reward_episode_reward_mean": "evaluation of the guider (centralized execution)",
    "collection_reward_episode_reward_mean": "collection",
}


def area_under_curve(points: list[tuple[float, float]]) -> float:
    """Trapezoid mean of ``[(frames, return)]`` over the frames it spans (one point: its value)."""
    if len(points) == 1:
        return points[0][1]
    (x0, _), (x1, _) = points[0], points[-1]
    area = sum((b[0] - a[0]) * (a[1] + b[1]) / 2 for a, b in zip(points, points[1:]))
    return area / (x1 - x0)


def scalars_folder(experiment_folder: Path) -> Path:
    """BenchMARL's csv logger writes to ``<experiment folder>/<experiment name>/scalars``."""
    folders = sorted(Path(experiment_folder).glob("*/scalars"))
    if not folders:
        raise FileNotFoundError(f"no csv scalars under {experiment_folder} (was the csv logger on?)")
    return folders[0]


def read_scalar(experiment_folder: Path, name: str) -> dict[int, float]:
    """``{iteration: value}`` of one csv scalar; empty if the run never logged it."""
    path = scalars_folder(experiment_folder) / f"{name}.csv"
    if not path.exists():
        return {}
    with path.open(newline="") as f:
        return {int(float(step)): float(value) for step, value in csv.reader(f)}


def frames_of(experiment_folder: Path) -> dict[int, float]:
    """``{iteration: total frames collected by then}``."""
    return read_scalar(experiment_folder, "counters_total_frames")


def plot_learning_curve(experiment_folder) -> Path:
    """Save ``learning_curve.png`` (returns against frames) in the experiment folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(experiment_folder)
    frames = frames_of(folder)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, label in CURVES.items():
        points = sorted((frames[i], v) for i, v in read_scalar(folder, name).items() if i in frames)
        if points:
            x, y = zip(*points)
            ax.plot(x, y, marker="o" if name.startswith("eval") else None, ms=3, label=label)
    ax.set(xlabel="frames", ylabel="mean episode return", title=folder.name[:60])
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = folder / "learning_curve.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
