"""Validation that leaves no gap (issue 12): one catalogue per family of bad input.

- NUMBERS: every float of the typed config must be finite, seeds and thread counts in range,
  `trainer.device` a device this machine has; checked where the config is validated.
- DATA: what a data file holds or what its path is: texts that are not strings, a label column
  read as decimals, a path that is a directory, a symlink loop, a broken link.
- MESSAGES: a broken YAML file, a missing `--config-dir`, an unparsable override, a cap that
  would leave a split empty: each named as the real cause.
- TAGS: token-classification tags in another scheme than BIO are converted (plain, BIOES, a
  dangling I-), and plain tags mixed with prefixed ones are refused.

Every refused case: one `mtl: error:` line, exit 2, no traceback, earlier runs byte for byte as
they were, no new run folder. Most run in this process (the `mtl` fixture); REAL_CLI through a
fresh interpreter, where a Python warning (printed by the interpreter) would show.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from mtl_cli.compose import compose_typed
from mtl_cli.errors import MtlError
from tests.conftest import run_dirs, run_mtl, write
from tests.test_bad_input import SHORT, assert_one_line_error, tree_digest, workdir  # noqa: F401

# --- numbers: every numeric setting, validated before anything runs ------------------------------


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _mps() -> bool:
    import torch

    return torch.backends.mps.is_available()


NUMBERS = {
    "lr nan": (["trainer.lr=nan"], "`trainer.lr` must be a finite number"),
    "epochs nan": (["trainer.epochs=nan"], "`trainer.epochs` must be a finite number"),
    "weight decay nan": (["trainer.weight_decay=nan"], "`trainer.weight_decay` must be a finite number"),
    "warmup inf": (["trainer.warmup_ratio=inf"], "`trainer.warmup_ratio` must be a finite number"),
    "grad norm -inf": (["trainer.max_grad_norm=-inf"], "`trainer.max_grad_norm` must be a finite number"),
    "min delta nan": (["trainer.early_stopping_min_delta=nan"], "`trainer.early_stopping_min_delta` must be a finite"),
    "validation size nan": (["task.restaurants.validation_size=nan"], "`task.restaurants.validation_size` must be a"),
    "test size inf": (["task.electronics.test_size=inf"], "`task.electronics.test_size` must be a finite number"),
    "mlm probability nan": (["task.restaurants.mlm_probability=nan"], "`task.restaurants.mlm_probability` must be"),
    "mixing temperature nan": (["mixing.temperature=nan"], "`mixing.temperature` must be a finite number"),
    "static weight nan": (
        ["loss_weighting=static", "++loss_weighting.weights.restaurants=nan"],
        "`loss_weighting.weights.restaurants` must be a finite number",
    ),
    "gradnorm alpha inf": (["loss_weighting.alpha=inf"], "`loss_weighting.alpha` must be a finite number"),
    "head dropout nan": (["sharing.head_dropout=nan"], "`sharing.head_dropout` must be a finite number"),
    "lora dropout nan": (["sharing.lora_dropout=nan"], "`sharing.lora_dropout` must be a finite number"),
    "lora dropout 1.5": (["sharing.lora_dropout=1.5"], "`sharing.lora_dropout` must be in [0, 1)"),
    "encoder override nan": (
        ["++encoder.config_overrides.hidden_dropout_prob=nan"],
        "`encoder.config_overrides.hidden_dropout_prob` must be a finite number",
    ),
    "batch size beyond 64 bits": ([f"trainer.batch_size={2**70}"], "`trainer.batch_size` is out of range"),
    "negative seed": (["seed=-1"], "`seed` must be between 0 and 4294967295"),
    "seed beyond 32 bits": ([f"seed={2**32}"], "`seed` must be between 0 and 4294967295"),
    "negative split seed": (["task.restaurants.split_seed=-5"], "`task.restaurants.split_seed` must be between 0"),
    "zero threads": (["trainer.threads=0"], "`trainer.threads` must be between 1 and"),
    "absurd thread count": (["trainer.threads=100000"], "`trainer.threads` must be between 1 and 1024"),
    "unknown device": (["trainer.device=tpu"], "`trainer.device` must be auto, cpu, cuda[:N] or mps; got 'tpu'"),
    "max eval examples 0": (["task.restaurants.max_eval_examples=0"], "`task.restaurants.max_eval_examples` must be"),
    "max train examples -1": (["task.restaurants.max_train_examples=-1"], "leave the training split empty"),
}
if not _cuda_count():
    NUMBERS["cuda without cuda"] = (["trainer.device=cuda"], "trainer.device=cuda: this machine has no CUDA device")
if _cuda_count() < 4:
    NUMBERS["cuda:3 without it"] = (["trainer.device=cuda:3"], "trainer.device=cuda:3: this machine has")
if not _mps():
    NUMBERS["mps without mps"] = (["trainer.device=mps"], "trainer.device=mps: Apple's MPS is not available")


@pytest.mark.parametrize("case", list(NUMBERS))
def test_numeric_setting_is_refused_in_one_line(case: str) -> None:
    overrides, message = NUMBERS[case]
    with pytest.raises(MtlError) as err:
        compose_typed(["experiment=smoke", *overrides])
    assert message in str(err.value) and "\n" not in str(err.value)


# A few of them through `mtl train`: one line, exit 2, nothing written.
NUMBERS_CLI = ["lr nan", "validation size nan", "negative seed", "unknown device"]


@pytest.mark.parametrize("case", NUMBERS_CLI)
def test_numeric_setting_through_mtl_train(mtl, workdir: Path, case: str) -> None:  # noqa: F811
    check_refused(mtl, workdir, ["train", *SHORT, *NUMBERS[case][0]], NUMBERS[case][1])


def test_finite_numbers_in_range_still_pass() -> None:
    cfg = compose_typed(["experiment=smoke", "trainer.lr=1e-5", "seed=0", f"seed={2**32 - 1}", "trainer.threads=1"])
    assert cfg.seed == 2**32 - 1 and cfg.trainer.threads == 1


# --- data: what the files hold and what their paths are -------------------------------------------


def check_refused(run, root: Path, args: list[str], message: str) -> None:
    before = tree_digest(root / "runs")
    proc = run(*args, cwd=root)
    assert_one_line_error(proc, message)
    assert tree_digest(root / "runs") == before
    assert len(run_dirs(root / "runs")) == 1  # only the earlier run
    assert not (root / "data_check.json").exists()


@pytest.fixture
def gapdir(workdir: Path) -> Path:  # noqa: F811
    """workdir, plus data files and task configs for the DATA, MESSAGES and TAGS cases."""
    import pandas as pd

    data, conf = workdir / "data", workdir / "myconf"
    rows = [f"text {i}" for i in range(40)]
    labels = [i % 2 for i in range(40)]
    pd.DataFrame({"text": list(range(40)), "label": labels}).to_parquet(data / "textint.parquet")
    pd.DataFrame({"text": [r.split() for r in rows], "label": labels}).to_parquet(data / "textlist.parquet")
    pd.DataFrame({"tokens": [[i, i + 1] for i in range(40)], "tags": [["O", "B-x"]] * 40}).to_parquet(
        data / "tokint.parquet"
    )
    write(data / "textint.jsonl", "".join(f'{{"text": {i}, "label": "{i % 2}"}}\n' for i in range(40)))
    write(data / "pairint.csv", "text,other,label\n" + "".join(f"t {i},{i},{i % 2}\n" for i in range(40)))
    float_rows = [f"text {i}\t{'1.5' if i == 6 else i % 2}\n" for i in range(40)]
    write(data / "floatlabel.tsv", "text\tlabel\n" + "".join(float_rows))
    labelled = "".join(f'{{"text": "t {i}", "label": {i % 2}}}\n' for i in range(40))
    write(data / "nulllabel.jsonl", labelled + '{"text": "x", "label": null}\n')
    write(data / "mixedlabel.jsonl", labelled + '{"text": "y", "label": "pos"}\n')
    write(data / "listlabel.jsonl", "".join(f'{{"text": "t {i}", "label": [{i % 2}]}}\n' for i in range(40)))
    write(data / "emptylabel.tsv", "text\tlabel\n" + "".join(f"text {i}\t{i % 2}\n" for i in range(40)) + "odd\t \n")
    (data / "adir").mkdir()
    os.symlink("loop.tsv", data / "loop.tsv")  # a link to itself
    os.symlink("nowhere.tsv", data / "dangling.tsv")
    write(data / "mixed.conll", "John\tB-PER\nSmith\tI-PER\nsaw\tO\nMars\tMISC\n\nok\tO\n")
    tasks = {
        "textint": "format: parquet\nfiles:\n  train: textint.parquet\n",
        "textlist": "format: parquet\nfiles:\n  train: textlist.parquet\n",
        "tokint": "type: token_classification\nformat: parquet\nfiles:\n  train: tokint.parquet\n",
        "jsonint": "format: jsonl\nfiles:\n  train: textint.jsonl\n",
        "pairint": "format: csv\ntext_pair_column: other\nfiles:\n  train: pairint.csv\n",
        "floatlabel": "format: tsv\nfiles:\n  train: floatlabel.tsv\n",
        "isdir": "format: tsv\nfiles:\n  train: adir\n",
        "nulllabel": "format: jsonl\nfiles:\n  train: nulllabel.jsonl\n",
        "mixedlabel": "format: jsonl\nfiles:\n  train: mixedlabel.jsonl\n",
        "listlabel": "format: jsonl\nfiles:\n  train: listlabel.jsonl\n",
        "emptylabel": "format: tsv\nfiles:\n  train: emptylabel.tsv\n",
        "loop": "format: tsv\nfiles:\n  train: loop.tsv\n",
        "dangling": "format: tsv\nfiles:\n  train: dangling.tsv\n",
        "notdir": "format: tsv\nfiles:\n  train: ok.tsv/inner.tsv\n",
        "mixedtags": "type: token_classification\nformat: conll\nfiles:\n  train: mixed.conll\n",
        "brokenyaml": "format: tsv\nfiles:\n  train: [ok.tsv\nlabels: x\n",
    }
    for name, body in tasks.items():
        write(conf / "task" / f"{name}.yaml", f"# @package task.{name}\ndata_dir: {data}\n{body}")
    write(conf / "trainer" / "broken.yaml", "lr: 0.1\n  epochs: : 3\n")
    return workdir


DATA = {
    "parquet texts are ints": (
        ["task=textint"],
        "task 'textint': column 'text' of the train data holds numbers (int64), not strings; "
        "set task.textint.text_column",
    ),
    "parquet texts are lists": (
        ["task=textlist"],
        "column 'text' of the train data holds lists of strings, not strings",
    ),
    "json texts are ints": (["task=jsonint"], "task 'jsonint': column 'text' of the train data holds numbers"),
    "csv pair texts are ints": (
        ["task=pairint"],
        "column 'other' of the train data holds numbers (int64), not strings",
    ),
    "parquet tokens are ints": (
        ["task=tokint"],
        "column 'tokens' of the train data holds lists of numbers (int64), not lists of words",
    ),
    "label column read as decimals": (
        ["task=floatlabel"],
        "were read as decimal numbers because train row 7 holds 1.5",
    ),
    "a label missing (JSON null)": (
        ["task=nulllabel"],
        "the train labels (column 'label'): train row 41 has no label (null)",
    ),
    "a label missing (empty cell)": (
        ["task=emptylabel"],
        "train row 41 has no label (empty); fill it in or drop that row",
    ),
    "labels of mixed kinds": (["task=mixedlabel"], "hold Json values, not one label name or number per example"),
    "labels that are lists": (["task=listlabel"], "hold List values, not one label name or number per example"),
    "data path is a directory": (["task=isdir"], "is a directory, not a file; set task.isdir.files.train"),
    "data path is a symlink loop": (["task=loop"], "is a symbolic link loop"),
    "data path is a broken link": (["task=dangling"], "is a broken symbolic link (to nowhere.tsv)"),
    "data path goes through a file": (["task=notdir"], "a part of that path is a file, not a folder"),
}


@pytest.mark.parametrize("case", list(DATA))
def test_bad_data_names_the_real_cause(gapdir: Path, case: str) -> None:
    from mtl_cli.tasks import load_tasks

    args, message = DATA[case]
    cfg = compose_typed(args, str(gapdir / "myconf"))
    with pytest.raises(MtlError) as err:
        load_tasks(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


# A few of them through `mtl train`: one line, exit 2, nothing written.
DATA_CLI = [
    "parquet texts are ints",
    "label column read as decimals",
    "data path is a symlink loop",
    "labels of mixed kinds",
]


@pytest.mark.parametrize("case", DATA_CLI)
def test_bad_data_through_mtl_train(mtl, gapdir: Path, case: str) -> None:
    args, message = DATA[case]
    check_refused(mtl, gapdir, ["train", "--config-dir", str(gapdir / "myconf"), *SHORT, *args], message)


def test_bad_data_through_mtl_data_check(mtl, gapdir: Path) -> None:
    args, message = DATA["parquet texts are ints"]
    check_refused(mtl, gapdir, ["data", "check", "--config-dir", str(gapdir / "myconf"), *args], message)


# --- messages that name the real cause ----------------------------------------------------------

MESSAGES = {
    "broken yaml in a task file": (
        ["train", "--config-dir", "{conf}", *SHORT, "task=brokenyaml"],
        "broken YAML in {conf}/task/brokenyaml.yaml line 6, column 7:",
    ),
    "broken yaml in a group override": (
        ["train", "--config-dir", "{conf}", *SHORT, "trainer=broken"],
        "broken YAML in {conf}/trainer/broken.yaml line 2, column 9: mapping values are not allowed here",
    ),
    "broken yaml through data check": (
        ["data", "check", "--config-dir", "{conf}", "task=brokenyaml"],
        "broken YAML in {conf}/task/brokenyaml.yaml line 6",
    ),
    "train: missing config dir": (
        ["train", "--config-dir", "nope", *SHORT],
        "--config-dir 'nope' does not exist; pass the folder",
    ),
    "data check: missing config dir": (["data", "check", "--config-dir", "nope"], "--config-dir 'nope' does not"),
    "transfer: missing config dir": (["transfer", "--config-dir", "nope"], "--config-dir 'nope' does not exist"),
    "config dir is a file": (["train", "--config-dir", "data/ok.tsv", *SHORT], "is not a directory"),
    "unparsable override": (["train", *SHORT, "trainer.lr=[1,2"], "cannot parse the override `trainer.lr=[1,2`"),
    "max_eval_examples empties a split": (
        ["train", *SHORT, "task.restaurants.max_eval_examples=0"],
        "`task.restaurants.max_eval_examples` must be at least 1 or null (no cap); got 0, which would leave",
    ),
}


@pytest.mark.parametrize("case", list(MESSAGES))
def test_message_names_the_real_cause(mtl, gapdir: Path, case: str) -> None:
    args, message = MESSAGES[case]
    conf = str(gapdir / "myconf")
    check_refused(mtl, gapdir, [a.replace("{conf}", conf) for a in args], message.replace("{conf}", conf))


def test_cap_below_one_is_named_when_loading_directly(tmp_path: Path) -> None:
    from mtl_cli.config import DataFormat, TaskConfig
    from mtl_cli.tasks import load_task

    write(tmp_path / "t.tsv", "text\tlabel\n" + "".join(f"t {i}\t{i % 2}\n" for i in range(20)))
    cfg = TaskConfig(format=DataFormat.tsv, files={"train": str(tmp_path / "t.tsv")}, max_eval_examples=0)
    with pytest.raises(MtlError, match=r"`task.t.max_eval_examples=0` would leave a split empty"):
        load_task("t", cfg, None)


# The interpreter itself prints Python warnings (Hydra's missing search path was one): subprocess.
REAL_CLI = {
    "missing config dir": (["train", "--config-dir", "nope", *SHORT], "--config-dir 'nope' does not exist"),
    "lr nan": (["train", *SHORT, "trainer.lr=nan"], "`trainer.lr` must be a finite number"),
}


@pytest.mark.parametrize("case", list(REAL_CLI))
def test_through_the_real_cli(workdir: Path, case: str) -> None:  # noqa: F811
    args, message = REAL_CLI[case]
    check_refused(run_mtl, workdir, args, message)  # one line: a printed Python warning would add more


# --- token-classification tags: BIO, or converted to it, or refused -------------------------------


def prepare_tags(sentences: list[list[str]], **cfg):
    import datasets

    from mtl_cli.config import TaskConfig
    from mtl_cli.task_types import token_classification as tc

    ds = datasets.Dataset.from_dict({"tokens": [["w"] * len(s) for s in sentences], "tags": sentences})
    raw, labels = tc.prepare("ner", TaskConfig(type="token_classification", **cfg), datasets.DatasetDict({"train": ds}))
    return labels, [[labels[i] for i in s] for s in raw["train"]["tags"]]


TAGS = {
    "plain tags": (
        [["PER", "PER", "O", "LOC"], ["LOC"]],
        [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC"]],
        "tags without B-/I- prefixes read as BIO",
    ),
    "BIOES": (
        [["S-PER", "O", "B-LOC", "E-LOC"], ["B-LOC", "I-LOC", "E-LOC", "E-LOC"]],
        [["B-PER", "O", "B-LOC", "I-LOC"], ["B-LOC", "I-LOC", "I-LOC", "B-LOC"]],
        "BIOES tags read as BIO",
    ),
    "BILOU": ([["U-PER", "O", "B-LOC", "L-LOC"]], [["B-PER", "O", "B-LOC", "I-LOC"]], "BIOES tags read as BIO"),
    "dangling I- (IOB1)": (
        [["I-PER", "I-PER", "O", "I-PER"], ["B-LOC", "I-PER"], []],
        [["B-PER", "I-PER", "O", "B-PER"], ["B-LOC", "B-PER"], []],
        "I- tags that start an entity (no B- before them) read as B-",
    ),
    "BIO read unchanged": ([["B-PER", "I-PER", "O"], ["O", "B-LOC"]], [["B-PER", "I-PER", "O"], ["O", "B-LOC"]], None),
}


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.mark.parametrize("case", list(TAGS))
def test_tags_in_another_scheme_are_read_as_bio(case: str) -> None:
    sentences, expected, logged = TAGS[case]
    handler, logger = Lines(), logging.getLogger("mtl")
    logger.addHandler(handler)
    try:
        labels, tags = prepare_tags(sentences)
    finally:
        logger.removeHandler(handler)
    assert tags == expected
    assert labels[0] == "O" and all(t == "O" or t[:2] in ("B-", "I-") for t in labels)
    if logged is None:
        assert not handler.lines
    else:
        assert len(handler.lines) == 1 and logged in handler.lines[0] and "task 'ner'" in handler.lines[0]


def test_explicit_labels_are_converted_the_same_way() -> None:
    labels, tags = prepare_tags([["PER", "O"], ["O", "LOC"]], labels=["O", "PER", "LOC"])
    assert labels == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"] and tags == [["B-PER", "O"], ["O", "B-LOC"]]
    labels, _ = prepare_tags([["I-PER", "O"], ["O", "B-LOC"]], labels=["O", "I-PER", "B-LOC", "I-LOC"])
    assert labels == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def test_converted_tags_score_as_bio_entities() -> None:
    from mtl_cli.task_types import token_classification as tc

    labels, tags = prepare_tags([["PER", "PER", "O", "LOC"]])
    ids = [[labels.index(t) for t in tags[0]]]
    assert tc.metrics(ids, ids, labels, 0.0)["f1"] == 1.0


TAG_REFUSED = {
    "plain tag among prefixed ones": (
        ["task=mixedtags"],
        "task 'mixedtags': tag 'MISC' (train sentence 1) has no B-/I- prefix while others do ('B-PER')",
    ),
}


@pytest.mark.parametrize("case", list(TAG_REFUSED))
def test_tags_that_cannot_be_read_are_refused(mtl, gapdir: Path, case: str) -> None:
    args, message = TAG_REFUSED[case]
    check_refused(mtl, gapdir, ["train", "--config-dir", str(gapdir / "myconf"), *SHORT, *args], message)
