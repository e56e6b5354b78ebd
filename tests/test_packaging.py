"""A non-editable install works from any directory and ships the Hydra YAML."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_non_editable_install_from_another_directory(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(REPO)],
        check=True,
        cwd=tmp_path,
    )
    # every module of the three packages (a subpackage missing from pyproject's list fails here),
    # then every YAML of the checkout's conf/ in the installed benchmarl_ext.conf
    probe = (
        "import importlib, pkgutil, importlib.resources as r\n"
        "for name in ('magpo', 'kernels', 'benchmarl_ext'):\n"
        "    package = importlib.import_module(name)\n"
        "    print(package.__file__)\n"
        "    for module in pkgutil.walk_packages(package.__path__, name + '.'):\n"
        "        print(importlib.import_module(module.name).__file__)\n"
        "conf = r.files('benchmarl_ext.conf')\n"
        f"for yaml in {sorted(str(p.relative_to(REPO / 'conf')) for p in (REPO / 'conf').rglob('*.yaml'))!r}:\n"
        "    assert (conf / yaml).is_file(), yaml\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", probe], check=True, cwd=tmp_path, env=env, capture_output=True, text=True)
    modules = out.stdout.split()
    assert any(path.endswith("magpo/envs/coordsum.py") for path in modules), modules
    assert any(path.endswith("benchmarl_ext/conf/__init__.py") for path in modules), modules
    for path in modules:
        assert path.startswith(str(target)), path  # the installed copy, not the checkout
