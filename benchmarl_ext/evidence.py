"""The evidence behind ``benchmarks/RESULTS.md``: a declarative list of experiments
(``benchmarks/evidence.yaml``), the runs it implies, the per-seed CSVs they leave, and the page
built from those CSVs alone (``python benchmarks/evidence.py``; ``--report-only`` runs nothing).

Three kinds of experiment:

* ``training``: ``benchmarl run algorithm=<preset> task=<task> <settings> seed=<s>
  experiment.max_n_frames=<frames>`` for every preset and seed, launched through the project's
  Hydra launcher (:func:`benchmarl_ext.runs.run_many`). Each run's learner evaluation curve (and,
  for guided methods, its guider's) goes to ``curves.csv``.
* ``didactic``: the paper's Section 3 game (:func:`magpo.didactic.train`) with the loss presets of
  ``conf/loss``; exact final success probabilities go to ``didactic.csv``.
* ``scaling``: a few iterations per number of agents, each run alone in its own process; the
  median seconds per iteration and the peak resident memory go to ``scaling.csv``.

Every run leaves one row in ``runs.csv``: its overrides, commit, date, machine, versions, torch
threads and how many runs shared the machine. A run whose overrides are already there is reused,
not run again; a result that disagrees (other overrides under the same name, in the CSVs or in
the runs folder) is refused before anything runs, as are unknown claims, tasks and presets, seed
counts below 1 and frames that are not a multiple of the batch.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarl_ext import protocol
from benchmarl_ext.plots import frames_of, read_scalar
from benchmarl_ext.runs import code_commit, finished_run, run_many, run_overrides

KINDS = ("training", "didactic", "scaling")
GUIDED = ("magpo", "ctds")  # presets whose name starts so collect with a guider and log eval_guider/...
RUN_FIELDS = ("experiment", "preset", "seed", "overrides", "commit", "date", "machine", "versions", "threads", "concurrent")
CURVE_FIELDS = ("experiment", "preset", "seed", "frames", "learner", "guider")
DIDACTIC_FIELDS = ("experiment", "preset", "seed", "guider_success", "learner_success")
# what a scaling run adds to its overrides: it measures time, so it logs to csv and does nothing else
SCALING_SETTINGS = ("experiment.loggers=[csv]", "experiment.evaluation=false", "experiment.checkpoint_at_end=false")
# per training run: median seconds of its iterations after the first (runs of one batch share the machine)
TIMING_FIELDS = ("experiment", "preset", "seed", "seconds_per_iteration", "collection_seconds", "training_seconds")
SCALING_FIELDS = ("experiment", "preset", "n_agents", "seconds_per_iteration", "collection_seconds", "training_seconds",
                  "peak_rss_mb")


class SpecError(ValueError):
    """A bad entry of the experiment list, named with what is allowed."""


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One entry of ``evidence.yaml``; see the file's header for the meaning of each field."""

    name: str
    claim: str
    kind: str
    presets: dict[str, tuple[int, ...]]  # preset -> its seeds
    task: str | None = None
    settings: tuple[str, ...] = ()
    frames: int | None = None
    rerun: bool = True
    iterations: int | None = None
    agents: tuple[int, ...] = ()
    thresholds: tuple[float, ...] = ()

    def run_name(self, preset: str, seed: int, n_agents: int | None = None) -> str:
        slug = re.sub(r"[^A-Za-z0-9]+", "_", preset).strip("_")
        return f"{slug}_n{n_agents}" if n_agents is not None else f"{slug}_seed{seed}"

    def overrides(self, preset: str, seed: int, n_agents: int | None = None) -> list[str]:
        """The ``benchmarl run`` overrides of one run (training and scaling kinds)."""
        algorithm, *extra = preset.split("+")
        run = [f"algorithm={algorithm}", *extra, f"task={self.task}", *self.settings, f"seed={seed}"]
        if n_agents is not None:
            run.append(f"task.n_agents={n_agents}")
        if self.frames is not None:
            run.append(f"experiment.max_n_frames={self.frames}")
        return run


def parse_seeds(text, where: str) -> tuple[int, ...]:
    """``"0-9"``, ``"0-4,20-24"`` or an integer: the seeds, each >= 0, at least one."""
    seeds = []
    for part in str(text).split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None:
            raise SpecError(f"{where}: seeds must be like '0-9' or '0-4,20-24', got {text!r}")
        first, last = int(match[1]), int(match[2] if match[2] is not None else match[1])
        seeds += range(first, last + 1)
    if len(seeds) < 1:
        raise SpecError(f"{where}: the seed count must be >= 1, got {text!r}")
    if len(set(seeds)) != len(seeds):
        raise SpecError(f"{where}: a seed appears twice in {text!r}")
    return tuple(seeds)


def load_spec(path: Path) -> tuple[dict[str, dict], list[Experiment]]:
    """The claims and experiments of ``path``, checked field by field (:class:`SpecError`)."""
    import yaml

    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("claims"), dict) or not isinstance(data.get("experiments"), list):
        raise SpecError(f"{path}: needs a 'claims' mapping and an 'experiments' list")
    claims, experiments = data["claims"], []
    allowed = {f.name for f in dataclasses.fields(Experiment)}
    for index, entry in enumerate(data["experiments"]):
        where = f"{path.name}: experiments[{index}]" + (f" ({entry.get('name')})" if isinstance(entry, dict) else "")
        if not isinstance(entry, dict):
            raise SpecError(f"{where}: must be a mapping")
        unknown = set(entry) - allowed
        if unknown:
            raise SpecError(f"{where}: unknown fields {sorted(unknown)}; allowed: {sorted(allowed)}")
        if entry.get("claim") not in claims:
            raise SpecError(f"{where}: claim {entry.get('claim')!r} is not one of {sorted(claims)}")
        if entry.get("kind") not in KINDS:
            raise SpecError(f"{where}: kind {entry.get('kind')!r} is not one of {list(KINDS)}")
        presets = entry.get("presets")
        if not isinstance(presets, dict) or not presets:
            raise SpecError(f"{where}: presets must map each preset to its seeds, e.g. {{magpo: 0-9}}")
        fields = dict(entry)
        fields["presets"] = {str(p): parse_seeds(s, f"{where}: presets.{p}") for p, s in presets.items()}
        for name in ("settings", "agents", "thresholds"):
            fields[name] = tuple(entry.get(name, ()))
        frames, iterations = entry.get("frames"), entry.get("iterations")
        for name, value in (("frames", frames), ("iterations", iterations)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise SpecError(f"{where}: {name} must be an integer >= 1, got {value!r}")
        if entry["kind"] == "training" and (frames is None or entry.get("task") is None):
            raise SpecError(f"{where}: a training experiment needs a task and frames")
        if entry["kind"] == "scaling" and (not fields["agents"] or frames is None or entry.get("task") is None):
            raise SpecError(f"{where}: a scaling experiment needs a task, agents and frames (a few iterations)")
        if entry["kind"] == "didactic" and iterations is None:
            raise SpecError(f"{where}: a didactic experiment needs iterations")
        experiments.append(Experiment(**fields))
    names = [e.name for e in experiments]
    if len(set(names)) != len(names):
        raise SpecError(f"{path.name}: experiment names must be unique, got {names}")
    return claims, experiments


def check_against_configs(experiments: list[Experiment]) -> None:
    """Compose every preset's first run with Hydra, as ``benchmarl run`` would: an unknown task or
    preset, or frames that are not a multiple of the batch, is refused naming the entry."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from benchmarl_ext.registration import register

    register()
    from importlib.resources import files

    losses = {p.name.removesuffix(".yaml") for p in (files("benchmarl_ext.conf") / "loss").iterdir() if p.name.endswith(".yaml")}
    with initialize_config_module(config_module="benchmarl_ext.conf", version_base=None):
        for experiment in experiments:
            for preset, seeds in experiment.presets.items():
                where = f"experiment {experiment.name}, preset {preset!r}"
                if experiment.kind == "didactic":
                    if preset not in losses:
                        raise SpecError(f"{where}: the didactic game takes a loss preset of conf/loss: {sorted(losses)}")
                    continue
                n_agents = experiment.agents[0] if experiment.kind == "scaling" else None
                try:
                    cfg = compose(config_name="config", overrides=experiment.overrides(preset, seeds[0], n_agents))
                except (HydraException, OmegaConfBaseException) as error:
                    raise SpecError(f"{where}: not a preset or task the benchmarl command knows ({error})") from None
                batch = cfg.experiment.on_policy_collected_frames_per_batch
                if experiment.frames is not None and experiment.frames % batch:
                    raise SpecError(f"{where}: frames {experiment.frames} is not a multiple of the batch ({batch} frames)")


# ----------------------------------------------------------------------------------- the CSVs


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, fields: tuple[str, ...], rows: list[dict]) -> None:
    """Write ``rows`` sorted (so the file does not depend on the order runs finished), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", newline="") as f:
        writer = csv.DictWriter(f, fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: tuple(_sort_key(r[k]) for k in fields)))
    partial.replace(path)


def _sort_key(value):
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


TABLES = {"runs": RUN_FIELDS, "curves": CURVE_FIELDS, "didactic": DIDACTIC_FIELDS, "scaling": SCALING_FIELDS,
          "timing": TIMING_FIELDS}


def run_key(row: dict) -> tuple[str, str, str]:
    """The run a row of any table belongs to: (experiment, preset, seed), the seed being ``n<agents>``
    for a scaling run."""
    seed = row["seed"] if "seed" in row else f"n{row['n_agents']}"
    return row["experiment"], row["preset"], str(seed)


class Results:
    """The committed per-seed CSVs under one folder: read once, written back after each batch.

    Saving merges with the files as they are then: rows of runs this object did not record are taken
    from disk, so two batches writing the same folder (one started while the other ran) keep each
    other's runs."""

    def __init__(self, folder: Path):
        self.folder = folder
        for table in TABLES:
            setattr(self, table, read_rows(folder / f"{table}.csv"))
        self.added: set[tuple[str, str, str]] = set()  # runs recorded by this object, not yet saved

    def recorded(self, experiment: str, preset: str, seed) -> dict | None:
        for row in self.runs:
            if run_key(row) == (experiment, preset, str(seed)):
                return row
        return None

    def add(self, run_row: dict, table: str, rows: list[dict]) -> None:
        """Record one run (its ``runs.csv`` row and its rows of ``table``; the rows it had in any table
        go), as text, as the CSVs hold it."""
        key = run_key(run_row)
        for name in TABLES:
            setattr(self, name, [r for r in getattr(self, name) if run_key(r) != key])
        self.runs.append({k: str(v) for k, v in run_row.items()})
        getattr(self, table).extend({k: str(v) for k, v in row.items()} for row in rows)
        self.added.add(key)

    def save(self) -> None:
        """Write every table: this object's runs, and every other run as the files hold it now."""
        for table, fields in TABLES.items():
            on_disk = [r for r in read_rows(self.folder / f"{table}.csv") if run_key(r) not in self.added]
            mine = [r for r in getattr(self, table) if run_key(r) in self.added]
            setattr(self, table, on_disk + mine)
            write_rows(self.folder / f"{table}.csv", fields, on_disk + mine)


def machine_row(experiment: str, preset: str, seed, overrides: list[str], threads: int, concurrent: int,
                launched: dict | None = None) -> dict:
    """A ``runs.csv`` row: the run's identity and provenance (``launched``: the commit and date it
    was launched at, from its folder's ``launched.json``; else this checkout's, now)."""
    import benchmarl
    import tensordict
    import torch
    import torchrl
    import vmas

    launched = launched or {"commit": code_commit(), "date": _today()}
    return {
        "experiment": experiment, "preset": preset, "seed": seed, "overrides": " ".join(overrides),
        "commit": launched["commit"], "date": launched["date"],
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "versions": f"python {platform.python_version()} torch {torch.__version__} torchrl {torchrl.__version__} "
                    f"tensordict {tensordict.__version__} benchmarl {benchmarl.__version__} vmas {vmas.__version__}",
        "threads": threads, "concurrent": concurrent,
    }


def _today() -> str:
    import datetime

    return datetime.date.today().isoformat()


def check_consistency(experiments: list[Experiment], results: Results, runs_root: Path) -> None:
    """Refuse results made with other overrides than the list now asks for: rows in the CSVs, or
    finished runs in the runs folder, under the same experiment, preset and seed."""
    for experiment in experiments:
        if experiment.kind == "didactic":
            continue
        for preset, seeds in experiment.presets.items():
            for seed in seeds:
                for n_agents in experiment.agents or (None,):
                    wanted = experiment.overrides(preset, seed, n_agents)
                    tag = seed if n_agents is None else f"n{n_agents}"
                    row = results.recorded(experiment.name, preset, tag)
                    if row is not None and sorted(row["overrides"].split()) != sorted(wanted):
                        raise SpecError(
                            f"experiment {experiment.name}, preset {preset!r}, seed {tag}: runs.csv holds a run made with "
                            f"'{row['overrides']}', the list asks for '{' '.join(wanted)}'; remove its rows to run it anew")
                    folder = runs_root / experiment.name / experiment.run_name(preset, seed, n_agents)
                    made = run_overrides(folder) if finished_run(folder) is not None else None
                    ran = wanted + list(SCALING_SETTINGS) if experiment.kind == "scaling" else wanted
                    if made is not None and sorted(made) != sorted(ran):
                        raise SpecError(
                            f"{folder} holds a run made with '{' '.join(made)}', the list asks for '{' '.join(ran)}'; "
                            f"move it away to run it anew")


# ----------------------------------------------------------------------------------- running


def run_training(experiment: Experiment, results: Results, runs_root: Path, launch: dict | None) -> None:
    """Run (or reuse) every missing run of a training experiment, then record its curves. With
    ``launch`` None, only record the runs that already finished in the runs folder with the
    list's overrides (runs launched elsewhere, or a batch still under way) and launch nothing."""
    todo = [(preset, seed) for preset, seeds in experiment.presets.items() for seed in seeds
            if results.recorded(experiment.name, preset, seed) is None]
    if launch is None:
        for preset, seed in todo:
            overrides = experiment.overrides(preset, seed)
            folder = finished_run(runs_root / experiment.name / experiment.run_name(preset, seed), overrides)
            if folder is not None:
                record_training_run(experiment.name, preset, seed, overrides, folder, results, concurrent=2)
        return
    if not todo:
        return
    if not experiment.rerun:
        missing = ", ".join(f"{p} seed {s}" for p, s in todo)
        raise SpecError(f"experiment {experiment.name} is marked rerun: false (kept results) but lacks {missing}")
    runs = [(experiment.run_name(p, s), experiment.overrides(p, s)) for p, s in todo]
    folders = run_many(runs, runs_root / experiment.name, **launch)
    for (preset, seed), (_, overrides), folder in zip(todo, runs, folders):
        record_training_run(experiment.name, preset, seed, overrides, folder, results, concurrent=launch["jobs"])


def record_training_run(experiment: str, preset: str, seed: int, overrides: list[str], folder: Path, results: Results,
                        concurrent: int) -> None:
    """Add one finished run's evaluation curves (learner, and guider where it has one) to ``results``."""
    frames = frames_of(folder)
    learner = read_scalar(folder, "eval_reward_episode_reward_mean")
    guider = read_scalar(folder, "eval_guider_reward_episode_reward_mean") if preset.startswith(GUIDED) else {}
    rows = [{"experiment": experiment, "preset": preset, "seed": seed, "frames": int(frames[step]),
             "learner": f"{value:.6g}", "guider": f"{guider[step]:.6g}" if step in guider else ""}
            for step, value in sorted(learner.items())]
    record = folder.parent / "launched.json"
    launched = json.loads(record.read_text()) if record.exists() else None
    results.add(machine_row(experiment, preset, seed, overrides, 1, concurrent, launched), "curves", rows)
    times = {name: [v for _, v in sorted(read_scalar(folder, f"timers_{name}_time").items())][1:]
             for name in ("iteration", "collection", "training")}
    if all(times.values()):  # the first iteration holds the start-up
        median = {name: f"{statistics.median(values):.4f}" for name, values in times.items()}
        results.timing.append({"experiment": experiment, "preset": preset, "seed": str(seed),
                               "seconds_per_iteration": median["iteration"], "collection_seconds": median["collection"],
                               "training_seconds": median["training"]})


def run_didactic(experiment: Experiment, results: Results) -> None:
    """The didactic game for every loss preset and seed not yet recorded (seconds each), with the
    settings of ``conf/demo.yaml`` and the experiment's iterations."""
    import torch
    from hydra import compose, initialize_config_module

    from magpo import LossOptions, didactic

    with initialize_config_module(config_module="benchmarl_ext.conf", version_base=None):
        cfg = compose(config_name="demo", overrides=[f"iterations={experiment.iterations}"])
    torch.set_num_threads(1)  # as every run of the page: one torch thread
    for preset, seeds in experiment.presets.items():
        fields = dict(cfg.methods[preset])
        entropy = fields.pop("entropy_coeff")
        overrides = [f"loss={preset}", f"iterations={cfg.iterations}", f"batch={cfg.batch}", f"epochs={cfg.epochs}",
                     f"lr={cfg.lr}"]
        for seed in seeds:
            if results.recorded(experiment.name, preset, seed) is not None:
                continue
            history = didactic.train(LossOptions(**fields), iterations=cfg.iterations, seed=seed, batch=cfg.batch,
                                     epochs=cfg.epochs, lr=cfg.lr, entropy_coeff=entropy)
            guider, learner = history[-1]
            print(f"{experiment.name}: {preset} seed {seed}: guider {guider:.3f}, learner {learner:.3f}", flush=True)
            results.add(machine_row(experiment.name, preset, seed, overrides, torch.get_num_threads(), 1), "didactic",
                        [{"experiment": experiment.name, "preset": preset, "seed": seed,
                          "guider_success": f"{guider:.6f}", "learner_success": f"{learner:.6f}"}])


SCALING_CHILD = """
import json, resource, sys
from benchmarl_ext import cli
cli.main(sys.argv[1:])
print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def run_scaling(experiment: Experiment, results: Results, runs_root: Path) -> None:
    """Each (preset, number of agents) alone in its own process, one torch thread: median seconds
    per iteration (collection and training, the first iteration left out) and peak memory."""
    for preset, seeds in experiment.presets.items():
        for n_agents in experiment.agents:
            tag = f"n{n_agents}"
            if results.recorded(experiment.name, preset, tag) is not None:
                continue
            overrides = experiment.overrides(preset, seeds[0], n_agents)
            run_dir = runs_root / experiment.name / experiment.run_name(preset, seeds[0], n_agents)
            command = [sys.executable, "-c", SCALING_CHILD, "run", *overrides, *SCALING_SETTINGS, f"hydra.run.dir={run_dir}"]
            print(f"{experiment.name}: {preset}, {n_agents} agents", flush=True)
            done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, MAGPO_NUM_THREADS="1"))
            if done.returncode != 0:
                raise RuntimeError(f"{experiment.name}: {preset} with {n_agents} agents failed:\n{done.stderr[-3000:]}")
            peak_kb = int(done.stdout.split("PEAK_RSS_KB")[-1].split()[0])
            (folder,) = [p for p in run_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
            times = {name: [v for _, v in sorted(read_scalar(folder, f"timers_{name}_time").items())][1:]
                     for name in ("collection", "training")}
            collection, training = statistics.median(times["collection"]), statistics.median(times["training"])
            results.add(machine_row(experiment.name, preset, tag, overrides, 1, 1), "scaling", [{
                "experiment": experiment.name, "preset": preset, "n_agents": n_agents,
                "seconds_per_iteration": f"{collection + training:.4f}", "collection_seconds": f"{collection:.4f}",
                "training_seconds": f"{training:.4f}", "peak_rss_mb": f"{peak_kb / 1024:.1f}"}])


# ----------------------------------------------------------------------------------- statistics


def curves_of(results: Results, experiment: str, preset: str, policy: str = "learner") -> dict[int, list[tuple[float, float]]]:
    """Per seed, the (frames, return) evaluation curve of ``policy`` (``learner`` or ``guider``)."""
    out: dict[int, list[tuple[float, float]]] = {}
    for row in results.curves:
        if row["experiment"] == experiment and row["preset"] == preset and row[policy] != "":
            out.setdefault(int(row["seed"]), []).append((float(row["frames"]), float(row[policy])))
    return {seed: sorted(points) for seed, points in sorted(out.items())}


def cell(values, digits: int = 2) -> str:
    """``mean [low, high]``: the mean over seeds and its 95% percentile bootstrap CI."""
    if len(values) == 0:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (1 seed)"
    mean, low, high = protocol.interval(values, reps=5_000)
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def signed_cell(values) -> str:
    if len(values) < 2:
        return "-"
    mean, low, high = protocol.interval(values, reps=5_000)
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"


def direction(values) -> str:
    """``above``, ``below`` or ``level``: where the 95% CI of the mean of ``values`` lies against 0."""
    if len(values) < 2:
        return "unknown"
    _, low, high = protocol.interval(values, reps=5_000)
    return "above" if low > 0 else "below" if high < 0 else "level"


def paired(a: dict[int, float], b: dict[int, float]) -> list[float]:
    """``a - b`` on the seeds both have (same seed: same environments and, for a MAGPO preset, the
    same initial actor and critic as MAPPO's)."""
    return [a[s] - b[s] for s in sorted(set(a) & set(b))]


def first_frames_reaching(points: list[tuple[float, float]], level: float) -> float | None:
    return next((frames for frames, value in points if value >= level), None)
