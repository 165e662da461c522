"""Data that changes under a run: a resume must see the very training data (inputs and labels) it
started with, the `datasets` cache must follow a file's content (not its size and modification
time), and `mtl eval` must score the splits the run recorded.

Three catalogues, each case one line on stderr, exit 2, no traceback, the run byte for byte as
it was, no new folder:
    RESUME_CASES  training data changed under a stopped run, for every task type
    EVAL_CASES    a split changed (a grown train file re-carves it, an edited file) under `mtl eval`
    FORMATS       a file replaced by one of the same size and modification time is read again
One tiny run with a task of each type (module-scoped) serves the first two; each case changes one
file of its data and the fixture `pristine_data` puts the bytes back.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from mtl_cli.checkpoints import write_manifest
from mtl_cli.config import DataFormat, TaskConfig
from mtl_cli.fingerprints import _ids_fingerprint, changed_tasks, columns_digest, data_fingerprint
from mtl_cli.tasks import load_task
from tests.conftest import run_dirs, run_mtl, tiny_run, write
from tests.test_bad_input import assert_one_line_error, stopped, tree_digest

NOUNS = ["soup", "service", "pasta", "view", "staff", "dessert", "bread", "music", "room", "coffee"]
NER = (
    "John\tB-person\nloves\tO\nParis\tB-location\n\n"
    "Empire\tB-location\nState\tI-location\nis\tO\ntall\tO\n\n"
    "Mary\tB-person\nSmith\tI-person\nvisits\tO\nRome\tB-location\n\n"
)
TASKS = ["cls", "carved", "ner", "stars", "topics", "mymlm"]
STEP = 1_700_000_000_000_000_000  # one modification time (ns) for a file and its replacement


def review(i: int) -> str:
    return f"the {NOUNS[i % len(NOUNS)]} number {i} was {'great' if i % 2 == 0 else 'awful'}"


def tsv(rows: list[tuple]) -> str:
    return "text\tlabel\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows)


def write_tasks(root: Path) -> Path:
    """A task of each type, each in its own data folder; returns the config dir."""
    data, conf = root / "data", root / "conf" / "task"
    files = "{train: train.tsv, validation: validation.tsv, test: test.tsv}"
    for split, (n, off) in {"train": (24, 0), "validation": (8, 100), "test": (8, 200)}.items():
        write(
            data / "cls" / f"{split}.tsv",
            tsv([(review(i), ("negative", "positive")[i % 2]) for i in range(off, off + n)]),
        )
        write(data / "stars" / f"{split}.tsv", tsv([(review(i), 1 + 4 * (i % 2)) for i in range(off, off + n)]))
        topics = ["sports", "politics", "tech"]
        rows = [
            {"text": review(i), "label": [topics[i % 3]] + ([topics[(i + 1) % 3]] if i % 2 else [])}
            for i in range(off, off + n)
        ]
        write(data / "topics" / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        write(data / "ner" / f"{split}.conll", NER * (4 if split == "train" else 1))
    write(data / "carved" / "train.tsv", tsv([(review(i), ("negative", "positive")[i % 2]) for i in range(40)]))
    write(data / "mymlm" / "reviews.txt", "".join(f"{review(i)}.\n" for i in range(40)))
    common = "max_length: 32\n"
    yamls = {
        "cls": f"format: tsv\nfiles: {files}\n",
        "carved": "format: tsv\nfiles: {train: train.tsv}\nvalidation_size: 8\ntest_size: 8\n",
        "ner": "type: token_classification\nformat: conll\nfiles: {train: train.conll, validation: validation.conll, test: test.conll}\n",
        "stars": f"type: regression\nformat: tsv\nfiles: {files}\n",
        "topics": f"type: multilabel\nformat: jsonl\nfiles: {files.replace('.tsv', '.jsonl')}\n",
        "mymlm": "type: mlm\nformat: text\nfiles: {train: reviews.txt}\nvalidation_size: 8\ntest_size: 8\n",
    }
    for name, body in yamls.items():
        write(
            conf / f"{name}.yaml", f"# @package task.{name}\ndata_dir: {json.dumps(str(data / name))}\n{body}{common}"
        )
    return root / "conf"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """The data, its config dir, and one finished tiny run over all six tasks (2 steps)."""
    root = tmp_path_factory.mktemp("changes")
    conf = write_tasks(root)
    out = tiny_run(
        root / "made", f"task=[{','.join(TASKS)}]", "trainer.max_steps=2", "trainer.eval_every=2", config_dir=conf
    )
    return {"root": root, "data": root / "data", "conf": conf, "run": Path(out["run_dir"])}


@pytest.fixture
def pristine_data(world: dict[str, Path]):
    """Every data file's bytes and times put back after the test."""
    saved = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in world["data"].rglob("*") if p.is_file()}
    yield world["data"]
    for p in world["data"].rglob("*"):
        if p.is_file() and p not in saved:
            p.unlink()
    for p, (data, mtime) in saved.items():
        p.write_bytes(data)
        os.utime(p, ns=(mtime, mtime))


def edit(path: Path, change: Callable[[str], str]) -> None:
    text = path.read_text(encoding="utf-8")
    new = change(text)
    assert new != text
    path.write_text(new, encoding="utf-8")


def swap(a: str, b: str) -> Callable[[str], str]:
    return lambda text: text.replace(a, "\0").replace(b, a).replace("\0", b)


def first_line_only(change: Callable[[str], str]) -> Callable[[str], str]:
    def apply(text: str) -> str:
        head, first, rest = text.split("\n", 2)
        return "\n".join([head, change(first), rest])

    return apply


def grow(text: str) -> str:
    return text + "".join(f"{review(i)}\tpositive\n" for i in range(1000, 1010))


def grow_mlm(text: str) -> str:
    return text + "".join(f"{review(i)}.\n" for i in range(1000, 1010))


def multilabel_changed(text: str) -> str:
    rows = [json.loads(line) for line in text.splitlines()]
    rows[0]["label"] = ["tech"] if rows[0]["label"] != ["tech"] else ["sports"]
    return "".join(json.dumps(r) + "\n" for r in rows)


# --- 1. resume: the training data changed (texts, labels, tags, values) -------------------------

RESUME_CASES = {
    # case: (file under data/, change, task named)
    "classification: every label flipped": ("cls/train.tsv", swap("\tpositive", "\tnegative"), "cls"),
    "classification: one label flipped": ("cls/train.tsv", first_line_only(swap("\tpositive", "\tnegative")), "cls"),
    "classification: train file grew": ("carved/train.tsv", grow, "carved"),
    "token classification: tags changed": ("ner/train.conll", swap("-person", "-location"), "ner"),
    "token classification: one tag changed": (
        "ner/train.conll",
        lambda t: t.replace("tall\tO", "tall\tB-person", 1),
        "ner",
    ),
    "regression: values changed": ("stars/train.tsv", swap("\t1\n", "\t5\n"), "stars"),
    "multilabel: a label set changed": ("topics/train.jsonl", multilabel_changed, "topics"),
    "mlm: the texts changed": ("mymlm/reviews.txt", lambda t: t.replace("number", "numero"), "mymlm"),
}


@pytest.fixture(scope="module")
def stopped_run(world: dict[str, Path]) -> Path:
    """The tiny run as if killed after its checkpoint: resumable."""
    return stopped(Path(shutil.copytree(world["run"], world["root"] / "stopped" / world["run"].name)))


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_refuses_changed_training_data(mtl, case: str, world, stopped_run: Path, pristine_data: Path) -> None:
    rel, change, task = RESUME_CASES[case]
    edit(pristine_data / rel, change)
    before, runs = tree_digest(stopped_run.parent), run_dirs(world["root"])
    proc = mtl("train", f"resume={stopped_run}", cwd=world["root"])
    assert_one_line_error(proc, f"the training data of task(s) ['{task}'] changed since")
    assert "restore the files, or start a new run" in proc.stderr
    assert tree_digest(stopped_run.parent) == before
    assert run_dirs(world["root"]) == runs


def test_fingerprints_hash_every_column_and_read_older_checkpoints() -> None:
    base: dict[str, list] = {"input_ids": [[101, 7, 102], [101, 8, 9, 102]], "labels": [0, 1]}
    fp = data_fingerprint({"t": base})
    variants: list[dict[str, list]] = [
        {**base, "labels": [1, 0]},  # labels flipped
        {**base, "labels": [[0.0, 1.0], [1.0, 0.0]]},  # multilabel vectors
        {**base, "labels": [0.5, 1.0]},  # regression values
        {**base, "token_type_ids": [[0, 0, 0], [0, 0, 1, 1]]},  # one more column
        {"input_ids": [[101, 7], [102, 101, 8, 9, 102]], "labels": [0, 1]},  # same ids, other boundaries
    ]
    assert len({fp["t"], *(data_fingerprint({"t": v})["t"] for v in variants)}) == 1 + len(variants)
    assert columns_digest({"a": ["x", "yz"]}) != columns_digest({"a": ["xy", "z"]})
    assert changed_tasks(fp, fp, {"t": base}) == []
    # A checkpoint written before every column was hashed recorded input_ids only: compared as such.
    legacy = {"t": _ids_fingerprint(base)}
    assert changed_tasks(legacy, fp, {"t": base}) == []
    other: dict[str, list] = {**base, "input_ids": [[101, 7, 102], [101, 9, 9, 102]]}
    assert changed_tasks(legacy, data_fingerprint({"t": other}), {"t": other}) == ["t"]
    assert changed_tasks({**fp, "gone": "v2:0"}, fp, {"t": base}) == ["gone"]


# --- 2. mtl eval: the split a run was scored on changed ------------------------------------------

EVAL_CASES = {
    # case: (file under data/, change, split, tasks named)
    "classification: train file grew, test re-carved": ("carved/train.tsv", grow, "test", ["carved"]),
    "classification: train file grew, validation re-carved": ("carved/train.tsv", grow, "validation", ["carved"]),
    "classification: a test label flipped": (
        "cls/test.tsv",
        first_line_only(swap("\tpositive", "\tnegative")),
        "test",
        ["cls"],
    ),
    "classification: a test text changed": (
        "cls/test.tsv",
        lambda t: t.replace("number 201", "number 2001"),
        "test",
        ["cls"],
    ),
    "token classification: test tags changed": ("ner/test.conll", swap("-person", "-location"), "test", ["ner"]),
    "regression: validation values changed": ("stars/validation.tsv", swap("\t1\n", "\t5\n"), "validation", ["stars"]),
    "multilabel: a test label set changed": ("topics/test.jsonl", multilabel_changed, "test", ["topics"]),
    "mlm: unlabelled file grew": ("mymlm/reviews.txt", grow_mlm, "test", ["mymlm"]),
}


def changed_pair(data: Path) -> list[str]:
    edit(data / "carved" / "train.tsv", grow)
    edit(data / "cls" / "test.tsv", lambda t: t.replace("number 201", "number 2001"))
    return ["cls", "carved"]


@pytest.mark.parametrize("case", [*EVAL_CASES, "two tasks changed"])
def test_eval_refuses_a_split_the_run_was_not_scored_on(mtl, case: str, world, pristine_data: Path) -> None:
    run = world["run"]
    if case == "two tasks changed":
        split, tasks = "test", changed_pair(pristine_data)
    else:
        rel, change, split, tasks = EVAL_CASES[case]
        edit(pristine_data / rel, change)
    before, runs = tree_digest(run.parent), run_dirs(world["root"])
    proc = mtl("eval", str(run), f"split={split}", cwd=world["root"])
    assert_one_line_error(proc, f"the {split} split of task(s) {sorted(tasks, key=TASKS.index)} is not the one")
    assert "restore the original files or point data_root=<folder> at them" in proc.stderr
    assert "allow_changed_data=true" in proc.stderr
    assert tree_digest(run.parent) == before
    assert run_dirs(world["root"]) == runs


@pytest.fixture
def run_copy(world: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of the tiny run that an evaluation may write its eval/ tables into."""
    return Path(shutil.copytree(world["run"], tmp_path / "runs" / world["run"].name))


def test_eval_of_unchanged_data_and_of_other_tasks_runs(mtl, world, run_copy: Path, pristine_data: Path) -> None:
    proc = mtl("eval", str(run_copy), cwd=world["root"])
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr
    # Only the chosen tasks' splits are checked: another task's changed file is not in the way.
    edit(pristine_data / "carved" / "train.tsv", grow)
    proc = mtl("eval", str(run_copy), "tasks=cls+ner", "split=validation", cwd=world["root"])
    assert proc.returncode == 0, proc.stderr


def test_eval_allow_changed_data_warns_in_one_line_and_in_the_table(mtl, world, run_copy: Path, pristine_data) -> None:
    edit(pristine_data / "carved" / "train.tsv", grow)
    proc = mtl("eval", str(run_copy), "allow_changed_data=true", cwd=world["root"])
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("mtl: warning:")]
    assert len(warnings) == 1 and "the test split of task(s) ['carved']" in warnings[0], proc.stderr
    assert "Not the run's test data" in (run_copy / "eval" / "best_test.md").read_text()


def test_eval_of_a_run_written_before_splits_were_recorded(mtl, world, run_copy: Path, pristine_data) -> None:
    best = run_copy / "checkpoints" / "best"
    state = json.loads((best / "trainer_state.json").read_text())
    assert state.pop("split_fingerprints")
    (best / "trainer_state.json").write_text(json.dumps(state))
    write_manifest(best)
    edit(pristine_data / "carved" / "train.tsv", grow)
    proc = mtl("eval", str(run_copy), cwd=world["root"])
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr


def test_eval_refuses_changed_data_through_the_real_cli(world, pristine_data: Path) -> None:
    edit(pristine_data / "carved" / "train.tsv", grow)
    before = tree_digest(world["run"].parent)
    proc = run_mtl("eval", str(world["run"]), cwd=world["root"])
    assert_one_line_error(proc, "the test split of task(s) ['carved'] is not the one")
    assert tree_digest(world["run"].parent) == before


# --- 3. a file replaced by another of the same size and modification time ------------------------


def same_size_and_time(path: Path, text: str) -> None:
    """Write `text` over `path`, then give it the size and modification time it had."""
    st = path.stat()
    assert len(text.encode()) == st.st_size
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def pos_neg(n_pos: int, n: int = 20) -> str:
    return tsv([(f"text {i:02d}", "pos" if i < n_pos else "neg") for i in range(n)])


def lines(word: str) -> str:
    return "".join(f"{word} {i:02d}\n" for i in range(20))


def labels(task) -> list:
    return [task.labels[i] for i in task.splits["train"]["label"]]


FORMATS = {
    # case: (format, file name, first content, replacement of the same size, what is read)
    "tsv": ("tsv", "f.tsv", pos_neg(15), pos_neg(5), labels),
    "csv": ("csv", "f.csv", pos_neg(15).replace("\t", ","), pos_neg(5).replace("\t", ","), labels),
    "jsonl": (
        "jsonl",
        "f.jsonl",
        "".join(json.dumps({"text": f"t{i}", "label": "ab"[i < 15]}) + "\n" for i in range(20)),
        "".join(json.dumps({"text": f"t{i}", "label": "ab"[i < 5]}) + "\n" for i in range(20)),
        labels,
    ),
    "text (mlm)": ("text", "f.txt", lines("aaa"), lines("bbb"), lambda t: sorted(t.splits["train"]["text"])),
    "conll": (
        "conll",
        "f.conll",
        "a\tB-x\nb\tO\n\n" * 20,
        "a\tO\nb\tB-x\n\n" * 20,
        lambda t: t.splits["train"]["tags"],
    ),
}


@pytest.mark.parametrize("case", list(FORMATS))
def test_a_replaced_file_of_the_same_size_and_time_is_read_again(case: str, tmp_path: Path) -> None:
    fmt, name, first, second, read = FORMATS[case]
    path = write(tmp_path / name, first)
    os.utime(path, ns=(STEP, STEP))
    ttype = {"text": "mlm", "conll": "token_classification"}.get(fmt, "classification")

    def load(file: Path) -> list:
        return read(load_task("t", TaskConfig(type=ttype, format=DataFormat(fmt), files={"train": str(file)}), None))

    old = load(path)
    same_size_and_time(path, second)
    new = load(path)
    assert new != old
    assert new == load(write(tmp_path / "fresh" / name, second))  # as the same content at a new path reads


def test_data_check_and_train_read_a_replaced_file_again(mtl, tmp_path: Path) -> None:
    """End to end: `mtl data check` caches the file; after the swap `mtl train` and `mtl data check`
    see what it holds now (labels neg/pos became nah/yes, 15 of 40 positive became 5)."""
    data, conf = tmp_path / "data", tmp_path / "conf" / "task"
    path = write(data / "train.tsv", pos_neg(15, 40))
    os.utime(path, ns=(STEP, STEP))
    write(
        conf / "swap.yaml",
        f"# @package task.swap\ndata_dir: {json.dumps(str(data))}\nformat: tsv\nfiles: {{train: train.tsv}}\n",
    )

    def checked_labels() -> list[str]:
        out = tmp_path / "check.json"
        proc = mtl(
            "data", "check", "--config-dir", str(tmp_path / "conf"), "task=swap", "--out", str(out), cwd=tmp_path
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(out.read_text())["tasks"]["swap"]["labels"]

    assert checked_labels() == ["neg", "pos"]
    same_size_and_time(path, pos_neg(5, 40).replace("pos", "yes").replace("neg", "nah"))
    run = Path(tiny_run(tmp_path / "runs", "task=swap", "trainer.max_steps=1", config_dir=tmp_path / "conf")["run_dir"])
    assert json.loads((run / "checkpoints" / "best" / "labels.json").read_text())["swap"] == ["nah", "yes"]
    assert checked_labels() == ["nah", "yes"]


def test_transfer_baselines_are_keyed_on_the_data_content(tmp_path: Path) -> None:
    """`mtl transfer` reuses a cached baseline only for the same data: its key follows the files' bytes."""
    from mtl_cli.compose import compose_typed
    from mtl_cli.transfer import cache_key

    path = write(tmp_path / "data" / "train.tsv", pos_neg(15, 40))
    os.utime(path, ns=(STEP, STEP))
    write(
        tmp_path / "conf" / "task" / "swap.yaml",
        f"# @package task.swap\ndata_dir: {json.dumps(str(path.parent))}\nformat: tsv\nfiles: {{train: train.tsv}}\n",
    )
    cfg = compose_typed(["experiment=smoke", "task=swap"], str(tmp_path / "conf"))
    key = cache_key(cfg)
    assert cache_key(cfg) == key
    same_size_and_time(path, pos_neg(5, 40))
    assert cache_key(cfg) != key
