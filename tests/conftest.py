"""Shared test helpers: the one tiny run and tiny encoder the tests build on, `mtl` in this process
and as a user runs it (a subprocess), and the shared data folder.

No helper here has a wall-clock limit: a loaded machine makes a test slow, never failing.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mtl_cli.cli import main as mtl_main  # light: the CLI imports heavy libraries per command

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MTL_SHARED_DATA", REPO.parent / "shared" / "data"))

needs_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "sentiment-sentences").is_dir(), reason=f"shared data sets not found at {SHARED_DATA}"
)

# The tiny run every training test starts from: experiment=smoke (encoder=tiny, batch 8, lr 1e-3,
# 8 steps evaluated at 4 and 8, the two packaged demo tasks) without the progress bar, on one torch
# thread. A test adds only what it is about (trainer.max_steps=..., task=..., a sharing scheme).
# One thread: on a machine whose cores other work shares, the threads of a tiny model's small
# operations wait on each other; measured here, 40 tiny steps took 0.45 s on 1 thread, 6-12 s on 2.
TINY_RUN = ["experiment=smoke", "trainer.progress=false", "trainer.threads=1"]


@pytest.fixture(autouse=True)
def one_torch_thread() -> None:
    """Tests that run a model directly (not through `train()`, which sets `trainer.threads`) use one
    torch thread as well, for the reason above; set before every test, since a `train()` without
    TINY_RUN leaves torch on one thread per core."""
    import torch  # here, not at the top: collecting the config tests needs no torch

    torch.set_num_threads(1)


def tiny_run(runs_root: Path, *overrides: str, config_dir: Path | None = None) -> dict:
    """`train()` in this process on TINY_RUN + `overrides`, the run under `runs_root`; train's result
    ({"run_dir", "results", "validation", ...})."""
    # Imported here, not at the top: mtl_cli.train imports torch, which config-only tests never need.
    from mtl_cli.compose import compose_config
    from mtl_cli.train import train

    cfg = compose_config([*TINY_RUN, f"runs_root={runs_root}", *overrides], str(config_dir) if config_dir else None)
    return train(cfg)


@functools.cache
def _tiny_encoder(seed: int) -> tuple[Any, Any]:
    # Imported here, not at the top: config-only test files should not pay for torch at collection.
    import torch

    from mtl_cli.compose import compose_typed
    from mtl_cli.encoders import load_encoder

    torch.manual_seed(seed)
    return load_encoder(compose_typed(["encoder=tiny"]).encoder)


def tiny_encoder(seed: int = 0) -> tuple[Any, Any]:
    """(encoder, tokenizer) of `encoder=tiny`, its random weights drawn after `torch.manual_seed(seed)`.

    Loaded once per seed for the whole session; each call gets its own deep copy, because tests cut
    the encoder (partial sharing), wrap it (adapters) or add tokens to both (task markers). The
    global torch seed is set to `seed` again, so what a test draws next is the same on every call,
    as it was when each test seeded and loaded the encoder itself.
    """
    import torch

    pair = copy.deepcopy(_tiny_encoder(seed))
    torch.manual_seed(seed)
    return pair


def run_mtl(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`mtl ARGS` as a user runs it (a fresh interpreter), with runs/ under `cwd`."""
    full_env = {**os.environ, "MTL_RUNS_ROOT": str(cwd / "runs"), **(env or {})}
    full_env.pop("MTL_DATA_ROOT", None)
    return subprocess.run(
        [sys.executable, "-m", "mtl_cli", *args], cwd=cwd, env=full_env, capture_output=True, text=True
    )


@pytest.fixture
def mtl(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """`mtl(*args, cwd=...)`: `mtl ARGS` in this process, as `run_mtl` runs it in a subprocess
    (runs/ under `cwd`, MTL_DATA_ROOT unset); returns a CompletedProcess with the exit code and
    what was printed. Saves the seconds of interpreter start-up and imports a subprocess pays.

    An exception that escapes `main` (a traceback a user would see) fails the test right there.
    `mtl train` changes sys.argv for Hydra; monkeypatch puts it back.
    """

    def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
        monkeypatch.chdir(cwd)
        monkeypatch.setenv("MTL_RUNS_ROOT", str(cwd / "runs"))
        monkeypatch.delenv("MTL_DATA_ROOT", raising=False)
        monkeypatch.setattr(sys, "argv", ["mtl", *args])
        capsys.readouterr()  # only this command's output
        code, message = 0, ""
        try:
            mtl_main(list(args))
        except SystemExit as exit:
            # As the interpreter ends: None is 0, a number the exit code, anything else printed and 1.
            if isinstance(exit.code, int) or exit.code is None:
                code = exit.code or 0
            else:
                code, message = 1, f"{exit.code}\n"
        out = capsys.readouterr()
        return subprocess.CompletedProcess(["mtl", *args], code, out.out, out.err + message)

    return run


def run_dirs(root: Path) -> list[Path]:
    # Each checkpoint holds a copy of its run's config.yaml: those are not runs.
    return sorted(p.parent for p in root.glob("**/config.yaml") if p.parent.parent.name != "checkpoints")


def run_without_mtl(script: str, request: Any, folder: Path) -> Any:
    """`script` in a fresh interpreter started in `folder`, without PYTHONPATH, so that `import mtl_cli`
    is not even possible by accident (an export must load as a user loads it); the script reads the
    JSON `request` from the file sys.argv[1]. Returns the JSON of its last line of output."""
    request_file = write(folder / "request.json", json.dumps(request))
    script_file = write(folder / "load_exports.py", script)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, str(script_file), str(request_file)], cwd=folder, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path
