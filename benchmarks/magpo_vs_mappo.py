"""MAGPO vs MAPPO on vmas/balance with the CPU preset: learning curves and per-iteration cost.

    python benchmarks/magpo_vs_mappo.py                   # 3 seeds each, ~15 min on 2 cores
    python benchmarks/magpo_vs_mappo.py --seeds 5 --task vmas/navigation --magpo magpo

Each (seed, algorithm) is one ``benchmarl run ... experiment=cpu`` in its own process, run one
at a time, with the algorithms' order rotated from seed to seed so that machine drift hits all
alike. ``--magpo`` names the MAGPO presets to run beside MAPPO; by default both guiders:
``magpo_residual`` (the residual guider with backtracking) and ``magpo`` (the transformer
guider). Writes to ``--out``:

* ``magpo_vs_mappo.png``: evaluation return against frames (mean and 95% CI over seeds) of
  each MAGPO preset's decentralized learner and guider (centralized execution) and of MAPPO;
* ``magpo_vs_mappo.md``: the final returns and each preset's per-iteration wall-time ratio
  MAGPO / MAPPO (collection + training, and whole iterations), with machine, versions and date;
* ``magpo_vs_mappo_curves.csv``: every evaluation point of every run.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import statistics
from pathlib import Path

from runs_common import benchmarl_run, mean_ci

from benchmarl_ext.plots import frames_of, read_scalar

def per_iteration_seconds(folder: Path) -> tuple[float, float]:
    """Median (collection + training) and median whole-iteration seconds of one run."""
    collection = read_scalar(folder, "timers_collection_time")
    training = read_scalar(folder, "timers_training_time")
    iteration = read_scalar(folder, "timers_iteration_time")
    work = [collection[i] + training[i] for i in collection]
    return statistics.median(work), statistics.median(iteration.values())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per algorithm, >= 2")
    parser.add_argument("--task", default="vmas/balance")
    parser.add_argument("--experiment", default="cpu")
    parser.add_argument("--magpo", default="magpo_residual,magpo", help="comma-separated MAGPO algorithm presets")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args(argv)
    if args.seeds < 2:
        parser.error(f"--seeds must be >= 2 for a confidence interval, got {args.seeds}")
    conf = Path(__file__).resolve().parents[1] / "conf" / "algorithm"
    unknown = [p for p in args.magpo.split(",") if p and not (conf / f"{p}.yaml").exists()]
    if unknown or not args.magpo.strip(","):
        parser.error(f"--magpo must name algorithm presets in conf/algorithm/ (e.g. magpo,magpo_residual), got {args.magpo!r}")
    runs_dir = args.out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)

    presets = [p for p in args.magpo.split(",") if p]
    algorithms = ["mappo", *presets]
    folders = {algorithm: [] for algorithm in algorithms}
    for seed in range(args.seeds):
        shift = seed % len(algorithms)
        for algorithm in algorithms[shift:] + algorithms[:shift]:
            overrides = [f"algorithm={algorithm}", f"task={args.task}", f"experiment={args.experiment}", f"seed={seed}"]
            folders[algorithm].append(benchmarl_run(f"{algorithm}_seed{seed}", overrides + args.overrides, runs_dir))

    curves = {"MAPPO": [(f, "eval_reward_episode_reward_mean") for f in folders["mappo"]]}
    for preset in presets:
        curves[f"{preset} learner"] = [(f, "eval_reward_episode_reward_mean") for f in folders[preset]]
        curves[f"{preset} guider (centralized)"] = [(f, "eval_guider_reward_episode_reward_mean") for f in folders[preset]]
    rows, summary = [], {}
    for label, runs in curves.items():
        per_frame: dict[float, list[float]] = {}
        for seed, (folder, scalar) in enumerate(runs):
            frames = frames_of(folder)
            for iteration, value in read_scalar(folder, scalar).items():
                per_frame.setdefault(frames[iteration], []).append(value)
                rows.append({"curve": label, "seed": seed, "frames": frames[iteration], "eval_return": value})
        summary[label] = {f: mean_ci(v) for f, v in sorted(per_frame.items()) if len(v) == len(runs)}

    timing = {}  # algorithm -> (collection + training, whole iteration), mean over seeds of the medians
    for algorithm, runs in folders.items():
        seconds = [per_iteration_seconds(f) for f in runs]
        timing[algorithm] = (statistics.fmean(w for w, _ in seconds), statistics.fmean(i for _, i in seconds))

    with (args.out / "magpo_vs_mappo_curves.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["curve", "seed", "frames", "eval_return"])
        writer.writeheader()
        writer.writerows(rows)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in summary.items():
        x = list(points)
        mean = [points[f][0] for f in x]
        half = [points[f][1] for f in x]
        ax.plot(x, mean, marker="o", ms=3, label=label, ls="--" if "guider" in label else "-")
        ax.fill_between(x, [m - h for m, h in zip(mean, half)], [m + h for m, h in zip(mean, half)], alpha=0.2)
    ax.set(xlabel="frames", ylabel="evaluation episode return", title=f"{args.task}, experiment={args.experiment}, {args.seeds} seeds (95% CI)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "magpo_vs_mappo.png", dpi=120)

    import benchmarl
    import torchrl
    import vmas

    last = {label: points[max(points)] for label, points in summary.items()}
    final_frames = max(summary["MAPPO"])

    def per_seed(label: str) -> str:
        return " / ".join(f"{r['eval_return']:.1f}" for r in rows if r["curve"] == label and r["frames"] == final_frames)

    lines = [
        f"# MAGPO vs MAPPO on {args.task} (experiment={args.experiment}, {args.seeds} seeds)",
        "",
        f"Measured {datetime.date.today().isoformat()} on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
        f"torchrl {torchrl.__version__}, benchmarl {benchmarl.__version__}, vmas {vmas.__version__}. "
        f"Command: `python benchmarks/magpo_vs_mappo.py --seeds {args.seeds} --task {args.task} "
        f"--experiment {args.experiment} --magpo {args.magpo}{' ' + ' '.join(args.overrides) if args.overrides else ''}`.",
        "",
        f"Evaluation return at {final_frames:,.0f} frames (mean +- 95% CI half-width over seeds; deterministic actions):",
        "",
        "| policy | return | per seed |",
        "| --- | --- | --- |",
        *(f"| {label} | {m:.2f} +- {h:.2f} | {per_seed(label)} |" for label, (m, h) in last.items()),
        "",
        "Per-iteration wall time (median over each run's iterations, mean over seeds; MAGPO's whole iterations "
        "also include the evaluation of its guider):",
        "",
        "| algorithm | collection + training | ratio to MAPPO | whole iteration | ratio to MAPPO |",
        "| --- | --- | --- | --- | --- |",
        *(f"| {a} | {timing[a][0]:.2f} s | {timing[a][0] / timing['mappo'][0]:.2f} | {timing[a][1]:.2f} s | "
          f"{timing[a][1] / timing['mappo'][1]:.2f} |" for a in algorithms),
        "",
        "![curves](magpo_vs_mappo.png)",
        "",
    ]
    (args.out / "magpo_vs_mappo.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
