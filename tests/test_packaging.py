"""The installed package works on its own: configs and demo data travel with it (not only the checkout)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

# What a build reads from the checkout; copying only these keeps the build's scratch folders
# (build/, *.egg-info) out of the shared working tree and proves nothing else is needed.
SOURCES = ("pyproject.toml", "README.md", "mtl_cli", "conf")


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the check is the same on any version
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_subpackage_is_listed_in_pyproject() -> None:
    # The package list is explicit (conf/ is mapped into mtl_cli.conf); a new folder of modules
    # left out of it would import from the checkout but be missing from an installed wheel.
    listed = set(pyproject()["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(REPO).parts)
        for p in (REPO / "mtl_cli").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert "mtl_cli.conf" in listed


def test_conf_holds_only_packaged_files() -> None:
    # Only `**/*.yaml` is packaged from conf/; any other file there would be missing once installed.
    others = [str(p.relative_to(REPO)) for p in (REPO / "conf").rglob("*") if p.is_file() and p.suffix != ".yaml"]
    assert others == [], "only YAML files under conf/ are installed (pyproject package-data)"


@pytest.mark.slow
def test_non_editable_install_trains_from_any_directory(tmp_path: Path) -> None:
    src, target, cwd = tmp_path / "src", tmp_path / "site", tmp_path / "elsewhere"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, src / name)
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target), str(src)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    assert (target / "mtl_cli" / "conf" / "experiment" / "smoke.yaml").is_file()

    cwd.mkdir()
    # PYTHONPATH comes before site-packages, and .venv's editable finder only answers imports
    # that the normal path search missed, so the copy under `target` is the one imported.
    env = {**os.environ, "PYTHONPATH": str(target)}
    for var in ("MTL_RUNS_ROOT", "MTL_DATA_ROOT"):  # the defaults are what is tested: ./runs
        env.pop(var, None)
    where = subprocess.run(
        [sys.executable, "-c", "import mtl_cli, mtl_cli.config as c; print(mtl_cli.__file__); print(c.CONF_DIR)"],
        cwd=cwd, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    package_file, conf_dir = (Path(line) for line in where.stdout.split())
    assert package_file.is_relative_to(target) and conf_dir == target / "mtl_cli" / "conf"

    proc = subprocess.run(
        [sys.executable, "-m", "mtl_cli", "train", "experiment=smoke", "trainer.progress=false"],
        cwd=cwd, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    # runs/<date>/<time>_<tasks>/: the default runs root is relative to where mtl was started.
    (results,) = (cwd / "runs").glob("*/*/results.json")
    assert set(json.loads(results.read_text())) == {"restaurants", "electronics", "average"}
