"""MAGPO, CTDS, MAPPO and IPPO on CoordSum, beside the paper's Table 1; MAGPO ablations.

    python benchmarks/coordsum_table1.py --jobs 2              # 2-core CPU budget (~1.5 h)
    python benchmarks/coordsum_table1.py --frames 20000000 --ablation-frames 2000000 \\
        --launcher magpo_slurm --launcher-option partition=gpu \\
        experiment.sampling_device=cuda experiment.train_device=cuda   # the paper's budget, SLURM GPUs

Every run is one ``benchmarl run ... experiment=coordsum``, launched through Hydra
(``runs_common.run_many``: ``hydra/sweeper=magpo_runs`` with the ``--launcher`` preset, or
``magpo_local`` with ``--jobs`` runs at once), with the authors' tuned values for the method and
task (``algorithm=<method>_coordsum_<task>``: their epochs, minibatches, learning rate, clip and
entropy; for MAGPO also delta, lambda, the guider's size and
memory; CTDS is that MAGPO recipe with delta = inf and aux_coef = 0). The number reported for every
method is the decentralized policy's evaluation return (for MAGPO and CTDS: the learner), the
mean over the final evaluation's episodes, then mean and 95% CI over seeds.

Ablations (coordsum/5x20, ``--ablation-frames``): delta in {1.1, 1.5, 3}, backtrack on/off
(residual guider), aux_coef in {0, 1, 4}. Writes ``coordsum_table1.md``, ``coordsum_<task>.png``
``coordsum_runs.csv``, ``coordsum_curves.csv`` and the protocol's report across tasks
(``coordsum_protocol.md``/``.png``: IQM, probability of improvement of MAGPO) to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import time
from pathlib import Path

import torch
from protocol import interval, report
from runs_common import finished_run, random_policy_return, run_many

from benchmarl_ext.plots import frames_of, read_scalar

CONF = Path(__file__).resolve().parents[1] / "conf"
# the paper's Table 1 (20M steps), learner evaluation return
PAPER = {
    "3x10": {"magpo": 107.97, "ctds": 90.74, "ippo": 107.08, "mappo": 107.44},
    "5x20": {"magpo": 117.06, "ctds": 61.01, "ippo": 113.84, "mappo": 114.58},
}
ALGORITHMS = ("magpo", "ctds", "mappo", "ippo")
EVALUATIONS = 5  # evaluation points per run


def budget_overrides(frames: int) -> list[str]:
    batch = 6400  # experiment=coordsum collects 64 envs x 100 steps per iteration
    iterations = max(1, frames // batch)
    every = max(1, iterations // EVALUATIONS)
    return [f"experiment.max_n_frames={iterations * batch}", f"experiment.evaluation_interval={every * batch}"]


def final_return(folder: Path) -> float:
    evaluations = read_scalar(folder, "eval_reward_episode_reward_mean")
    return evaluations[max(evaluations)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=192_000, help="frames per main run (>= 6400)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per main run, >= 2")
    parser.add_argument("--tasks", default="3x10,5x20")
    parser.add_argument("--ablation-frames", type=int, default=32_000, help="frames per ablation run; 0 skips them")
    parser.add_argument("--ablation-seeds", type=int, default=2)
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: write the table and plots from the runs already finished in --out")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once on this machine (hydra/launcher=magpo_local)")
    parser.add_argument("--launcher", help="a Hydra launcher preset for the runs (magpo_local, magpo_slurm, magpo_ray)")
    parser.add_argument("--launcher-option", action="append", default=[], metavar="KEY=VALUE",
                        help="hydra.launcher.KEY=VALUE for --launcher, repeatable (e.g. partition=gpu)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/coordsum"))
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (devices, ...)")
    args = parser.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    if args.frames < 6400:
        parser.error(f"--frames must be >= 6400 (one iteration), got {args.frames}")
    if args.seeds < 2:
        parser.error(f"--seeds must be >= 2 for a confidence interval, got {args.seeds}")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    unknown = [t for t in tasks if not (CONF / "algorithm" / f"magpo_coordsum_{t}.yaml").exists()]
    if unknown:
        parser.error(f"--tasks must be among 3x10, 3x30, 5x20, 8x15, got {unknown}")
    runs_dir = args.out / "runs"
    runs = []  # (group, task, method, seed, name, overrides)
    for task in tasks:
        for seed in range(args.seeds):
            for algorithm in ALGORITHMS:
                overrides = [f"algorithm={algorithm}_coordsum_{task}", f"task=coordsum/{task}", "experiment=coordsum",
                             f"seed={seed}", *budget_overrides(args.frames), *args.overrides]
                runs.append(("main", task, algorithm, seed, f"{task}_{algorithm}_seed{seed}", overrides))
    ablations = {
        "delta=1.1": ["algorithm.delta=1.1"],
        "delta=1.5": ["algorithm.delta=1.5"],
        "delta=3": ["algorithm.delta=3"],
        "residual guider, backtrack off": ["algorithm.guider=residual", "algorithm.guider_memory=none"],
        "residual guider, backtrack on": ["algorithm.guider=residual", "algorithm.guider_memory=none", "algorithm.backtrack=true"],
        "aux_coef=0": ["algorithm.aux_coef=0"],
        "aux_coef=1": ["algorithm.aux_coef=1"],
        "aux_coef=4": ["algorithm.aux_coef=4"],
    }
    if args.ablation_frames:
        for seed in range(args.ablation_seeds):
            for label, extra in ablations.items():
                overrides = ["algorithm=magpo_coordsum_5x20", *extra, "task=coordsum/5x20", "experiment=coordsum",
                             f"seed={seed}", *budget_overrides(args.ablation_frames), *args.overrides]
                name = f"ablation_{label.replace(' ', '').replace(',', '_').replace('=', '')}_seed{seed}"
                runs.append(("ablation", "5x20", label, seed, name, overrides))

    start = time.perf_counter()
    if args.report_only:
        folders = [finished_run(runs_dir / name, overrides) for *_, name, overrides in runs]
    else:
        folders = run_many([(name, overrides) for *_, name, overrides in runs], runs_dir, args.jobs, args.launcher,
                           tuple(args.launcher_option))
    rows = [
        {"group": group, "task": task, "method": method, "seed": seed, "final_return": final_return(folder),
         "run_s": round(read_scalar(folder, "timers_total_time")[max(frames_of(folder))], 1), "folder": str(folder)}
        for (group, task, method, seed, _, _), folder in zip(runs, folders) if folder is not None
    ]
    if not rows:
        raise SystemExit(f"no finished runs in {runs_dir}")
    elapsed = time.perf_counter() - start
    random_level = {
        task: random_policy_return(["algorithm=mappo", f"task=coordsum/{task}", "experiment=coordsum"], episodes=1024)
        for task in tasks
    }
    curves = {}
    for row in rows:
        if row["group"] == "main":
            curves.setdefault((row["task"], row["method"]), []).append(Path(row["folder"]))

    with (args.out / "coordsum_runs.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with (args.out / "coordsum_curves.csv").open("w", newline="") as f:  # the protocol's input
        writer = csv.writer(f)
        writer.writerow(["task", "algorithm", "seed", "frames", "eval_return"])
        for (task, algorithm), folders in sorted(curves.items()):
            for seed, folder in enumerate(folders):
                frames = frames_of(folder)
                writer.writerows([task, algorithm, seed, frames[i], value]
                                 for i, value in sorted(read_scalar(folder, "eval_reward_episode_reward_mean").items()))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for task in tasks:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for algorithm in ALGORITHMS:
            per_frame = {}
            for folder in curves.get((task, algorithm), []):
                frames = frames_of(folder)
                for iteration, value in read_scalar(folder, "eval_reward_episode_reward_mean").items():
                    per_frame.setdefault(frames[iteration], []).append(value)
            x = sorted(f for f, v in per_frame.items() if len(v) == len(curves.get((task, algorithm), [])))
            stats = [interval(per_frame[f], reps=2_000) for f in x]
            ax.plot(x, [m for m, _, _ in stats], marker="o", ms=3, label=algorithm.upper())
            ax.fill_between(x, [low for _, low, _ in stats], [high for _, _, high in stats], alpha=0.2)
        ax.axhline(random_level[task], color="gray", ls=":", label="uniformly random actions")
        ax.set(xlabel="frames", ylabel="evaluation return (decentralized policy)", title=f"CoordSum-{task}, {args.seeds} seeds, 95% CI")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.out / f"coordsum_{task}.png", dpi=120)
        plt.close(fig)

    seeds = {"main": args.seeds, "ablation": args.ablation_seeds}

    def cell(group, task, method):
        values = [r["final_return"] for r in rows if (r["group"], r["task"], r["method"]) == (group, task, method)]
        if not values:
            return "not run"
        mean, low, high = interval(values)
        return f"{mean:.2f} [{low:.2f}, {high:.2f}]" + (f" ({len(values)} seeds)" if len(values) != seeds[group] else "")

    import benchmarl
    import torchrl

    launch = [f"--launcher {args.launcher}", *(f"--launcher-option {o}" for o in args.launcher_option)] if args.launcher else []
    command = " ".join(["python benchmarks/coordsum_table1.py", f"--jobs {args.jobs}", *launch, f"--frames {args.frames}",
                        f"--seeds {args.seeds}",
                        f"--tasks {args.tasks}", f"--ablation-frames {args.ablation_frames}",
                        f"--ablation-seeds {args.ablation_seeds}", *args.overrides])
    lines = [
        "# CoordSum: MAGPO, CTDS, MAPPO, IPPO beside the paper's Table 1",
        "",
        f"Measured {datetime.date.today().isoformat()} on {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, torchrl {torchrl.__version__}, benchmarl {benchmarl.__version__}. Command: `{command}`. "
        f"{len(rows)} runs; their training loops took {sum(r['run_s'] for r in rows) / 60:.0f} min in all"
        + (" (this table was written from the finished runs with --report-only)." if args.report_only else
           f", and this invocation ({args.launcher or str(args.jobs) + ' runs at a time'}, reusing runs already finished "
           "in `--out`) "
           f"{elapsed / 60:.0f} min."),
        "",
        f"Evaluation return of the decentralized policy after {args.frames:,} frames per run (mean [95% percentile bootstrap CI] over "
        f"{args.seeds} seeds; the maximum is 200). The paper's numbers are after 20M steps.",
        "",
        "| task | method | ours | paper (20M steps) |",
        "| --- | --- | --- | --- |",
        *(line for task in tasks for line in (
            *(f"| {task} | {m.upper()} | {cell('main', task, m)} | {PAPER.get(task, {}).get(m, '-')} |" for m in ALGORITHMS),
            f"| {task} | uniformly random actions | {random_level[task]:.2f} | - |",
        )),
        "",
    ]
    if args.ablation_frames:
        lines += [
            f"Ablations on CoordSum-5x20, MAGPO with the authors' 5x20 values otherwise, {args.ablation_frames:,} frames, "
            f"{args.ablation_seeds} seeds:",
            "",
            "| variant | return |",
            "| --- | --- |",
            *(f"| {label} | {cell('ablation', '5x20', label)} |" for label in ablations),
            "",
        ]
    lines += [f"![{task}](coordsum_{task}.png)" for task in tasks] + [""]
    protocol = report(args.out / "coordsum_curves.csv", candidate="magpo", out=args.out)
    lines += [f"Across tasks (IQM, probability of improvement of MAGPO, sample efficiency): [{protocol.name}]({protocol.name}).", ""]
    (args.out / "coordsum_table1.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
