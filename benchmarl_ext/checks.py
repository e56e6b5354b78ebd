"""Range checks of BenchMARL's ``ExperimentConfig``, run before anything is built.

BenchMARL checks a few cross-field rules (evaluation and checkpoint intervals) and leaves the
rest to fail late or not at all: ``max_n_frames=-5`` builds the environments and trains nothing.
:func:`check_experiment_config` refuses every value outside its range with a message that starts
with the field (``experiment.<name>``) and states what is accepted.
"""

from __future__ import annotations

import math
from numbers import Real

import torch

LOGGERS = ("csv", "wandb", "tensorboard", "mlflow")  # torchrl.record.loggers.get_logger's names

_BOOLEANS = (
    "share_policy_params", "prefer_continuous_actions", "collect_with_grad", "parallel_collection",
    "clip_grad_norm", "soft_target_update", "evaluation", "render", "evaluation_deterministic_actions",
    "evaluation_static", "create_json", "checkpoint_at_end", "exclude_buffer_from_checkpoint",
)


def _fail(field: str, accepted: str, value) -> None:
    raise ValueError(f"experiment.{field} must be {accepted}, got {value!r}")


def _integer(config, field: str, low: int, *, optional: bool = False) -> int | None:
    value = getattr(config, field)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        _fail(field, f"an integer >= {low}" + (" or null" if optional else ""), value)
    return value


def _real(config, field: str, low: float, high: float, *, low_open: bool, high_open: bool = False,
          optional: bool = False) -> float | None:
    value = getattr(config, field)
    if value is None and optional:
        return None
    inside = (
        isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
        and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    )
    if not inside:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        _fail(field, f"a number in {interval}" + (" or null" if optional else ""), value)
    return value


def _device(config, field: str) -> None:
    value = getattr(config, field)
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        _fail(field, 'a torch device such as "cpu" or "cuda:0"', value)
    if device.type == "cuda" and not torch.cuda.is_available():
        _fail(field, '"cpu" on this machine (torch sees no CUDA device)', value)


def _batch(config, prefix: str) -> tuple[int, int]:
    """Checks ``<prefix>_collected_frames_per_batch`` and ``<prefix>_n_envs_per_worker``."""
    frames = _integer(config, f"{prefix}_collected_frames_per_batch", 1)
    n_envs = _integer(config, f"{prefix}_n_envs_per_worker", 1)
    if frames % n_envs:
        _fail(
            f"{prefix}_collected_frames_per_batch",
            f"a multiple of experiment.{prefix}_n_envs_per_worker ({n_envs}), so every environment "
            "steps the same number of times",
            frames,
        )
    return frames, n_envs


def check_experiment_config(config, on_policy: bool) -> None:
    """Raise ``ValueError`` naming the first ``experiment.*`` field out of range.

    Args:
        config: a BenchMARL ``ExperimentConfig``.
        on_policy: whether the algorithm is on-policy (selects the ``on_policy_*`` or
            ``off_policy_*`` batch fields; the other family is unused and not checked).
    """
    for field in _BOOLEANS:
        if not isinstance(getattr(config, field), bool):
            _fail(field, "true or false", getattr(config, field))
    for field in ("sampling_device", "train_device", "buffer_device"):
        _device(config, field)

    max_frames = _integer(config, "max_n_frames", 1, optional=True)
    max_iters = _integer(config, "max_n_iters", 1, optional=True)
    if max_frames is None and max_iters is None:
        _fail("max_n_frames", "an integer >= 1 when experiment.max_n_iters is null", max_frames)

    if on_policy:
        frames, _ = _batch(config, "on_policy")
        _integer(config, "on_policy_n_minibatch_iters", 1)
        minibatch = _integer(config, "on_policy_minibatch_size", 1)
        if minibatch > frames:
            _fail("on_policy_minibatch_size", f"<= experiment.on_policy_collected_frames_per_batch ({frames})", minibatch)
    else:
        frames, _ = _batch(config, "off_policy")
        _integer(config, "off_policy_n_optimizer_steps", 1)
        train_batch = _integer(config, "off_policy_train_batch_size", 1)
        memory = _integer(config, "off_policy_memory_size", 1)
        if train_batch > memory:
            _fail("off_policy_train_batch_size", f"<= experiment.off_policy_memory_size ({memory})", train_batch)
        _integer(config, "off_policy_init_random_frames", 0)
        _real(config, "off_policy_prb_alpha", 0, math.inf, low_open=False, high_open=True)
        _real(config, "off_policy_prb_beta", 0, 1, low_open=False)
    if max_frames is not None and max_frames < frames:
        _fail("max_n_frames", f">= one batch of experiment.*_collected_frames_per_batch ({frames})", max_frames)

    _real(config, "gamma", 0, 1, low_open=False)
    _real(config, "lr", 0, 1, low_open=True)
    _real(config, "adam_eps", 0, 1, low_open=True)
    if not isinstance(config.adam_extra_kwargs, dict) and not hasattr(config.adam_extra_kwargs, "items"):
        _fail("adam_extra_kwargs", "a mapping of extra torch.optim.Adam arguments", config.adam_extra_kwargs)
    _real(config, "clip_grad_val", 0, math.inf, low_open=True, high_open=True, optional=True)
    _real(config, "polyak_tau", 0, 1, low_open=True)
    _integer(config, "hard_target_update_frequency", 1)
    _real(config, "exploration_eps_init", 0, 1, low_open=False)
    _real(config, "exploration_eps_end", 0, 1, low_open=False)
    _integer(config, "exploration_anneal_frames", 1, optional=True)

    if config.evaluation:
        interval = _integer(config, "evaluation_interval", 1)
        if interval % frames:
            _fail("evaluation_interval", f"a multiple of the batch ({frames} frames)", interval)
        _integer(config, "evaluation_episodes", 1)
    interval = _integer(config, "checkpoint_interval", 0)
    if interval % frames:
        _fail("checkpoint_interval", f"0 (off) or a multiple of the batch ({frames} frames)", interval)
    _integer(config, "keep_checkpoints_num", 1, optional=True)

    loggers = list(config.loggers) if not isinstance(config.loggers, str) else None
    if loggers is None or any(name not in LOGGERS for name in loggers) or len(set(loggers)) != len(loggers):
        _fail("loggers", f"a list of distinct names from {list(LOGGERS)}", config.loggers)
    if not isinstance(config.project_name, str) or not config.project_name:
        _fail("project_name", "a non-empty string", config.project_name)


CRITIC_LOSSES = ("l1", "l2", "smooth_l1")


def check_ppo_fields(config) -> None:
    """Range checks of the PPO-family fields that BenchMARL's MAPPO and IPPO configs, and MAGPO's
    and MAT's (which extend MAPPO's), share; fields a config does not have are skipped. BenchMARL
    checks none of them: a bad critic loss fails once the environments are built, a bad clip or
    lambda trains on nonsense."""

    def number(name: str) -> float | None:
        value = getattr(config, name, None)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise ValueError(f"algorithm.{name} must be a finite number, got {value!r}")
        return value

    clip = number("clip_epsilon")
    if clip is not None and not 0 < clip < 1:
        raise ValueError(f"algorithm.clip_epsilon must be in (0, 1), got {clip}")
    for name in ("entropy_coef", "critic_coef"):
        value = number(name)
        if value is not None and value < 0:
            raise ValueError(f"algorithm.{name} must be >= 0, got {value}")
    lmbda = number("lmbda")
    if lmbda is not None and not 0 <= lmbda <= 1:
        raise ValueError(f"algorithm.lmbda must be in [0, 1], got {lmbda}")
    critic_loss = getattr(config, "loss_critic_type", None)
    if critic_loss is not None and critic_loss not in CRITIC_LOSSES:
        raise ValueError(f"algorithm.loss_critic_type must be one of {CRITIC_LOSSES}, got {critic_loss!r}")
    scale_mapping = getattr(config, "scale_mapping", None)
    if scale_mapping is not None:
        from torchrl.modules.utils import mappings

        try:
            mappings(scale_mapping)
        except (NotImplementedError, ValueError, TypeError):
            raise ValueError(
                f"algorithm.scale_mapping must be softplus, exp, relu, biased_softplus_<bias> or another of TorchRL's "
                f"mappings, got {scale_mapping!r}"
            ) from None
