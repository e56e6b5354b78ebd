"""Cross-check the MAGPO loss against the authors' JAX code, from a clone of their repository.

    git clone https://github.com/liyheng/MAGPO /tmp/MAGPO
    pip install jax tensorflow-probability        # only for this script
    python benchmarks/crosscheck_authors.py --authors-repo /tmp/MAGPO

Their guider and learner losses are nested functions of ``mava/systems/gpo/anakin/rec_magpo.py``
(``_guider_loss_fn`` and ``_actor_loss_fn``). This script reads that file at run time, takes the
two functions' source text and runs it with the network calls replaced by given logits: the
guider network returns the guider's categorical distribution (and a zero value, with the value
and entropy coefficients set to 0), the learner network the learner's. Nothing of theirs is
imported or kept in this repository. The same random guider logits, learner logits, actions,
behaviour log-probs and advantages go to ``magpo_kernels.magpo_loss_categorical`` (float64, advantages
standardised per minibatch with the population std as their functions do), and every loss term
and the gradients of each total with respect to both logit tensors are compared.

Prints one row per setting (delta, clip, lambda) with the largest absolute differences, and
exits non-zero when one exceeds ``--tolerance``. Not part of the test suite (it needs jax and
their code).
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Tuple

import numpy as np
import torch
from magpo_kernels import LossOptions, magpo_loss_categorical  # noqa: E402

from benchmarl_ext.runs import provenance

LOSS_FILE = Path("mava/systems/gpo/anakin/rec_magpo.py")
LOSS_FUNCTIONS = ("_guider_loss_fn", "_actor_loss_fn")
SETTINGS = [  # (delta, clip_epsilon, aux_coef): their default, their four tuned CoordSum rows, and a
    # loose band with pure distillation (lambda = 0)
    (1.5, 0.2, 1.0), (1.3, 0.05, 2.0), (1.2, 0.1, 8.0), (1.1, 0.2, 4.0), (1.3, 0.2, 8.0), (3.0, 0.2, 0.0),
]


def loss_sources(authors_repo: Path) -> dict[str, str]:
    """The source text of their two loss functions, dedented, from their file."""
    path = authors_repo / LOSS_FILE
    if not path.is_file():
        raise SystemExit(f"--authors-repo: {path} not found; pass the root of a clone of github.com/liyheng/MAGPO")
    text = path.read_text()
    found = {
        node.name: textwrap.dedent(ast.get_source_segment(text, node))
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef) and node.name in LOSS_FUNCTIONS
    }
    missing = [name for name in LOSS_FUNCTIONS if name not in found]
    if missing:
        raise SystemExit(f"{path} has no {missing}: their code changed; this script follows commit d2ac38b")
    return found


def their_losses(sources: dict[str, str], delta: float, clip_epsilon: float, aux_coef: float):
    """Their two loss functions, bound to stand-in networks that return the given logits."""
    import jax
    import jax.numpy as jnp
    import tensorflow_probability.substrates.jax.distributions as tfd

    class NotUsed:  # their IdentityTransformation wraps continuous heads only
        pass

    def sable_apply_fn(guider_params, obs, action, hidden_states, done, rng_key):
        policy = tfd.Categorical(logits=guider_params)
        return jnp.zeros(action.shape), policy.log_prob(action), policy.entropy(), policy

    def actor_apply_fn(actor_params, hidden, obs_and_done):
        return None, tfd.Categorical(logits=actor_params)

    system = types.SimpleNamespace(clip_gpo=delta, clip_eps=clip_epsilon, ent_coef=0.0, vf_coef=0.0)
    namespace = dict(
        jax=jax, jnp=jnp, lax=jax.lax, tfd=tfd, Tuple=Tuple, IdentityTransformation=NotUsed,
        chex=types.SimpleNamespace(Array=object, PRNGKey=object), Param=object, Transition=object,
        SableHiddenStates=object, config=types.SimpleNamespace(system=system), alpha=aux_coef, n_agents=1,
        sable_apply_fn=sable_apply_fn, actor_apply_fn=actor_apply_fn, prev_hstates=None,
        forward_reshape=lambda arrays, n_agents: arrays, backward_reshape=lambda policy: policy,
    )
    for source in sources.values():
        exec(compile(source, str(LOSS_FILE), "exec"), namespace)
    return namespace["_guider_loss_fn"], namespace["_actor_loss_fn"]


def compare(sources, delta, clip_epsilon, aux_coef, rows, actions, seed) -> tuple[dict[str, float], str]:
    """Largest |theirs - ours| of every loss term and gradient for one setting, and how much of
    the input fell in the regimes that matter (outside the delta band, PPO-clipped)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(seed)
    guider_logits = rng.normal(size=(rows, actions))
    learner_logits = guider_logits + rng.normal(scale=0.5, size=(rows, actions))  # near and far from the band
    action = rng.integers(actions, size=rows)
    behavior_logits = guider_logits + rng.normal(scale=0.3, size=(rows, actions))
    behavior_log_prob = behavior_logits[np.arange(rows), action] - np.log(np.exp(behavior_logits).sum(-1))
    advantage = rng.normal(loc=0.3, scale=2.0, size=rows)

    guider_loss_fn, actor_loss_fn = their_losses(sources, delta, clip_epsilon, aux_coef)
    batch = types.SimpleNamespace(obs=None, action=jax.numpy.asarray(action), done=None, log_prob=behavior_log_prob,
                                  value=np.zeros(rows), hstates=types.SimpleNamespace(policy_hidden_state=[None]))
    (guider_total, (guider_ppo, _, _, guider_kl)), guider_grad = jax.value_and_grad(guider_loss_fn, has_aux=True)(
        guider_logits, learner_logits, batch, advantage, np.zeros(rows), None, None)
    (learner_total, (learner_ppo, learner_kl)), learner_grad = jax.value_and_grad(actor_loss_fn, has_aux=True)(
        learner_logits, guider_logits, batch, advantage, None)

    ours_guider = torch.tensor(guider_logits, requires_grad=True)
    ours_learner = torch.tensor(learner_logits, requires_grad=True)
    adv = torch.tensor(advantage)
    standardised = (adv - adv.mean()) / (adv.std(unbiased=False) + 1e-8)  # as their functions do
    terms = magpo_loss_categorical(
        ours_guider, ours_learner, torch.tensor(action), torch.tensor(behavior_log_prob), standardised,
        LossOptions(delta=delta, clip_epsilon=clip_epsilon, aux_coef=aux_coef, learner_kl="forward", backend="reference"),
    )
    (ours_guider_grad,) = torch.autograd.grad(terms.loss_guider, ours_guider)
    (ours_learner_grad,) = torch.autograd.grad(terms.loss_learner, ours_learner)
    pairs = {
        "guider PPO term": (guider_ppo, terms.guider_objective),
        "guider masked KL": (guider_kl, terms.guider_kl),
        "guider loss": (guider_total, terms.loss_guider),
        "learner PPO term": (learner_ppo, terms.learner_objective),
        "learner KL": (learner_kl, terms.learner_kl),
        "learner loss": (learner_total, terms.loss_learner),
        "d guider loss / d guider logits": (guider_grad, ours_guider_grad),
        "d learner loss / d learner logits": (learner_grad, ours_learner_grad),
    }
    differences = {name: float(np.max(np.abs(np.asarray(theirs) - ours.detach().numpy()))) for name, (theirs, ours) in pairs.items()}
    coverage = (f"rows outside the delta band {terms.mask_fraction.item():.1%}, guider ratio clipped "
                f"{terms.guider_clip_fraction.item():.1%}, learner ratio clipped {terms.learner_clip_fraction.item():.1%}")
    return differences, coverage


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--authors-repo", type=Path, required=True, help="root of a clone of github.com/liyheng/MAGPO")
    parser.add_argument("--rows", type=int, default=4096, help="samples per comparison")
    parser.add_argument("--actions", type=int, default=10)
    parser.add_argument("--tolerance", type=float, default=1e-10, help="largest accepted difference (float64)")
    parser.add_argument("--out", type=Path, help="also write the report to this file, with date, versions and commits")
    args = parser.parse_args(argv)
    if args.rows < 2 or args.actions < 2:
        parser.error("--rows and --actions must be >= 2")
    try:
        import jax
        import tensorflow_probability.substrates.jax  # noqa: F401
    except ImportError as err:
        raise SystemExit(f"this script runs their JAX code: pip install jax tensorflow-probability ({err})") from None
    sources = loss_sources(args.authors_repo)
    their_commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.authors_repo, capture_output=True,
                                  text=True).stdout.strip() or "unknown"
    lines = [provenance(), f"Their code: {LOSS_FILE} at commit {their_commit}; jax {jax.__version__}.", "",
             f"Their loss functions vs magpo_kernels.magpo_loss_categorical, float64, {args.rows} rows x {args.actions} actions."]
    worst = 0.0
    for seed, (delta, clip_epsilon, aux_coef) in enumerate(SETTINGS):
        differences, coverage = compare(sources, delta, clip_epsilon, aux_coef, args.rows, args.actions, seed)
        worst = max(worst, *differences.values())
        lines += ["", f"delta={delta} clip={clip_epsilon} lambda={aux_coef} ({coverage})"]
        lines += [f"  {name:<36} max |diff| = {value:.3e}" for name, value in differences.items()]
    lines += ["", f"largest difference {worst:.3e} (tolerance {args.tolerance:.0e}): "
                  f"{'AGREE' if worst <= args.tolerance else 'DIFFER'}"]
    report = "\n".join(lines)
    print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report + "\n")
    sys.exit(0 if worst <= args.tolerance else 1)


if __name__ == "__main__":
    main()
