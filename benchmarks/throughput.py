"""Training throughput of MAPPO and every MAGPO guider, one run after another.

    python benchmarks/throughput.py --repeats 2           # ~30 min on 2 cores; nothing else may run
    python benchmarks/throughput.py --iterations 4 --tasks coordsum --profile
    python benchmarks/throughput.py --threads 2 --guiders anchored --out benchmarks/results/throughput_2threads
    python benchmarks/throughput.py --guiders anchored --compile --out benchmarks/results/compile

Each run is ``benchmarl run`` in a fresh process (so start-up and peak memory are its own), with
evaluation and checkpoints off, one after the other: MAPPO, then each of ``--guiders``. Tasks:

* ``coordsum``: CoordSum-3x10 with the authors' tuned settings for it (64 envs x 128 steps =
  8,192 frames per iteration, 10 epochs x 8 minibatches; MAGPO: ``magpo_coordsum_3x10`` with each
  guider, ``transformer+gru`` / ``transformer+retention`` with that memory over the episode);
* ``authors``: the authors' whole CoordSum-3x10 recipe (``experiment=coordsum_authors``: 128 envs x
  128 steps = 16,384 frames, their recurrent learner and critic; MAPPO: ``mappo_coordsum_3x10``);
* ``balance``, ``give_way``, ``navigation``, ``dispersion``: that VMAS task with the ``cpu`` preset
  (3,000 frames, 4 epochs x 2 minibatches).

Reported per algorithm: median collection, training and total seconds per iteration (iterations
after the first), frames/s, the ratio of total time to MAPPO's on the same task, start-up seconds
(process start to the first iteration), the first iteration's seconds and peak resident memory.
``--compile`` runs every algorithm a second time with ``compile_networks=true`` (its ratio is to
MAPPO's compiled run; the compilation adds to start-up and the first iteration). ``--repeats R`` runs every
algorithm R times in rotated order and reports medians over the runs, the ratio taken within each
repeat: on a shared 2-core machine one run's timing drifts by tens of percent. ``--profile``
adds a cProfile of MAGPO's training (BenchMARL's optimizer loop only) on CoordSum with the
default (anchored) guider, top entries by own time; ``--profile-authors`` one of the authors'
recipe with the retention guider (the recurrent learner's and critic's share shows there). Writes ``throughput.md`` (and
``throughput_profile.txt``) to ``--out`` with date, machine, versions,
commit and thread count.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarl_ext.plots import read_scalar  # noqa: E402
from benchmarl_ext.runs import provenance

AUTHORS_3X10 = ["experiment.on_policy_collected_frames_per_batch=8192", "experiment.on_policy_n_envs_per_worker=64",
                "experiment.on_policy_n_minibatch_iters=10", "experiment.on_policy_minibatch_size=1024"]
# task -> (overrides, frames per iteration, MAGPO preset, MAPPO preset)
TASKS = {
    "coordsum": (["task=coordsum/3x10", "experiment=coordsum", *AUTHORS_3X10], 8192, "magpo_coordsum_3x10", "mappo"),
    # the authors' whole recipe: 128 envs x 128 steps, recurrent learner and critic, their epochs
    "authors": (["task=coordsum/3x10", "experiment=coordsum_authors"], 16384, "magpo_coordsum_3x10", "mappo_coordsum_3x10"),
    **{name: ([f"task=vmas/{name}", "experiment=cpu"], 3000, "magpo", "mappo")
       for name in ("balance", "give_way", "navigation", "dispersion")},
}
# guider, or guider+memory; the default first
GUIDERS = ("anchored", "transformer", "residual", "transformer+gru", "transformer+retention")

# Runs in the child: time stamps the entry of the training loop, reports peak memory at the end.
CHILD = """
import resource, sys, time
from benchmarl_ext.experiment import MagpoExperiment
loop = MagpoExperiment._collection_loop
def timed(self):
    print("LOOP_START", time.time(), flush=True)
    return loop(self)
MagpoExperiment._collection_loop = timed
from benchmarl_ext.cli import main
main(sys.argv[1:])
print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
"""


def run(overrides: list[str], run_dir: Path, threads: int) -> dict:
    """One ``benchmarl run`` in a fresh process; its per-iteration medians, start-up and memory."""
    env = dict(os.environ, MAGPO_NUM_THREADS=str(threads))
    env.pop("OMP_NUM_THREADS", None)
    started = time.time()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, "run", *overrides, f"hydra.run.dir={run_dir}"],
        check=True, capture_output=True, text=True, env=env,
    ).stdout
    marks = dict(line.split()[:2] for line in out.splitlines() if line.startswith(("LOOP_START", "PEAK_RSS_KB")))
    (folder,) = [p for p in run_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    cell = {}
    for key in ("collection", "training", "iteration"):
        per_iteration = read_scalar(folder, f"timers_{key}_time")
        cell[key] = statistics.median(v for step, v in per_iteration.items() if step > 0)
    cell["first"] = read_scalar(folder, "timers_iteration_time")[0]
    cell["startup"] = float(marks["LOOP_START"]) - started
    cell["peak_mb"] = int(marks["PEAK_RSS_KB"]) / 1024
    return cell


def profile(overrides: list[str], out: Path, threads: int, top: int = 30) -> None:
    """cProfile of MAGPO's training (BenchMARL's optimizer loop, nothing else) in a short run in
    this process; top entries by own time to ``out``."""
    import cProfile
    import io
    import pstats

    import torch
    from benchmarl.experiment.experiment import Experiment

    from benchmarl_ext.cli import main

    torch.set_num_threads(threads)
    profiler = cProfile.Profile()
    optimizer_loop = Experiment._optimizer_loop

    def profiled(self, group):
        profiler.enable()
        try:
            return optimizer_loop(self, group)
        finally:
            profiler.disable()

    Experiment._optimizer_loop = profiled
    try:
        with tempfile.TemporaryDirectory() as scratch:
            main(["run", *overrides, f"hydra.run.dir={scratch}"])
    finally:
        Experiment._optimizer_loop = optimizer_loop
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    out.write_text(f"{provenance()}\nProfiled (training only): benchmarl run {' '.join(overrides)}\n{text.getvalue()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=6, help="iterations per run, >= 2 (the first is not counted)")
    parser.add_argument("--tasks", default="coordsum,balance", help=f"comma-separated, from {list(TASKS)}")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (the command's default: 1)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of every algorithm, >= 1, in rotated order")
    parser.add_argument("--guiders", default=",".join(GUIDERS), help=f"comma-separated MAGPO guiders, from {list(GUIDERS)}")
    parser.add_argument("--compile", action="store_true", help="also every algorithm with compile_networks=true")
    parser.add_argument("--profile", action="store_true", help="also profile MAGPO training on CoordSum")
    parser.add_argument("--profile-authors", action="store_true",
                        help="also profile the authors' recipe's training with the retention guider")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    tasks, guiders = args.tasks.split(","), args.guiders.split(",")
    if (args.iterations < 2 or args.threads < 1 or args.repeats < 1 or any(t not in TASKS for t in tasks)
            or any(g not in GUIDERS for g in guiders)):
        parser.error(f"--iterations >= 2, --threads >= 1, --repeats >= 1, --tasks from {list(TASKS)}, "
                     f"--guiders from {list(GUIDERS)}")

    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for task in tasks:
            overrides, frames, magpo, mappo_preset = TASKS[task]
            budget = [f"experiment.max_n_frames={frames * args.iterations}", "experiment.evaluation=false",
                      "experiment.checkpoint_at_end=false"]
            algorithms = [("MAPPO", [f"algorithm={mappo_preset}"])] + [
                (f"MAGPO {guider.replace('+', ' + ')}{' (default)' * (guider == 'anchored')}",
                 [f"algorithm={magpo}", f"algorithm.guider={guider.split('+')[0]}",
                  f"algorithm.guider_memory={(guider.split('+') + ['none'])[1]}"])
                for guider in guiders
            ]
            if args.compile:
                algorithms += [(f"{name} compiled", [*algorithm, "compile_networks=true"]) for name, algorithm in algorithms]
            cells: dict[str, list[dict]] = {name: [] for name, _ in algorithms}
            for repeat in range(args.repeats):  # the order rotated, so that drift hits every algorithm alike
                shift = repeat % len(algorithms)
                for index, (name, algorithm) in enumerate(algorithms[shift:] + algorithms[:shift]):
                    cell = run([*algorithm, *overrides, *budget], Path(scratch) / f"{task}_{repeat}_{index}", args.threads)
                    cells[name].append(cell)
                    print(task, name, repeat, {k: round(v, 3) for k, v in cell.items()}, flush=True)
            for name, _ in algorithms:
                # per repeat, the ratio to MAPPO's run of the same repeat; medians over repeats
                mappo = cells["MAPPO compiled" if name.endswith(" compiled") else "MAPPO"]
                ratios = [c["iteration"] / m["iteration"] for c, m in zip(cells[name], mappo)]
                cell = {key: statistics.median(c[key] for c in cells[name]) for key in cells[name][0]}
                cell["ratio"] = statistics.median(ratios)
                cell["ratios"] = ratios
                cell["frames_per_s"] = frames / cell["iteration"]
                rows.append((task, name, cell))

    lines = [
        "# Training throughput: MAPPO and MAGPO, seconds per iteration",
        "",
        provenance(),
        f"{args.threads} torch thread(s) per run; load average before the first run {load:.2f} (1 min). "
        f"Median of iterations 2..{args.iterations} of each run; {args.repeats} run(s) per algorithm, in rotated "
        "order, and the median over them (total vs MAPPO: the median over repeats of the ratio to MAPPO's run of the "
        "same repeat; each repeat's ratio in parentheses). Evaluation and checkpoints off. coordsum: CoordSum-3x10, "
        "8,192 frames per iteration, 10 epochs x 8 minibatches (the authors' tuned settings), MAGPO "
        "`magpo_coordsum_3x10`. authors: their whole recipe, `experiment=coordsum_authors` (16,384 frames, recurrent "
        "learner and critic), `magpo_coordsum_3x10` against `mappo_coordsum_3x10`. The VMAS tasks: `experiment=cpu` "
        "(3,000 frames, 4 x 2), MAGPO `magpo`."
        + (" Rows marked compiled: `compile_networks=true`, their ratio to MAPPO compiled; the compilation adds to "
           "start-up and the first iteration." if args.compile else ""),
        "",
        "| task | algorithm | collection s | training s | total s | frames/s | total vs MAPPO | start-up s | first iteration s | peak MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for task, name, cell in rows:
        each = f" ({', '.join(f'{r:.2f}' for r in cell['ratios'])})" if args.repeats > 1 else ""
        lines.append(
            f"| {task} | {name} | {cell['collection']:.2f} | {cell['training']:.2f} | {cell['iteration']:.2f} | "
            f"{cell['frames_per_s']:,.0f} | {cell['ratio']:.2f}x{each} | {cell['startup']:.1f} | {cell['first']:.1f} | {cell['peak_mb']:,.0f} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.profile_authors:
        overrides, frames, magpo, _ = TASKS["authors"]
        profile([f"algorithm={magpo}", "algorithm.guider_memory=retention", *overrides,
                 f"experiment.max_n_frames={frames * 2}", "experiment.evaluation=false",
                 "experiment.checkpoint_at_end=false"], args.out / "throughput_profile_authors.txt", args.threads)
        print(f"profile: {args.out / 'throughput_profile_authors.txt'}")
    if args.profile:
        overrides, frames, magpo, _ = TASKS["coordsum"]
        profile(
            [f"algorithm={magpo}", "algorithm.guider=anchored", "algorithm.guider_memory=none", *overrides,
             f"experiment.max_n_frames={frames * 2}", "experiment.evaluation=false",
             "experiment.checkpoint_at_end=false"],
            args.out / "throughput_profile.txt", args.threads,
        )
        print(f"profile: {args.out / 'throughput_profile.txt'}")


if __name__ == "__main__":
    main()
