"""Nothing unsafe is loaded or run: safetensors for weights, weights_only for the rest, no
`_target_` instantiation. What a run directory may ask for (remote code only when the command
line says so, no `_target_`, names kept under runs/) is tested in test_rundir.py."""

from __future__ import annotations

import ast

from tests.conftest import REPO


def calls(name: str):
    """(file, call node) for every call of `name` (e.g. torch.load) in mtl_cli."""
    for path in (REPO / "mtl_cli").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == name:
                yield path, node


def test_torch_load_is_always_weights_only() -> None:
    found = list(calls("torch.load"))
    assert found, "resume loads optimizer.pt with torch.load"
    for path, node in found:
        kwargs = {k.arg: ast.unparse(k.value) for k in node.keywords}
        assert kwargs.get("weights_only") == "True", f"{path}:{node.lineno}"


def test_no_pickle_or_instantiate_anywhere() -> None:
    for name in ("pickle.load", "pickle.loads", "hydra.utils.instantiate", "instantiate", "eval", "exec"):
        assert not list(calls(name)), name
