"""Nothing unsafe is loaded or run: safetensors for weights, weights_only for the rest, no
`_target_` instantiation, no remote code unless asked for, run directory names kept under runs/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mtl_cli.compose import compose_config
from mtl_cli.config import task_names_label
from mtl_cli.errors import MtlError
from mtl_cli.rundir import load_run_config, new_run_dir
from mtl_cli.validation import to_typed
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


def test_remote_code_is_off_by_default_and_only_the_command_line_turns_it_on(tmp_path: Path) -> None:
    assert to_typed(compose_config(["experiment=smoke"])).encoder.trust_remote_code is False
    run = tmp_path / "run"
    run.mkdir()
    composed = compose_config(["experiment=smoke", "encoder.trust_remote_code=true"])
    (run / "config.yaml").write_text(OmegaConf.to_yaml(composed))
    with pytest.raises(MtlError, match="pass trust_remote_code=true on this command line"):
        load_run_config(run)
    assert load_run_config(run, trust_remote_code=True).encoder.trust_remote_code is True


@pytest.mark.parametrize("names", [["../../etc"], ["a/b", "c"], [".."], ["..\\x", "/abs"], ["ok", "../.."]])
def test_run_directory_names_cannot_leave_runs_root(tmp_path: Path, names: list[str]) -> None:
    label = task_names_label(dict.fromkeys(names))
    assert "/" not in label and "\\" not in label and label not in ("", ".", "..")
    run = new_run_dir(str(tmp_path / "runs"), label)
    assert run.resolve().is_relative_to((tmp_path / "runs").resolve())
