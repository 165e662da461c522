"""One writer per run, limits checked before training, no folder left by a failure before the first
step, and sweeps that say what they did when a job fails (issue 12).

Every refusal is one `mtl: error:` line with exit 2 (130 for Ctrl-C), no traceback, earlier files
byte for byte as they were and no new folder. The commands run in this process (the `mtl`
fixture); the lock holder is a real second process (`python -c`, which takes the lock through
mtl_cli.locks and waits on its stdin), since a lock must stop another process.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mtl_cli import train as train_module
from mtl_cli.config import LABEL_MAX, task_names_label
from mtl_cli.errors import MtlError
from mtl_cli.locks import holder_pid, try_lock
from mtl_cli.rundir import claim, claim_run_dir
from tests.conftest import REPO, TINY_RUN, run_dirs, tiny_run
from tests.test_bad_input import assert_one_line_error, tree_digest, workdir  # noqa: F401 - a fixture

SHORT = [*TINY_RUN, "trainer.max_steps=2", "trainer.eval_every=2"]
EARLIER = "runs/2026-01-01/09-00-00_old"  # the workdir fixture's earlier run


def assert_refused(proc, message: str, root: Path, before: str, runs: int = 1, code: int = 2) -> None:
    """One line naming the problem, `code`, no traceback; `root` byte for byte as `before`, no new run."""
    if code == 2:
        assert_one_line_error(proc, message)
    else:
        assert proc.returncode == code, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mtl: error: ") and message in lines[0], proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr
    assert tree_digest(root) == before
    assert len(run_dirs(root)) == runs


# --- one writer per run: an OS lock that a second process meets -------------------------------------

HOLD = "import sys; from mtl_cli.locks import run_lock; lock = run_lock(sys.argv[1]); print('locked', flush=True); sys.stdin.read()"  # noqa: E501


def hold_lock(path: Path) -> subprocess.Popen:
    """A second process holding the lock on `path` until its stdin closes; returns once it holds it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    return holder


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished run as far as the commands here look (they stop at the lock, or at results.json):
    the resolved config of a tiny run, a best checkpoint folder, results.json."""
    from omegaconf import OmegaConf

    from mtl_cli.compose import compose_config

    run = tmp_path_factory.mktemp("made") / "2026-01-01" / "10-00-00_restaurants+electronics"
    (run / "checkpoints" / "best").mkdir(parents=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(compose_config(TINY_RUN), resolve=True))
    (run / "checkpoints" / "best" / "config.yaml").write_text((run / "config.yaml").read_text())
    (run / "results.json").write_text('{"restaurants": {"accuracy": 0.5}}\n')
    return run


LOCK_CASES = {
    # case: (command line with {run} for the locked run, what the refusal says it wanted)
    "resume": (["train", "resume={run}"], "cannot resume"),
    "resume, --resume DIR": (["train", "--resume", "{run}"], "cannot resume"),
    "eval": (["eval", "{run}"], "cannot evaluate"),
    "eval latest": (["eval", "latest", "runs_root={root}"], "cannot evaluate"),
    "eval of a checkpoint inside the run": (["eval", "{run}/checkpoints/best"], "cannot evaluate"),
    "eval, another split and checkpoint": (["eval", "{run}", "split=validation", "checkpoint=last"], "cannot evaluate"),
}


@pytest.mark.parametrize("case", list(LOCK_CASES))
def test_a_second_writer_is_refused_naming_the_holder(mtl, finished: Path, tmp_path: Path, case: str) -> None:
    command, doing = LOCK_CASES[case]
    root = finished.parents[1]
    before = tree_digest(root)
    holder = hold_lock(finished)
    try:
        pid = holder_pid(finished)
        # /proc/locks names the holder where it is visible (not in every sandbox); else "another process".
        assert pid in (holder.pid, None)
        who = f"another mtl process (pid {holder.pid})" if pid else "another process"
        proc = mtl(*[a.format(run=finished, root=root) for a in command], cwd=tmp_path)
        assert_one_line_error(proc, f"{doing} {finished}: {who} is training or evaluating it")
        assert tree_digest(root) == before
    finally:
        holder.stdin.close()  # type: ignore[union-attr]
        holder.wait()


def test_a_killed_holder_leaves_no_lock(mtl, finished: Path, tmp_path: Path) -> None:
    holder = hold_lock(finished)
    assert try_lock(finished) is None
    holder.kill()  # SIGKILL: the lock goes with the process, nothing stale is left
    holder.wait()
    assert holder.returncode == -signal.SIGKILL
    lock = try_lock(finished)
    assert lock is not None and holder_pid(finished) in (os.getpid(), None)  # this process holds it now
    lock.release()
    assert holder_pid(finished) is None
    before = tree_digest(finished.parents[1])
    proc = mtl("train", f"resume={finished}", cwd=tmp_path)  # past the lock, to its own answer
    assert_one_line_error(proc, "has finished (results.json exists)")
    assert tree_digest(finished.parents[1]) == before


def test_without_proc_locks_the_holder_is_another_process(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("mtl_cli.locks.PROC_LOCKS", tmp_path / "no-such-file")
    with pytest.raises(MtlError, match=r"cannot resume .*: another process is training or evaluating it"):
        from mtl_cli.locks import run_lock

        with run_lock(tmp_path, "resume"), run_lock(tmp_path, "resume"):
            pass


def test_a_new_run_never_claims_a_folder_another_process_holds(tmp_path: Path) -> None:
    base = tmp_path / "2026-01-01" / "10-00-00_a"
    base.mkdir(parents=True)  # as Hydra makes it, before the run writes its config.yaml
    holder = hold_lock(base)
    try:
        assert claim_run_dir(base, "a: 1\n").path.name == "10-00-00_a_2"
        assert list(base.iterdir()) == []
    finally:
        holder.kill()
        holder.wait()


# --- where a new run may go, and which tasks: refused before anything runs ---------------------------

LONG_NAME = "x" * 300
WHERE_CASES = {
    # case: (overrides, with {earlier} for the earlier run's folder; expected message)
    "hydra.run.dir is an existing run": (["hydra.run.dir={earlier}"], "is an existing run"),
    "hydra.run.dir is its checkpoints/ folder": (["hydra.run.dir={earlier}/checkpoints"], "inside the existing run"),
    "hydra.run.dir inside one of its checkpoints": (
        ["hydra.run.dir={earlier}/checkpoints/best/new"],
        "inside the existing run",
    ),
    "hydra.run.dir a new folder inside the run": (["hydra.run.dir={earlier}/sub/new"], "inside the existing run"),
    "hydra.run.dir interpolated, inside the run": (
        ["hydra.run.dir={earlier}/${{now:%H-%M-%S}}"],
        "inside the existing run",
    ),
    "runs_root inside the run": (["runs_root={earlier}/more"], "inside the existing run"),
    "a sweep's folder inside the run": (
        ["-m", "hydra.sweep.dir={earlier}/sweep", "seed=1,2"],
        "inside the existing run",
    ),
    "a run folder name over the filesystem's limit": ([f"hydra.run.dir=runs/{LONG_NAME}"], "over this filesystem's"),
    "a sweep folder name over the limit": (["-m", f"hydra.sweep.dir=runs/{LONG_NAME}", "seed=1,2"], "over this"),
    "a runs_root name over the limit": ([f"runs_root=runs/{LONG_NAME}"], "over this filesystem's limit"),
    "a task twice, a+a": (["task=demo/restaurants+demo/restaurants"], "task demo/restaurants is selected more"),
    "a task twice, [a,a]": (["task=[demo/restaurants,demo/restaurants]"], "is selected more than once"),
    "a task twice among others": (
        ["task=demo/electronics+demo/restaurants+demo/electronics"],
        "task demo/electronics is selected more",
    ),
    "a task twice in one job of a sweep": (
        ["-m", "task=demo/restaurants+demo/electronics,demo/electronics+demo/electronics"],
        "is selected more",
    ),
}


@pytest.mark.parametrize("case", list(WHERE_CASES))
def test_where_a_run_goes_and_its_tasks(mtl, workdir: Path, case: str) -> None:  # noqa: F811
    overrides, message = WHERE_CASES[case]
    before = tree_digest(workdir / "runs")
    args = [o.format(earlier=workdir / EARLIER) for o in overrides]
    proc = mtl("train", *SHORT, *args, cwd=workdir)
    assert_refused(proc, message, workdir / "runs", before)


def test_many_tasks_get_a_short_label_the_same_for_the_same_tasks() -> None:
    thirty = [f"sentences/task_number_{i}" for i in range(30)]
    label = task_names_label(dict.fromkeys(thirty))
    assert len(label.encode()) <= LABEL_MAX < 255 - len("10-00-00_") - len("_999")
    first = "+".join(f"sentences_task_number_{i}" for i in range(4))
    assert re.fullmatch(rf"{re.escape(first)}\+26-more-[0-9a-f]{{8}}", label), label
    assert label == task_names_label(dict.fromkeys(thirty))  # deterministic
    assert label != task_names_label(dict.fromkeys([*thirty[:-1], "sentences/other"]))
    assert task_names_label(dict.fromkeys(["a" * 300])).startswith("a" * 50)
    assert len(task_names_label(dict.fromkeys(["a" * 300]))) <= LABEL_MAX
    assert task_names_label(dict.fromkeys(["yelp", "imdb"])) == "yelp+imdb"  # short labels as before


# --- limits known before training: checked before any run folder exists ------------------------------

LIMIT_CASES = {
    "max_length above the encoder's position embeddings": (
        ["task.restaurants.max_length=1024"],
        "`task.restaurants.max_length=1024` is more than the 512 positions",
    ),
    "the default max_length above a smaller encoder's positions": (
        ["encoder.config_overrides.max_position_embeddings=64"],
        "`task.restaurants.max_length=128` is more than the 64",
    ),
    "shared_layers above the encoder's depth": (
        ["sharing=partial", "sharing.shared_layers=3"],
        "`sharing.shared_layers=3` but BertModel has 2 layers",
    ),
    "adapters on modules the encoder lacks": (
        ["sharing=adapters", "sharing.target_modules=[foo]"],
        "cannot put LoRA adapters on BertModel",
    ),
}


@pytest.mark.parametrize("case", list(LIMIT_CASES))
def test_limits_known_before_training_leave_no_folder(mtl, workdir: Path, case: str) -> None:  # noqa: F811
    overrides, message = LIMIT_CASES[case]
    before = tree_digest(workdir / "runs")
    proc = mtl("train", *SHORT, *overrides, cwd=workdir)
    assert_refused(proc, message, workdir / "runs", before)


# --- any failure before the first step: the folder this process claimed goes, no other ---------------


def fails(error: BaseException):
    def raiser(*args, **kwargs):
        raise error

    return raiser


FAILURE_CASES = {
    # case: (what fails, the error, expected message, exit code)
    "the optimizer": ("build_optimizer", MtlError("no optimizer today"), "no optimizer today", 2),
    "the batch streams": ("TaskBatches", MtlError("no batches today"), "no batches today", 2),
    "the evaluator": ("Evaluator", MtlError("no evaluator today"), "no evaluator today", 2),
    "the first step": ("train_step", MtlError("the first step failed"), "the first step failed", 2),
    "Ctrl-C in build": (
        "build_optimizer",
        KeyboardInterrupt(),
        "SIGINT: stopped before training started; nothing was saved",
        130,
    ),
    "Ctrl-C in the first step": (
        "train_step",
        KeyboardInterrupt(),
        "SIGINT: stopped before training started; nothing was saved",
        130,
    ),
}


@pytest.mark.parametrize("case", list(FAILURE_CASES))
def test_a_failure_before_the_first_step_leaves_no_folder(
    mtl,
    workdir: Path,  # noqa: F811
    monkeypatch,
    case: str,
) -> None:
    name, error, message, code = FAILURE_CASES[case]
    monkeypatch.setattr(train_module, name, fails(error))
    before = tree_digest(workdir / "runs")
    proc = mtl("train", *SHORT, cwd=workdir)
    assert_refused(proc, message, workdir / "runs", before, code=code)
    assert sorted(p.name for p in (workdir / "runs").iterdir()) == ["2026-01-01"]  # no empty date folder either


def test_a_failure_removes_only_what_this_process_wrote(workdir: Path, monkeypatch) -> None:  # noqa: F811
    """Two folders a failing run lands in: an earlier run (Hydra's name clash in the same second: the
    new run takes `_2`, which goes) and a user's own folder (hydra.run.dir: only mtl's files go)."""
    from mtl_cli.compose import compose_config

    monkeypatch.setattr(train_module, "train_step", fails(MtlError("the first step failed")))
    own = workdir / "mine"
    own.mkdir()
    (own / "notes.txt").write_text("mine\n")
    cfg = compose_config([*SHORT, f"runs_root={workdir / 'runs'}"])
    for run_dir in (workdir / EARLIER, own):
        before = tree_digest(workdir)
        with pytest.raises(MtlError, match="the first step failed"):
            train_module.train(cfg, run_dir=run_dir)
        assert tree_digest(workdir) == before
    assert not (workdir / f"{EARLIER}_2").exists() and (own / "notes.txt").read_text() == "mine\n"


def test_claim_discards_only_its_own_folders(tmp_path: Path) -> None:
    made = claim(tmp_path / "runs" / "2026-01-01" / "10-00-00_a", "a: 1\n")
    (made.run.path / "train.log").write_text("log\n")
    made.discard()
    made.release()
    assert list(tmp_path.iterdir()) == []  # the run, its date folder and runs/ were all this claim's


# --- a sweep that fails on job k says what ran, what failed and what was not run ---------------------

SWEEP_CASES = {
    # case: (sweep overrides; what the one line says; run folders the sweep leaves)
    "job 1 of 3 fails": (
        ["sharing=partial", "sharing.shared_layers=0,3,1"],
        [
            "sweep stopped: job 1 of 3 (sharing.shared_layers=3) failed: `sharing.shared_layers=3` but BertModel",
            "| ran: job 0 (sharing.shared_layers=0): ",
            "| not run: job 2 (sharing.shared_layers=1)",
        ],
        1,
    ),
    "two swept keys, the first job fails": (
        ["task.restaurants.max_length=1024,64", "seed=1,2"],
        [
            "sweep stopped: job 0 of 4 (task.restaurants.max_length=1024 seed=1) failed: ",
            "| ran: none | not run: job 1 (task.restaurants.max_length=1024 seed=2), "
            "job 2 (task.restaurants.max_length=64 seed=1), job 3 (task.restaurants.max_length=64 seed=2)",
        ],
        0,
    ),
}


@pytest.mark.parametrize("case", list(SWEEP_CASES))
def test_a_failed_sweep_says_which_jobs_ran_failed_and_were_not_run(
    mtl,
    workdir: Path,  # noqa: F811
    case: str,
) -> None:
    overrides, parts, left = SWEEP_CASES[case]
    before = tree_digest(workdir / "runs")
    proc = mtl("train", "-m", *SHORT, *overrides, cwd=workdir)
    assert_one_line_error(proc, parts[0])
    for part in parts[1:]:
        assert part in proc.stderr
    jobs = [r for r in run_dirs(workdir / "runs") if "multirun" in r.parts]
    assert len(jobs) == left
    for job in jobs:  # a job that ran is named with its folder, and finished
        assert str(job) in proc.stderr and (job / "results.json").is_file()
    if not left:  # nothing of the sweep is left: no multirun.yaml, no empty folders
        assert tree_digest(workdir / "runs") == before
        assert not (workdir / "runs" / "multirun").exists()


def test_ctrl_c_in_a_sweep_says_what_was_not_run(mtl, workdir: Path, monkeypatch) -> None:  # noqa: F811
    def interrupted(cfg, world=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "prepare", interrupted)
    before = tree_digest(workdir / "runs")
    proc = mtl("train", "-m", *SHORT, "seed=1,2,3", cwd=workdir)
    assert_refused(proc, "job 0 of 3 (seed=1) failed: SIGINT: stopped before training started", workdir / "runs",
                   before, code=130)  # fmt: skip
    assert "| ran: none | not run: job 1 (seed=2), job 2 (seed=3)" in proc.stderr


def test_a_training_run_holds_its_lock_while_it_trains(tmp_path: Path, monkeypatch) -> None:
    """What the other process meets: train() locks its folder from the claim to the end, then lets go."""
    from mtl_cli.callbacks import Callback

    seen: list[object] = []

    class Probe(Callback):
        def on_step(self, parts, state, step) -> None:
            if state.step == 1:
                seen.extend([try_lock(parts.run.path), holder_pid(parts.run.path)])

    build = train_module.build_callbacks
    monkeypatch.setattr(train_module, "build_callbacks", lambda parts: [*build(parts), Probe()])
    run = Path(tiny_run(tmp_path, "trainer.max_steps=1", "trainer.eval_every=1")["run_dir"])
    assert seen[0] is None and seen[1] in (os.getpid(), None)
    lock = try_lock(run)  # released at the end
    assert lock is not None
    lock.release()
