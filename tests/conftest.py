"""Shared test helpers: the real CLI in a subprocess, and the shared data folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MTL_SHARED_DATA", REPO.parent / "shared" / "data"))

needs_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "sentiment-sentences").is_dir(), reason=f"shared data sets not found at {SHARED_DATA}"
)


def run_mtl(*args: str, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`mtl ARGS` as a user runs it, with runs/ under `cwd`."""
    full_env = {**os.environ, "MTL_RUNS_ROOT": str(cwd / "runs"), **(env or {})}
    full_env.pop("MTL_DATA_ROOT", None)
    return subprocess.run(
        [sys.executable, "-m", "mtl_cli", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def run_dirs(root: Path) -> list[Path]:
    # Each checkpoint holds a copy of its run's config.yaml: those are not runs.
    return sorted(p.parent for p in root.glob("**/config.yaml") if p.parent.parent.name != "checkpoints")


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path
