"""Range checks of ``task.*`` values before anything is built, derived from what each task accepts.

This package's own suites (CoordSum, RWARE, LBF) check their fields in their config dataclasses
(``benchmarl_ext.tasks``). For BenchMARL's suites (VMAS, PettingZoo) there is no hand list to go
stale: the episode length must be an integer >= 1 (VMAS ``max_steps``, PettingZoo ``max_cycles``;
0 would start training and fail at the first evaluation), and every other value is checked by
building the task's environment once, cheaply (one environment, reset once), as the run would.
When the environment refuses, the fields that differ from the task's own defaults are tried one
at a time to find the one refused; for an integer, the accepted bound is found the same way (a
bisection between the refused value and the default). The message names ``task.<field>``, the
bound and the environment's own words.
"""

from __future__ import annotations

import copy

EPISODE_LENGTH = {"vmas": "max_steps", "pettingzoo": "max_cycles"}
SEARCHED = 64  # integers farther than this from their default are not bisected (big envs are slow to build)


def _refusal(task, config: dict, continuous: bool) -> Exception | None:
    """The exception the task's environment raises when built with ``config`` and reset, or None."""
    probe = copy.copy(task)
    probe.config = dict(config)
    try:
        env = probe.get_env_fun(num_envs=1, continuous_actions=continuous, seed=0, device="cpu")()
        try:
            env.reset()
        finally:
            env.close()
    except Exception as error:  # whatever the environment raises is its refusal
        return error
    return None


def _integer_bound(task, defaults: dict, field: str, value: int, continuous: bool) -> str | None:
    default = defaults[field]
    if abs(value - default) > SEARCHED:
        return None
    below = value < default
    refused, accepted = value, default
    while abs(accepted - refused) > 1:
        middle = (refused + accepted) // 2
        if _refusal(task, {**defaults, field: middle}, continuous) is None:
            accepted = middle
        else:
            refused = middle
    return f"an integer {'>=' if below else '<='} {accepted}"


def check_task(task, continuous: bool) -> None:
    """Raise ValueError naming ``task.<field>`` and what it accepts, for a VMAS or PettingZoo task
    whose values its environment would refuse. Other suites check themselves."""
    suite = task.env_name().lower()
    if suite not in EPISODE_LENGTH:
        return
    name = f"{suite}/{task.name.lower()}"
    config = dict(task.config)
    steps = EPISODE_LENGTH[suite]
    value = config.get(steps)
    if steps in config and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"task.{steps} must be an integer >= 1 (steps per episode), got {value!r}")
    error = _refusal(task, config, continuous)
    if error is None:
        return
    from benchmarl.environments import task_config_registry

    defaults = dict(task_config_registry[name].get_from_yaml().config)
    changed = [k for k in config if config[k] != defaults.get(k)]
    refused = [k for k in changed if _refusal(task, {**defaults, k: config[k]}, continuous) is not None]
    words = f"{type(error).__name__}: {error}".rstrip(": ")
    if len(refused) != 1:
        fields = ", ".join(f"task.{k}={config[k]!r}" for k in (refused or changed))
        raise ValueError(f"{name} refuses {fields or 'its configuration'} together ({words}); "
                         f"its defaults are {defaults}")
    field = refused[0]
    bound = None
    if isinstance(config[field], int) and not isinstance(config[field], bool) and isinstance(defaults.get(field), int):
        bound = _integer_bound(task, defaults, field, config[field], continuous)
    if bound is None:
        raise ValueError(f"task.{field}={config[field]!r} is refused by {name} ({words}); its default is "
                         f"{defaults.get(field)!r}")
    raise ValueError(f"task.{field} must be {bound} for {name}, got {config[field]!r} ({words})")
