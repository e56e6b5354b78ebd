"""MAGPO's application layer: Hydra configuration (``benchmarl_ext/conf``, from the repository's
top-level ``conf/``) and commands. Imports :mod:`magpo`, BenchMARL and Hydra; nothing imports it.
"""

import importlib.util

_missing = [name for name in ("benchmarl", "hydra", "vmas") if importlib.util.find_spec(name) is None]
if _missing:
    raise ImportError(
        f"benchmarl_ext (the `benchmarl` command, MAGPO as a BenchMARL algorithm) needs the benchmarl extra, "
        f"which is not installed (missing: {', '.join(_missing)}): pip install -c .ci/constraints.txt "
        f"\"magpo[benchmarl]\" (the core, `import magpo`, works without it)"
    )

CONFIG_PACKAGE = "pkg://benchmarl_ext.conf"
"""Hydra ``config_path`` of the shipped YAML; works installed or editable, from any directory."""
