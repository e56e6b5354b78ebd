"""MAGPO vs CTDS on the paper's didactic game, from the shipped Hydra config ``conf/demo.yaml``.

    python -m benchmarl_ext.demo                       # 2 methods x 3 seeds, ~10 s on 2 cores
    python -m benchmarl_ext.demo iterations=20 seeds=1
    python -m benchmarl_ext.demo methods.magpo.delta=1.2

Prints the exact success probability of each run's guider and decentralized learner and the
mean learner success per method (the number that matters: the learner is what is deployed).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from benchmarl_ext import CONFIG_PACKAGE
from magpo import LossOptions, didactic


def run(cfg: DictConfig) -> dict[str, float]:
    """Train every method for ``cfg.seeds`` seeds; returns the mean final learner success per method."""
    for name in ("iterations", "seeds"):
        if not isinstance(cfg[name], int) or cfg[name] < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {cfg[name]!r}")
    print(
        f"didactic game: {didactic.AGENTS} agents, actions 0..{didactic.ACTIONS - 1}, target {didactic.TARGET}; "
        "exact success probabilities after training"
    )
    means = {}
    for method, loss in cfg.methods.items():
        finals = []
        fields = dict(loss)
        entropy_coeff = fields.pop("entropy_coeff")
        options = LossOptions(**fields)
        for seed in range(cfg.seeds):
            history = didactic.train(
                options, iterations=cfg.iterations, seed=seed, batch=cfg.batch, epochs=cfg.epochs, lr=cfg.lr,
                entropy_coeff=entropy_coeff,
            )
            guider_success, learner_success = history[-1]
            finals.append(learner_success)
            print(f"  {method:6s} seed {seed}: guider {guider_success:.3f}  learner {learner_success:.3f}")
        means[method] = sum(finals) / len(finals)
        print(f"{method:6s} (delta {options.delta}, lambda {options.aux_coef}): mean learner success {means[method]:.3f}")
    return means


@hydra.main(config_path=CONFIG_PACKAGE, config_name="demo", version_base=None)
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
