"""MAGPO's application layer: Hydra configuration (``benchmarl_ext/conf``, from the repository's
top-level ``conf/``) and commands. Imports :mod:`magpo`, BenchMARL and Hydra; nothing imports it.
"""

CONFIG_PACKAGE = "pkg://benchmarl_ext.conf"
"""Hydra ``config_path`` of the shipped YAML; works installed or editable, from any directory."""
