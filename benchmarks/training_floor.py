"""The arithmetic floor of one PPO training minibatch: MAPPO's and MAGPO's networks in plain PyTorch.

    python benchmarks/training_floor.py            # CoordSum-3x10 sizes, 1 and 2 threads, eager and compiled

One minibatch of the authors' tuned CoordSum-3x10 settings (1,024 frames x 3 agents, 5 observation
features, 10 actions) through networks of the sizes the runs use (BenchMARL's default MLP, 256 x 256
tanh, for the policy and the centralized critic; MAGPO adds the anchored guider's 64 x 64
correction): forward, the loss terms, one backward, gradient-norm clipping and one Adam step per
optimizer (MAPPO two, MAGPO three). No TensorDict, no TorchRL module, no BenchMARL loop: what is
left is the arithmetic and PyTorch's own dispatch, so the time per minibatch here bounds from
below what any implementation built on these networks can reach on this machine. Measured for
each torch thread count, eager and under ``torch.compile`` (inductor's CPU backend; the first
call, which compiles, is reported apart). Writes ``training_floor.md`` to ``--out`` with the date,
machine, versions and commit; ``throughput.md`` has the full runs to set it against.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from benchmarl_ext.runs import provenance

FRAMES, AGENTS, OBSERVATION, ACTIONS, WIDTH, GUIDER_WIDTH = 1024, 3, 5, 10, 256, 64
MINIBATCHES = 80  # 10 epochs x 8 minibatches: one iteration of the authors' CoordSum-3x10 settings
CLIP = 0.2


def mlp(inputs: int, outputs: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, outputs))


def networks() -> dict[str, nn.Module]:
    """The policy (one shared per-agent MLP), the centralized critic (all observations in, one value
    out) and the anchored guider's correction (own and mean observation, earlier actions' mean
    embedding, step one-hot)."""
    torch.manual_seed(0)
    return {
        "policy": mlp(OBSERVATION, ACTIONS, WIDTH),
        "critic": mlp(OBSERVATION * AGENTS, 1, WIDTH),
        "correction": mlp(2 * OBSERVATION + GUIDER_WIDTH + AGENTS, ACTIONS, GUIDER_WIDTH),
        "action_embed": nn.Embedding(ACTIONS, GUIDER_WIDTH),
    }


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    observation = torch.randn(FRAMES, AGENTS, OBSERVATION, generator=g)
    order = torch.argsort(torch.rand(FRAMES, AGENTS, generator=g), -1)
    positions = torch.argsort(order, -1)
    before = (positions[..., :, None] > positions[..., None, :]).float()
    return {
        "observation": observation,
        "action": torch.randint(ACTIONS, (FRAMES, AGENTS), generator=g),
        "behaviour_log_prob": -torch.rand(FRAMES, AGENTS, generator=g) * 2.3,
        "advantage": torch.randn(FRAMES, AGENTS, generator=g),
        "value_target": torch.randn(FRAMES, 1, generator=g),
        "mean_before": before / before.sum(-1, keepdim=True).clamp(min=1),
        "step": nn.functional.one_hot(positions, AGENTS).float(),
    }


def ppo(log_prob, behaviour, advantage):
    ratio = torch.exp(log_prob - behaviour)
    return -torch.minimum(ratio * advantage, ratio.clamp(1 - CLIP, 1 + CLIP) * advantage).mean()


def mappo_losses(nets, b):
    log_probs = torch.log_softmax(nets["policy"](b["observation"]), -1)
    taken = log_probs.gather(-1, b["action"][..., None]).squeeze(-1)
    value = nets["critic"](b["observation"].flatten(1))
    return ppo(taken, b["behaviour_log_prob"], b["advantage"]), (value - b["value_target"]).pow(2).mean()


def magpo_losses(nets, b, delta: float = 1.5):
    learner = torch.log_softmax(nets["policy"](b["observation"]), -1)
    obs = b["observation"]
    previous = b["mean_before"] @ nets["action_embed"](b["action"])
    context = torch.cat([obs, obs.mean(-2, keepdim=True).expand_as(obs), previous, b["step"]], -1)
    guider = torch.log_softmax(learner.detach() + nets["correction"](context), -1)
    action = b["action"][..., None]
    g_taken, l_taken = guider.gather(-1, action).squeeze(-1), learner.gather(-1, action).squeeze(-1)
    # double clip: the guider's ratio within [1/delta, delta] of the learner's, plus a masked KL pull
    bounded = torch.minimum(torch.maximum(g_taken, l_taken.detach() - math.log(delta)), l_taken.detach() + math.log(delta))
    outside = (g_taken - bounded).abs() > 0
    kl_guider = (guider.exp() * (guider - learner.detach())).sum(-1)
    loss_guider = ppo(bounded, b["behaviour_log_prob"], b["advantage"]) + (kl_guider * outside).mean()
    loss_entropy = 0.01 * (guider.exp() * guider).sum(-1).mean()
    kl_learner = (guider.detach().exp() * (guider.detach() - learner)).sum(-1).mean()
    loss_learner = kl_learner + ppo(l_taken, b["behaviour_log_prob"], b["advantage"])
    value = nets["critic"](obs.flatten(1))
    return loss_guider + loss_entropy, loss_learner, (value - b["value_target"]).pow(2).mean()


def time_minibatches(algorithm: str, threads: int, compiled: bool, repeats: int) -> dict[str, float]:
    """Seconds per minibatch (median of ``repeats`` timings of ``MINIBATCHES`` minibatches) and the
    first call's seconds."""
    torch.set_num_threads(threads)
    nets, b = networks(), batch()
    groups = [["policy"], ["critic"]] if algorithm == "mappo" else [["correction", "action_embed"], ["policy"], ["critic"]]
    optimizers = [torch.optim.Adam([p for n in g for p in nets[n].parameters()], lr=3e-4) for g in groups]
    losses = mappo_losses if algorithm == "mappo" else magpo_losses
    if compiled:
        torch._dynamo.reset()
        losses = torch.compile(losses)

    def minibatch():
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        sum(losses(nets, b)).backward()  # the graphs are disjoint: one backward gives each loss's gradients
        for optimizer in optimizers:
            nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], 0.5)
            optimizer.step()

    started = time.perf_counter()
    minibatch()
    first = time.perf_counter() - started
    for _ in range(10):
        minibatch()
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(MINIBATCHES):
            minibatch()
        timings.append((time.perf_counter() - started) / MINIBATCHES)
    return {"per_minibatch": statistics.median(timings), "first": first}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    parser.add_argument("--repeats", type=int, default=3, help=f"timings of {MINIBATCHES} minibatches, >= 1")
    parser.add_argument("--no-compile", action="store_true", help="eager only")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    if args.repeats < 1 or any(t < 1 for t in threads):
        parser.error("--repeats >= 1 and every --threads entry >= 1")
    modes = [False] if args.no_compile else [False, True]
    lines = [
        "# The arithmetic floor of one training minibatch (plain PyTorch, CoordSum-3x10 sizes)",
        "",
        provenance(),
        f"{FRAMES:,} frames x {AGENTS} agents per minibatch; policy and critic {WIDTH} x {WIDTH} tanh MLPs, the "
        f"anchored guider's correction {GUIDER_WIDTH} x {GUIDER_WIDTH}; forward, losses, one backward, norm clip and "
        f"Adam. Median of {args.repeats} timings of {MINIBATCHES} minibatches (one iteration of the authors' tuned "
        "settings) after 10 warm-up minibatches; first call apart (with torch.compile: the compilation).",
        "",
        "| algorithm | threads | mode | ms / minibatch | s per iteration (80 minibatches) | first call s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for algorithm in ("mappo", "magpo"):
        for thread_count in threads:
            for compiled in modes:
                cell = time_minibatches(algorithm, thread_count, compiled, args.repeats)
                row = (f"| {algorithm.upper()} | {thread_count} | {'torch.compile' if compiled else 'eager'} | "
                       f"{cell['per_minibatch'] * 1e3:.1f} | {cell['per_minibatch'] * MINIBATCHES:.2f} | {cell['first']:.1f} |")
                lines.append(row)
                print(row, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "training_floor.md").write_text("\n".join(lines) + "\n")
    print(f"written to {args.out / 'training_floor.md'}")


if __name__ == "__main__":
    main()
