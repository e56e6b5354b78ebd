"""The house rules, read from the source: imports point one way (benchmarl_ext -> magpo ->
magpo_kernels), no module imports itself back through others, the kernels need no TorchRL, the
experiment does not ask what algorithm it runs, and no file of magpo/ grows past ~450 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# installed package -> its source folder
PACKAGES = {"magpo_kernels": REPO / "kernels", "magpo": REPO / "magpo", "benchmarl_ext": REPO / "benchmarl_ext",
            "hydra_plugins": REPO / "hydra_plugins"}
LAYER = {"magpo_kernels": 0, "magpo": 1, "benchmarl_ext": 2, "hydra_plugins": 2}


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The product modules ``name`` imports, at any depth of its code (lazy imports count)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


GRAPH = {name: imports_of(name, path, set(modules())) for name, path in modules().items()}


def test_imports_point_one_way():
    for name, targets in GRAPH.items():
        for target in targets:
            assert LAYER[target.split(".")[0]] <= LAYER[name.split(".")[0]], f"{name} imports {target}"


def test_no_import_circle():
    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for target in GRAPH[todo.pop()]:
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        return seen

    for name in GRAPH:
        # a package's __init__ may import its own modules; a module may not import back into its package
        back = [t for t in reachable(name) if t == name]
        assert not back, f"{name} imports itself through {sorted(GRAPH[name])}"


@pytest.mark.parametrize("package, forbidden", [("magpo_kernels", ("torchrl", "tensordict", "benchmarl", "hydra")),
                                                ("magpo", ("benchmarl", "hydra", "omegaconf"))])
def test_lower_layers_need_no_upper_libraries(package, forbidden):
    for name, path in modules().items():
        if name.split(".")[0] != package:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            roots = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            assert not any(r.split(".")[0] in forbidden for r in roots), f"{name} imports {roots}"


def test_the_experiment_does_not_ask_what_algorithm_it_runs():
    tree = ast.parse((REPO / "benchmarl_ext" / "experiment.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
            assert "Magpo" not in ast.unparse(node), ast.unparse(node)
    assert not [n for n in GRAPH["benchmarl_ext.experiment"] if n in ("benchmarl_ext.algorithm", "magpo")]


def test_no_file_of_magpo_is_over_about_450_lines():
    for path in (REPO / "magpo").rglob("*.py"):
        assert len(path.read_text().splitlines()) <= 460, path
