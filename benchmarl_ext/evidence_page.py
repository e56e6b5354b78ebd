"""``benchmarks/RESULTS.md`` from the per-seed CSVs alone: one section per claim, each with its
tables (mean [95% CI], per seed, IQM and probability of improvement through rliable), its curve
figures, its provenance stamp and a verdict computed from the numbers by the rules written next
to each verdict below. The same CSVs give the same page, byte for byte."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np

from benchmarl_ext import protocol
from benchmarl_ext.evidence import (
    Experiment,
    Results,
    cell,
    curves_of,
    direction,
    first_frames_reaching,
    paired,
    signed_cell,
)
from benchmarl_ext.plots import area_under_curve

REPS = 5_000


def stamp(results: Results, experiment: Experiment) -> str:
    """Where the numbers of ``experiment`` come from: runs per commit and date, machine, versions,
    torch threads and runs at a time (from ``runs.csv``)."""
    rows = [r for r in results.runs if r["experiment"] == experiment.name]
    planned = sum(len(seeds) for seeds in experiment.presets.values()) * max(1, len(experiment.agents))
    if not rows:
        return (f"None of the {planned} planned runs is recorded yet; `python benchmarks/evidence.py --only "
                f"{experiment.name}` runs them.")
    by_source: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        by_source.setdefault((row["commit"], row["date"]), []).append(f"{row['preset']} {row['seed']}")
    sources = "; ".join(f"{len(runs)} at {commit} ({date})" for (commit, date), runs in sorted(by_source.items()))
    facts = sorted({(r["machine"], r["versions"], r["threads"], r["concurrent"]) for r in rows})
    machines = "; ".join(f"{m}, {v}, {t} torch thread(s), {c} run(s) at a time" for m, v, t, c in facts)
    return f"Runs ({len(rows)} of {planned} planned): {sources}. Machine: {machines}."


def final_values(curves: dict[int, list[tuple[float, float]]]) -> dict[int, float]:
    return {seed: points[-1][1] for seed, points in curves.items()}


def auc_values(curves: dict[int, list[tuple[float, float]]]) -> dict[int, float]:
    return {seed: area_under_curve(points) for seed, points in curves.items()}


def iqm_cell(values) -> str:
    if len(values) < 4:
        return "-"
    library, metrics = protocol._rliable()
    with protocol.seeded(0):
        estimate, bounds = library.get_interval_estimates(
            {"x": np.asarray(values, dtype=float).reshape(-1, 1)}, lambda x: np.array([metrics.aggregate_iqm(x)]),
            reps=REPS, confidence_interval_size=protocol.CONFIDENCE, random_state=np.random.RandomState(0))
    return f"{estimate['x'][0]:.2f} [{bounds['x'][0, 0]:.2f}, {bounds['x'][1, 0]:.2f}]"


def improvement_cell(x, y) -> str:
    """rliable's probability of improvement P(X > Y) on one task, with its 95% CI."""
    if len(x) < 2 or len(y) < 2:
        return "-"
    library, metrics = protocol._rliable()
    with protocol.seeded(0):
        estimate, bounds = library.get_interval_estimates(
            {"p": (np.asarray(x, dtype=float).reshape(-1, 1), np.asarray(y, dtype=float).reshape(-1, 1))},
            metrics.probability_of_improvement, reps=2_000, confidence_interval_size=protocol.CONFIDENCE,
            random_state=np.random.RandomState(0))
    low, high = bounds["p"].ravel()
    return f"{float(estimate['p']):.2f} [{low:.2f}, {high:.2f}]"


class TrainingTable:
    """The per-preset numbers of one training experiment, read once."""

    def __init__(self, results: Results, experiment: Experiment):
        self.experiment = experiment
        self.learner = {p: curves_of(results, experiment.name, p) for p in experiment.presets}
        self.guider = {p: curves_of(results, experiment.name, p, "guider") for p in experiment.presets}
        self.learner = {p: c for p, c in self.learner.items() if c}
        self.guider = {p: c for p, c in self.guider.items() if c}

    def final(self, preset: str, policy: str = "learner") -> dict[int, float]:
        return final_values((self.learner if policy == "learner" else self.guider).get(preset, {}))

    def lines(self, figure: Path, page_dir: Path) -> list[str]:
        if not self.learner:
            return []
        lines = ["| policy | seeds | final return [95% CI] | per seed | AUC [95% CI] | IQM of final [95% CI] |",
                 "| --- | --- | --- | --- | --- | --- |"]
        for preset in self.learner:
            for policy, curves in (("learner", self.learner[preset]), ("guider", self.guider.get(preset, {}))):
                if not curves:
                    continue
                finals, aucs = list(final_values(curves).values()), list(auc_values(curves).values())
                name = preset if policy == "learner" and preset not in self.guider else f"{preset} {policy}"
                seeds = _seed_range(curves)
                lines.append(f"| {name} | {seeds} | {cell(finals)} | {' / '.join(f'{v:.1f}' for v in finals)} | "
                             f"{cell(aucs)} | {iqm_cell(finals)} |")
        frames = max(points[-1][0] for curves in self.learner.values() for points in curves.values())
        lines += ["", f"Final: the last evaluation ({frames:,.0f} frames), mean over the evaluation's episodes; AUC: "
                  "the mean of the evaluation curve over frames. A guided method's *learner* is what it deploys; its "
                  "*guider* row is the centralized policy's own evaluation.", "",
                  f"![{self.experiment.name}]({figure.relative_to(page_dir).as_posix()})", ""]
        self.plot(figure)
        return lines

    def plot(self, figure: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axis = plt.subplots(figsize=(6, 3.4))
        for preset, curves in self.learner.items():
            for policy, source, style in (("learner", curves, "-"), ("guider", self.guider.get(preset, {}), "--")):
                if not source:
                    continue
                frames = [f for f, _ in next(iter(source.values()))]
                values = np.array([[v for _, v in points] for points in source.values() if len(points) == len(frames)])
                mean = values.mean(0)
                half = 1.96 * values.std(0, ddof=1) / math.sqrt(len(values)) if len(values) > 1 else 0 * mean
                label = preset if policy == "learner" and not self.guider.get(preset) else f"{preset} {policy}"
                line, = axis.plot(frames, mean, style, label=label)
                axis.fill_between(frames, mean - half, mean + half, alpha=0.15, color=line.get_color())
        axis.set(xlabel="frames", ylabel="evaluation return", title=f"{self.experiment.task}: mean, 95% CI over seeds")
        axis.legend(fontsize=7)
        fig.tight_layout()
        figure.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(figure, dpi=72, metadata={"Software": None})
        plt.close(fig)


def _seed_range(curves: dict) -> str:
    """``"5 (0-4)"``: how many seeds and which."""
    runs: list[list[int]] = []
    for seed in sorted(curves):
        if runs and seed == runs[-1][1] + 1:
            runs[-1][1] = seed
        else:
            runs.append([seed, seed])
    return f"{len(curves)} ({', '.join(f'{a}-{b}' if a != b else f'{a}' for a, b in runs)})"


# ------------------------------------------------------------------------------ verdicts


def verdict_c1(results: Results, experiment: Experiment) -> tuple[str, list[str]]:
    """Reproduced when MAGPO's learners succeed >= 0.95 on average, CTDS's <= 0.8 (the paper: 'about
    half'), and MAGPO's lead over CTDS (paired by seed) has a 95% CI above 0."""
    rows = [r for r in results.didactic if r["experiment"] == experiment.name]
    if not rows:
        return "not tested here", ["No runs recorded yet."]
    learner = {p: {int(r["seed"]): float(r["learner_success"]) for r in rows if r["preset"] == p} for p in experiment.presets}
    guider = {p: {int(r["seed"]): float(r["guider_success"]) for r in rows if r["preset"] == p} for p in experiment.presets}
    lines = ["| method | seeds | learner success [95% CI] | per seed | guider success [95% CI] |",
             "| --- | --- | --- | --- | --- |"]
    for preset in experiment.presets:
        values = [learner[preset][s] for s in sorted(learner[preset])]
        lines.append(f"| {preset} | {len(values)} | {cell(values, 3)} | {' / '.join(f'{v:.3f}' for v in values)} | "
                     f"{cell(list(guider[preset].values()), 3)} |")
    lead = paired(learner["magpo"], learner["ctds"])
    lines += ["", f"MAGPO minus CTDS, learner success, paired by seed: {signed_cell(lead)}; "
              f"P(MAGPO > CTDS) {improvement_cell(list(learner['magpo'].values()), list(learner['ctds'].values()))}.", ""]
    magpo, ctds = statistics.fmean(learner["magpo"].values()), statistics.fmean(learner["ctds"].values())
    reproduced = magpo >= 0.95 and ctds <= 0.8 and direction(lead) == "above"
    verdict = "reproduced" if reproduced else "not reproduced"
    lines += [f"MAGPO's learners succeed {magpo:.3f} on average, CTDS's {ctds:.3f} (the paper: about half); both "
              "teachers reach the joint strategy. "
              + ("CTDS's students cannot copy what their teacher finds; MAGPO's guider stays within what they can copy."
                 if reproduced else "The gap the paper shows is not there."), ""]
    return verdict, lines


def imitation_figures(table: TrainingTable) -> tuple[dict[str, list[float]], list[float]]:
    """Per guided preset, its learner minus its own guider (final, paired by seed); and MAGPO's
    learner minus CTDS's (paired by seed)."""
    gaps = {p: paired(table.final(p), table.final(p, "guider")) for p in table.guider}
    return gaps, paired(table.final("magpo"), table.final("ctds"))


def verdict_c2(table: TrainingTable) -> tuple[str, list[str]]:
    """Per task: reproduced when MAGPO's learner is above CTDS's (95% CI of the paired difference
    above 0), CTDS's learner is below its own teacher (CI below 0) and MAGPO's imitation gap is the
    smaller one; not reproduced when MAGPO's learner is below CTDS's, or CTDS's learner is not
    below its teacher; otherwise undecided at this budget."""
    gaps, lead = imitation_figures(table)
    if "ctds" not in gaps or "magpo" not in table.learner or "ctds" not in table.learner:
        return "not tested here", ["MAGPO's and CTDS's runs (with their guiders' evaluations) are not all recorded yet."]
    lines = ["| figure (final return, paired by seed) | mean [95% CI] | seeds |", "| --- | --- | --- |"]
    for preset, gap in gaps.items():
        lines.append(f"| {preset}: learner minus its own guider (imitation gap) | {signed_cell(gap)} | {len(gap)} |")
    lines.append(f"| MAGPO learner minus CTDS learner | {signed_cell(lead)} | {len(lead)} |")
    lines += ["", f"P(MAGPO learner > CTDS learner): "
              f"{improvement_cell(list(table.final('magpo').values()), list(table.final('ctds').values()))}.", ""]
    ctds_gap = gaps["ctds"]
    magpo_gap = gaps.get("magpo", [])
    if direction(lead) == "above" and direction(ctds_gap) == "below" and (
            not magpo_gap or statistics.fmean(ctds_gap) < statistics.fmean(magpo_gap)):
        verdict = "reproduced"
    elif direction(lead) == "below" or direction(ctds_gap) in ("above", "level"):
        verdict = "not reproduced"
    else:
        verdict = "undecided"
    return verdict, lines


def verdict_c3(tables: list[TrainingTable]) -> tuple[str, list[str]]:
    """Per task and decentralized baseline (MAPPO, IPPO): MAGPO's learner is 'above', 'level' or
    'below' by the 95% CI of its paired final difference. Reproduced when it is below no baseline
    on any task, not reproduced when it is below one on most tasks, else mixed."""
    lines = ["| task | baseline | MAGPO learner minus baseline, final [95% CI] | AUC [95% CI] | P(MAGPO > baseline) | "
             "MAGPO is |", "| --- | --- | --- | --- | --- | --- |"]
    outcomes: dict[str, list[str]] = {}
    for table in tables:
        for baseline in ("mappo", "ippo"):
            if "magpo" not in table.learner or baseline not in table.learner:
                continue
            final = paired(table.final("magpo"), table.final(baseline))
            area = paired(auc_values(table.learner["magpo"]), auc_values(table.learner[baseline]))
            where = direction(final)
            outcomes.setdefault(table.experiment.task, []).append(where)
            lines.append(f"| {table.experiment.task} | {baseline} | {signed_cell(final)} | {signed_cell(area)} | "
                         f"{improvement_cell(list(table.final('magpo').values()), list(table.final(baseline).values()))} | "
                         f"{where} |")
    if not outcomes:
        return "not tested here", ["No task has both MAGPO's and a decentralized baseline's runs recorded yet."]
    reached = reach_lines(tables)
    lines += ["", *reached]
    behind = [task for task, where in outcomes.items() if "below" in where]
    if not behind:
        verdict = "reproduced"
    elif len(behind) > len(outcomes) / 2:
        verdict = "not reproduced"
    else:
        verdict = "mixed"
    return f"{verdict} (MAGPO below a baseline on {len(behind)} of {len(outcomes)} tasks tested)", lines


def reach_lines(tables: list[TrainingTable]) -> list[str]:
    """Frames each learner needs to reach the experiment's thresholds: the median over seeds of the
    first evaluation at or above it, and how many seeds got there."""
    lines = []
    for table in tables:
        if not table.experiment.thresholds or not table.learner:
            continue
        levels = table.experiment.thresholds
        lines += [f"Frames to reach a return of {', '.join(f'{v:g}' for v in levels)} on {table.experiment.task} "
                  "(median over seeds of the first evaluation at or above it; seeds that got there):", "",
                  "| policy | " + " | ".join(f"return {v:g}" for v in levels) + " |", "| --- |" + " --- |" * len(levels)]
        for preset, curves in table.learner.items():
            cells = []
            for level in levels:
                reached = [f for f in (first_frames_reaching(points, level) for points in curves.values()) if f is not None]
                cells.append(f"{statistics.median(reached):,.0f} ({len(reached)} of {len(curves)})" if reached
                             else f"not reached (0 of {len(curves)})")
            lines.append(f"| {preset} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def verdict_c4(tables: list[TrainingTable], default_delta: float) -> tuple[str, list[str]]:
    """Final learner return per delta: the sweep's own presets (``...delta=<value>``) and the plain
    ``magpo`` preset of the experiments it shares (its default delta, ``default_delta``). Reproduced
    when the smallest delta's learner ends above the largest delta's (95% CI of the paired final
    difference above 0), as the paper finds on CoordSum-5x20."""
    by_delta: dict[float, tuple[str, dict[int, float]]] = {}
    for table in tables:
        for preset in table.learner:
            if "delta=" in preset:
                by_delta[float(preset.split("delta=")[1].split("+")[0])] = (preset, table.final(preset))
            elif preset == "magpo":
                by_delta.setdefault(default_delta, (f"magpo (default delta, from {table.experiment.name})",
                                                    table.final(preset)))
    if len(by_delta) < 2:
        return "not tested here", ["The delta sweep's runs are not recorded yet."]
    lines = ["| delta | runs | seeds | learner final [95% CI] | per seed |", "| --- | --- | --- | --- | --- |"]
    for delta in sorted(by_delta):
        preset, finals = by_delta[delta]
        values = [finals[s] for s in sorted(finals)]
        lines.append(f"| {delta:g} | {preset} | {len(values)} | {cell(values)} | {' / '.join(f'{v:.1f}' for v in values)} |")
    small, large = min(by_delta), max(by_delta)
    difference = paired(by_delta[small][1], by_delta[large][1])
    where = direction(difference)
    lines += ["", f"Smallest minus largest delta ({small:g} minus {large:g}), final, paired by seed: "
              f"{signed_cell(difference)}.", ""]
    return ("reproduced" if where == "above" else "not reproduced" if where == "below" else "undecided"), lines


SEQUENTIAL_MAGPO = "magpo+algorithm.learner_update=sequential"
# the same pair with no gradient clip: the parallel update clips the agents' learners jointly, the
# sequential one each learner alone, so without a clip only the order and the preceding ratio differ
UNCLIPPED = "+experiment.clip_grad_val=null"
SEQUENTIAL_PAIRS = {(SEQUENTIAL_MAGPO, "magpo"): "", (SEQUENTIAL_MAGPO + UNCLIPPED, "magpo" + UNCLIPPED): "without a gradient clip, "}


def seconds_per_iteration(results: Results, table: TrainingTable) -> dict[str, float]:
    """Per preset of ``table`` with timings: the median over seeds of each run's median seconds per
    iteration (``timing.csv``; the runs of a batch share the machine, 2 at a time)."""
    name = table.experiment.name
    runs = {p: [float(r["seconds_per_iteration"]) for r in results.timing if r["experiment"] == name and r["preset"] == p]
            for p in table.learner}
    return {p: statistics.median(values) for p, values in runs.items() if values}


def verdict_c6(tables: list[TrainingTable], results: Results) -> tuple[str, list[str]]:
    """Per task: every method's final learner return, AUC and median seconds per iteration (the
    median over seeds of each run's median; the runs of a batch share the machine, 2 at a time);
    HAPPO and A2PO against MAPPO and MAGPO's sequential learners against its parallel ones
    (final, paired by seed), with the gradient clip and, where recorded, without it. The sequential
    learner update 'changes' MAGPO's learning on a task when the 95% CI of that paired difference
    excludes 0."""
    lines = ["| task | method | seeds | final return [95% CI] | AUC [95% CI] | s / iteration (x MAPPO) |",
             "| --- | --- | --- | --- | --- | --- |"]
    pairs, outcomes = [], []
    for table in tables:
        task = table.experiment.task
        seconds = seconds_per_iteration(results, table)
        for preset, curves in table.learner.items():
            time = f"{seconds[preset]:.2f}" if preset in seconds else "-"
            if preset in seconds and "mappo" in seconds:
                time += f" ({seconds[preset] / seconds['mappo']:.2f}x)"
            lines.append(f"| {task} | {preset} | {len(curves)} | {cell(list(final_values(curves).values()))} | "
                         f"{cell(list(auc_values(curves).values()))} | {time} |")
        for a, b in (("happo", "mappo"), ("a2po", "mappo"), ("a2po", "happo"), *SEQUENTIAL_PAIRS):
            if a in table.learner and b in table.learner:
                difference = paired(table.final(a), table.final(b))
                pairs.append(f"| {task} | {a} minus {b} | {signed_cell(difference)} | {direction(difference)} |")
                if (a, b) in SEQUENTIAL_PAIRS:
                    outcomes.append((f"{task}: {SEQUENTIAL_PAIRS[a, b]}", direction(difference)))
    if not pairs:
        return "not tested here", ["The runs are not recorded yet."]
    lines += ["", "| task | final return, paired by seed | mean [95% CI] | the first is |", "| --- | --- | --- | --- |",
              *pairs, ""]
    if not outcomes:
        return "not tested here (MAGPO's sequential and parallel runs are not both recorded)", lines
    said = "; ".join(f"{task}{'no change detected' if where == 'level' else f'sequential {where} parallel'}"
                     for task, where in outcomes)
    return f"sequential learner update, against parallel: {said}", lines


def verdict_c5(results: Results, experiment: Experiment) -> tuple[str, list[str]]:
    """The growth exponent k of seconds per iteration against the number of agents (least squares
    on log-log) of every method, and each guided method's time against MAPPO's at every n. The
    guider's cost 'grows no faster than MAPPO' when its k is within 0.1 of MAPPO's: the
    environment's own cost in n (collisions, observations) is common to all methods."""
    rows = [r for r in results.scaling if r["experiment"] == experiment.name]
    if not rows:
        return "not tested here", ["No runs recorded yet."]
    agents = sorted({int(r["n_agents"]) for r in rows})
    lines = ["| method | " + " | ".join(f"n = {n}: s / iteration (MB)" for n in agents) + " | growth exponent k |",
             "| --- |" + " --- |" * (len(agents) + 1)]
    exponents = {}
    for preset in experiment.presets:
        mine = {int(r["n_agents"]): r for r in rows if r["preset"] == preset}
        if not mine:
            continue
        n = sorted(mine)
        seconds = [float(mine[k]["seconds_per_iteration"]) for k in n]
        exponents[preset] = float(np.polyfit(np.log(n), np.log(seconds), 1)[0]) if len(n) > 1 else float("nan")
        cells = [f"{float(mine[k]['seconds_per_iteration']):.2f} ({float(mine[k]['peak_rss_mb']):.0f})" if k in mine else "-"
                 for k in agents]
        lines.append(f"| {preset} | " + " | ".join(cells) + f" | {exponents[preset]:.2f} |")
    lines += ["", "Seconds per iteration: median collection + training time of the iterations after the first, one run "
              "alone on the machine, one torch thread; MB: the process's peak resident memory. k: time grows as n^k "
              "(least squares on log-log over the n measured). The batch holds the same number of environment steps "
              "at every n, so each iteration carries n agent-steps per environment step.", ""]
    base = {int(r["n_agents"]): float(r["seconds_per_iteration"]) for r in rows if r["preset"] == "mappo"}
    guided = [p for p in exponents if p != "mappo"]
    if not base or not guided:
        return "measured", lines
    for preset in guided:
        mine = {int(r["n_agents"]): float(r["seconds_per_iteration"]) for r in rows if r["preset"] == preset}
        ratios = ", ".join(f"{mine[n] / base[n]:.2f}x at n = {n}" for n in agents if n in mine and n in base)
        lines.append(f"{preset} against MAPPO: {ratios}.")
    faster = [p for p in guided if exponents[p] > exponents["mappo"] + 0.1]
    lines.append("")
    if faster:
        return f"grows faster than MAPPO for {', '.join(faster)}", lines
    return (f"grows no faster than MAPPO (k {min(exponents[p] for p in guided):.2f}-{max(exponents[p] for p in guided):.2f} "
            f"against MAPPO's {exponents['mappo']:.2f}; the task's own cost sets the growth)"), lines


def verdict_memory(tables: list[TrainingTable], results: Results) -> tuple[str, list[str]]:
    """Per experiment, its preset with ``guider_memory=retention`` against its one with
    ``guider_memory=gru``: per preset its learner's final return, its imitation gap (learner minus
    its own guider) and its time per iteration; then the learners' final return and AUC paired by
    seed, 'above', 'level' or 'below' by the 95% CI of the final one."""
    lines, outcomes = [], []
    for table in tables:
        memory = {p.rsplit("guider_memory=", 1)[-1]: p for p in table.learner if "guider_memory=" in p}
        if not {"retention", "gru"} <= set(memory):
            continue
        first, second = memory["retention"], memory["gru"]
        seconds = seconds_per_iteration(results, table)
        lines += ["| preset | seeds | learner final [95% CI] | learner minus its guider, final [95% CI] | "
                  "s / iteration |", "| --- | --- | --- | --- | --- |"]
        for preset in (first, second):
            gap = paired(table.final(preset), table.final(preset, "guider"))
            time = f"{seconds[preset]:.2f}" if preset in seconds else "-"
            lines.append(f"| {preset} | {len(table.learner[preset])} | {cell(list(table.final(preset).values()))} | "
                         f"{signed_cell(gap) if gap else 'not logged'} | {time} |")
        difference = paired(table.final(first), table.final(second))
        area = paired(auc_values(table.learner[first]), auc_values(table.learner[second]))
        outcomes.append(f"{table.experiment.task}: {direction(difference)}")
        lines += ["", f"{first} minus {second}, learner, paired by seed ({len(difference)} seeds): final "
                  f"{signed_cell(difference)}, AUC {signed_cell(area)}."]
        if first in seconds and second in seconds:
            lines.append(f"Time per iteration, {first} over {second}: {seconds[first] / seconds[second]:.2f}x "
                         "(2 runs at a time).")
    if not outcomes:
        return "not tested here", ["The runs are not recorded yet."]
    return "retention against GRU: " + "; ".join(outcomes), lines + [""]


def verdict_vmas(tables: list[TrainingTable]) -> tuple[str, list[str]]:
    """Per task, MAGPO's learner against MAPPO by the 95% CI of the paired differences, and its
    guider against its learner (AUC)."""
    lines = ["| task | seeds | MAGPO learner minus MAPPO, final [95% CI] | AUC [95% CI] | MAGPO guider minus learner, "
             "AUC [95% CI] |", "| --- | --- | --- | --- | --- |"]
    for table in tables:
        if "magpo" not in table.learner or "mappo" not in table.learner:
            continue
        final = paired(table.final("magpo"), table.final("mappo"))
        area = paired(auc_values(table.learner["magpo"]), auc_values(table.learner["mappo"]))
        lead = paired(auc_values(table.guider.get("magpo", {})), auc_values(table.learner["magpo"]))
        lines.append(f"| {table.experiment.task} | {len(final)} | {signed_cell(final)} | {signed_cell(area)} | "
                     f"{signed_cell(lead) if lead else 'not logged'} ({len(lead)} seeds) |")
    return "measured", lines + [""]


# ------------------------------------------------------------------------------ the page

VERDICTS = {"C1": "didactic", "C2": "imitation", "C3": "decentralized", "C4": "delta", "C5": "scaling",
            "C6": "sequential", "MEMORY": "memory", "VMAS": "vmas"}


def claim_sections(claims: dict, experiments: list[Experiment], results: Results, page: Path,
                   figures: Path) -> tuple[list[str], list[tuple[str, str, str]]]:
    """The page's per-claim sections, and (claim, title, verdict) for its summary table."""
    lines, summary = [], []
    for claim, about in claims.items():
        own = [e for e in experiments if e.claim == claim]
        shared = [e for e in experiments if e.name in about.get("also", [])]
        lines += [f"## {claim}: {about['title']}", "", about["paper"].strip(), ""]
        tables = []
        for experiment in own:
            lines += [f"### {experiment.name}" + (f": {experiment.task}" if experiment.task else ""), ""]
            if experiment.kind == "training":
                lines += [stamp(results, experiment), ""]
                table = TrainingTable(results, experiment)
                lines += table.lines(figures / f"{experiment.name}.png", page.parent)
                tables.append(table)
            else:
                lines += [stamp(results, experiment), ""]
        tables += [TrainingTable(results, e) for e in shared]
        kind = VERDICTS.get(claim)
        if kind == "didactic":
            verdict, detail = verdict_c1(results, own[0])
        elif kind == "imitation":
            parts = [(t.experiment.task, *verdict_c2(t)) for t in tables]
            detail = [line for task, _, body in parts for line in [f"**{task}:**", "", *body, ""]]
            decided = {v for _, v, _ in parts}
            if len(decided) > 1:
                verdict = "; ".join(f"{task}: {v}" for task, v, _ in parts)
            else:
                verdict = decided.pop() if decided else "not tested here"
        elif kind == "decentralized":
            verdict, detail = verdict_c3(tables)
        elif kind == "delta":
            verdict, detail = verdict_c4(tables, float(about.get("default_delta", "nan")))
        elif kind == "scaling":
            verdict, detail = verdict_c5(results, own[0])
        elif kind == "sequential":
            verdict, detail = verdict_c6(tables, results)
        elif kind == "memory":
            verdict, detail = verdict_memory(tables, results)
        else:
            verdict, detail = verdict_vmas(tables)
        note = about.get("verdict_note", "").strip()
        lines += [*detail, "", f"**Verdict: {verdict}.** " + " ".join(note.split()), ""]
        summary.append((claim, about["title"], verdict))
    return lines, summary


def build_page(claims: dict, experiments: list[Experiment], results: Results, page: Path, figures: Path,
               preamble: str) -> str:
    """The whole of RESULTS.md (figures written to ``figures``)."""
    sections, summary = claim_sections(claims, experiments, results, page, figures)
    head = ["# Results: the MAGPO paper's claims at a 2-core CPU's budget", "", preamble.strip(), "",
            "| claim | what | verdict here |", "| --- | --- | --- |",
            *(f"| [{c}](#{c.lower()}-{_anchor(t)}) | {t} | {v} |" for c, t, v in summary), ""]
    return "\n".join(head + sections).rstrip() + "\n"


def _anchor(title: str) -> str:
    text = "".join(ch for ch in title.lower() if ch.isalnum() or ch in " -")
    return text.replace(" ", "-")


def main(argv=None) -> None:
    import argparse
    import dataclasses

    from benchmarl_ext.evidence import (
        SpecError,
        check_against_configs,
        check_consistency,
        load_spec,
        run_didactic,
        run_scaling,
        run_training,
    )
    from benchmarl_ext.runs import add_launcher_arguments, launcher_from_arguments

    parser = argparse.ArgumentParser(description="Run the experiments of benchmarks/evidence.yaml that are not yet "
                                                 "recorded and rebuild benchmarks/RESULTS.md from the per-seed CSVs.")
    parser.add_argument("--spec", type=Path, default=Path("benchmarks/evidence.yaml"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/evidence"),
                        help="the committed per-seed CSVs (and the figures)")
    parser.add_argument("--runs", type=Path, default=Path("outputs/evidence"),
                        help="where runs are made (not committed)")
    parser.add_argument("--page", type=Path, default=Path("benchmarks/RESULTS.md"))
    parser.add_argument("--only", action="append", default=[], metavar="EXPERIMENT",
                        help="run only these experiments (repeatable); the page still covers all")
    parser.add_argument("--preset", action="append", default=[], metavar="PRESET",
                        help="run only these presets of the chosen experiments (repeatable), in the order given (the "
                             "longest first keeps every slot busy to the end); the page still covers all")
    parser.add_argument("--report-only", action="store_true", help="run nothing: rebuild the page from the CSVs")
    parser.add_argument("--record-finished", action="store_true",
                        help="launch nothing: record the training runs already finished in --runs with the list's "
                             "overrides (made elsewhere, or by a batch still under way; counted as 2 at a time), then "
                             "rebuild the page")
    add_launcher_arguments(parser)
    args = parser.parse_args(argv)
    launch = launcher_from_arguments(parser, args)
    try:
        claims, experiments = load_spec(args.spec)
        names = {e.name for e in experiments}
        unknown = [n for n in args.only if n not in names]
        if unknown:
            raise SpecError(f"--only: unknown experiments {unknown}; the list has {sorted(names)}")
        for claim, about in claims.items():
            missing = [n for n in about.get("also", []) if n not in names]
            if missing or not {"title", "paper"} <= set(about):
                raise SpecError(f"claims.{claim}: needs a title and a paper statement, and 'also' may name only "
                                f"experiments of the list (unknown: {missing})")
        results = Results(args.results)
        if not args.report_only:
            chosen = [e for e in experiments if not args.only or e.name in args.only]
            if args.preset:
                offered = {p for e in chosen for p in e.presets}
                unknown = [p for p in args.preset if p not in offered]
                if unknown:
                    raise SpecError(f"--preset: {unknown} is not a preset of the chosen experiments: {sorted(offered)}")
                chosen = [dataclasses.replace(e, presets={p: e.presets[p] for p in args.preset if p in e.presets})
                          for e in chosen if set(e.presets) & set(args.preset)]
            check_against_configs(chosen)
            check_consistency(chosen, results, args.runs)
    except SpecError as error:
        parser.error(str(error))
    if not args.report_only:
        for experiment in chosen:
            if experiment.kind == "training":
                run_training(experiment, results, args.runs, None if args.record_finished else launch)
            elif args.record_finished:
                continue
            elif experiment.kind == "didactic":
                run_didactic(experiment, results)
            else:
                run_scaling(experiment, results, args.runs)
            results.save()  # each experiment's rows as soon as it is done
    preamble = __import__("yaml").safe_load(args.spec.read_text()).get("preamble", "")
    page = build_page(claims, experiments, results, args.page, args.results, preamble)
    partial = args.page.with_name(args.page.name + ".partial")
    partial.write_text(page)
    partial.replace(args.page)
    print(f"wrote {args.page}")
