"""Seconds per training iteration with 1 and 2 torch threads, on a quiet machine and beside one
busy neighbour process (a pure-Python loop that keeps one core busy), for the main job and for
CoordSum with the authors' settings. The numbers behind the ``benchmarl`` command's thread default.

    python benchmarks/threads.py                    # ~10 min on 2 cores; nothing else may run
    python benchmarks/threads.py --iterations 4 --out /tmp/threads

Each cell is the median over the iterations after the first (evaluation and checkpoints off),
with collection and training seconds beside the total. Writes ``threads.md`` to ``--out``
(default ``benchmarks/results``) with the date, machine, versions and commit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from throughput import TASKS  # noqa: E402  (the same two jobs, with their MAGPO presets)

from benchmarl_ext.plots import read_scalar  # noqa: E402
from benchmarl_ext.runs import benchmarl_run, provenance

NEIGHBOUR = [sys.executable, "-c", "while True: pass"]


def measure(overrides: list[str], frames: int, iterations: int, threads: int, runs_dir: Path, name: str) -> dict:
    """Median collection, training and total seconds per iteration (iterations after the first)."""
    folder = benchmarl_run(
        name,
        [*overrides, f"experiment.max_n_frames={frames * iterations}", "experiment.evaluation=false",
         "experiment.checkpoint_at_end=false"],
        runs_dir,
        threads=threads,
    )
    result = {}
    for key in ("collection", "training", "iteration"):
        per_iteration = read_scalar(folder, f"timers_{key}_time")
        result[key] = statistics.median(v for step, v in per_iteration.items() if step > 0)
    result["frames_per_s"] = frames / result["iteration"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=6, help="iterations per run (the first is not counted)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    if args.iterations < 2:
        parser.error("--iterations must be >= 2 (the first iteration is not counted)")

    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        runs_dir = Path(scratch)
        for job, (overrides, frames, magpo) in TASKS.items():
            # the memoryless transformer guider, as measured before the presets gained memory
            overrides = [f"algorithm={magpo}", "algorithm.guider_memory=none", *overrides]
            for neighbour in (False, True):
                for threads in (1, 2):
                    busy = subprocess.Popen(NEIGHBOUR) if neighbour else None
                    try:
                        cell = measure(overrides, frames, args.iterations, threads, runs_dir, f"run{len(rows)}")
                    finally:
                        if busy is not None:
                            busy.kill()
                            busy.wait()
                    rows.append((job, "one busy neighbour" if neighbour else "quiet", threads, cell))
                    print(rows[-1], flush=True)

    lines = [
        "# Torch threads per process: seconds per iteration",
        "",
        provenance(),
        f"Load average before the first run: {load:.2f} (1 min). Median of iterations 2..{args.iterations} "
        "of MAGPO with the transformer guider, evaluation and checkpoints off; the neighbour is "
        "`python -c 'while True: pass'`. coordsum: CoordSum-3x10 with the authors' settings (8,192 frames "
        "per iteration, 10 epochs x 8 minibatches, `magpo_coordsum_3x10`); balance: vmas/balance, "
        "`experiment=cpu` (3,000 frames, 4 epochs x 2 minibatches), `magpo`.",
        "",
        "| job | machine | threads | collection s | training s | total s | frames/s | vs 1 thread |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for job, machine, threads, cell in rows:
        one = next(c for j, m, t, c in rows if j == job and m == machine and t == 1)
        lines.append(
            f"| {job} | {machine} | {threads} | {cell['collection']:.2f} | {cell['training']:.2f} | "
            f"{cell['iteration']:.2f} | {cell['frames_per_s']:,.0f} | {cell['iteration'] / one['iteration']:.2f}x |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "threads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
