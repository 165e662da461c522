"""The bad-input catalogue of the CLI: configs, data, checkpoints, run directories and an
unreachable Hub. Every case must give a one-line error naming the fix, exit code 2, no
traceback, no run directory left behind, and leave every earlier run byte for byte as it was.

The cases run `mtl_cli.cli.main` in this process (the `mtl` fixture): nothing here needs a fresh
interpreter, and a subprocess costs seconds of start-up and imports per case. A few of them
(REAL_CLI) also run through `python -m mtl_cli`, the real thing end to end.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from mtl_cli.config import PACKAGE_DIR
from mtl_cli.hub import hub_reachable
from mtl_cli.rundir import load_run_config
from tests.conftest import TINY_RUN, run_dirs, run_mtl, tiny_run

# Most cases fail before training; the ones that would not, should not train long.
SHORT = [*TINY_RUN, "trainer.max_steps=2", "trainer.eval_every=2"]


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
    (data / "comma.tsv").write_text("text,label\n" + "".join(f"text {i},{i % 2}\n" for i in range(40)))
    for name, train, extra in [
        ("emptytrain", "empty.tsv", ""),
        ("comma", "comma.tsv", ""),
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


def assert_one_line_error(proc, message: str) -> None:
    assert proc.returncode == 2, proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mtl: error: "), proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


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
    "empty task list": (["task=[]"], "no task selected"),
    "empty training file": (["task=emptytrain"], "the train split is empty"),
    "wrong delimiter": (["task=comma"], "looks ','-separated; set task.comma.delimiter"),
    "keep no checkpoint": (["trainer.keep_checkpoints=0"], "`trainer.keep_checkpoints` must be at least 1"),
    "unknown non-finite policy": (
        ["trainer.nonfinite=ignore"],
        "`trainer.nonfinite=ignore`: Invalid value 'ignore', expected one of [stop, skip]",
    ),
}


def check_bad_train_input(run, workdir: Path, case: str) -> None:
    """`run` is the `mtl` fixture or `run_mtl`: the same checks in this process and in a subprocess."""
    args, message = CASES[case]
    before = tree_digest(workdir / "runs")
    proc = run("train", "--config-dir", str(workdir / "myconf"), *SHORT, *args, cwd=workdir)
    assert_one_line_error(proc, message)
    assert tree_digest(workdir / "runs") == before
    assert len(run_dirs(workdir / "runs")) == 1  # only the earlier run


@pytest.mark.parametrize("case", list(CASES))
def test_bad_train_input(mtl, workdir: Path, case: str) -> None:
    check_bad_train_input(mtl, workdir, case)


@pytest.mark.skipif(hub_reachable(), reason="the Hub is reachable here; this checks the offline message")
def test_hub_task_offline_fails_fast_with_the_local_alternative(mtl, workdir: Path) -> None:
    proc = mtl("train", *SHORT, "task=yelp", cwd=workdir)
    assert proc.returncode == 2
    assert "unreachable" in proc.stderr and "task=sentences/yelp data_root=" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_unknown_command(mtl, tmp_path: Path) -> None:
    proc = mtl("trian", cwd=tmp_path)
    assert proc.returncode == 2 and "unknown command 'trian'" in proc.stderr


# --- checkpoints and run directories: mtl eval and mtl train resume= -----------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Finished and stopped runs to damage: smoke (2 tasks), one with another task set, one with another encoder."""
    root = tmp_path_factory.mktemp("runs")
    made = root / "made"
    data = shutil.copytree(PACKAGE_DIR / "data" / "demo" / "restaurants", root / "data" / "restaurants")
    runs = {
        "smoke": tiny_run(made),
        "one task": tiny_run(made, "task=demo/restaurants"),
        "wider": tiny_run(made, "encoder.config_overrides.hidden_size=64"),
        "own data": tiny_run(made, f"task.restaurants.data_dir={data}"),
    }
    return {name: Path(r["run_dir"]) for name, r in runs.items()}


def stopped(run: Path) -> Path:
    """`run` as if killed before it finished: no final tables yet, so it can be resumed."""
    for name in ("results.json", "metrics.md", "metrics.csv"):
        (run / name).unlink()
    return run


def truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def copy_checkpoint(src: Path, run: Path, which: str = "best") -> None:
    shutil.rmtree(run / "checkpoints" / which)
    shutil.copytree(src / "checkpoints" / which, run / "checkpoints" / which)


def make_run(case: str, runs: dict[str, Path], tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "2026-01-02" / "10-00-00_case"
    if case == "no run directory":
        return run
    run.mkdir(parents=True)
    if case == "not a run directory":
        (run / "notes.txt").write_text("hello\n")
        return run
    shutil.rmtree(run)
    shutil.copytree(runs["own data" if case == "resume: data changed" else "smoke"], run)
    ckpts = run / "checkpoints"
    if case == "half-written run":  # killed before its first evaluation
        shutil.rmtree(ckpts)
        for name in ("results.json", "metrics.md", "metrics.csv", "metrics.jsonl", "curves.png", "timing.json"):
            (run / name).unlink()
    elif case == "config.yaml cut short":
        (run / "config.yaml").write_text("task:\n  restaurants: {type: classif")
    elif case == "config.yaml a folder":
        (run / "config.yaml").unlink()
        (run / "config.yaml").mkdir()
    elif case == "resume: checkpoints is a file":
        stopped(run)
        shutil.rmtree(ckpts)
        ckpts.write_text("not a folder\n")
    elif case == "config.yaml empty":
        (run / "config.yaml").write_text("")
    elif case == "missing checkpoint":
        shutil.rmtree(ckpts / "best")
    elif case == "truncated checkpoint":
        truncate(ckpts / "best" / "model.safetensors")
    elif case == "checkpoint from another encoder":
        copy_checkpoint(runs["wider"], run)
    elif case == "checkpoint from another task set":
        copy_checkpoint(runs["one task"], run)
    elif case == "checkpoint from another run with the same setup":
        (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("seed: 42", "seed: 43"))
    elif case == "asks to instantiate a callable":
        (run / "config.yaml").write_text((run / "config.yaml").read_text() + "callback:\n  _target_: os.system\n")
    elif case == "asks for remote code":
        text = (run / "config.yaml").read_text()
        (run / "config.yaml").write_text(text.replace("trust_remote_code: false", "trust_remote_code: true"))
    elif case == "resume: truncated last, nothing older":
        stopped(run)
        shutil.rmtree(ckpts / "step-000004")
        truncate(ckpts / "last" / "optimizer.pt")
    elif case == "resume: data changed":
        stopped(run)
        with open(Path(load_run_config(run).task["restaurants"].data_dir) / "train.tsv", "a") as f:
            f.write("A late addition to the training file.\tpositive\n")
    elif case == "resume: checkpoint from another task set":
        stopped(run)
        copy_checkpoint(runs["one task"], run, "last")
    elif case == "resume: with overrides":
        stopped(run)
    return run  # "resume: finished run" needs no damage


RUN_CASES = {
    # case: (command after the run dir, expected message)
    "no run directory": (["eval"], "run directory not found"),
    "not a run directory": (["eval"], "is not an mtl run directory (no config.yaml)"),
    "half-written run": (["eval"], "has no checkpoint yet; the run may have stopped before its first evaluation"),
    "config.yaml cut short": (["eval"], "config.yaml is unreadable"),
    "config.yaml empty": (["eval"], "config.yaml is empty"),
    "config.yaml a folder": (["eval"], "config.yaml is a directory, not a plain file"),
    "missing checkpoint": (["eval"], "has no 'best' checkpoint"),
    "truncated checkpoint": (["eval"], "model.safetensors is"),
    "checkpoint from another encoder": (["eval"], "its encoder has config_overrides="),
    "checkpoint from another task set": (["eval"], "it holds tasks ['restaurants'], this run trains"),
    "checkpoint from another run with the same setup": (["eval"], "written under a different config.yaml"),
    "asks to instantiate a callable": (["eval"], "asks to instantiate `_target_: os.system`"),
    "asks for remote code": (["eval"], "pass trust_remote_code=true on this command line"),
    "bad split": (["eval", "split=train"], "split must be test, validation or an extra test split test_<name>"),
    "bad checkpoint name": (["eval", "checkpoint=final"], "checkpoint must be best, last, best-<task> or step-<n>"),
    "unknown eval argument": (["eval", "foo=1"], "unknown argument 'foo=1'"),
    "task the run never trained": (["eval", "tasks=yelp"], "never trained task(s) ['yelp']"),
    "batch size zero": (["eval", "batch_size=0"], "batch_size must be a positive whole number; got batch_size=0"),
    "batch size not a number": (["eval", "batch_size=big"], "batch_size must be a positive whole number"),
    "a flag neither true nor false": (["eval", "trust_remote_code=yes"], "trust_remote_code must be true or false"),
    "data_root that is no folder": (
        ["eval", "data_root=/nonexistent/data"],
        "data_root=/nonexistent/data is not a folder",
    ),
    "resume: not a run directory": (["resume"], "is not an mtl run directory"),
    "resume: half-written config": (["resume"], "config.yaml is unreadable"),
    "resume: with overrides": (["resume", "trainer.lr=1"], "a resumed run keeps the config it started with"),
    "resume: checkpoints is a file": (["resume"], "checkpoints is not a folder; the run directory is damaged"),
    "resume: finished run": (["resume"], "has finished (results.json exists); nothing to resume"),
    "resume: truncated last, nothing older": (["resume"], "optimizer.pt is"),
    "resume: data changed": (["resume"], "the training data of task(s) ['restaurants'] changed"),
    "resume: checkpoint from another task set": (["resume"], "it holds tasks ['restaurants']"),
    "resume: asks for remote code": (["resume"], "pass trust_remote_code=true"),
}
# Resume cases reuse eval cases' damage where it is the same.
SAME_DAMAGE = {
    "resume: not a run directory": "not a run directory",
    "resume: half-written config": "config.yaml cut short",
    "resume: asks for remote code": "asks for remote code",
}


@pytest.fixture(scope="module")
def made_digest(runs: dict[str, Path]) -> str:
    """The finished runs' bytes before any case: every case must leave them so. Hashed once, as
    they are ~100 MB (the tiny encoder's vocabulary, optimizer states)."""
    return tree_digest(runs["smoke"].parents[1])


def check_bad_run(run_cli, case: str, runs: dict[str, Path], made: str, tmp_path: Path) -> None:
    """`run_cli` is the `mtl` fixture or `run_mtl`; `made` the `made_digest`."""
    command, message = RUN_CASES[case]
    run = make_run(SAME_DAMAGE.get(case, case), runs, tmp_path)
    before = tree_digest(tmp_path / "runs") if run.exists() else None
    if command[0] == "eval":
        proc = run_cli("eval", str(run), *command[1:], cwd=tmp_path)
    else:
        proc = run_cli("train", f"resume={run}", *command[1:], cwd=tmp_path)
    assert_one_line_error(proc, message)
    if before is not None:
        assert tree_digest(tmp_path / "runs") == before
    assert tree_digest(runs["smoke"].parents[1]) == made


@pytest.mark.parametrize("case", list(RUN_CASES))
def test_bad_run_directory_or_checkpoint(
    mtl, case: str, runs: dict[str, Path], made_digest: str, tmp_path: Path
) -> None:
    check_bad_run(mtl, case, runs, made_digest, tmp_path)


# --- the real CLI, end to end: a fresh interpreter, exit code, one line on stderr, no traceback --

# One of each kind: rejected while composing the overrides, by the data check inside Hydra's
# `@hydra.main`, by `mtl eval`, by `mtl train resume=`.
REAL_CLI_TRAIN = ["misspelt key", "label outside the label set"]
REAL_CLI_RUN = ["truncated checkpoint", "resume: data changed"]


@pytest.mark.parametrize("case", REAL_CLI_TRAIN)
def test_bad_train_input_through_the_real_cli(workdir: Path, case: str) -> None:
    check_bad_train_input(run_mtl, workdir, case)


@pytest.mark.parametrize("case", REAL_CLI_RUN)
def test_bad_run_directory_through_the_real_cli(
    case: str, runs: dict[str, Path], made_digest: str, tmp_path: Path
) -> None:
    check_bad_run(run_mtl, case, runs, made_digest, tmp_path)


def test_unknown_command_through_the_real_cli(tmp_path: Path) -> None:
    proc = run_mtl("trian", cwd=tmp_path)
    assert_one_line_error(proc, "unknown command 'trian'")
