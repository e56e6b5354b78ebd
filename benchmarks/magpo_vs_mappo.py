"""MAGPO vs MAPPO on VMAS tasks with the CPU preset: final return, area under the curve,
per-iteration cost and the guider's diagnostics.

    python benchmarks/magpo_vs_mappo.py --seeds 5 --jobs 2      # balance, give_way, navigation
    python benchmarks/magpo_vs_mappo.py --seeds 3 --tasks vmas/balance --magpo magpo,magpo_residual
    python benchmarks/magpo_vs_mappo.py --seeds 10 --first-seed 20 --tasks vmas/navigation --magpo magpo  # fresh seeds

Each (task, seed, algorithm) is one ``benchmarl run ... experiment=cpu``, launched through Hydra
(``runs_common.run_many``: ``--launcher`` a preset such as ``magpo_slurm``, or ``magpo_local``
with ``--jobs`` runs at once), the algorithms' order rotated from seed to seed so that machine
drift hits all alike. Runs already
finished under ``--out/runs`` are reused, so an interrupted set resumes and a new preset adds
only its own runs. ``--magpo`` names the MAGPO presets (``conf/algorithm/*.yaml``) to run beside
MAPPO; an entry may add overrides of its own after ``+``, e.g.
``magpo+algorithm.lmbda=0.9+algorithm.normalize_advantage=false`` (an ablation).
Writes to ``--out``:

* ``magpo_vs_mappo.md``: per task, the learner's final evaluation return and its area under the
  evaluation curve (AUC: the trapezoid mean of the return over frames), each as mean [95% CI]
  (percentile bootstrap over seeds, rliable) with per-seed values; collection + training seconds per iteration
  and the ratio to MAPPO; the mean ``learner_kl`` and ``mask_fraction`` of each MAGPO preset and
  how far its guider leads its learner (``guider_lead``);
  a row for uniformly random actions (``runs_common.random_policy_return``: the level every
  method starts from, so that a lead at that level is not read as learning);
  with the date, machine, versions and commit;
  with ``--absolute-episodes N``, also the protocol's absolute metric of every run (its best
  evaluation's parameters evaluated again on N episodes at the end, ``absolute_metric_episodes``);
  per-seed differences against MAPPO (each run minus MAPPO's run of the same seed, which for a
  MAGPO preset also starts from the same actor and critic), and the mean curve over seeds;
* ``magpo_vs_mappo_<task>.png``: evaluation return against frames, mean and 95% CI, and the
  random level;
* ``magpo_vs_mappo_curves.csv``: every evaluation point of every run, read from BenchMARL's csv
  logs. Not from its marl-eval json: that names a run by algorithm class, task and seed only, so
  two presets of one algorithm (``magpo`` and ``magpo+algorithm.lmbda=0.9``) would merge there.
  The values are the same (tests/benchmarl_ext/test_scale_out.py compares them);
* ``magpo_vs_mappo_protocol.md``/``.png``: the field's protocol across tasks (``protocol.py``):
  IQM of min-max normalised returns, probability of improvement of the first ``--magpo`` preset
  over each other algorithm, sample-efficiency curves.

With ``--jobs`` > 1 the runs share the cores (one torch thread each), so the per-iteration
seconds are those of a loaded machine; ratios stay comparable because every algorithm runs
under the same load. ``--jobs 1`` gives uncontended timings.
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
from pathlib import Path

from protocol import interval, report
from runs_common import provenance, random_policy_return, run_many

from benchmarl_ext.plots import area_under_curve, frames_of, read_scalar, scalars_folder

DEFAULT_TASKS = "vmas/balance,vmas/give_way,vmas/navigation"


def per_iteration_seconds(folder: Path) -> float:
    """Median over a run's iterations of collection + training seconds."""
    collection = read_scalar(folder, "timers_collection_time")
    training = read_scalar(folder, "timers_training_time")
    return statistics.median(collection[i] + training[i] for i in collection)


def curve(folder: Path, scalar: str = "eval_reward_episode_reward_mean") -> list[tuple[float, float]]:
    """``[(frames, evaluation return)]`` of one run."""
    frames = frames_of(folder)
    return [(frames[i], v) for i, v in sorted(read_scalar(folder, scalar).items())]


def diagnostic_mean(folder: Path, term: str) -> float:
    """Mean over iterations (and groups) of a logged training diagnostic, e.g. learner_kl."""
    files = sorted(scalars_folder(folder).glob(f"train_*_{term}.csv"))
    values = [v for f in files for v in read_scalar(folder, f.stem).values()]
    return statistics.fmean(values) if values else float("nan")


def guider_lead(folder: Path) -> float | None:
    """How far a MAGPO run's guider leads its own learner: the AUC of the guider's evaluation curve
    (centralized execution, logged as ``eval_guider/...`` at every evaluation) minus the learner's.
    The method rests on the guider doing better than the learner it guides; near 0 the learner
    imitates a policy no better than itself. None for a run that never evaluated a guider (MAPPO)."""
    guider = curve(folder, "eval_guider_reward_episode_reward_mean")
    return area_under_curve(guider) - area_under_curve(curve(folder)) if guider else None


def absolute_metric(folder: Path) -> float | None:
    """A run's absolute metric (``absolute/reward/episode_reward_mean``), or None if it has none."""
    values = list(read_scalar(folder, "absolute_reward_episode_reward_mean").values())
    return values[-1] if values else None


def evaluation_actions(folders: list[Path]) -> str:
    """How the runs in ``folders`` chose actions at evaluation, from each run's Hydra record
    (``experiment.evaluation_deterministic_actions``): "deterministic", "sampled" or, where
    the runs differ, "deterministic or sampled (per run)"."""
    import yaml

    modes = {
        bool(yaml.safe_load((f.parent / ".hydra" / "config.yaml").read_text())["experiment"]["evaluation_deterministic_actions"])
        for f in folders
    }
    return {frozenset({True}): "deterministic", frozenset({False}): "sampled"}.get(frozenset(modes), "deterministic or sampled (per run)")


def task_report(task: str, algorithms: list[str], folders: dict[str, list[Path]], out: Path, random_level: float) -> list[str]:
    """The markdown section of one task (with an absolute-metric column when every run has the
    metric), with ``random_level`` (uniformly random actions' return) as a row and a line in its
    PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def cell(values):
        mean, low, high = interval(values)
        return f"{mean:.2f} [{low:.2f}, {high:.2f}]"

    timing = {a: statistics.fmean(per_iteration_seconds(f) for f in folders[a]) for a in algorithms}
    label = {a: "MAPPO" if a == "mappo" else a if a.startswith(("mappo", "ippo")) else f"{a} learner" for a in algorithms}
    absolute = {a: [absolute_metric(f) for f in folders[a]] for a in algorithms}
    with_absolute = all(v is not None for values in absolute.values() for v in values)
    lines = [
        f"## {task}",
        "",
        "| policy | final return | per seed | AUC | per seed |" + (" absolute metric | per seed |" if with_absolute else "")
        + " s / iteration | ratio to MAPPO | learner_kl | mask_fraction | guider minus learner AUC |",
        "| --- | --- | --- | --- | --- |" + (" --- | --- |" if with_absolute else "") + " --- | --- | --- | --- | --- |",
    ]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.axhline(random_level, color="gray", ls=":", label="uniformly random actions")
    curves_of = {a: [curve(f) for f in folders[a]] for a in algorithms}
    for algorithm in algorithms:
        curves = curves_of[algorithm]
        finals = [c[-1][1] for c in curves]
        aucs = [area_under_curve(c) for c in curves]
        diagnostics = ["-", "-", "-"]
        if not algorithm.startswith(("mappo", "ippo")):
            leads = [guider_lead(f) for f in folders[algorithm]]
            diagnostics = [f"{statistics.fmean(diagnostic_mean(f, t) for f in folders[algorithm]):.2e}"
                           for t in ("learner_kl", "mask_fraction")] + [cell(leads) if None not in leads else "-"]
        per_seed = [finals, aucs, absolute[algorithm]] if with_absolute else [finals, aucs]
        lines.append(
            f"| {label[algorithm]} | "
            + "".join(f"{cell(values)} | {' / '.join(f'{v:.1f}' for v in values)} | " for values in per_seed)
            + f"{timing[algorithm]:.2f} | {timing[algorithm] / timing['mappo']:.2f} | {' | '.join(diagnostics)} |"
        )
        frames = [x for x, _ in curves[0]]
        stats = [interval([c[k][1] for c in curves], reps=2_000) for k in range(len(frames))]
        ax.plot(frames, [m for m, _, _ in stats], marker="o", ms=3, label=label[algorithm])
        ax.fill_between(frames, [low for _, low, _ in stats], [high for _, _, high in stats], alpha=0.2)
    level = f"{random_level:.2f}"  # the cells of the header above: final, per seed, AUC, per seed, [absolute x 2], 5 more
    cells = [level, "-", level, "-"] + ["-", "-"] * with_absolute + ["-"] * 5
    lines.append(f"| uniformly random actions | {' | '.join(cells)} |")
    ax.set(xlabel="frames", ylabel="evaluation episode return", title=f"{task}, {len(folders['mappo'])} seeds (95% CI)")
    ax.legend()
    fig.tight_layout()
    png = out / f"magpo_vs_mappo_{task.replace('/', '_')}.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    labelled = {label[a]: curves_of[a] for a in algorithms}
    return [*lines, "", *paired_differences(labelled, "MAPPO"), *mean_curve_table(labelled), f"![{task}]({png.name})", ""]


def paired_differences(curves: dict[str, list[list[tuple[float, float]]]], baseline: str) -> list[str]:
    """Markdown lines: for every policy but ``baseline``, the mean over seeds of (its run minus
    the baseline's run of the same seed) in final return and AUC, with a 95% bootstrap CI.

    ``curves`` maps a policy to its evaluation curves, one per seed in seed order, each a list of
    (frames, return). Pairing by seed removes what the two runs share: the seed's environments and,
    for MAGPO presets, the initial networks (the learner and critic start as MAPPO's actor and
    critic of that seed). Each policy must have as many seeds as the baseline.
    """
    base = curves[baseline]
    rows = []
    for policy, runs in curves.items():
        if policy == baseline:
            continue
        if len(runs) != len(base):
            raise ValueError(f"{policy} has {len(runs)} seeds and {baseline} {len(base)}: no pairing by seed")
        cells = []
        for measure in (lambda c: c[-1][1], area_under_curve):
            mean, low, high = interval([measure(a) - measure(b) for a, b in zip(runs, base)])
            cells.append(f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]")
        rows.append(f"| {policy} | {' | '.join(cells)} |")
    return [f"Per-seed differences against {baseline} (the run of the same seed minus {baseline}'s), mean [95% CI over seeds]:",
            "", "| policy | final return | AUC |", "| --- | --- | --- |", *rows, ""]


def mean_curve_table(curves: dict[str, list[list[tuple[float, float]]]]) -> list[str]:
    """Markdown lines: the mean evaluation return over seeds of every policy at every evaluation
    (columns in thousands of frames). Every run must have evaluated at the same frames."""
    frames = [x for x, _ in next(iter(curves.values()))[0]]
    rows = []
    for policy, runs in curves.items():
        if any([x for x, _ in run] != frames for run in runs):
            raise ValueError(f"{policy}'s runs did not all evaluate at frames {frames}: no common curve table")
        rows.append(f"| {policy} | " + " | ".join(f"{statistics.fmean(run[k][1] for run in runs):.2f}" for k in range(len(frames))) + " |")
    return ["Mean evaluation return over seeds (thousands of frames):", "",
            "| policy | " + " | ".join(f"{x / 1000:g}" for x in frames) + " |", "| --- |" + " --- |" * len(frames), *rows, ""]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per algorithm and task, >= 2")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds are first-seed .. first-seed + seeds - 1, >= 0 (a fresh set to confirm a lead found on others)")
    parser.add_argument("--tasks", default=DEFAULT_TASKS, help="comma-separated BenchMARL tasks")
    parser.add_argument("--experiment", default="cpu")
    parser.add_argument("--magpo", default="magpo,magpo_transformer",
                        help="comma-separated MAGPO algorithm presets, each optionally followed by +override+...")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once on this machine (hydra/launcher=magpo_local)")
    parser.add_argument("--launcher", help="a Hydra launcher preset for the runs (magpo_local, magpo_slurm, magpo_ray)")
    parser.add_argument("--launcher-option", action="append", default=[], metavar="KEY=VALUE",
                        help="hydra.launcher.KEY=VALUE for --launcher, repeatable")
    parser.add_argument("--absolute-episodes", type=int, default=0, metavar="N",
                        help="also the absolute metric on N episodes per run (absolute_metric_episodes; the protocol: "
                             "10 x experiment.evaluation_episodes); 0: off")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args(argv)
    if args.seeds < 2:
        parser.error(f"--seeds must be >= 2 for a confidence interval, got {args.seeds}")
    if args.first_seed < 0:
        parser.error(f"--first-seed must be >= 0, got {args.first_seed}")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.absolute_episodes < 0:
        parser.error(f"--absolute-episodes must be >= 0 (0: off), got {args.absolute_episodes}")
    import benchmarl

    confs = [Path(__file__).resolve().parents[1] / "conf" / "algorithm", Path(benchmarl.__file__).parent / "conf" / "algorithm"]
    presets = [p for p in args.magpo.split(",") if p]
    unknown = [p for p in presets if not any((conf / f"{p.split('+')[0]}.yaml").exists() for conf in confs)]
    if unknown or not presets:
        parser.error(f"--magpo must name algorithm presets of this package or BenchMARL (e.g. magpo,magpo_transformer), got {args.magpo!r}")
    tasks = [t for t in args.tasks.split(",") if t]
    algorithms = ["mappo", *presets]

    runs, keys = [], []
    for task in tasks:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            shift = seed % len(algorithms)
            for algorithm in algorithms[shift:] + algorithms[:shift]:
                name = f"{task.replace('/', '_')}_{re.sub(r'[^A-Za-z0-9_]+', '_', algorithm)}_seed{seed}"
                preset, *own = algorithm.split("+")
                overrides = [f"algorithm={preset}", *own, f"task={task}", f"experiment={args.experiment}", f"seed={seed}"]
                if args.absolute_episodes:
                    overrides.append(f"absolute_metric_episodes={args.absolute_episodes}")
                runs.append((name, overrides + args.overrides))
                keys.append((task, algorithm))
    folders: dict[str, dict[str, list[Path]]] = {t: {a: [] for a in algorithms} for t in tasks}
    launched = run_many(runs, args.out / "runs", args.jobs, args.launcher, tuple(args.launcher_option))
    for (task, algorithm), folder in zip(keys, launched):
        folders[task][algorithm].append(folder)

    with (args.out / "magpo_vs_mappo_curves.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task", "algorithm", "seed", "frames", "eval_return"])
        for task in tasks:
            for algorithm in algorithms:
                for seed, folder in enumerate(folders[task][algorithm], start=args.first_seed):
                    writer.writerows([task, algorithm, seed, x, y] for x, y in curve(folder))

    command = (f"python benchmarks/magpo_vs_mappo.py --seeds {args.seeds}"
               f"{f' --first-seed {args.first_seed}' if args.first_seed else ''} --tasks {args.tasks} --experiment {args.experiment} "
               f"--magpo {args.magpo} --jobs {args.jobs}"
               f"{f' --absolute-episodes {args.absolute_episodes}' if args.absolute_episodes else ''}"
               f"{' ' + ' '.join(args.overrides) if args.overrides else ''}")
    lines = [
        f"# MAGPO vs MAPPO (experiment={args.experiment}, {args.seeds} seeds"
        f"{f', {args.first_seed}-{args.first_seed + args.seeds - 1}' if args.first_seed else ''})",
        "",
        f"{provenance()} Command: `{command}`.",
        "",
        "Every return is the evaluation of the decentralized policy (MAGPO: the learner), "
        f"{evaluation_actions([f for task in folders.values() for fs in task.values() for f in fs])} actions. "
        "Final: at the last evaluation. AUC: trapezoid mean of the evaluation return over frames. "
        + (f"Absolute metric: the best evaluation's parameters evaluated again on {args.absolute_episodes} episodes at "
           "the end of the run. " if args.absolute_episodes else "")
        + "Mean [95% "
        "percentile bootstrap CI over seeds, rliable]. s / iteration: median collection + training seconds of each run, mean "
        f"over seeds{' (runs shared the cores, ' + str(args.jobs) + ' at a time)' if args.jobs > 1 else ''}. "
        "learner_kl (KL(guider || learner)) and mask_fraction (share of samples outside the delta band): mean over "
        "training iterations. Guider minus learner AUC: per seed, the AUC of the guider's own evaluation curve "
        "(centralized execution, at the same evaluations) minus the learner's, mean [95% CI]; near 0, the learner "
        "imitates a guider no better than itself. Uniformly random actions: the same evaluation return for actions drawn uniformly from "
        "the action space on 200 episodes (the level every method starts from; its AUC is the level itself).",
        "",
    ]
    for task in tasks:
        # the random level of the task as its MAPPO runs composed it (the algorithm plays no part)
        mappo_overrides = next(o for (t, a), (_, o) in zip(keys, runs) if (t, a) == (task, "mappo"))
        lines += task_report(task, algorithms, folders[task], args.out, random_policy_return(mappo_overrides))
    protocol = report(args.out / "magpo_vs_mappo_curves.csv", candidate=presets[0], out=args.out)
    lines += [f"Across tasks (IQM, probability of improvement, sample efficiency): [{protocol.name}]({protocol.name}).", ""]
    (args.out / "magpo_vs_mappo.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
