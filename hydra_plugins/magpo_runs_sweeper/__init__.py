"""A Hydra sweeper that launches an explicit list of runs through any Hydra launcher.

Hydra's own sweepers build grids (the basic one a product of value lists, Optuna a search), but a
benchmark is a list: each run pairs a task with its own algorithm preset and budget, and a set
that was interrupted needs only the runs it lacks. ``hydra/sweeper=magpo_runs`` reads that list
from a json file and hands it, unchanged, to the configured launcher (``hydra/launcher=
magpo_local``, ``magpo_slurm``, ``magpo_ray`` or Hydra's basic one), so the benchmark scripts
scale out on the same engines as ``benchmarl run -m``:

    benchmarl run -m hydra/sweeper=magpo_runs hydra.sweeper.runs_file=runs.json \\
        hydra/launcher=magpo_local hydra.launcher.n_jobs=2 hydra.sweep.dir=outputs/x

The file holds ``[{"name": str, "overrides": [str, ...]}, ...]``; run ``name`` is written to
``<hydra.sweep.dir>/<name>``, and the command line's own overrides apply to every run.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, List

from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf

log = logging.getLogger(__name__)
NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def read_runs(path: str | Path) -> list[dict]:
    """The runs of a runs file, checked: a non-empty list of ``{"name", "overrides"}`` with
    distinct names made of letters, digits, ``_ . -``, and overrides that are strings."""
    field = "hydra.sweeper.runs_file"
    try:
        runs = json.loads(Path(path).read_text())
    except (OSError, TypeError, ValueError) as err:
        raise ValueError(f"{field}={path!r}: not a readable json file ({err})") from None
    if not isinstance(runs, list) or not runs:
        raise ValueError(f"{field}={path!r}: expected a non-empty list of runs")
    names = set()
    for run in runs:
        if not (isinstance(run, dict) and set(run) == {"name", "overrides"} and isinstance(run["name"], str)
                and NAME.match(run["name"]) and isinstance(run["overrides"], list)
                and all(isinstance(o, str) for o in run["overrides"])):
            raise ValueError(f"{field}={path!r}: every run must be {{\"name\": <letters, digits, _ . ->, "
                             f"\"overrides\": [<str>, ...]}}, got {run!r}")
        if run["name"] in names:
            raise ValueError(f"{field}={path!r}: run name {run['name']!r} appears twice")
        names.add(run["name"])
    return runs


class RunListSweeper(Sweeper):
    """Launches every run of ``runs_file`` in one batch through the configured launcher.

    Args:
        runs_file: path of the json list of runs (see the module docstring).
    """

    def __init__(self, runs_file: str | None = None):
        super().__init__()
        self.runs_file = runs_file
        self.launcher = None
        self.config = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: List[str]) -> Any:
        if self.runs_file is None:
            raise ValueError("hydra.sweeper.runs_file: missing; the json list of runs to launch")
        runs = read_runs(self.runs_file)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        batch = [[*arguments, *run["overrides"], f"hydra.sweep.subdir={run['name']}"] for run in runs]
        log.info(f"magpo_runs: launching {len(batch)} runs into {sweep_dir}")
        returns = self.launcher.launch(batch, initial_job_idx=0)
        failed = [run["name"] for run, ret in zip(runs, returns) if ret.status != JobStatus.COMPLETED]
        if failed:
            first = next(ret for ret in returns if ret.status != JobStatus.COMPLETED)
            raise RuntimeError(f"magpo_runs: {len(failed)} of {len(runs)} runs failed: {', '.join(failed)}") from (
                first._return_value if isinstance(first._return_value, BaseException) else None)
        return returns
