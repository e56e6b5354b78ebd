"""A non-editable install works from any directory and ships the Hydra YAML; the wheel's import
names cannot collide with other PyPI packages (PyPI's `kernels` above all)."""
import pytest

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
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
        "for name in ('magpo', 'magpo_kernels', 'benchmarl_ext'):\n"
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


@pytest.mark.slow
def test_wheel_top_level_names_are_our_own(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(tmp_path),
         str(REPO)],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("magpo-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/", 1)[0] for name in names if "/" in name and ".dist-info/" not in name}
    assert top_level == {"magpo", "magpo_kernels", "benchmarl_ext", "hydra_plugins"}, top_level
    assert "magpo_kernels/reference.py" in names and "magpo_kernels/bench.py" not in names
