"""Collection cost of the guiders' agent-after-agent sampling, per environment step.

    python benchmarks/sampler_steps.py                     # 3 and 10 agents, every guider
    python benchmarks/sampler_steps.py --width 32 --heads 1 --layers 2    # the authors' CoordSum-3x10 guider size
    python benchmarks/sampler_steps.py --continuous --envs 30 --agents 4  # VMAS with experiment=cpu
    PYTHONPATH=<another checkout> python benchmarks/sampler_steps.py --out /tmp/before   # another version

One call of each guider's collection policy (``make_guider``'s sampler) on a batch of ``--envs``
environments with random observations (30 features) and 10 discrete actions (``--continuous``:
2-D actions in [-1, 1], a TanhNormal head, as BenchMARL's VMAS tasks), as collection makes
it once per environment step: the context once, then one pass per agent in the order. Reported:
milliseconds per call (median of ``--repeats`` timings of 100 calls, after 20 warm-up calls) and
per agent. Writes ``sampler_steps.md`` to ``--out`` with the date, machine, versions and commit of
the ``magpo`` package imported.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs.utils import ExplorationType, set_exploration_type

from benchmarl_ext.runs import provenance
from magpo.guiders import GUIDER_KINDS, make_guider  # noqa: E402

OBSERVATION, ACTIONS, DIMS = 30, 10, 2


def time_sampler(kind: str, agents: int, envs: int, continuous: bool, repeats: int, width: int, heads: int,
                 layers: int) -> float:
    """Seconds per call of ``kind``'s sampler with ``agents`` agents and ``envs`` environments
    (``make_guider``'s width, heads, layers)."""
    torch.manual_seed(0)
    param_dim = 2 * DIMS if continuous else ACTIONS
    learner = TensorDictModule(torch.nn.Linear(OBSERVATION, param_dim), [("agents", "observation")], [("agents", "logits")])
    action_spec = (Bounded(-1.0, 1.0, shape=(agents, DIMS)) if continuous else Categorical(ACTIONS, shape=(agents,)))
    _, _, sampler = make_guider(
        kind, group="agents", observation_spec=Composite(observation=Unbounded((agents, OBSERVATION))),
        action_spec=action_spec, continuous=continuous,
        learner_module=None if kind == "transformer" else learner, width=width, heads=heads, layers=layers,
    )
    if kind != "transformer":  # a trained correction, so that the agents really act one after another
        torch.nn.init.normal_(sampler.teacher_forced.core.correction[-1].weight, std=0.1)
    observation = torch.randn(envs, agents, OBSERVATION)
    data = TensorDict({"agents": TensorDict({"observation": observation}, [envs, agents])}, [envs])
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        for _ in range(20):
            sampler(data.clone())
        timings = []
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(100):
                sampler(data.clone())
            timings.append((time.perf_counter() - started) / 100)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", default="3,10", help="comma-separated agent counts, each >= 2")
    parser.add_argument("--envs", type=int, default=64, help="environments per call, >= 1")
    parser.add_argument("--continuous", action="store_true", help="2-D actions with a TanhNormal head")
    parser.add_argument("--repeats", type=int, default=5, help="timings of 100 calls, >= 1")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, >= 1")
    parser.add_argument("--width", type=int, default=64, help="guider width (algorithm.guider_embed_dim)")
    parser.add_argument("--heads", type=int, default=4, help="transformer heads, dividing --width")
    parser.add_argument("--layers", type=int, default=1, help="transformer layers")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    agent_counts = [int(a) for a in args.agents.split(",")]
    if (args.repeats < 1 or args.envs < 1 or args.threads < 1 or any(a < 2 for a in agent_counts) or args.layers < 1 or args.heads < 1
            or args.width < 1 or args.width % args.heads):
        parser.error("--repeats, --envs, --threads, --layers, --heads, --width >= 1, --heads dividing --width, every --agents entry >= 2")
    torch.set_num_threads(args.threads)
    import magpo

    lines = [
        "# Guider sampling per environment step (collection)",
        "",
        provenance(),
        f"magpo imported from {Path(magpo.__file__).parent}. {args.threads} torch thread(s); {args.envs} environments, "
        f"{OBSERVATION} observation features, "
        f"{f'{DIMS}-D actions in [-1, 1] (TanhNormal)' if args.continuous else f'{ACTIONS} actions'}; guider width {args.width} (transformer: {args.heads} "
        f"heads, {args.layers} layers); median of {args.repeats} timings of 100 calls.",
        "",
        "| guider | agents | ms per call | ms per agent |",
        "| --- | --- | --- | --- |",
    ]
    for kind in GUIDER_KINDS:
        for agents in agent_counts:
            seconds = time_sampler(kind, agents, args.envs, args.continuous, args.repeats, args.width, args.heads,
                                   args.layers)
            lines.append(f"| {kind} | {agents} | {seconds * 1e3:.2f} | {seconds * 1e3 / agents:.2f} |")
            print(lines[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sampler_steps.md").write_text("\n".join(lines) + "\n")
    print(f"written to {args.out / 'sampler_steps.md'}")


if __name__ == "__main__":
    main()
