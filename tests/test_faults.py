"""Real faults, not simulated ones: a full disk, read-only folders, and SIGINT/SIGTERM in every phase.

- A full disk is a real one: a size-limited tmpfs, filled to the last byte by a filler file once the
  run has its first checkpoint (so the next save fails as it would: a SafetensorError, torch's
  RuntimeError or an OSError), and filled again before each later command.
- Read-only is real too: a read-only bind mount, and root without CAP_DAC_OVERRIDE (`setpriv`, in a
  subprocess) on a chmod 555 folder, where `os.access` says yes and every write fails.
- Signals are real signals, sent by the process to itself from inside the phase they test (a patched
  function of that phase calls os.kill), so each lands in its phase however loaded the machine is.
  One goes through a fresh `python -m mtl_cli` interpreter; test_resume.py sends one from outside.

Every case: one line on stderr, exit 2 (130/143 for signals), no traceback, earlier files byte for
byte as they were, no new run folder, no temporary file or folder left. Mounts need root: without
it those cases skip. Each mount is undone in its fixture's teardown.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mtl_cli import checkpoints as checkpoints_module
from mtl_cli import eval_run as eval_module
from mtl_cli import evaluate as evaluate_module
from mtl_cli import train as train_module
from mtl_cli.callbacks import Callback
from mtl_cli.checkpoints import checkpoint_problem, dump_nonfinite
from mtl_cli.errors import MtlError
from mtl_cli.writers import WriteError, append_jsonl, write_text, write_texts, writing
from tests.conftest import REPO, TINY_RUN, run_dirs, tiny_run
from tests.test_bad_input import assert_one_line_error, tree_digest

# Evaluations (and `last`) at steps 2 and 4; the signal cases evaluate at steps 1 and 2.
SHORT = [*TINY_RUN, "trainer.max_steps=4", "trainer.eval_every=2"]
TWO_STEPS = [*TINY_RUN, "trainer.max_steps=2", "trainer.eval_every=1"]


@pytest.fixture(scope="module", autouse=True)
def no_curves() -> Iterator[None]:
    """curves.png is not drawn here: matplotlib takes seconds per run, and no fault here is about it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluate_module, "training_curves", lambda *args, **kwargs: None)
        yield


# --- real mounts ------------------------------------------------------------------------------


def _run(*cmd: str) -> bool:
    return subprocess.run(cmd, capture_output=True).returncode == 0


@contextmanager
def mounted(target: Path, *mount_args: str) -> Iterator[Path]:
    """`mount ARGS target`, undone on the way out; the test skips where mounting is not allowed."""
    target.mkdir(parents=True, exist_ok=True)
    if not _run("mount", *mount_args, str(target)):
        pytest.skip(f"cannot mount here (mount {' '.join(mount_args)} needs root)")
    try:
        yield target
    finally:
        if not _run("umount", str(target)):
            _run("umount", "-l", str(target))


@contextmanager
def read_only_view(source: Path, target: Path) -> Iterator[Path]:
    """`source` again at `target`, read-only (a bind mount remounted ro)."""
    with mounted(target, "--bind", str(source)):
        if not _run("mount", "-o", "remount,ro,bind", str(target)):
            pytest.skip("cannot remount a bind mount read-only here")
        yield target


def fill(disk: Path) -> None:
    """Fill the filesystem of `disk` to the last byte (a filler file per call, outside every run)."""
    n = len(list(disk.glob("filler-*")))
    fd = os.open(disk / f"filler-{n}", os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 20, 1 << 12, 1):
            block = b"\0" * size
            while True:
                try:
                    os.write(fd, block)
                except OSError as err:
                    assert err.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)


def free(disk: Path) -> None:
    for filler in disk.glob("filler-*"):
        filler.unlink()


def leftovers(root: Path) -> list[Path]:
    """Temporary files and folders a write left behind."""
    return [p for p in root.rglob("*") if p.name.endswith((".tmp", ".old")) or ".mtl-write-probe" in p.name]


def assert_nothing_changed(proc, message: str, root: Path, before: str, runs: int) -> None:
    assert_one_line_error(proc, message)
    assert tree_digest(root) == before
    assert len(run_dirs(root)) == runs and not leftovers(root)


# --- a full disk --------------------------------------------------------------------------------


class FillDisk(Callback):
    """After the step that saved the first checkpoint, fills the disk: the next save finds it full."""

    def __init__(self, disk: Path, after: int) -> None:
        self.disk, self.after = disk, after
        self.checkpoints: str | None = None

    def on_step(self, parts, state, step) -> None:
        if state.step == self.after + 1:
            fill(self.disk)
            self.checkpoints = tree_digest(parts.run.checkpoints)


@pytest.fixture(scope="module")
def full_disk(tmp_path_factory) -> Iterator[dict]:
    """A 48 MB tmpfs whose run filled it after its first checkpoint (step 2) and stopped at step 4.

    {"disk", "runs", "run", "error" (the run's MtlError), "checkpoints" (their digest when the disk
    filled)}; the disk is left full.
    """
    with mounted(tmp_path_factory.mktemp("full"), "-t", "tmpfs", "-o", "size=48m", "tmpfs") as disk:
        filler = FillDisk(disk, after=2)
        build = train_module.build_callbacks
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(train_module, "build_callbacks", lambda parts: [*build(parts), filler])
            with pytest.raises(MtlError) as failed:
                tiny_run(disk / "runs", *SHORT[len(TINY_RUN) :])
        (run,) = run_dirs(disk / "runs")
        out = {"disk": disk, "runs": disk / "runs", "run": run, "error": failed.value}
        yield {**out, "checkpoints": filler.checkpoints}


def test_full_disk_during_training_keeps_the_checkpoint_and_says_how_to_go_on(full_disk: dict) -> None:
    err, run = full_disk["error"], full_disk["run"]
    message = str(err)
    assert err.exit_code == 2 and "\n" not in message
    assert "No space left on device" in message and "free disk space" in message
    assert message.endswith(f"then continue with: mtl train resume={run}")
    assert tree_digest(run / "checkpoints") == full_disk["checkpoints"]  # the save at step 4 left nothing
    assert checkpoint_problem(run / "checkpoints" / "last") is None  # its manifest: every byte intact
    assert json.loads((run / "checkpoints" / "last" / "trainer_state.json").read_text())["step"] == 2
    assert not leftovers(full_disk["runs"]) and not (run / "results.json").exists()


# Each command on the full disk, refilled first: (its arguments, what its one line says).
FULL_DISK = {
    "mtl eval": (lambda d: ["eval", str(d["run"])], "evaluated (table above) but could not write"),
    "mtl train resume=": (lambda d: ["train", f"resume={d['run']}"], "then continue with: mtl train resume="),
    "mtl train": (lambda d: ["train", *SHORT, f"runs_root={d['runs']}"], "or set runs_root="),
    "mtl data check --out": (
        lambda d: ["data", "check", *TINY_RUN[:1], "--out", str(d["runs"] / "checks" / "data_check.json")],
        "could not write",
    ),
}


@pytest.mark.parametrize("case", list(FULL_DISK))
def test_full_disk_commands(full_disk: dict, mtl, case: str) -> None:
    args, message = FULL_DISK[case]
    fill(full_disk["disk"])  # a failed write freed what it had taken
    runs = full_disk["runs"]
    before = tree_digest(runs)
    proc = mtl(*args(full_disk), cwd=full_disk["disk"])
    assert "No space left on device" in proc.stderr and "free disk space" in proc.stderr
    assert_nothing_changed(proc, message, runs, before, runs=1)
    if case == "mtl eval":  # the numbers were printed before the write failed
        assert "test acc" in proc.stdout and not (full_disk["run"] / "eval").exists()


def test_full_disk_each_writer_leaves_no_half_file(full_disk: dict) -> None:
    """The writers themselves, on the real full disk: a text, a set of files, an append, the
    safetensors and torch writers, debug evidence."""
    import torch
    from safetensors.torch import save_file

    free(full_disk["disk"])
    disk = full_disk["disk"] / "writers"
    disk.mkdir(exist_ok=True)
    (disk / "old.jsonl").write_text('{"step": 0}\n')
    fill(full_disk["disk"])
    before = tree_digest(disk)
    big = {"w": torch.zeros(1 << 16)}
    attempts = {
        "write_text": lambda: write_text(disk / "a.json", "{}" * 5000),
        "write_texts": lambda: write_texts({disk / "t.md": "x" * 5000, disk / "t.csv": "y" * 5000}),
        "append_jsonl": lambda: append_jsonl(disk / "old.jsonl", [{"step": i} for i in range(2000)]),
        "safetensors": lambda: save_file(big, str(disk / "w.safetensors")),
        "torch.save": lambda: torch.save(big, disk / "w.pt"),
        "debug dump": lambda: dump_nonfinite(disk / "debug" / "step-1", torch.nn.Linear(256, 256), {}, {}),
    }
    for what, attempt in attempts.items():
        target = disk / what
        with pytest.raises(WriteError, match="No space left on device.*free disk space") as err:
            with writing(target, disk / "w.safetensors", disk / "w.pt"):
                attempt()
        assert "\n" not in str(err.value), what
        assert tree_digest(disk) == before and not leftovers(disk), what


def test_after_freeing_the_disk_the_run_resumes_from_its_checkpoint(full_disk: dict, mtl) -> None:
    free(full_disk["disk"])
    proc = mtl("train", f"resume={full_disk['run']}", cwd=full_disk["disk"])
    assert proc.returncode == 0, proc.stderr
    assert "resumed from" in (full_disk["run"] / "train.log").read_text()
    assert (full_disk["run"] / "results.json").is_file() and not leftovers(full_disk["runs"])


# --- read-only folders ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> Path:
    """A run stopped by SIGTERM at step 2 (checkpoints best and last, no results.json)."""
    root = tmp_path_factory.mktemp("stopped")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "train_step", killing(train_module.train_step, signal.SIGTERM, on_call=2))
        with pytest.raises(MtlError, match="SIGTERM: stopped at step 2, checkpoint saved"):
            tiny_run(root / "runs", *SHORT[len(TINY_RUN) :])
    (run,) = run_dirs(root / "runs")
    return run


READ_ONLY = {
    "mtl eval": (lambda run: ["eval", str(run)], "evaluated (table above) but could not write"),
    "mtl train resume=": (lambda run: ["train", f"resume={run}"], "then continue with: mtl train resume="),
    "mtl train": (lambda run: ["train", *SHORT, f"runs_root={run.parent}"], "or set runs_root="),
    "mtl transfer": (lambda run: ["transfer", *SHORT, f"runs_root={run.parent}"], "could not create the folder"),
    "mtl data check": (lambda run: ["data", "check", "--out", str(run / "check.json")], "could not write"),
}


@pytest.mark.parametrize("case", list(READ_ONLY))
def test_read_only_mount(stopped_run: Path, tmp_path: Path, mtl, case: str) -> None:
    args, message = READ_ONLY[case]
    before = tree_digest(stopped_run.parent)
    with read_only_view(stopped_run.parent, tmp_path / "ro") as view:
        proc = mtl(*args(view / stopped_run.name), cwd=tmp_path)
    assert "Read-only file system" in proc.stderr and "writable" in proc.stderr
    assert_nothing_changed(proc, message, stopped_run.parent, before, runs=1)
    if case == "mtl eval":
        assert "test acc" in proc.stdout


# --- signals at every phase -------------------------------------------------------------------------


def killing(function, sig: int, on_call: int = 1, times: int = 1, when=lambda *a, **k: True):
    """`function`, sending `sig` to this process `times` times at its `on_call`-th call (counted
    where `when(args)` holds), then going on, as a user's Ctrl-C or `kill` would at that moment."""
    calls = []

    def wrapper(*args, **kwargs):
        if when(*args, **kwargs):
            calls.append(1)
            if len(calls) == on_call:
                for _ in range(times):
                    os.kill(os.getpid(), sig)
        return function(*args, **kwargs)

    return wrapper


def is_last(folder, *args, **kwargs) -> bool:
    return Path(folder).name == ".last.tmp"


# phase: (module, function, signal, kwargs of killing, what remains: "nothing" | "stopped" | "scored",
#         the message). Training cases: a new run; "resume"/"eval" cases: the stopped run.
SIGNALS = {
    "start-up: loading the data": (train_module, "load_tasks", signal.SIGINT, {}, "nothing",
                                   "SIGINT: stopped before training started; nothing was saved"),
    "start-up: loading the encoder": (train_module, "load_encoder", signal.SIGTERM, {}, "nothing",
                                      "SIGTERM: stopped before training started; nothing was saved"),
    "start-up: run folder claimed": (train_module, "build_optimizer", signal.SIGTERM, {}, "nothing",
                                     "SIGTERM: stopped before training started; nothing was saved"),
    "training": (train_module, "train_step", signal.SIGINT, {}, "stopped",
                 "SIGINT: stopped at step 1, checkpoint saved; continue with: mtl train resume="),
    "evaluation": (evaluate_module, "evaluate", signal.SIGTERM, {}, "stopped",
                   "SIGTERM: stopped at step 1, checkpoint saved; continue with: mtl train resume="),
    "saving a checkpoint": (checkpoints_module, "write_manifest", signal.SIGTERM, {"when": is_last}, "stopped",
                            "SIGTERM: stopped at step 1, checkpoint saved; continue with: mtl train resume="),
    "a second signal while saving": (
        checkpoints_module, "write_manifest", signal.SIGTERM, {"when": is_last, "on_call": 2, "times": 2},
        "stopped", "SIGTERM: stopped at once at step 2 without saving; continue from the last checkpoint with",
    ),
    "final scoring": (train_module, "final_results", signal.SIGTERM, {}, "scored",
                      "SIGTERM: stopped during the final scoring, after training; the checkpoints are saved"),
    "resume: start-up": (train_module, "load_encoder", signal.SIGTERM, {}, "resume",
                         "SIGTERM: stopped before training went on; nothing was trained: mtl train resume="),
    "mtl eval: evaluating": (eval_module, "Evaluator", signal.SIGTERM, {}, "eval",
                             "SIGTERM: stopped; mtl eval did not finish and wrote nothing"),
    "mtl eval: writing the table": (eval_module, "json_text", signal.SIGINT, {}, "eval",
                                    "SIGINT: stopped; mtl eval did not finish and wrote nothing"),
}  # fmt: skip


@pytest.mark.parametrize("phase", list(SIGNALS))
def test_a_signal_in_every_phase(phase: str, stopped_run: Path, tmp_path: Path, mtl, monkeypatch) -> None:
    module, name, sig, how, remains, message = SIGNALS[phase]
    if remains in ("resume", "eval"):
        root = tmp_path / "runs"
        shutil.copytree(stopped_run.parent, root)
        (run,) = run_dirs(root)
        args = ["train", f"resume={run}"] if remains == "resume" else ["eval", str(run)]
    else:
        root, args = tmp_path / "runs", ["train", *TWO_STEPS]
        root.mkdir()
    before = tree_digest(root)
    monkeypatch.setattr(module, name, killing(getattr(module, name), sig, **how))  # type: ignore[arg-type]
    proc = mtl(*args, cwd=tmp_path)
    monkeypatch.undo()
    assert proc.returncode == 128 + sig, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mtl: error: {message}"), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and not leftovers(root)
    if remains in ("nothing", "resume", "eval"):
        assert tree_digest(root) == before and len(run_dirs(root)) == (0 if remains == "nothing" else 1)
        assert not list(root.glob("*")) or remains != "nothing"  # not even an empty date folder
        return
    (run,) = run_dirs(root)
    assert f"mtl train resume={run}" in lines[0] and not (run / "results.json").exists()
    assert checkpoint_problem(run / "checkpoints" / "last") is None
    log = (run / "train.log").read_text()  # a stop asked for is a warning, not a failed run
    assert " ERROR " not in log and "run failed" not in log and f" WARNING {sig.name}" in log, log[-2000:]
    if remains == "scored":  # nothing lost: the resumed run only scores and writes the results
        proc = mtl("train", f"resume={run}", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert (run / "results.json").is_file()


# --- a fresh interpreter: root without CAP_DAC_OVERRIDE, and a real SIGTERM at start-up ------------

# `python -c FRESH COMMANDS TRAIN_ARGS`: each of COMMANDS (as JSON) through `cli.main`, its exit code
# and output printed as JSON; then `mtl train TRAIN_ARGS` with a SIGTERM while the encoder loads,
# the process's own exit code and stderr its result. One interpreter start-up for both.
FRESH = """
import contextlib, io, json, os, signal, sys
from mtl_cli import cli, train
out = []
for args in json.loads(sys.argv[1]):
    err, std = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
        try:
            cli.main(args)
            code = 0
        except SystemExit as exit:
            code = exit.code
    out.append({"code": code, "stderr": err.getvalue(), "stdout": std.getvalue()})
print(json.dumps(out), flush=True)
load = train.load_encoder
train.load_encoder = lambda *a, **k: (os.kill(os.getpid(), signal.SIGTERM), load(*a, **k))[1]
cli.main(["train", *sys.argv[2:]])
"""


def test_root_without_dac_override_and_a_real_sigterm_at_start_up(stopped_run: Path, tmp_path: Path) -> None:
    """Root without CAP_DAC_OVERRIDE (setpriv) on chmod 555 folders, where `os.access` says yes:
    eval, resume and train as in the read-only catalogue. Then, in the same process, `mtl train`
    gets a SIGTERM while loading the encoder: exit 143 from the interpreter itself, no run folder.
    Without root or setpriv only the SIGTERM half runs."""
    dac = os.geteuid() == 0 and shutil.which("setpriv") is not None
    locked, fresh = tmp_path / "runs", tmp_path / "fresh"
    shutil.copytree(stopped_run.parent, locked)
    run = locked / stopped_run.name
    folders = (locked, run, run / "checkpoints")
    for folder in folders:
        folder.chmod(0o555)
    before = tree_digest(locked)
    commands = [spec(run) for spec, _ in READ_ONLY.values()] if dac else []
    env = {**os.environ, "PYTHONPATH": str(REPO), "MTL_RUNS_ROOT": str(fresh)}
    env.pop("MTL_DATA_ROOT", None)
    drop = ["setpriv", "--inh-caps=-dac_override", "--bounding-set=-dac_override"] if dac else []
    try:
        proc = subprocess.run(
            [*drop, sys.executable, "-c", FRESH, json.dumps(commands), *SHORT, f"runs_root={fresh}"],
            cwd=tmp_path, env=env, capture_output=True, text=True,
        )  # fmt: skip
    finally:
        for folder in folders:
            folder.chmod(0o755)
    if dac and proc.stderr.startswith("setpriv:"):
        pytest.skip(f"setpriv cannot drop the capability here: {proc.stderr.strip()}")
    assert proc.returncode == 143, proc.stderr[-2000:]
    results = json.loads(proc.stdout.splitlines()[0])
    for (case, (_, message)), result in zip(READ_ONLY.items(), results, strict=False):
        done = subprocess.CompletedProcess(case, result["code"], result["stdout"], result["stderr"])
        assert_one_line_error(done, message)
        assert "Permission denied" in done.stderr and "writable" in done.stderr, case
    assert not dac or "test acc" in results[0]["stdout"]  # eval printed its numbers
    assert tree_digest(locked) == before and len(run_dirs(locked)) == 1 and not leftovers(locked)
    # The SIGTERM: the interpreter's own exit code, one line, and no folder left.
    message = "mtl: error: SIGTERM: stopped before training started; nothing was saved"
    assert proc.stderr.strip().splitlines() == [message]
    assert not fresh.exists() or not list(fresh.rglob("*"))
    if not dac:
        pytest.skip("the CAP_DAC_OVERRIDE half needs root and setpriv (the SIGTERM half passed)")
