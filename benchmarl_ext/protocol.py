"""The field's evaluation protocol on a table of evaluation curves, through rliable.

    python -m benchmarl_ext.protocol curves.csv --candidate magpo

The recipe of marl-eval (Gorsane et al. 2022), which the MAGPO paper follows, computed with
rliable (Agarwal et al. 2021), the library marl-eval builds on (the ``report`` extra;
marl-eval itself pins pandas 1.4, which Python 3.11 cannot install):

* per task: the mean final evaluation return over seeds, with a 95% percentile bootstrap CI;
* across tasks: returns min-max normalised per task (over every run and evaluation of the
  table), then the interquartile mean (IQM) and the mean of the final normalised returns, with
  95% stratified bootstrap CIs (runs resampled within each task);
* the probability of improvement of ``--candidate`` over every other algorithm (the paper's
  Fig. 3), with its stratified bootstrap CI;
* sample efficiency: the normalised IQM at every evaluation point, with CIs (a PNG);
* from json files whose runs all have it (``absolute_metric_episodes``), the absolute metric per
  task: mean over seeds with a 95% CI.

Input, either:

* a csv with columns ``task, algorithm, seed, frames, eval_return`` (what ``magpo_vs_mappo.py``
  writes), or
* a folder holding BenchMARL's marl-eval json files (runs with ``experiment.create_json=true``,
  e.g. a ``benchmarl run -m ...`` multirun folder), merged with BenchMARL's own
  ``load_and_merge_json_dicts``; the return of an evaluation is the mean of its episodes'
  ``return`` (the mean over agent groups, BenchMARL's definition). Other json files there
  (``benchmarl evaluate``'s records, wandb's) are skipped.

Every algorithm needs the same seeds and evaluation points on a task. Writes
``<stem>_protocol.md`` and ``<stem>_protocol.png`` beside the csv or in the folder (or to
``--out``).

    python -m benchmarl_ext.protocol multirun/2026-11-22/10-00-00 --candidate magpo
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

CONFIDENCE = 0.95
# rliable passes numpy RandomState to arch, which warns that it will want a Generator
warnings.filterwarnings("ignore", message="random_state is deprecated", category=FutureWarning)


@contextlib.contextmanager
def seeded(seed: int = 0):
    """Run the block with numpy's global generator seeded, then put its state back. rliable's
    StratifiedBootstrap draws its resampling indices from the global generator (np.random.choice),
    not from the ``random_state`` it is given, so without this the same scores give other
    intervals in every process."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _rliable():
    try:
        from rliable import library, metrics
    except ImportError as err:
        raise SystemExit(f"the evaluation protocol needs rliable: pip install -c .ci/constraints.txt \".[report]\" ({err})") from None
    return library, metrics


def interval(values, reps: int = 20_000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``values`` (one per seed) and its 95% percentile bootstrap interval: (mean, low, high)."""
    library, metrics = _rliable()
    scores = np.asarray(values, dtype=float).reshape(-1, 1)
    with seeded(seed):
        estimate, bounds = library.get_interval_estimates(
            {"x": scores}, lambda x: np.array([metrics.aggregate_mean(x)]), reps=reps,
            confidence_interval_size=CONFIDENCE, random_state=np.random.RandomState(seed),
        )
    return float(estimate["x"][0]), float(bounds["x"][0, 0]), float(bounds["x"][1, 0])


def _as_arrays(rows, source: Path):
    """``rows[(task, algorithm)][seed][frames] = return`` as ``(curves, frames)`` (see
    :func:`read_curves`); refuses ragged tables."""
    curves: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    frames: dict[str, np.ndarray] = {}
    for (task, algorithm), seeds in sorted(rows.items()):
        points = sorted(next(iter(seeds.values())))
        if any(sorted(s) != points for s in seeds.values()) or (task in frames and list(frames[task]) != points):
            raise ValueError(f"{source}: {task} {algorithm}: every seed and algorithm of a task needs the same evaluation points")
        frames[task] = np.array(points)
        curves[task][algorithm] = np.array([[seeds[s][p] for p in points] for s in sorted(seeds)])
    for task, by_algorithm in curves.items():
        if len({a.shape for a in by_algorithm.values()}) != 1:
            raise ValueError(f"{source}: {task}: every algorithm needs the same number of seeds")
    if not curves:
        raise ValueError(f"{source}: no evaluation curves")
    return dict(curves), frames


def read_curves(path: Path) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """``curves[task][algorithm]``: returns ``[seeds, evaluations]``; ``frames[task]``: the
    evaluation points, from the csv at ``path`` or BenchMARL's json files under the folder
    ``path``. Refuses ragged tables (a missing seed or evaluation)."""
    if path.is_dir():
        return read_benchmarl_json(path)
    rows: dict[tuple[str, str], dict[int, dict[float, float]]] = defaultdict(lambda: defaultdict(dict))
    with path.open() as f:
        for row in csv.DictReader(f):
            rows[row["task"], row["algorithm"]][int(row["seed"])][float(row["frames"])] = float(row["eval_return"])
    return _as_arrays(rows, path)


def _is_marl_eval_record(data) -> bool:
    """``{environment: {task: {algorithm: {"seed_<n>": {"step_<k>": {...}}}}}}``, BenchMARL's
    JsonWriter layout."""
    try:
        runs = [run for tasks in data.values() for algorithms in tasks.values() for seeds in algorithms.values()
                for name, run in seeds.items() if name.startswith("seed_")]
    except AttributeError:
        return False
    return bool(runs) and all(isinstance(run, dict) and "absolute_metrics" in run for run in runs)


def _benchmarl_runs(folder: Path):
    """``(task, algorithm, seed, run)`` of every run in the marl-eval json files that BenchMARL
    writes under ``folder`` (any depth), merged with BenchMARL's ``load_and_merge_json_dicts``;
    tasks are named ``<environment>/<task>``."""
    from benchmarl.eval_results import load_and_merge_json_dicts

    files = []
    for directory, _, names in os.walk(folder):
        for name in sorted(names):
            if name.endswith(".json") and "wandb" not in name:
                path = Path(directory) / name
                try:
                    if _is_marl_eval_record(json.loads(path.read_text())):
                        files.append(str(path))
                except (OSError, ValueError):
                    continue
    if not files:
        raise ValueError(f"{folder}: no BenchMARL json files (run with experiment.create_json=true)")
    for environment, tasks in load_and_merge_json_dicts(sorted(files)).items():
        for task, algorithms in tasks.items():
            for algorithm, seeds in algorithms.items():
                for seed_name, run in seeds.items():
                    yield f"{environment}/{task}", algorithm, int(seed_name.removeprefix("seed_")), run


def read_benchmarl_json(folder: Path):
    """:func:`read_curves` of the marl-eval json files that BenchMARL writes under ``folder``."""
    rows: dict[tuple[str, str], dict[int, dict[float, float]]] = defaultdict(lambda: defaultdict(dict))
    for task, algorithm, seed, run in _benchmarl_runs(folder):
        for step, metrics in run.items():
            if step.startswith("step_"):
                rows[task, algorithm][seed][float(metrics["step_count"])] = float(np.mean(metrics["return"]))
    return _as_arrays(rows, folder)


def read_absolute_metrics(folder: Path) -> dict[str, dict[str, np.ndarray]] | None:
    """``absolute[task][algorithm]``: each seed's absolute metric (the mean return of the best
    evaluation's parameters re-evaluated, ``absolute_metric_episodes``), seeds in order; None
    unless every run under ``folder`` has one. BenchMARL's own ``absolute_metrics`` entry (the
    largest single-episode return) carries no ``best_step_count`` and is not read."""
    rows: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for task, algorithm, seed, run in _benchmarl_runs(folder):
        absolute = run.get("absolute_metrics", {})
        if "best_step_count" not in absolute:
            return None
        rows[task][algorithm][seed] = float(np.mean(absolute["return"]))
    return {task: {a: np.array([seeds[s] for s in sorted(seeds)]) for a, seeds in algorithms.items()}
            for task, algorithms in rows.items()}


def normalised(curves: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``{algorithm: [seeds, tasks, evaluations]}``, min-max normalised per task over the table."""
    tasks = sorted(curves)
    algorithms = sorted(set.intersection(*(set(curves[t]) for t in tasks)))
    out = {}
    for algorithm in algorithms:
        per_task = []
        for task in tasks:
            everything = np.concatenate([c.ravel() for c in curves[task].values()])
            low, high = everything.min(), everything.max()
            per_task.append((curves[task][algorithm] - low) / max(high - low, 1e-12))
        out[algorithm] = np.stack(per_task, axis=1)
    return out


def report(path: Path, candidate: str, out: Path | None = None, reps: int = 20_000) -> Path:
    """Write the protocol's tables and sample-efficiency plot for the curves at ``path`` (a csv,
    or a folder of BenchMARL json files)."""
    import matplotlib

    matplotlib.use("Agg")
    with seeded(0):
        return _report(path, candidate, out, reps)


def _report(path: Path, candidate: str, out: Path | None, reps: int) -> Path:
    import matplotlib.pyplot as plt

    library, metrics = _rliable()
    curves, frames = read_curves(path)
    scores = normalised(curves)
    if candidate not in scores:
        raise SystemExit(f"--candidate {candidate!r} is not on every task of {path}; algorithms: {sorted(scores)}")
    others = [a for a in sorted(scores) if a != candidate]
    tasks = sorted(curves)
    state = lambda: np.random.RandomState(0)  # noqa: E731

    from benchmarl_ext.runs import provenance

    lines = [f"# Evaluation protocol: {path.name}", "",
             f"Analysis: {provenance()} " + (
                 "Input: BenchMARL's json files under this folder; each run's configuration is in its own folder."
                 if path.is_dir() else f"The runs' own date, machine and commit are in the report that wrote `{path.name}`."),
             "",
             f"rliable, {reps:,} bootstrap resamples, {CONFIDENCE:.0%} percentile intervals; "
             f"{scores[candidate].shape[0]} seeds per algorithm and task.", "",
             "## Per task: final evaluation return, mean [95% CI]", "",
             "| task | " + " | ".join(sorted(scores)) + " |", "|---" * (len(scores) + 1) + "|"]
    for task in tasks:
        cells = []
        for algorithm in sorted(scores):
            mean, low, high = interval(curves[task][algorithm][:, -1], reps=reps)
            cells.append(f"{mean:.3f} [{low:.3f}, {high:.3f}]")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")

    absolute = read_absolute_metrics(path) if path.is_dir() else None
    if absolute is not None:
        lines += ["", "## Per task: absolute metric, mean [95% CI]", "",
                  "Each run's best evaluation (by mean return), its parameters evaluated again at the end "
                  "(`absolute_metric_episodes`).", "",
                  "| task | " + " | ".join(sorted(scores)) + " |", "|---" * (len(scores) + 1) + "|"]
        for task in tasks:
            cells = [("{:.3f} [{:.3f}, {:.3f}]".format(*interval(absolute[task][a], reps=reps))
                      if a in absolute.get(task, {}) else "-") for a in sorted(scores)]
            lines.append(f"| {task} | " + " | ".join(cells) + " |")

    final = {a: s[:, :, -1] for a, s in scores.items()}  # [seeds, tasks]
    estimate, bounds = library.get_interval_estimates(
        final, lambda x: np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x)]), reps=reps,
        confidence_interval_size=CONFIDENCE, random_state=state())
    lines += ["", f"## Across tasks ({len(tasks)}): final return, min-max normalised per task", "",
              "| algorithm | IQM [95% CI] | mean [95% CI] |", "|---|---|---|"]
    for algorithm in sorted(scores):
        (iqm, mean), ((iqm_low, mean_low), (iqm_high, mean_high)) = estimate[algorithm], bounds[algorithm]  # rows: low, high
        lines.append(f"| {algorithm} | {iqm:.3f} [{iqm_low:.3f}, {iqm_high:.3f}] | {mean:.3f} [{mean_low:.3f}, {mean_high:.3f}] |")

    pairs = {f"{candidate},{other}": (final[candidate], final[other]) for other in others}
    improvement, improvement_bounds = library.get_interval_estimates(
        pairs, metrics.probability_of_improvement, reps=min(reps, 2_000), confidence_interval_size=CONFIDENCE,
        random_state=state())
    lines += ["", f"## Probability of improvement of {candidate} (final return)", "",
              "P(X > Y): the chance that a run of X beats a run of Y on a task drawn at random; 0.5 is a tie.", "",
              "| X | Y | P(X > Y) [95% CI] |", "|---|---|---|"]
    for other in others:
        key = f"{candidate},{other}"
        low, high = improvement_bounds[key].ravel()
        lines.append(f"| {candidate} | {other} | {float(improvement[key]):.3f} [{low:.3f}, {high:.3f}] |")

    evaluations = min(s.shape[2] for s in scores.values())
    x = frames[tasks[0]][:evaluations]
    figure, axis = plt.subplots(figsize=(6, 4))
    lines += ["", "## Sample efficiency: IQM of the normalised return at each evaluation", "",
              "| frames | " + " | ".join(sorted(scores)) + " |", "|---" * (len(scores) + 1) + "|"]
    table = {}
    for algorithm in sorted(scores):
        estimate, bounds = library.get_interval_estimates(
            {f"{i}": scores[algorithm][:, :, i] for i in range(evaluations)},
            lambda s: np.array([metrics.aggregate_iqm(s)]), reps=min(reps, 2_000), confidence_interval_size=CONFIDENCE,
            random_state=state())
        iqm = np.array([estimate[f"{i}"][0] for i in range(evaluations)])
        band = np.array([bounds[f"{i}"][:, 0] for i in range(evaluations)])
        table[algorithm] = [f"{v:.3f} [{lo:.3f}, {hi:.3f}]" for v, (lo, hi) in zip(iqm, band)]
        axis.plot(x, iqm, label=algorithm)
        axis.fill_between(x, band[:, 0], band[:, 1], alpha=0.2)
    for i, frame in enumerate(x):
        lines.append(f"| {int(frame):,} | " + " | ".join(table[a][i] for a in sorted(scores)) + " |")
    axis.set_xlabel("frames")
    axis.set_ylabel("IQM normalised return")
    axis.set_title(f"{len(tasks)} tasks, {scores[candidate].shape[0]} seeds")
    axis.legend()
    out = out or (path if path.is_dir() else path.parent)
    out.mkdir(parents=True, exist_ok=True)
    stem = path.name if path.is_dir() else path.stem.removesuffix("_curves")
    figure.tight_layout()
    figure.savefig(out / f"{stem}_protocol.png", dpi=120)
    plt.close(figure)
    lines += ["", f"Tasks: {', '.join(tasks)} (`{stem}_protocol.png`)."]
    target = out / f"{stem}_protocol.md"
    target.write_text("\n".join(lines) + "\n")
    return target


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("curves", type=Path, help="csv with task, algorithm, seed, frames, eval_return, or a folder "
                        "of BenchMARL json files")
    parser.add_argument("--candidate", required=True, help="the algorithm whose probability of improvement is reported")
    parser.add_argument("--out", type=Path, help="folder for the report (default: beside the csv)")
    parser.add_argument("--reps", type=int, default=20_000, help="bootstrap resamples (>= 1000)")
    args = parser.parse_args(argv)
    if args.reps < 1000:
        parser.error(f"--reps must be >= 1000, got {args.reps}")
    if not args.curves.exists():
        parser.error(f"{args.curves}: no such file or folder")
    print(report(args.curves, args.candidate, args.out, args.reps).read_text())


if __name__ == "__main__":
    main()
