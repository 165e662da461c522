"""Untrusted run directories: a run directory (or a checkpoint copied out of one) may come from
someone else, and every file mtl reads from it goes through a checked reader.

One catalogue per family, each case a damaged or crafted copy of one tiny run:

    MANIFEST_CASES   manifest.json of the wrong shape, missing or empty, pointing outside its
                     folder, leaving out a file mtl reads, or not a plain file
    STATE_CASES      labels.json, trainer_state.json, base_encoder.json, encoder/config.json and
                     model.safetensors of the wrong types or sizes (the manifest resealed, as a
                     forger would); three of them through resume as well
    YAML_CASES       config.yaml (and overrides.yaml) alias bombs, oversized, not UTF-8, a FIFO,
                     interpolations
    NAME_CASES       `checkpoint=` names that would leave checkpoints/
    REPORT_CASES     what `mtl report` reads: results.json, metrics.csv, config.yaml

Each case: one line on stderr, exit 2, no traceback, the run's files unchanged byte for byte, no
new folder. They run `mtl` in this process; one (a deleted manifest) also as `python -m mtl_cli`.
Besides: `last` without a manifest falls back to an older step, an `eval/` symlink leading out is
refused, and MMoE's gate statistics survive a stop and resume (the first record after it is the
uninterrupted run's).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from mtl_cli import train as train_module
from mtl_cli.checkpoints import checkpoint_problem, find_checkpoint
from mtl_cli.readers import yaml_bomb_problem
from mtl_cli.rundir import RunDir
from mtl_cli.state import TrainState
from tests.conftest import TINY_RUN, run_dirs, run_mtl, tiny_run
from tests.test_bad_input import assert_one_line_error, stopped
from tests.test_resume import signal_at

# A YAML "billion laughs": 9 levels of 10 aliases, 10^9 strings once expanded.
BILLION_LAUGHS = 'a0: &a0 "lol"\n' + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10))


def tree_digest(root: Path) -> str:
    """test_bad_input.tree_digest, except that a FIFO or symbolic link is named, never opened (reading a FIFO blocks)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_symlink():
            h.update(f"-> {os.readlink(p)}".encode())
        elif p.is_fifo():
            h.update(b"fifo")
        elif p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """A finished tiny run keeping two `last`s: checkpoints best, last (step 8) and step-000004."""
    return Path(tiny_run(tmp_path_factory.mktemp("made"), "trainer.keep_checkpoints=2")["run_dir"])


@pytest.fixture(scope="module")
def made_digest(made: Path) -> list:
    """What every case must leave `made` as (each copies what it damages)."""
    return signature(made)


def signature(root: Path) -> list:
    """Each path's size and modification time: cheaper than hashing ~40 MB after every case."""
    return [(p.relative_to(root), p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(root.rglob("*"))]


def reseal(ckpt: Path) -> None:
    """Rewrite the manifest to match the files, as someone forging a checkpoint would."""
    files = {}
    for root, _, names in os.walk(ckpt):
        for p in (Path(root) / n for n in names if n != "manifest.json" or Path(root) != ckpt):
            if p.is_file():
                files[p.relative_to(ckpt).as_posix()] = {"bytes": p.stat().st_size, "sha256": sha256(p)}
    (ckpt / "manifest.json").write_text(json.dumps({"files": files}))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest(ckpt: Path) -> dict:
    return json.loads((ckpt / "manifest.json").read_text())


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    data = change(data) if callable(change) else change
    path.write_text(json.dumps(data))


def set_key(key: str, value):
    def change(data: dict) -> dict:
        data[key] = value
        return data

    return change


def copy_run(made: Path, tmp_path: Path, checkpoints: tuple = ("best",)) -> Path:
    """`made`'s own files and the `checkpoints` a case needs (all of them: "all"), under tmp_path/runs/."""
    run = tmp_path / "runs" / "2026-01-02" / "10-00-00_case"
    run.mkdir(parents=True)
    for p in made.iterdir():
        if p.is_file():
            shutil.copy2(p, run / p.name)
        elif p.name == "checkpoints":
            for ckpt in p.iterdir():
                if checkpoints == "all" or ckpt.name in checkpoints:
                    shutil.copytree(ckpt, run / "checkpoints" / ckpt.name)
    return run


# --- manifest.json ------------------------------------------------------------------------------


def damage_manifest(case: str, run: Path, tmp_path: Path) -> None:
    best = run / "checkpoints" / "best"
    files = manifest(best)["files"]
    outside = tmp_path / "outside"
    outside.mkdir()
    if case == "a list":
        (best / "manifest.json").write_text(json.dumps(list(files)))
    elif case == "a string entry":
        edit_json(best / "manifest.json", {"files": {**files, "labels.json": "d55ca605"}})
    elif case == "an entry without its hash":
        edit_json(best / "manifest.json", {"files": {**files, "labels.json": {"bytes": 113}}})
    elif case == "sizes as strings":
        edit_json(best / "manifest.json", {"files": {k: {**v, "bytes": str(v["bytes"])} for k, v in files.items()}})
    elif case == "files missing":
        (best / "manifest.json").write_text('{"file": {}}')
    elif case == "deleted":
        (best / "manifest.json").unlink()
    elif case == "an empty file":
        (best / "manifest.json").write_text("")
    elif case == "lists nothing":
        (best / "manifest.json").write_text('{"files": {}}')
    elif case == "leaves out a required file":
        edit_json(best / "manifest.json", {"files": {k: v for k, v in files.items() if k != "labels.json"}})
    elif case == "leaves out a file mtl reads":
        (best / "base_encoder.json").write_text('{"seed": 1}')  # added after the manifest was written
    elif case in ("an absolute path", "a path with .."):
        secret = outside / "secret.txt"
        secret.write_text("not yours\n")
        name = str(secret) if case == "an absolute path" else os.path.relpath(secret, best)
        entry = {"bytes": secret.stat().st_size, "sha256": sha256(secret)}
        edit_json(best / "manifest.json", {"files": {**files, name: entry}})
    elif case == "a symlink out of the folder":
        target = outside / "labels.json"
        shutil.move(best / "labels.json", target)
        (best / "labels.json").symlink_to(target)
        reseal(best)
    elif case == "a symlinked folder":
        shutil.move(best / "tokenizer", outside / "tokenizer")
        (best / "tokenizer").symlink_to(outside / "tokenizer")
        reseal(best)
    elif case == "is a symlink":
        shutil.move(best / "manifest.json", outside / "manifest.json")
        (best / "manifest.json").symlink_to(outside / "manifest.json")
    elif case == "is a FIFO":  # reading it would block forever
        (best / "manifest.json").unlink()
        os.mkfifo(best / "manifest.json")
    elif case == "nested too deeply":
        (best / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    elif case == "oversized":
        (best / "manifest.json").write_text(json.dumps({"files": files, "pad": "x" * (2 << 20)}))
    else:
        raise AssertionError(case)


MANIFEST_CASES = {
    "a list": "its manifest.json is not a manifest",
    "a string entry": "its manifest.json has a malformed entry for 'labels.json'",
    "an entry without its hash": "its manifest.json has a malformed entry for 'labels.json'",
    "sizes as strings": "its manifest.json has a malformed entry",
    "files missing": "its manifest.json is not a manifest",
    "deleted": "it has no manifest.json, so nothing vouches for its files",
    "an empty file": "its manifest.json is not valid JSON",
    "lists nothing": "its manifest.json does not list model.safetensors, labels.json, trainer_state.json",
    "leaves out a required file": "its manifest.json does not list labels.json",
    "leaves out a file mtl reads": "base_encoder.json is not in its manifest.json",
    "an absolute path": "a path outside the checkpoint folder",
    "a path with ..": "a path outside the checkpoint folder",
    "a symlink out of the folder": "labels.json is a symbolic link; a checkpoint holds plain files only",
    "a symlinked folder": "tokenizer is a symbolic link",
    "is a symlink": "its manifest.json is a symbolic link",
    "is a FIFO": "its manifest.json is a special file, not a plain file",
    "nested too deeply": "its manifest.json is not valid JSON (nested too deeply)",
    "oversized": "its manifest.json is larger than 1048576 bytes",
}


def check_bad_checkpoint(run_cli, made: Path, made_digest: list, tmp_path: Path, damage, message: str) -> None:
    run = copy_run(made, tmp_path)
    damage(run)
    before = tree_digest(tmp_path / "runs")
    proc = run_cli("eval", str(run), cwd=tmp_path)
    assert_one_line_error(proc, message)
    assert tree_digest(tmp_path / "runs") == before
    assert run_dirs(tmp_path / "runs") == [run]
    assert not (run / "eval").exists()
    assert signature(made) == made_digest


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_bad_manifest(mtl, case: str, made: Path, made_digest: list, tmp_path: Path) -> None:
    damage = lambda run: damage_manifest(case, run, tmp_path)  # noqa: E731
    check_bad_checkpoint(mtl, made, made_digest, tmp_path, damage, MANIFEST_CASES[case])


def test_a_crafted_manifest_never_reads_a_file_outside(made: Path, tmp_path: Path) -> None:
    """Today's attack: a manifest listing a file outside made mtl hash it and print its size."""
    run = copy_run(made, tmp_path)
    damage_manifest("a path with ..", run, tmp_path)
    problem = checkpoint_problem(run / "checkpoints" / "best") or ""
    assert "outside the checkpoint folder" in problem and "bytes" not in problem


def test_a_last_without_manifest_falls_back_to_the_previous_step(mtl, made: Path, tmp_path: Path) -> None:
    run = copy_run(made, tmp_path, ("last", "step-000004"))
    (run / "checkpoints" / "last" / "manifest.json").unlink()
    assert find_checkpoint(RunDir(run), "last") == run / "checkpoints" / "step-000004"
    proc = mtl("eval", str(run), "checkpoint=last", "split=validation", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "checkpoints/last is unusable (it has no manifest.json" in proc.stderr and "using step-000004" in proc.stderr


def test_a_checkpoint_copied_out_without_manifest_is_refused(mtl, made: Path, tmp_path: Path) -> None:
    alone = Path(shutil.copytree(made / "checkpoints" / "best", tmp_path / "alone"))
    (alone / "manifest.json").unlink()
    before = tree_digest(alone)
    assert_one_line_error(mtl("eval", str(alone), cwd=tmp_path), "it has no manifest.json")
    assert tree_digest(alone) == before


# --- labels.json, trainer_state.json, base_encoder.json, encoder/config.json, weights --------------


def forged(name: str, change):
    """A damage that edits `name` in each checkpoint of the run and reseals them."""

    def damage(run: Path) -> None:
        for ckpt in (run / "checkpoints").iterdir():
            path = ckpt / name
            if callable(change) and not isinstance(change, bytes):
                change(path)
            else:
                path.write_bytes(change) if isinstance(change, bytes) else path.write_text(json.dumps(change))
            reseal(path.parents[len(Path(name).parts) - 1])

    return damage


def as_float64(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(str(path))
    first = sorted(weights)[0]
    weights[first] = weights[first].double()
    save_file(weights, str(path))


STATE_CASES = {
    # case: (file, the damage, the message)
    "labels a list": ("labels.json", ["negative", "positive"], "labels.json is not a {task: [label, ...]} object"),
    "labels of a task a string": (
        "labels.json", {"restaurants": "negative", "electronics": ["negative", "positive"]},
        "task 'restaurants' has a string, not a list of label names",
    ),
    "labels empty": ("labels.json", {}, "labels.json is not a {task: [label, ...]} object, an empty object"),
    "state a list": ("trainer_state.json", [], "trainer_state.json is not the state of this mtl version"),
    "state: step a string": (
        "trainer_state.json", lambda p: edit_json(p, set_key("step", "8")), "`step` must be a step number, not str '8'"
    ),
    "state: encoder a list": (
        "trainer_state.json", lambda p: edit_json(p, set_key("encoder", ["tiny"])), "`encoder` must be the encoder's"
    ),
    "state: batches of strings": (
        "trainer_state.json", lambda p: edit_json(p, set_key("batches", {"restaurants": "start"})), "`batches` must be"
    ),
    "state: a negative position": (
        "trainer_state.json",
        lambda p: edit_json(p, set_key("batches", {"restaurants": {"epoch": 0, "batch": -3}})),
        "`batches` must be",
    ),
    "state: a bogus sampler state": (
        "trainer_state.json",
        lambda p: edit_json(p, set_key("sampler", {"rng": {"bit_generator": "PCG64", "state": "x"}})),
        "`sampler` must be a mixing sampler's state",
    ),
    "state: a sampler naming another class": (
        "trainer_state.json",
        lambda p: edit_json(p, set_key("sampler", {"rng": {"bit_generator": "Generator", "state": {}}})),
        "`sampler` must be",
    ),
    "state: early stopping garbage": (
        "trainer_state.json",
        lambda p: edit_json(p, set_key("callbacks", {"early_stopping": {"tasks": {"restaurants": {"best": "x"}}}})),
        "`callbacks` must be",
    ),
    "state: fingerprints of numbers": (
        "trainer_state.json", lambda p: edit_json(p, set_key("data_fingerprint", {"restaurants": 1})),
        "`data_fingerprint` must be {task: hash}",
    ),
    "state not UTF-8": ("trainer_state.json", b'{"step": "\xff"}', "trainer_state.json is not UTF-8 text"),
    "base_encoder.json of wrong types": (
        "base_encoder.json", {"name_or_path": "x", "source": "x", "revision": None, "random_init": "no", "seed": 1},
        "base_encoder.json: `random_init` is a string",
    ),
    "base_encoder.json a list": ("base_encoder.json", [1], "base_encoder.json: it is a list, not an object"),
    "base_encoder.json: a seed torch cannot take": (
        "base_encoder.json",
        {"name_or_path": "x", "source": "x", "revision": None, "random_init": True, "seed": 2**70},
        "`seed` is a number",
    ),
    "encoder/config.json a list": ("encoder/config.json", [], "encoder/config.json is not a transformers config"),
    "encoder/config.json asking for billions of parameters": (
        "encoder/config.json",
        lambda p: edit_json(p, lambda c: {**c, "hidden_size": 8192, "intermediate_size": 32768, "num_hidden_layers": 64}),
        "describes an encoder of",
    ),
    "weights of another dtype": ("model.safetensors", as_float64, "is torch.float64, the model's is torch.float32"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(STATE_CASES))
def test_bad_checkpoint_state(mtl, case: str, made: Path, made_digest: list, tmp_path: Path) -> None:
    name, change, message = STATE_CASES[case]
    check_bad_checkpoint(mtl, made, made_digest, tmp_path, forged(name, change), message)


# Resume reads trainer_state.json before it writes anything: the same refusals, the run untouched.
RESUME_STATE_CASES = ["state: step a string", "state: batches of strings", "state: a bogus sampler state"]


@pytest.mark.parametrize("case", RESUME_STATE_CASES)
def test_resume_refuses_a_bad_state(mtl, case: str, made: Path, made_digest: list, tmp_path: Path) -> None:
    name, change, message = STATE_CASES[case]
    run = stopped(copy_run(made, tmp_path, ("last",)))
    forged(name, change)(run)  # `last` resealed: intact by its manifest, so no fallback to step-000004
    before = tree_digest(tmp_path / "runs")
    assert_one_line_error(mtl("train", f"resume={run}", cwd=tmp_path), message)
    assert tree_digest(tmp_path / "runs") == before
    assert signature(made) == made_digest


def test_every_field_of_the_state_is_type_checked(made: Path) -> None:
    """Each field of TrainState, replaced by a value of another type, is refused with its name."""
    good = json.loads((made / "checkpoints" / "last" / "trainer_state.json").read_text())
    TrainState.from_json(good)
    for field in TrainState.__dataclass_fields__:
        bad = {**good, field: {"nested": object.__name__} if isinstance(good.get(field), (int, float, str)) else "x"}
        with pytest.raises(Exception, match=f"`{field}` must be"):
            TrainState.from_json(bad)


# --- YAML: config.yaml and overrides.yaml ------------------------------------------------------------


def yaml_damage(case: str, run: Path) -> None:
    config = run / "config.yaml"
    text = config.read_text()
    if case == "billion laughs":
        config.write_text(text + BILLION_LAUGHS)
    elif case == "a thousand aliases":
        config.write_text(text + "x: &x 1\ny: [" + ", ".join(["*x"] * 1000) + "]\n")
    elif case == "an alias to itself":
        config.write_text(text + "loop: &loop [*loop]\n")
    elif case == "oversized":
        config.write_text(text + "# " + "x" * (2 << 20) + "\n")
    elif case == "not UTF-8":
        config.write_bytes(text.encode() + b"# caf\xe9\n")
    elif case == "a FIFO":
        config.unlink()
        os.mkfifo(config)
    elif case == "an interpolation":
        config.write_text(text.replace("seed: 42", "seed: ${oc.env:HOME}"))
    elif case == "a string interpolation bomb":
        lines = ["b0: xxxxxxxxxx"] + [f"b{i}: ${{b{i - 1}}}${{b{i - 1}}}" for i in range(1, 40)]
        config.write_text(text + "\n".join(lines) + "\n")
    else:
        raise AssertionError(case)


YAML_CASES = {
    "billion laughs": "expands its YAML aliases to more than 100000 nodes: refusing an alias bomb",
    "a thousand aliases": "uses 1000 YAML aliases (at most 100",
    "an alias to itself": "refusing a possible alias bomb",
    "oversized": "config.yaml is larger than 1048576 bytes",
    "not UTF-8": "config.yaml is not UTF-8 text",
    "a FIFO": "config.yaml is a special file, not a plain file",
    "an interpolation": "holds the interpolation `${oc.env:HOME}` at seed",
    "a string interpolation bomb": "holds the interpolation `${b0}${b0}` at b1",
}


@pytest.mark.parametrize("case", list(YAML_CASES))
def test_bad_yaml_in_a_run_directory(mtl, case: str, made: Path, made_digest: list, tmp_path: Path) -> None:
    run = copy_run(made, tmp_path)
    yaml_damage(case, run)
    before = tree_digest(tmp_path / "runs") if case != "a FIFO" else None
    for command in (["eval", str(run)], ["train", f"resume={run}"]):
        assert_one_line_error(mtl(*command, cwd=tmp_path), YAML_CASES[case])
    if before is not None:
        assert tree_digest(tmp_path / "runs") == before
    assert run_dirs(tmp_path / "runs") == [run] or case == "a FIFO"
    assert signature(made) == made_digest


def test_a_bomb_in_a_checkpoints_own_config_is_refused(mtl, made: Path, tmp_path: Path) -> None:
    alone = Path(shutil.copytree(made / "checkpoints" / "best", tmp_path / "alone"))
    (alone / "config.yaml").write_text((alone / "config.yaml").read_text() + BILLION_LAUGHS)
    reseal(alone)
    before = tree_digest(alone)
    assert_one_line_error(mtl("eval", str(alone), cwd=tmp_path), "refusing an alias bomb")
    assert tree_digest(alone) == before


def test_the_bomb_check_is_linear_and_leaves_ordinary_yaml_alone(made: Path) -> None:
    # 30 levels of 2 aliases: 2^30 nodes expanded; measured without expanding a single one.
    deep = 'a0: &a0 "x"\n' + "".join(f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}]\n" for i in range(1, 31))
    assert "refusing an alias bomb" in (yaml_bomb_problem(deep) or "")
    assert yaml_bomb_problem((made / "config.yaml").read_text()) is None
    assert yaml_bomb_problem("base: &b {lr: 1}\nrun: {<<: *b, seed: 2}\n") is None  # a few aliases are fine
    assert yaml_bomb_problem("a: [unclosed") is None  # left to the parser, which names the line


def test_an_eval_folder_leading_out_of_the_run_is_refused(mtl, made: Path, tmp_path: Path) -> None:
    run = copy_run(made, tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (run / "eval").symlink_to(tmp_path / "elsewhere")
    proc = mtl("eval", str(run), "split=validation", cwd=tmp_path)
    assert_one_line_error(proc, "eval is a symbolic link; mtl writes evaluations inside the run")
    assert not list((tmp_path / "elsewhere").iterdir())


# --- checkpoint= names ---------------------------------------------------------------------------

NAME_CASES = ["best-../../x", "best-a/b", "last/../best", "step-1/../../x", "best-..", "best-.hidden", "best-a\\b"]


@pytest.mark.parametrize("name", NAME_CASES)
def test_checkpoint_names_stay_in_checkpoints(mtl, name: str, made: Path, made_digest: list, tmp_path: Path) -> None:
    proc = mtl("eval", str(made), f"checkpoint={name}", cwd=tmp_path)
    assert_one_line_error(proc, "cannot hold a path separator or `..`")
    assert signature(made) == made_digest and not (made / "eval").exists()


# --- what mtl report reads -----------------------------------------------------------------------


def report_damage(case: str, run: Path) -> None:
    if case == "results.json a list":
        (run / "results.json").write_text("[1, 2]")
    elif case == "results.json of wrong types":
        (run / "results.json").write_text('{"average": {"main": "x"}, "restaurants": {"accuracy": [1]}, "b": 3}')
    elif case == "results.json a FIFO":
        (run / "results.json").unlink()
        os.mkfifo(run / "results.json")
    elif case == "results.json nested too deeply":
        (run / "results.json").write_text("[" * 100_000 + "]" * 100_000)
    elif case == "config.yaml a bomb":
        (run / "config.yaml").write_text((run / "config.yaml").read_text() + BILLION_LAUGHS)
    elif case == "metrics.csv a FIFO (validation)":
        (run / "metrics.csv").unlink()
        os.mkfifo(run / "metrics.csv")
    else:
        raise AssertionError(case)


REPORT_CASES = [
    "results.json a list", "results.json of wrong types", "results.json a FIFO", "results.json nested too deeply", "config.yaml a bomb",
    "metrics.csv a FIFO (validation)",
]  # fmt: skip


@pytest.mark.parametrize("case", REPORT_CASES)
def test_report_skips_unreadable_runs(mtl, case: str, made: Path, tmp_path: Path) -> None:
    run = copy_run(made, tmp_path)
    report_damage(case, run)
    split = ["split=validation"] if "validation" in case else []
    proc = mtl("report", str(run.parent), *split, cwd=tmp_path)
    assert_one_line_error(proc, "no finished runs under")
    assert run_dirs(tmp_path / "runs") == [run] and not list(run.parent.glob("report*"))


# --- the real CLI, end to end --------------------------------------------------------------------


def test_through_the_real_cli(made: Path, made_digest: list, tmp_path: Path) -> None:
    """Today's silent case, a deleted manifest, as a user runs `mtl eval` (a fresh interpreter)."""
    check_bad_checkpoint(run_mtl, made, made_digest, tmp_path, lambda run: damage_manifest("deleted", run, tmp_path),
                         MANIFEST_CASES["deleted"])  # fmt: skip


# --- MMoE: the gate statistics are part of the checkpoint ---------------------------------------

MMOE = ["sharing=mmoe", "trainer.max_steps=8", "trainer.eval_every=4"]
STOP_AT = 6  # between the evaluations at 4 and 8: `last` holds the gate sums of steps 5 and 6


def test_mmoe_gate_sums_survive_a_stop_and_resume(mtl, tmp_path: Path, monkeypatch) -> None:
    reference = Path(tiny_run(tmp_path / "reference", *MMOE)["run_dir"])
    with monkeypatch.context() as patched:
        patched.setattr(train_module, "build_callbacks", signal_at(STOP_AT, signal.SIGINT))
        stopped_run = mtl("train", *TINY_RUN, *MMOE, cwd=tmp_path)
    assert stopped_run.returncode == 130, stopped_run.stderr
    (run,) = run_dirs(tmp_path / "runs")
    saved = json.loads((run / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert saved["step"] == STOP_AT and saved["trunk"]["counts"] and saved["trunk"]["sums"]
    proc = mtl("train", f"resume={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    first_after = [r for r in records if r["step"] == 8 and r["task"] != "average"]
    assert first_after and all(r.get("gates") for r in first_after)
    assert first_after == [r for r in expected if r["step"] == 8 and r["task"] != "average"]
    assert (run / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()
