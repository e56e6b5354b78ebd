"""Checkpoint files that fail safe, and what exact resume needs beyond BenchMARL's state.

* :func:`read_checkpoint` loads and validates a file before any environment or logger exists:
  readable, the expected entries, and the algorithm, task and agent groups of the run it is
  loaded into. Every failure names the file and what is wrong.
* :func:`save_atomically` writes a temporary file and renames it, so a run killed while
  writing leaves the previous checkpoint intact and no partial file behind.
* :func:`rng_state` / :func:`set_rng_state`: every global generator (python, numpy, torch, CUDA).
* :func:`trim_scalar_logs`: a resumed run drops the csv rows its crashed predecessor wrote after
  the checkpoint, so its logs continue without duplicate steps.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

# Entries of MagpoExperiment.state_dict() beyond BenchMARL's per-group loss_/buffer_ entries.
REQUIRED = ("state", "collector", "optimizers", "rng", "run")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be resumed or evaluated in the run it was given to."""


def rng_state() -> dict:
    """The state of every global random-number generator a run draws from."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomically(state: dict, path: Path) -> None:
    """``torch.save`` to ``path`` through a temporary file in the same folder and a rename."""
    partial = path.with_name(path.name + ".partial")
    try:
        torch.save(state, partial)
        with open(partial, "rb") as written:
            os.fsync(written.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def read_checkpoint(path: str | os.PathLike, *, algorithm: str, task: str, map_location=None) -> dict:
    """Load ``path`` and check it belongs to a run of ``algorithm`` on ``task`` (``"vmas/balance"``).

    The agent groups are checked once the task has built them (``MagpoExperiment._load_experiment``).

    Raises:
        CheckpointError: naming the file and the problem (missing, unreadable, not a
            checkpoint of this project, missing entries, or another algorithm or task).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # torch raises several types for a truncated or foreign file
        raise CheckpointError(f"checkpoint {path}: unreadable ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path}: holds a {type(state).__name__}, not an experiment state")
    missing = [key for key in REQUIRED if key not in state]
    if not any(key.startswith("loss_") for key in state):
        missing.append("loss_<group>")
    if missing:
        raise CheckpointError(
            f"checkpoint {path}: missing {missing}; it was not written by MagpoExperiment "
            "(BenchMARL's own checkpoints lack the optimizer and random-generator states exact resume needs)"
        )
    run = state["run"] if isinstance(state["run"], dict) else {}
    for field, expected_value in (("algorithm", algorithm), ("task", task)):
        if run.get(field) != expected_value:
            raise CheckpointError(
                f"checkpoint {path}: written by a run with {field} {run.get(field)!r}, "
                f"but this run has {field} {expected_value!r}"
            )
    return state


def trim_scalar_logs(log_dir: Path, first_step: int) -> None:
    """Drop the rows with step >= ``first_step`` from every csv file in ``log_dir/scalars``."""
    for csv_file in sorted((log_dir / "scalars").glob("*.csv")):
        rows = csv_file.read_text().splitlines(keepends=True)
        kept = [row for row in rows if int(row.split(",", 1)[0]) < first_step]
        if len(kept) != len(rows):
            partial = csv_file.with_name(csv_file.name + ".partial")
            partial.write_text("".join(kept))
            os.replace(partial, csv_file)
