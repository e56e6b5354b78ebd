"""Runs you can trust: determinism, bit-exact resume, checkpoints that fail safe (a SIGKILL in
the middle of a write included), every bad value refused before any environment is built, and
an evaluation that prints its numbers and leaves the training logs alone. Tiny sizes, one torch
thread (the command's default), seconds per run."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from benchmarl.experiment.callback import Callback
from configs import COORDSUM, SMALL_GUIDER, VMAS, compose_config
from configs import build_experiment as build

from benchmarl_ext import cli
from benchmarl_ext.checkpoints import CheckpointError
from benchmarl_ext.registration import register

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.usefixtures("one_thread")]
register()

CASES = {
    "magpo-vmas": ["algorithm=magpo", *SMALL_GUIDER, *VMAS],
    "magpo-transformer-vmas": ["algorithm=magpo_transformer", "experiment.prefer_continuous_actions=false", *SMALL_GUIDER, *VMAS],
    "magpo-residual-backtrack-vmas": ["algorithm=magpo_residual", "algorithm.backtrack=true", *SMALL_GUIDER, *VMAS],
    "magpo-auto-delta-per-epoch-vmas": ["algorithm=magpo", "algorithm.delta=auto", "algorithm.agent_order=per_epoch",
                                        *SMALL_GUIDER, *VMAS],
    "mappo-vmas": ["algorithm=mappo", *VMAS],
    "magpo-coordsum": ["algorithm=magpo_coordsum_3x10", *SMALL_GUIDER, *COORDSUM],
    "mappo-coordsum": ["algorithm=mappo", *COORDSUM],
    "magpo-memory-coordsum": ["algorithm=magpo_coordsum_3x10", "algorithm.guider_memory=gru", *SMALL_GUIDER, *COORDSUM],
    "magpo-retention-chunks-vmas": ["algorithm=magpo_transformer", "algorithm.guider_memory=retention",
                                    "algorithm.guider_chunk=5", *SMALL_GUIDER, *VMAS],
    # agent-by-agent updates: the order of every iteration comes from the restored generator
    "happo-vmas": ["algorithm=happo", *VMAS],
    "a2po-coordsum": ["algorithm=a2po", *COORDSUM],
    "magpo-sequential-coordsum": ["algorithm=magpo_coordsum_3x10", "algorithm.learner_update=sequential",
                                  "experiment.share_policy_params=false", *SMALL_GUIDER, *COORDSUM],
}
# 4 iterations of 80 frames, a checkpoint every 2
STRAIGHT = ["experiment.max_n_frames=320", "experiment.checkpoint_interval=160"]


class Interrupted(Exception):
    pass


class StopAtIteration(Callback):
    """Raises once iteration ``n`` has collected its batch (and logged its collection numbers)."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def on_batch_collected(self, batch):
        if self.experiment.n_iters_performed == self.n:
            raise Interrupted


def scalar_logs(experiment) -> dict[str, str]:
    """Every csv log of a run except the wall-clock timers, as text."""
    folder = Path(experiment.folder_name) / experiment.name / "scalars"
    return {f.name: f.read_text() for f in sorted(folder.glob("*.csv")) if not f.name.startswith("timers_")}


def assert_same_state(a: dict, b: dict) -> None:
    """Parameters, buffers and optimizer states of two checkpoints, bit for bit."""
    for group_key in [k for k in a if k.startswith("loss_")]:
        for name, value in a[group_key].items():
            other = b[group_key][name]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other, f"{group_key}.{name}"
    for group, optimizers in a["optimizers"].items():
        for name, optimizer in optimizers.items():
            other = b["optimizers"][group][name]["state"]
            for index, state in optimizer["state"].items():
                for key, value in state.items():
                    assert torch.equal(value, other[index][key]), f"{group}.{name}[{index}].{key}"


def last_checkpoint(experiment) -> dict:
    return torch.load(Path(experiment.folder_name) / "checkpoints" / "checkpoint_320.pt", weights_only=False)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_resume_is_bit_exact(tmp_path, case):
    overrides = [*CASES[case], *STRAIGHT]
    straight = build(tmp_path / "straight", overrides)
    straight.run()

    # the same run, interrupted during iteration 3 (after the checkpoint at iteration 2 and
    # with iteration 2 and part of 3 already logged), then resumed from that checkpoint
    crashed = build(tmp_path / "crashed", overrides, callbacks=[StopAtIteration(3)])
    with pytest.raises(Interrupted):
        crashed.run()
    checkpoint = Path(crashed.folder_name) / "checkpoints" / "checkpoint_160.pt"
    resumed = build(tmp_path / "crashed", overrides, restore=checkpoint)
    assert resumed.folder_name == crashed.folder_name and resumed.n_iters_performed == 2
    resumed.run()

    assert resumed.n_iters_performed == straight.n_iters_performed == 4
    assert scalar_logs(resumed) == scalar_logs(straight)  # every logged value, no repeated step
    assert_same_state(last_checkpoint(resumed), last_checkpoint(straight))


@pytest.mark.slow
def test_same_seed_and_threads_give_the_same_run(tmp_path):
    overrides = [*CASES["magpo-vmas"], "experiment.max_n_frames=160"]
    first = build(tmp_path / "a", overrides)
    first.run()
    second = build(tmp_path / "b", overrides)  # one run at a time, as in separate processes
    second.run()
    assert scalar_logs(first) == scalar_logs(second)
    other_seed = build(tmp_path / "c", [*overrides, "seed=1"])
    other_seed.run()
    assert scalar_logs(other_seed) != scalar_logs(first)  # the comparison can fail


KILLED_RUN = """
import importlib.util, io, time
from pathlib import Path
import torch
spec = importlib.util.spec_from_file_location("configs", {configs!r})  # the tests' helpers, by path
configs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(configs)

torch.set_num_threads(1)
real_save, saves = torch.save, []

def save_then_hang(state, path):
    saves.append(path)
    if len(saves) < 2:
        return real_save(state, path)
    data = io.BytesIO()
    real_save(state, data)
    with open(path, "wb") as out:  # half of the second checkpoint, then wait to be killed
        out.write(data.getvalue()[: len(data.getvalue()) // 2])
    Path({marker!r}).write_text(str(path))
    time.sleep(600)

torch.save = save_then_hang
configs.build_experiment(Path({folder!r}), {overrides!r}).run()
"""


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    overrides = [*CASES["magpo-vmas"], "experiment.max_n_frames=320", "experiment.checkpoint_interval=80"]
    marker = tmp_path / "writing"
    script = textwrap.dedent(KILLED_RUN).format(
        configs=str(Path(__file__).with_name("configs.py")), marker=str(marker), folder=str(tmp_path / "killed"), overrides=overrides
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the run never reached its second checkpoint"
        time.sleep(0.2)
    process.kill()
    process.wait()

    (folder,) = [p for p in (tmp_path / "killed").iterdir() if p.is_dir()]
    checkpoints = sorted(p.name for p in (folder / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint_160.pt.partial", "checkpoint_80.pt"]  # the killed write never got the name
    resumed = build(tmp_path / "killed", overrides, restore=folder / "checkpoints" / "checkpoint_80.pt")
    resumed.run()
    straight = build(tmp_path / "straight", overrides)
    straight.run()
    assert scalar_logs(resumed) == scalar_logs(straight)
    assert_same_state(last_checkpoint(resumed), last_checkpoint(straight))


def fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def finished_run(tmp_path):
    """A finished `benchmarl run` of MAGPO (2 iterations, both checkpointed)."""
    run_dir = tmp_path / "run"
    cli.main(["run", *CASES["magpo-vmas"], "experiment.max_n_frames=160", "experiment.checkpoint_interval=80",
              f"hydra.run.dir={run_dir}"])
    (folder,) = [p for p in run_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return run_dir, folder


def no_environment(monkeypatch):
    import benchmarl.experiment.experiment as bm_experiment

    def refuse(*args, **kwargs):
        raise AssertionError("an environment was built")

    monkeypatch.setattr(bm_experiment.Experiment, "_setup_task", refuse)


@pytest.mark.slow
def test_bad_checkpoints_fail_before_anything_and_change_no_file(finished_run, monkeypatch):
    run_dir, folder = finished_run
    good = folder / "checkpoints" / "checkpoint_160.pt"
    truncated = good.with_name("checkpoint_240.pt")
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    foreign = good.with_name("checkpoint_320.pt")
    torch.save({"state": {}}, foreign)
    before = fingerprint(run_dir)
    no_environment(monkeypatch)
    for command in ("resume", "evaluate"):
        for path, problem in ((truncated, "unreadable"), (foreign, "missing"), (good.with_name("nothing.pt"), "no such file")):
            with pytest.raises(CheckpointError, match=f"{path.name}.*{problem}|{problem}.*{path.name}"):
                cli.main([command, str(path)])
    assert fingerprint(run_dir) == before

    # a checkpoint of another algorithm or task
    with pytest.raises(CheckpointError, match="algorithm 'magpo'.*'mappo'"):
        build(run_dir / "other", ["algorithm=mappo", *VMAS], restore=good)
    with pytest.raises(CheckpointError, match="task 'vmas/balance'.*'coordsum/task_3x10'"):
        build(run_dir / "other", [*CASES["magpo-coordsum"]], restore=good)
    assert fingerprint(run_dir) == before


@pytest.mark.slow
def test_evaluate_prints_and_writes_its_own_file(finished_run, capsys):
    run_dir, folder = finished_run
    before = fingerprint(run_dir)
    cli.main(["evaluate", str(folder / "checkpoints" / "checkpoint_160.pt")])
    printed = capsys.readouterr().out
    after = fingerprint(run_dir)
    new = set(after) - set(before)
    assert {k: after[k] for k in before} == before  # no training log, config or checkpoint changed
    (record,) = [k for k in new if k.endswith("evaluations/checkpoint_160.json")]
    assert new == {record}
    import json

    values = json.loads((run_dir / record).read_text())
    assert values["iteration"] == 2 and values["total_frames"] == 160
    for key in ("eval_reward_episode_reward_mean", "eval_guider_reward_episode_reward_mean"):
        assert f"{key} = {values[key]:.6g}" in printed


BAD_VALUES = [
    # (overrides, field named in the error)
    (["algorithm.delta=1.0"], "algorithm.delta"),
    (["algorithm.guider=lstm"], "algorithm.guider"),
    (["algorithm=magpo_transformer", "algorithm.backtrack=true"], "algorithm.backtrack"),
    (["algorithm.agent_order=alphabetical"], "algorithm.agent_order"),
    (["algorithm.clip_epsilon=1.5"], "algorithm.clip_epsilon"),
    (["algorithm.aux_coef=-1"], "algorithm.aux_coef"),
    (["algorithm.learner_kl=both"], "algorithm.learner_kl"),
    (["algorithm.guider=transformer", "algorithm.guider_heads=3"], "algorithm.guider_embed_dim"),
    (["algorithm.guider_memory=gru"], "algorithm.guider_memory"),  # the default guider (anchored) has none
    (["algorithm.guider_lr=0"], "algorithm.guider_lr"),
    (["algorithm.guider_lr=-0.001"], "algorithm.guider_lr"),
    (["algorithm.guider_warmup_frames=-80"], "algorithm.guider_warmup_frames"),
    (["algorithm=magpo_transformer", "algorithm.guider_warmup_frames=80"], "algorithm.guider_warmup_frames"),
    (["algorithm.delta=tight"], "algorithm.delta"),
    (["algorithm.delta=auto", "algorithm.delta_target_kl=0"], "algorithm.delta_target_kl"),
    (["algorithm.delta=auto", "algorithm.delta_bounds=[0.5,2.0]"], "algorithm.delta_bounds"),
    (["algorithm.delta=auto", "algorithm.delta_bounds=[2.0]"], "algorithm.delta_bounds"),
    (["algorithm.guider_memory=lstm"], "algorithm.guider_memory"),
    (["algorithm.guider_memory=gru", "algorithm.guider=anchored"], "algorithm.guider_memory"),
    (["experiment.max_n_frames=-5"], "experiment.max_n_frames"),
    (["experiment.max_n_frames=40"], "experiment.max_n_frames"),
    (["experiment.max_n_frames=null"], "experiment.max_n_frames"),
    (["experiment.max_n_iters=0"], "experiment.max_n_iters"),
    (["experiment.on_policy_collected_frames_per_batch=82"], "experiment.on_policy_collected_frames_per_batch"),
    (["experiment.on_policy_minibatch_size=160"], "experiment.on_policy_minibatch_size"),
    (["experiment.on_policy_n_minibatch_iters=0"], "experiment.on_policy_n_minibatch_iters"),
    (["experiment.on_policy_n_envs_per_worker=0"], "experiment.on_policy_n_envs_per_worker"),
    (["experiment.evaluation_interval=100"], "experiment.evaluation_interval"),
    (["experiment.evaluation_episodes=0"], "experiment.evaluation_episodes"),
    (["experiment.lr=-0.001"], "experiment.lr"),
    (["experiment.lr=0"], "experiment.lr"),
    (["experiment.adam_eps=0"], "experiment.adam_eps"),
    (["experiment.clip_grad_val=-1"], "experiment.clip_grad_val"),
    (["experiment.gamma=1.5"], "experiment.gamma"),
    (["experiment.loggers=[csv,tensorbord]"], "experiment.loggers"),
    (["experiment.checkpoint_interval=100"], "experiment.checkpoint_interval"),
    (["experiment.keep_checkpoints_num=0"], "experiment.keep_checkpoints_num"),
    (["experiment.train_device=cuda:0"], "experiment.train_device"),
    (["experiment.sampling_device=gpu"], "experiment.sampling_device"),
    (["algorithm=mat", "algorithm.agent_order=per_epoch"], "algorithm.agent_order"),
    (["algorithm=mat", "algorithm.embed_dim=10", "algorithm.heads=4"], "algorithm.embed_dim"),
    (["absolute_metric_episodes=-1"], "absolute_metric_episodes"),
    (["absolute_metric_episodes=2.5"], "absolute_metric_episodes"),
    (["absolute_metric_episodes=8", "experiment.evaluation=false"], "absolute_metric_episodes"),
    (["compile_networks=2"], "compile_networks"),
    # BenchMARL's own MAPPO and IPPO configs check none of their fields: ours do (checks.check_ppo_fields)
    (["algorithm=mappo", "algorithm.loss_critic_type=l3"], "algorithm.loss_critic_type"),
    (["algorithm=mappo", "algorithm.clip_epsilon=1.5"], "algorithm.clip_epsilon"),
    (["algorithm=ippo", "algorithm.lmbda=1.5"], "algorithm.lmbda"),
    (["algorithm=ippo", "algorithm.scale_mapping=square"], "algorithm.scale_mapping"),
    (["algorithm=mat", "algorithm.critic_coef=-1"], "algorithm.critic_coef"),
    (["algorithm=magpo", "algorithm.loss_critic_type=l3"], "algorithm.loss_critic_type"),
    (["algorithm=magpo_transformer", "algorithm.guider_memory=retention", "algorithm.guider_chunk=3"],
     "algorithm.guider_chunk"),  # 80 frames / 4 environments: rollouts of 20 steps
    (["algorithm=magpo_transformer", "algorithm.guider_memory=retention", "algorithm.guider_chunk=0"], "algorithm.guider_chunk"),
    (["algorithm=magpo_transformer", "algorithm.guider_decay_scaling=0"], "algorithm.guider_decay_scaling"),
    (["algorithm=magpo_transformer", "algorithm.guider_decay_scaling=1.5"], "algorithm.guider_decay_scaling"),
    (["algorithm=magpo_transformer", "algorithm.guider_memory=retention", "algorithm.guider_heads=3"],
     "algorithm.guider_embed_dim"),
    (["algorithm.guider_memory=retention"], "algorithm.guider_memory"),  # the anchored guider has no memory
    (["algorithm=happo", "experiment.share_policy_params=true"], "experiment.share_policy_params"),
    (["algorithm=a2po", "experiment.share_policy_params=true"], "experiment.share_policy_params"),
    (["algorithm.learner_update=sequential"], "experiment.share_policy_params"),  # the default shares
    (["algorithm.learner_update=alternating"], "algorithm.learner_update"),
    (["algorithm=happo", "algorithm.clip_epsilon=1.5"], "algorithm.clip_epsilon"),
    (["algorithm=a2po", "algorithm.preceding_clip=1.5"], "algorithm.preceding_clip"),
    (["algorithm=a2po", "algorithm.preceding_clip=0"], "algorithm.preceding_clip"),
    (["algorithm=a2po", "algorithm.clip_floor=0"], "algorithm.clip_floor"),
    (["algorithm=a2po", "algorithm.agent_order=greedy"], "algorithm.agent_order"),
    (["task.memory=global"], "task.memory"),  # task.* rows run on coordsum/3x10
    (["task.n_agents=1"], "task.n_agents"),
    (["task.time_limit=0"], "task.time_limit"),
    (["task.time_limit_mode=stop"], "task.time_limit_mode"),
]


@pytest.mark.parametrize("overrides, field", BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_bad_values_are_refused_before_any_environment(overrides, field, monkeypatch):
    if field == "experiment.train_device" and torch.cuda.is_available():
        pytest.skip("a CUDA device exists, so cuda:0 is a valid device here")
    no_environment(monkeypatch)
    suite = COORDSUM if field.startswith("task.") else VMAS
    algorithm = [] if any(o.startswith("algorithm=") for o in overrides) else ["algorithm=magpo"]
    cfg, task_name = compose_config([*algorithm, *suite, *overrides])
    with pytest.raises(ValueError, match="^" + field.replace(".", r"\.")):
        cli.build_experiment(cfg, task_name)


@pytest.mark.parametrize(
    "environment, expected",
    [({}, 1), ({"MAGPO_NUM_THREADS": "2"}, 2), ({"OMP_NUM_THREADS": "2"}, "torch's own"),
     ({"MAGPO_NUM_THREADS": "2", "OMP_NUM_THREADS": "1"}, 2)],
)
def test_thread_count_of_the_command(environment, expected, monkeypatch):
    for name in ("MAGPO_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    torch.set_num_threads(3)  # torch read OMP_NUM_THREADS at start-up; here, an arbitrary current count
    assert cli.configure_threads() == (3 if expected == "torch's own" else expected)
    assert torch.get_num_threads() == (3 if expected == "torch's own" else expected)


@pytest.mark.parametrize("value", ["0", "two", "-1", ""])
def test_bad_thread_count_names_the_variable(value, monkeypatch):
    monkeypatch.setenv("MAGPO_NUM_THREADS", value)
    with pytest.raises(SystemExit, match="MAGPO_NUM_THREADS must be an integer >= 1"):
        cli.configure_threads()


@pytest.mark.parametrize("overrides, message", [
    (["task=vmas/balance", "task.max_steps=0"], r"task\.max_steps must be an integer >= 1 \(steps per episode\), got 0"),
    (["task=vmas/balance", "task.max_steps=-4"], r"task\.max_steps must be an integer >= 1"),
    (["task=vmas/balance", "task.n_agents=0"], r"task\.n_agents must be an integer >= 2 for vmas/balance, got 0"),
    (["task=vmas/navigation", "task.n_agents=0"], r"task\.n_agents must be an integer >= 1 for vmas/navigation"),
    (["task=pettingzoo/simple_spread", "task.N=0"], r"task\.N must be an integer >= 1 for pettingzoo/simple_spread"),
    (["task=pettingzoo/simple_spread", "task.max_cycles=0"], r"task\.max_cycles must be an integer >= 1"),
    (["task=pettingzoo/simple_spread", "task.local_ratio=7"], r"task\.local_ratio=7\.0 is refused by pettingzoo/simple_spread "
                                                               r"\(AssertionError: local_ratio is a proportion"),
])
def test_bad_task_values_are_refused_naming_the_field_before_any_environment(tmp_path, monkeypatch, overrides, message):
    """The values are tried on a throwaway environment (benchmarl_ext.task_checks); the run's own
    environments are never built and its folder stays empty."""
    pytest.importorskip("pettingzoo", reason="the mpe extra (part of the test extra) is missing")
    no_environment(monkeypatch)
    with pytest.raises(ValueError, match=message):
        build(tmp_path / "run", ["algorithm=magpo", "experiment=cpu", *overrides])
    assert not any((tmp_path / "run").iterdir())
