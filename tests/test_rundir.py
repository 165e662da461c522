"""The run directory (mtl_cli/rundir.py): `RunDir`'s named paths, claiming a directory (never two
runs in one, even in the same second), names kept under runs_root, and `load_run_config`'s
refusals of a folder that is not a sound run. The CLI's messages for the same cases are in
test_bad_input.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mtl_cli.compose import compose_config
from mtl_cli.config import task_names_label
from mtl_cli.errors import MtlError
from mtl_cli.rundir import RunDir, claim_run_dir, find_latest_run, load_run_config, new_run_dir
from mtl_cli.validation import to_typed
from tests.conftest import TINY_RUN, write


def test_run_dir_names_every_file(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert str(run) == str(tmp_path / "run")
    assert run.config == tmp_path / "run" / "config.yaml" and run.results.name == "results.json"
    assert run.checkpoint("best") == tmp_path / "run" / "checkpoints" / "best"
    assert run.debug(20) == tmp_path / "run" / "debug" / "step-000020"
    assert not run.is_run()
    write(run.config, "seed: 1\n")
    assert run.is_run()
    # An evaluation never overwrites an earlier one.
    assert run.eval_table("best", "test") == run.eval_dir / "best_test.md"
    write(run.eval_dir / "best_test.md", "| a |\n")
    assert run.eval_table("best", "test") == run.eval_dir / "best_test_2.md"


def test_runs_started_in_the_same_second_get_their_own_directory(tmp_path: Path) -> None:
    base = tmp_path / "2026-01-01" / "10-00-00_a+b"
    first, second = claim_run_dir(base, "a: 1\n"), claim_run_dir(base, "a: 2\n")
    assert first.path == base and second.path.name == "10-00-00_a+b_2"
    assert first.config.read_text() == "a: 1\n"
    assert second.config.read_text() == "a: 2\n"


def test_latest_run_is_the_newest_with_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(MtlError, match="no run with checkpoints under"):
        find_latest_run(str(tmp_path))
    older = claim_run_dir(tmp_path / "2026-01-01" / "09-00-00_a", "seed: 1\n")
    older.checkpoints.mkdir()
    claim_run_dir(tmp_path / "2026-01-02" / "09-00-00_a", "seed: 1\n")  # no checkpoints yet: not a candidate
    assert find_latest_run(str(tmp_path)) == older


@pytest.mark.parametrize("names", [["../../etc"], ["a/b", "c"], [".."], ["..\\x", "/abs"], ["ok", "../.."]])
def test_run_directory_names_cannot_leave_runs_root(tmp_path: Path, names: list[str]) -> None:
    label = task_names_label(dict.fromkeys(names))
    assert "/" not in label and "\\" not in label and label not in ("", ".", "..")
    run = new_run_dir(str(tmp_path / "runs"), label)
    assert run.resolve().is_relative_to((tmp_path / "runs").resolve())


# --- load_run_config: what it refuses -----------------------------------------------------------


@pytest.fixture(scope="module")
def config_yaml() -> str:
    """A real run's config.yaml (composed as `mtl train` resolves it), without training."""
    return OmegaConf.to_yaml(compose_config(TINY_RUN), resolve=True)


def test_a_sound_config_loads_typed(tmp_path: Path, config_yaml: str) -> None:
    write(tmp_path / "config.yaml", config_yaml)
    cfg = load_run_config(tmp_path)
    assert cfg.trainer.max_steps == 8 and cfg.encoder.random_init


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (None, "run directory not found"),
        ("", "is empty or not a mapping"),
        ("task:\n  restaurants: {type: classif", "config.yaml is unreadable"),
        ("- a\n- b\n", "is empty or not a mapping"),
        ("callback:\n  _target_: os.system\n", "asks to instantiate `_target_: os.system`"),
        ("trainer:\n  lrr: 1\n", "is not a valid mtl config"),
    ],
)
def test_load_run_config_refuses_a_damaged_or_unsafe_config(tmp_path: Path, damage: str | None, message: str) -> None:
    run = tmp_path / "run"
    if damage is not None:
        write(run / "config.yaml", damage)
    with pytest.raises(MtlError, match=message):
        load_run_config(run)


def test_a_folder_without_config_yaml_is_not_a_run(tmp_path: Path) -> None:
    write(tmp_path / "notes.txt", "hello\n")
    with pytest.raises(MtlError, match=r"is not an mtl run directory \(no config.yaml\)"):
        load_run_config(tmp_path)


def test_remote_code_is_off_by_default_and_only_the_command_line_turns_it_on(tmp_path: Path) -> None:
    assert to_typed(compose_config(["experiment=smoke"])).encoder.trust_remote_code is False
    run = tmp_path / "run"
    run.mkdir()
    composed = compose_config(["experiment=smoke", "encoder.trust_remote_code=true"])
    (run / "config.yaml").write_text(OmegaConf.to_yaml(composed))
    with pytest.raises(MtlError, match="pass trust_remote_code=true on this command line"):
        load_run_config(run)
    assert load_run_config(run, trust_remote_code=True).encoder.trust_remote_code is True
