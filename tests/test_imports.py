"""No import cycle in cpoly/, function-level imports included: every `import cpoly...` / `from cpoly...`
statement anywhere in a module (top level or inside a function) is an edge of the module graph."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers.compose import REPO_ROOT

PACKAGE = REPO_ROOT / "cpoly"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                while target and target not in modules:  # `from cpoly.x import name`: the module cpoly.x
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):  # a package's own parents
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_there_is_no_import_cycle_in_cpoly():
    """(On the code before this test, it found config -> strings -> config and config -> strings ->
    random_init -> config, hidden by function-level imports.)"""
    graph = import_graph()
    assert "cpoly.backbones.recipe" in graph["cpoly.backbones.config"]  # the graph is read, imports resolved
    assert cycles(graph) == []


def test_the_config_path_loads_no_model_library():
    """`train.py --help` and a config error answer before torch, transformers, PEFT, Accelerate or W&B load:
    train.py imports only cpoly.config and cpoly.entry, and cpoly.run (the heavy part) comes after the checks."""
    import subprocess
    import sys

    code = (
        "import sys, cpoly, cpoly.config, cpoly.entry; cpoly.config.register_configs(); "
        "heavy = ('torch', 'transformers', 'peft', 'accelerate', 'wandb', 'datasets'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_lazy_packages_export_what_they_list():
    """cpoly, cpoly.skills and cpoly.backbones load their public names on first use; each listed name resolves."""
    import importlib

    for name in ("cpoly", "cpoly.skills", "cpoly.backbones"):
        package = importlib.import_module(name)
        for attribute in package.__all__:
            assert getattr(package, attribute) is not None, (name, attribute)
