"""Bash completion for real: the script `mtl train --shell-completion install=bash` prints is sourced in
bash, which then calls the completion function with COMP_* set as it would on <TAB>."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")


@pytest.fixture(scope="module")
def shell(tmp_path_factory) -> tuple[str, dict[str, str]]:
    """(the installed completion script, an environment where `mtl` is this checkout's mtl)."""
    bin_dir = tmp_path_factory.mktemp("bin")
    shim = bin_dir / "mtl"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m mtl_cli "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        ["mtl", "train", "--shell-completion", "install=bash"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, env


def complete(shell: tuple[str, dict[str, str]], line: str) -> list[str]:
    """What bash offers for <TAB> at the end of `line` (words split on spaces, as the script
    makes bash do for `key=value`)."""
    script, env = shell
    words = line.split(" ")
    call = (
        f"COMP_LINE={shlex.quote(line)}; COMP_POINT=${{#COMP_LINE}}; "
        f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)}); COMP_CWORD={len(words) - 1}; "
        '_mtl_completion; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    proc = subprocess.run(["bash", "-c", f"{script}\n{call}"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return sorted(w for w in proc.stdout.splitlines() if w)


def test_completes_the_subcommand(shell) -> None:
    assert complete(shell, "mtl tr") == ["train", "transfer"]


def test_completes_a_group_name_then_its_options(shell) -> None:
    assert "sharing=" in complete(shell, "mtl train shar")
    assert complete(shell, "mtl train sharing=") == [f"sharing={s}" for s in ("adapters", "hard", "mmoe", "partial")]


def test_completes_task_names_in_subfolders_and_after_plus(shell) -> None:
    assert "task=" in complete(shell, "mtl train tas")  # and `task.` for per-task settings
    assert complete(shell, "mtl train task=sentences/") == [f"task=sentences/{t}" for t in ("amazon", "imdb", "yelp")]
    assert complete(shell, "mtl train task=demo/restaurants+demo/") == ["task=demo/restaurants+demo/electronics"]


def test_completes_keys_after_earlier_overrides(shell) -> None:
    # The earlier `task=a+b` is mtl's syntax, not Hydra's: the query rewrites it before composing.
    offered = complete(shell, "mtl train task=demo/restaurants+demo/electronics trainer.l")
    assert {"trainer.lr=", "trainer.log_every="} <= set(offered)


def test_other_shells_get_a_one_line_error(shell) -> None:
    _, env = shell
    proc = subprocess.run(["mtl", "train", "-sc", "install=fish"], env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "install=bash" in proc.stderr


def test_readme_command_is_the_one_tested() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert 'eval "$(mtl train --shell-completion install=bash)"' in readme
