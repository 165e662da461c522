"""Bad input through the real CLI: a one-line error naming the fix, exit code 2, no traceback,
no run directory left behind, and earlier runs untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mtl_cli.tasks import hub_reachable
from tests.conftest import run_dirs, run_mtl

SMOKE = ["experiment=smoke", "trainer.max_steps=2", "trainer.eval_every=2"]


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder with an earlier run in runs/ and a user config dir with a few local tasks."""
    earlier = tmp_path / "runs" / "2026-01-01" / "09-00-00_old"
    (earlier / "checkpoints" / "best").mkdir(parents=True)
    (earlier / "config.yaml").write_text("seed: 1\n")
    (earlier / "results.json").write_text('{"old": {"accuracy": 0.9}}\n')
    data, conf = tmp_path / "data", tmp_path / "myconf" / "task"
    data.mkdir()
    conf.mkdir(parents=True)
    rows = "".join(f"text {i}\t{i % 2}\n" for i in range(40))
    (data / "ok.tsv").write_text("text\tlabel\n" + rows)
    (data / "badlabel.tsv").write_text("text\tlabel\n" + rows + "odd one\t2\n")
    (data / "empty.tsv").write_text("text\tlabel\n")
    (data / "latin1.tsv").write_bytes(("text\tlabel\n" + rows).encode() + "caf\xe9 cr\xe8me\t1\n".encode("latin-1"))
    (data / "onecls.tsv").write_text("text\tlabel\n" + "".join(f"t {i}\t1\n" for i in range(20)))
    for name, train, extra in [
        ("badlabel", "badlabel.tsv", "labels: ['0', '1']\n"),
        ("emptyval", "ok.tsv", "  validation: empty.tsv\n"),
        ("latin1", "latin1.tsv", ""),
        ("onecls", "onecls.tsv", ""),
        ("nocol", "ok.tsv", "text_column: review\n"),
    ]:
        files = f"files:\n  train: {train}\n" + (extra if extra.startswith("  ") else "")
        body = (
            f"# @package task.{name}\ndata_dir: {data}\nformat: tsv\n{files}{'' if extra.startswith('  ') else extra}"
        )
        (conf / f"{name}.yaml").write_text(body)
    return tmp_path


CASES = {
    "unknown task": (["task=yelpp"], "unknown task 'yelpp'; known:"),
    "misspelt key": (["trainer.lrr=1e-4"], "unknown config key `trainer.lrr`"),
    "wrong type": (["trainer.max_steps=ten"], "trainer.max_steps=ten"),
    "negative learning rate": (["trainer.lr=-0.1"], "`trainer.lr` must be positive"),
    "unknown mixing": (["mixing=softmax"], "unknown option for `mixing=`"),
    "weights all zero": (
        ["mixing=weights", "mixing.weights.restaurants=0", "mixing.weights.electronics=0"],
        "`mixing.weights` must sum to a positive number",
    ),
    "weight for a task not in the run": (
        ["mixing=weights", "mixing.weights.restaurants=1", "mixing.weights.electronics=1", "mixing.weights.yelp=1"],
        "names unknown task 'yelp'",
    ),
    "sweep without -m": (["mixing.temperature=1,2"], "run it with -m"),
    "missing data file": (["task=sentences/yelp", "data_root=/nonexistent/data"], "train file not found"),
    "no data root": (["task=sentences/yelp"], "data_root"),
    "label outside the label set": (["task=badlabel"], "label '2' (train row 41) is not in the label set"),
    "empty split": (["task=emptyval"], "validation"),
    "not utf-8": (["task=latin1"], "not valid UTF-8"),
    "single class": (["task=onecls"], "single label"),
    "missing column": (["task=nocol"], "has no column 'review'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_train_input(workdir: Path, case: str) -> None:
    args, message = CASES[case]
    before = tree_digest(workdir / "runs")
    proc = run_mtl("train", "--config-dir", str(workdir / "myconf"), *SMOKE, *args, cwd=workdir)
    assert proc.returncode == 2, proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mtl: error: "), proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert tree_digest(workdir / "runs") == before
    assert len(run_dirs(workdir / "runs")) == 1  # only the earlier run


@pytest.mark.skipif(hub_reachable(), reason="the Hub is reachable here; this checks the offline message")
def test_hub_task_offline_fails_fast_with_the_local_alternative(workdir: Path) -> None:
    proc = run_mtl("train", *SMOKE, "task=yelp", cwd=workdir, timeout=60)
    assert proc.returncode == 2
    assert "unreachable" in proc.stderr and "task=sentences/yelp data_root=" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        ("nothing", [], "run directory not found"),
        ("empty", [], "not an mtl run directory"),
        ("config only", [], "no complete 'best' checkpoint"),
        ("config only", ["split=train"], "split must be test or validation"),
        ("config only", ["foo=1"], "unknown argument 'foo=1'"),
    ],
)
def test_bad_eval_input(tmp_path: Path, make: str, args: list[str], message: str) -> None:
    run = tmp_path / "run"
    if make != "nothing":
        run.mkdir()
    if make == "config only":
        (run / "config.yaml").write_text("seed: 1\n")
    proc = run_mtl("eval", str(run), *args, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_eval_of_a_task_the_run_never_trained(tmp_path: Path) -> None:
    assert run_mtl("train", *SMOKE, cwd=tmp_path).returncode == 0
    (run,) = run_dirs(tmp_path / "runs")
    proc = run_mtl("eval", str(run), "tasks=yelp", cwd=tmp_path)
    assert proc.returncode == 2
    assert "never trained task(s) ['yelp']" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_unknown_command() -> None:
    proc = run_mtl("trian", cwd=Path.cwd())
    assert proc.returncode == 2 and "unknown command 'trian'" in proc.stderr
