"""What the benchmark scripts share: running one `benchmarl run` in its own process, and the
provenance line of a results file (statistics: protocol.py, through rliable)."""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

def benchmarl_run(name: str, overrides: list[str], runs_dir: Path, threads: int | None = None, reuse: bool = False) -> Path:
    """``benchmarl run OVERRIDES`` in a fresh process, logged to ``runs_dir/<name>.log``;
    returns the experiment folder. ``threads`` caps the run's torch threads; with ``reuse`` a run
    that already finished there (it saved its learning curve) is not run again, and an
    unfinished one is started afresh."""
    run_dir = runs_dir / name
    if reuse and (finished := finished_run(run_dir)) is not None:
        print(f"{name}: reusing {finished}", flush=True)
        return finished
    shutil.rmtree(run_dir, ignore_errors=True)
    # the console script, not `python -m`: -m would put the working directory first on sys.path,
    # and from a checkout that shadows an installed (non-editable) package, whose conf/ lives elsewhere
    command = [str(Path(sys.executable).with_name("benchmarl")), "run", *overrides, f"hydra.run.dir={run_dir}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads)) if threads else None
    print(f"{name}: benchmarl run {' '.join(overrides)}", flush=True)
    runs_dir.mkdir(parents=True, exist_ok=True)
    with (runs_dir / f"{name}.log").open("w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, env=env)
    (folder,) = _experiment_folders(run_dir)
    return folder


def _experiment_folders(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.iterdir() if p.is_dir() and not p.name.startswith(".")] if run_dir.exists() else []


def finished_run(run_dir: Path) -> Path | None:
    """The experiment folder of a run that finished in ``run_dir`` (it saved its learning
    curve), else None."""
    finished = [p for p in _experiment_folders(run_dir) if (p / "learning_curve.png").exists()]
    return finished[0] if len(finished) == 1 else None


def run_many(runs: list[tuple[str, list[str]]], runs_dir: Path, jobs: int) -> list[Path]:
    """``(name, overrides)`` runs, ``jobs`` at a time, reusing those already finished in
    ``runs_dir``; returns their experiment folders in the same order. With several jobs each
    run gets cores / jobs torch threads: these small networks gain little from intra-op
    threads, so parallel runs finish a set sooner than threaded ones in sequence."""
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(lambda run: benchmarl_run(*run, runs_dir, threads=threads, reuse=True), runs))


def provenance() -> str:
    """Date, machine, versions and commit, for the header of a results file."""
    import benchmarl
    import torch
    import torchrl
    import vmas

    root = Path(__file__).resolve().parents[1]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True).stdout
    return (
        f"Measured {datetime.date.today().isoformat()} at commit {commit or 'unknown'}{' (with local changes)' if dirty.strip() else ''} "
        f"on {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads here), torchrl {torchrl.__version__}, "
        f"benchmarl {benchmarl.__version__}, vmas {vmas.__version__}."
    )
