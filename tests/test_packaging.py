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
    probe = (
        "import magpo, kernels, benchmarl_ext, importlib.resources as r;"
        "from magpo import MAGPOLoss, GuiderClipLoss, LearnerKLPPOLoss;"
        "conf = r.files('benchmarl_ext.conf');"
        "assert (conf / 'demo.yaml').is_file() and (conf / 'loss' / 'magpo.yaml').is_file();"
        "print(magpo.__file__, kernels.__file__, benchmarl_ext.__file__)"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", probe], check=True, cwd=tmp_path, env=env, capture_output=True, text=True)
    for path in out.stdout.split():
        assert path.startswith(str(target)), out.stdout  # the installed copy, not the checkout
