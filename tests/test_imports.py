"""The import graph of mtl_cli has no cycles, counting function-local imports and the plugin
registries' `importlib.import_module` (a registry package reaches each of its plugins).
Imports under `if TYPE_CHECKING:` are for annotations only and are left out."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import mtl_cli

PACKAGE = Path(mtl_cli.__file__).parent
REGISTRIES = {
    "mtl_cli.task_types": "TASK_TYPES",
    "mtl_cli.sharing": "SCHEMES",
    "mtl_cli.loss_weighting": "METHODS",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for block in [n for n in ast.walk(tree) if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"]:
            block.body = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import sub` imports the module pkg.sub when there is one.
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]  # fmt: skip
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    for package, registry in REGISTRIES.items():
        names = getattr(importlib.import_module(package), registry)
        graph[package] |= {f"{package}.{n}" for n in names}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_mtl_cli_has_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# What `mtl --help` and every command's `--help` may not load: each costs a second or more of
# start-up. (A regression test of the import graph, not of timings.)
HEAVY = ("torch", "transformers", "datasets", "sklearn", "matplotlib", "tensorboard", "mlflow", "peft", "numpy")


@pytest.mark.parametrize("argv", [[], ["--help"], ["eval", "--help"], ["predict", "--help"], ["export", "--help"]])
def test_the_cli_and_its_help_import_no_heavy_library(argv: list[str]) -> None:
    script = (
        "import sys\n"
        "from mtl_cli.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout[-500:]
