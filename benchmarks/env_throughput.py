"""Stepping speed of the Python-stepped suites (RWARE, LBF) alone and under TorchRL's vector wrappers.

    python benchmarks/env_throughput.py           # about 2 minutes; nothing else may run

For each task: frames per second (one frame = one step of one game, all agents acting) of
uniformly random actions, for one game, ``SerialEnv`` of 8 games (what BenchMARL uses by
default) and ``ParallelEnv`` of 2 processes (``experiment.parallel_collection=true``; one per
core here). The policy's own cost is not included. Writes ``env_throughput.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torchrl.envs import ParallelEnv, SerialEnv

from benchmarl_ext.runs import provenance
from magpo.envs.gym_suites import MultiAgentGymEnv  # noqa: E402

TASKS = [("rware", "tiny-2ag"), ("rware", "large-8ag"), ("lbf", "8x8-2p-2f-coop"), ("lbf", "15x15-4p-5f")]


def frames_per_second(env, steps: int) -> float:
    """Random-action frames per second over ``steps`` vector steps, after a short warm-up."""
    env.set_seed(0)
    env.rollout(10, break_when_any_done=False)
    start = time.perf_counter()
    env.rollout(steps, break_when_any_done=False)
    return steps * max(1, env.batch_size.numel()) / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="vector steps per measurement")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    header = provenance()  # before ParallelEnv, which changes this process's thread count
    rows = []
    for suite, task in TASKS:
        make = lambda suite=suite, task=task: MultiAgentGymEnv(suite, task)  # noqa: E731
        wrappers = {"one game": make(), "SerialEnv x 8": SerialEnv(8, make), "ParallelEnv x 2": ParallelEnv(2, make)}
        cells = {}
        for label, env in wrappers.items():
            cells[label] = frames_per_second(env, args.steps)
            env.close()
        rows.append((f"{suite}/{task}", cells))
        print(suite, task, {k: round(v) for k, v in cells.items()}, flush=True)
    labels = list(rows[0][1])
    lines = ["# Stepping speed of RWARE and LBF (random actions)", "", header, "",
             f"Frames per second (one frame = one step of one game), {args.steps} vector steps after a warm-up, "
             "one torch thread. Command: `python benchmarks/env_throughput.py`.", "",
             "| task | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|",
             *(f"| {task} | " + " | ".join(f"{cells[label]:,.0f}" for label in labels) + " |" for task, cells in rows), ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "env_throughput.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
