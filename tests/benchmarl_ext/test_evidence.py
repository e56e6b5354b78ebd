"""benchmarks/evidence.py: the list is checked before anything runs, a tiny claim runs end to end
through the launcher and lands in the CSVs, the page is rebuilt from the CSVs alone, and the
committed page is what the committed CSVs give."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("rliable", reason="the report extra (part of the test extra) is missing")

from benchmarl_ext import evidence as evidence_csvs  # noqa: E402  (after the skip: the page needs rliable)
from benchmarl_ext.evidence_page import main  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY = ["experiment=cpu", "task.max_steps=20", "experiment.on_policy_collected_frames_per_batch=80",
        "experiment.on_policy_n_envs_per_worker=4", "experiment.on_policy_minibatch_size=40",
        "experiment.on_policy_n_minibatch_iters=2", "experiment.evaluation_interval=80", "experiment.evaluation_episodes=2",
        "model.num_cells=[16,16]", "critic_model.num_cells=[16,16]", "algorithm.guider_embed_dim=8",
        "algorithm.guider_heads=2"]
CLAIMS = {"C2": {"title": "imitation gap", "paper": "CTDS's learner falls below its teacher; MAGPO's does not."}}


def write_spec(folder: Path, experiment: dict, claims=None) -> list[str]:
    """A one-experiment list in ``folder``; returns the command-line paths for it."""
    spec = folder / "evidence.yaml"
    spec.write_text(yaml.safe_dump({"preamble": "Tiny.", "claims": claims or CLAIMS, "experiments": [experiment]}))
    return ["--spec", str(spec), "--results", str(folder / "results" / "evidence"), "--runs", str(folder / "runs"),
            "--page", str(folder / "RESULTS.md")]


def evidence(*args: str) -> None:
    """``python benchmarks/evidence.py ARGS`` in a process of its own, as a user runs it (rliable and
    the launchers leave global logging state behind that other tests' captured streams trip on)."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "evidence.py"), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


TINY_CLAIM = {"name": "tiny_balance", "claim": "C2", "kind": "training", "task": "vmas/balance", "settings": TINY,
              "frames": 160, "presets": {"magpo": "0-1", "ctds": "0-1"}}


@pytest.mark.slow
def test_a_tiny_claim_runs_end_to_end_and_the_page_comes_from_the_csvs(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="the launchers extra (part of the test extra) is missing")
    paths = write_spec(tmp_path, TINY_CLAIM)
    evidence(*paths, "--jobs", "2")
    results = evidence_csvs.Results(tmp_path / "results" / "evidence")
    assert sorted((r["preset"], r["seed"]) for r in results.runs) == [("ctds", "0"), ("ctds", "1"), ("magpo", "0"), ("magpo", "1")]
    assert all(r["threads"] == "1" and r["concurrent"] == "2" and r["commit"] for r in results.runs)
    rows = [r for r in results.curves if r["preset"] == "magpo" and r["seed"] == "0"]
    assert [int(r["frames"]) for r in rows] == [80, 160] and all(r["guider"] != "" for r in rows)  # learner and guider
    page = (tmp_path / "RESULTS.md").read_text()
    assert "| magpo learner | 2 (0-1) |" in page and "| ctds guider | 2 (0-1) |" in page
    assert "imitation gap" in page and "**Verdict: " in page and (tmp_path / "results" / "evidence" / "tiny_balance.png").exists()

    # recorded runs are not run again (their folder is not made anew); --report-only rebuilds the
    # same page from the CSVs alone
    shutil.rmtree(tmp_path / "runs")
    evidence(*paths, "--jobs", "2")
    assert not (tmp_path / "runs").exists()
    (tmp_path / "RESULTS.md").write_text("stale")
    evidence(*paths, "--report-only")
    assert (tmp_path / "RESULTS.md").read_text() == page


@pytest.mark.parametrize("change, message", [
    ({"claim": "C9"}, r"claim 'C9' is not one of \['C2'\]"),
    ({"presets": {"magpo_v2": "0-1"}}, r"preset 'magpo_v2': not a preset or task the benchmarl command knows"),
    ({"task": "vmas/balancing"}, r"preset '\w+': not a preset or task the benchmarl command knows .*task/vmas/balancing"),
    ({"presets": {"magpo": ""}}, r"presets.magpo: seeds must be like '0-9'"),
    ({"presets": {"magpo": "5-3"}}, r"presets.magpo: the seed count must be >= 1"),
    ({"frames": 170}, r"frames 170 is not a multiple of the batch \(80 frames\)"),
    ({"kind": "sweep"}, r"kind 'sweep' is not one of"),
])
def test_a_bad_list_is_refused_naming_the_entry_before_anything_runs(tmp_path, capsys, monkeypatch, change, message):
    monkeypatch.setattr(evidence_csvs, "run_many", lambda *a, **k: pytest.fail("ran something"))
    paths = write_spec(tmp_path, {**TINY_CLAIM, **change})
    with pytest.raises(SystemExit):
        main(paths)
    err = capsys.readouterr().err
    assert __import__("re").search(message, err), err[-2000:]
    assert not (tmp_path / "RESULTS.md").exists() and not (tmp_path / "results").exists()


def test_presets_named_on_the_command_line_launch_in_the_order_given(tmp_path, monkeypatch):
    """``--preset ctds --preset magpo`` launches CTDS's runs first (the longest first keeps both
    slots busy to the end of a batch), whatever the list's order."""
    class Launched(Exception):
        """Raised in place of the launch: nothing runs."""

    launched = []

    def record(runs, *args, **kwargs):
        launched.extend(name for name, _ in runs)
        raise Launched

    monkeypatch.setattr(evidence_csvs, "run_many", record)
    paths = write_spec(tmp_path, TINY_CLAIM)  # lists magpo before ctds
    with pytest.raises(Launched):
        main([*paths, "--preset", "ctds", "--preset", "magpo"])
    assert launched == ["ctds_seed0", "ctds_seed1", "magpo_seed0", "magpo_seed1"]


def test_results_made_with_other_overrides_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(evidence_csvs, "run_many", lambda *a, **k: pytest.fail("ran something"))
    paths = write_spec(tmp_path, TINY_CLAIM)
    experiment = evidence_csvs.load_spec(tmp_path / "evidence.yaml")[1][0]
    results = evidence_csvs.Results(tmp_path / "results" / "evidence")
    other = [*experiment.overrides("magpo", 0), "algorithm.delta=3"]
    results.add(evidence_csvs.machine_row("tiny_balance", "magpo", 0, other, 1, 1), "curves", [])
    results.save()
    before = (tmp_path / "results" / "evidence" / "runs.csv").read_text()
    with pytest.raises(SystemExit):
        main(paths)
    assert "tiny_balance, preset 'magpo', seed 0: runs.csv holds a run made with" in capsys.readouterr().err
    assert (tmp_path / "results" / "evidence" / "runs.csv").read_text() == before
    assert not (tmp_path / "RESULTS.md").exists()


def test_the_committed_page_is_what_the_committed_csvs_give(tmp_path):
    """``python benchmarks/evidence.py --report-only`` changes nothing in a clean checkout."""
    copy = tmp_path / "benchmarks"
    shutil.copytree(REPO / "benchmarks" / "results" / "evidence", copy / "results" / "evidence")
    evidence("--spec", str(REPO / "benchmarks" / "evidence.yaml"), "--results", str(copy / "results" / "evidence"),
             "--page", str(copy / "RESULTS.md"), "--report-only")
    assert (copy / "RESULTS.md").read_text() == (REPO / "benchmarks" / "RESULTS.md").read_text()


def recorded(results, experiment: str, preset: str, seed: int, finals: tuple[float, float], seconds: float,
             guider_lead: float | None = None) -> None:
    """A run's rows as the command records them: two evaluations (the guider's ``guider_lead`` above
    the learner's, where given), and its timing."""
    rows = [{"experiment": experiment, "preset": preset, "seed": seed, "frames": frames, "learner": value,
             "guider": "" if guider_lead is None else value + guider_lead}
            for frames, value in zip((80, 160), finals)]
    results.add(evidence_csvs.machine_row(experiment, preset, seed, [], 1, 2), "curves", rows)
    results.timing.append({"experiment": experiment, "preset": preset, "seed": str(seed), "seconds_per_iteration": seconds,
                           "collection_seconds": seconds / 2, "training_seconds": seconds / 2})


def test_two_batches_writing_one_folder_keep_each_others_runs(tmp_path):
    """A batch saves what it recorded merged with the files as they are then: a batch that read the
    folder before another saved does not drop the other's runs, and re-recording a run replaces it."""
    folder = tmp_path / "evidence"
    recorded(first := evidence_csvs.Results(folder), "a", "magpo", 0, (10, 20), 1.0)
    second = evidence_csvs.Results(folder)  # read while the first batch runs
    recorded(second, "b", "mappo", 0, (30, 40), 2.0)
    first.save()
    second.save()
    recorded(first, "a", "magpo", 0, (11, 21), 1.5)  # the same run again: replaced, not doubled
    first.save()
    on_disk = evidence_csvs.Results(folder)
    assert sorted(evidence_csvs.run_key(r) for r in on_disk.runs) == [("a", "magpo", "0"), ("b", "mappo", "0")]
    assert [(r["experiment"], r["learner"]) for r in on_disk.curves] == [("a", "11"), ("a", "21"), ("b", "30"), ("b", "40")]
    assert sorted((r["experiment"], r["seconds_per_iteration"]) for r in on_disk.timing) == [("a", "1.5"), ("b", "2.0")]


def test_the_delta_and_sequential_verdicts_come_from_the_csvs(tmp_path):
    """C4 reads the default delta's runs from the experiment it shares; C6 tables returns and time
    per iteration and decides whether sequential learners change MAGPO's learning."""
    claims = {"C2": CLAIMS["C2"],
              "C4": {"title": "delta", "paper": "small deltas help", "also": ["shared"], "default_delta": 1.5},
              "C6": {"title": "sequential", "paper": "sequential updates"},
              "MEMORY": {"title": "memory", "paper": "retention against GRU"}}
    sequential = "magpo+algorithm.learner_update=sequential"
    unclipped = "+experiment.clip_grad_val=null"
    retention, gru = "magpo_transformer+algorithm.guider_memory=retention", "magpo_transformer+algorithm.guider_memory=gru"
    experiments = [
        {"name": "shared", "claim": "C2", "kind": "training", "task": "coordsum/3x10", "frames": 160, "presets": {"magpo": "0-4"}},
        {"name": "sweep", "claim": "C4", "kind": "training", "task": "coordsum/3x10", "frames": 160,
         "presets": {"magpo+algorithm.delta=1.2": "0-4", "magpo+algorithm.delta=inf": "0-4"}},
        {"name": "order", "claim": "C6", "kind": "training", "task": "coordsum/3x10", "frames": 160,
         "presets": {"mappo": "0-4", "happo": "0-4", "magpo": "0-4", sequential: "0-4", "magpo" + unclipped: "0-4",
                     sequential + unclipped: "0-4"}},
        {"name": "memory", "claim": "MEMORY", "kind": "training", "task": "coordsum/3x10", "frames": 160,
         "presets": {retention: "0-4", gru: "0-4"}},
    ]
    spec = tmp_path / "evidence.yaml"
    spec.write_text(yaml.safe_dump({"preamble": "Tiny.", "claims": claims, "experiments": experiments}))
    results = evidence_csvs.Results(tmp_path / "evidence")
    for seed in range(5):
        recorded(results, "shared", "magpo", seed, (10, 50 + seed), 1.0)
        recorded(results, "sweep", "magpo+algorithm.delta=1.2", seed, (10, 60 + seed), 1.0)
        recorded(results, "sweep", "magpo+algorithm.delta=inf", seed, (10, 40 + seed), 1.0)
        recorded(results, "order", "mappo", seed, (10, 50 + 3 * seed), 2.0)
        recorded(results, "order", "happo", seed, (10, 51 + 3 * seed), 4.0)
        recorded(results, "order", "magpo", seed, (10, 50 + seed), 3.0)
        recorded(results, "order", sequential, seed, (10, 50 + seed + (0.5 if seed % 2 else -0.5)), 6.0)
        recorded(results, "order", "magpo" + unclipped, seed, (10, 50 + seed), 3.0)
        recorded(results, "order", sequential + unclipped, seed, (10, 48 + seed), 6.0)
        recorded(results, "memory", retention, seed, (10, 30 + seed), 3.0 + seed, guider_lead=2.0)
        recorded(results, "memory", gru, seed, (10, 30 + seed), 4.0 + seed, guider_lead=2.0)
    results.save()
    main(["--spec", str(spec), "--results", str(tmp_path / "evidence"), "--page", str(tmp_path / "RESULTS.md"),
          "--report-only"])
    page = (tmp_path / "RESULTS.md").read_text()
    assert "| 1.5 | magpo (default delta, from shared) | 5 |" in page
    assert "Smallest minus largest delta (1.2 minus inf), final, paired by seed: +20.00" in page
    assert "| delta | reproduced |" in page
    assert "| coordsum/3x10 | happo | 5 |" in page and "| 4.00 (2.00x) |" in page and "| 6.00 (3.00x) |" in page
    assert "| coordsum/3x10 | happo minus mappo | +1.00 [+1.00, +1.00] | above |" in page
    assert ("sequential learner update, against parallel: coordsum/3x10: no change detected; "
            "coordsum/3x10: without a gradient clip, sequential below parallel") in page
    assert f"| {retention} | 5 | 32.00 [" in page and "| -2.00 [-2.00, -2.00] | 5.00 |" in page  # gap, median time
    assert f"{retention} minus {gru}, learner, paired by seed (5 seeds): final +0.00 [+0.00, +0.00]" in page
    assert f"Time per iteration, {retention} over {gru}: 0.83x" in page and "retention against GRU: coordsum/3x10: level" in page
