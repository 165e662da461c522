"""`mtl predict`: every input format, the record of each task type, predictions equal to the model's own
forward pass (and a labelled file scored as `mtl eval` scores it), csv output, out= safety, and the
bad-input catalogue (one line, exit code 2, no traceback, the run directory unchanged).

One tiny run serves the whole file: a classification task (demo/restaurants), a regression, a
multi-label, a token-classification (with a task marker and a short max_length) and an MLM task.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from mtl_cli.batches import pad_inputs
from mtl_cli.config import PACKAGE_DIR
from mtl_cli.errors import MtlError
from mtl_cli.inputs import split_words
from mtl_cli.predict import entities, predict_run
from mtl_cli.task_types import token_classification as tc
from mtl_cli.tokenization import encode_texts, marker_token
from tests.conftest import tiny_run, write
from tests.test_bad_input import assert_one_line_error, tree_digest

TASKS = ["restaurants", "stars", "topics", "ner"]  # the run's tasks that predict (lm is MLM)
TEXTS = ["John loves Paris, really.", "The soup was great", "", "Awful service and cold pasta at the Empire State"]
NER = (
    "John\tB-person\nloves\tO\nParis\tB-location\n\nEmpire\tB-location\nState\tI-location\nis\tO\ntall\tO\n\nok\tO\n\n"
)


def write_tasks(root: Path) -> Path:
    """A config dir with one small task of each other type; labels in columns of their own names, so that
    one csv can carry the labels of every sequence task."""
    data, conf = root / "data", root / "conf" / "task"
    nouns = ["soup", "service", "pasta", "view", "staff", "dessert"]
    rows = [f"the {nouns[i % 6]} {i} was {'great' if i % 2 else 'awful'}\t{1 + 4 * (i % 2)}" for i in range(24)]
    write(data / "stars.tsv", "text\trating\n" + "\n".join(rows) + "\n")
    topics = ["sports", "politics", "tech"]
    lines = [
        json.dumps({"text": f"text {i}", "topic_labels": [topics[i % 3]] + ([topics[(i + 1) % 3]] if i % 2 else [])})
        for i in range(24)
    ]
    write(data / "topics.jsonl", "\n".join(lines) + "\n")
    write(data / "ner.conll", NER * 8)
    write(data / "lm.txt", "".join(f"review number {i} was fine\n" for i in range(30)))
    small = "validation_size: 4\ntest_size: 4\n"
    yaml = {
        "stars": f"type: regression\nformat: tsv\nlabel_column: rating\nfiles: {{train: {data / 'stars.tsv'}}}\n",
        "topics": f"type: multilabel\nformat: jsonl\nlabel_column: topic_labels\nfiles: {{train: {data / 'topics.jsonl'}}}\n",
        "ner": f"type: token_classification\nformat: conll\nfiles: {{train: {data / 'ner.conll'}}}\n"
        "max_length: 12\ntask_marker: prefix\n",
        "lm": f"type: mlm\nformat: text\nfiles: {{train: {data / 'lm.txt'}}}\nmax_length: 32\n",
    }
    for name, body in yaml.items():
        write(conf / f"{name}.yaml", f"# @package task.{name}\n{body}{small}")
    return root / "conf"


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("predict")
    overrides = ["task=[demo/restaurants,stars,topics,ner,lm]", "trainer.max_steps=2", "trainer.eval_every=2"]
    return Path(tiny_run(root / "runs", *overrides, config_dir=write_tasks(root))["run_dir"])


@pytest.fixture(scope="module")
def trained(made: Path):
    from mtl_cli.trained import load_trained

    return load_trained(str(made))


@pytest.fixture(scope="module")
def plain(made: Path, tmp_path_factory) -> list[dict]:
    """The records of TEXTS as a plain text file: what every other format must give for the same texts."""
    return predict(made, tmp_path_factory.mktemp("plain"), "\n".join(TEXTS) + "\n", "plain.txt")[0]


def predict(made: Path, tmp_path: Path, text: str | bytes, name: str, **kwargs) -> tuple[list[dict], dict]:
    """predict_run on a file holding `text`, into a jsonl file; (the records, the summary)."""
    source = write(tmp_path / "in" / name, text)
    out = tmp_path / "out" / f"{source.stem}.jsonl"
    out.parent.mkdir(exist_ok=True)
    out.unlink(missing_ok=True)
    summary = predict_run(str(made), str(source), out=str(out), **kwargs)
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()], summary


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def conll(sentences: list[list[str]], tags: list[list[str]] | None = None) -> str:
    return "\n".join(
        "".join(f"{w}\t{t}\n" if tags else f"{w}\n" for w, t in zip(ws, tags[i] if tags else ws, strict=True))
        for i, ws in enumerate(sentences)
    )


def parquet_bytes(columns: dict[str, list]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


# --- records --------------------------------------------------------------------------------


def check_record(record: dict, labels: dict) -> None:
    """The shape of each task's prediction, and that it agrees with itself (label = argmax, ...)."""
    cls = record["restaurants"]
    assert set(cls) == {"label", "probs"} and list(cls["probs"]) == labels["restaurants"]
    assert sum(cls["probs"].values()) == pytest.approx(1.0)
    assert cls["label"] == max(cls["probs"], key=cls["probs"].get)
    multi = record["topics"]
    assert set(multi) == {"labels", "probs"} and list(multi["probs"]) == labels["topics"]
    assert multi["labels"] == [label for label, p in multi["probs"].items() if p > 0.5]
    assert set(record["stars"]) == {"value"} and isinstance(record["stars"]["value"], float)
    ner = record["ner"]
    assert set(ner) <= {"words", "tags", "entities"}
    assert all(tag in labels["ner"] for tag in ner["tags"])
    assert {e["type"] for e in ner["entities"]} <= {"person", "location"}


def test_plain_text_gives_one_record_per_line_with_every_task(made: Path, trained, tmp_path: Path) -> None:
    records, summary = predict(made, tmp_path, "\n".join(TEXTS) + "\n", "reviews.txt")
    assert [r["text"] for r in records] == TEXTS  # in order, the blank line kept
    assert all(list(r) == ["text", *TASKS] for r in records)  # lm (MLM) is skipped
    for record in records:
        check_record(record, trained.labels)
    first = records[0]["ner"]
    assert first["words"] == ["John", "loves", "Paris", ",", "really", "."]
    assert len(first["tags"]) == len(first["words"])
    for entity in first["entities"]:  # character offsets into the line
        assert TEXTS[0][entity["start"] : entity["end"]] == entity["text"]
    assert records[2]["ner"] == {"words": [], "tags": [], "entities": []}
    assert summary["rows"] == 4 and summary["tasks"] == TASKS and summary["metrics"] == {}
    assert summary["out"].endswith("reviews.jsonl") and summary["examples_per_s"] > 0


FORMATS: dict[str, Callable[[], str | bytes]] = {
    "csv": lambda: "id,text\n" + "".join(f'00{i},"{t}"\n' for i, t in enumerate(TEXTS)),
    "tsv": lambda: "id\ttext\n" + "".join(f"00{i}\t{t}\n" for i, t in enumerate(TEXTS)),
    "jsonl": lambda: jsonl([{"id": f"00{i}", "text": t} for i, t in enumerate(TEXTS)]),
    "json": lambda: json.dumps([{"id": f"00{i}", "text": t} for i, t in enumerate(TEXTS)]),
    "parquet": lambda: parquet_bytes({"id": [f"00{i}" for i in range(len(TEXTS))], "text": TEXTS}),
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_table_format_keeps_rows_in_order_with_their_columns(
    made: Path, plain: list[dict], tmp_path: Path, fmt: str
) -> None:
    records, _ = predict(made, tmp_path, FORMATS[fmt](), f"reviews.{fmt}")
    assert [{k: r[k] for k in ("id", "text")} for r in records] == [
        {"id": f"00{i}", "text": t} for i, t in enumerate(TEXTS)
    ]  # "007" stays a string: cells are read as written
    for record, same in zip(records, plain, strict=True):  # the same text, the same predictions
        assert record["restaurants"]["probs"] == pytest.approx(same["restaurants"]["probs"])
        assert record["ner"]["tags"] == same["ner"]["tags"]


def test_conll_and_word_lists_predict_per_word_with_word_index_spans(made: Path, trained, tmp_path: Path) -> None:
    sentences = [["John", "loves", "Paris"], ["ok"], ["Empire", "State", "is", "tall"]]
    records, summary = predict(made, tmp_path, conll(sentences), "words.conll")  # one column: no tags
    assert [r["tokens"] for r in records] == sentences and "tags" not in records[0]
    lists, _ = predict(made, tmp_path, jsonl([{"tokens": ws} for ws in sentences]), "words.jsonl")
    joined, _ = predict(made, tmp_path, "".join(" ".join(ws) + "\n" for ws in sentences), "joined.txt")
    for record, listed, text in zip(records, lists, joined, strict=True):
        check_record(record, trained.labels)
        assert "words" not in record["ner"] and len(record["ner"]["tags"]) == len(record["tokens"])
        assert record["ner"] == listed["ner"]
        for entity in record["ner"]["entities"]:  # word indices, end exclusive
            assert entity["text"] == " ".join(record["tokens"][entity["start"] : entity["end"]])
        # A sequence task reads the words joined by spaces.
        assert record["restaurants"]["probs"] == pytest.approx(text["restaurants"]["probs"])
    assert summary["metrics"] == {}


def test_standard_input_to_standard_output(made: Path, tmp_path: Path, mtl, monkeypatch) -> None:
    def stdin(data: str) -> None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data.encode("utf-8")), encoding="utf-8"))

    stdin("\n".join(TEXTS) + "\n")
    proc = mtl("predict", "latest", "input=-", cwd=made.parents[2])  # latest: the newest run under runs/
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]  # nothing but the predictions
    assert [r["text"] for r in records] == TEXTS
    assert "skipping task(s) ['lm']" in proc.stderr and "predicted 4 examples for 4 task(s)" in proc.stderr
    assert "examples/s" in proc.stderr

    stdin("text,label\nGreat food,positive\nCold soup,negative\n")
    proc = mtl("predict", str(made), "input=-", "format=csv", "tasks=restaurants", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["text"], r["label"], list(r)) for r in records] == [
        ("Great food", "positive", ["text", "label", "restaurants"]),
        ("Cold soup", "negative", ["text", "label", "restaurants"]),
    ]
    assert "restaurants (2 labelled examples): accuracy" in proc.stderr


# --- the same numbers as the model ------------------------------------------------------------


def forward(trained, task: str, text: str) -> torch.Tensor:
    """The head's output for one text on its own (no other example's padding), as training encodes it."""
    ids = encode_texts(trained.tokenizer, [text], None, trained.cfg.task[task])["input_ids"][0]
    with torch.no_grad():
        return trained.model(task, pad_inputs([{"input_ids": ids}], 0))[0]


def test_logits_are_the_models_own_fp32_outputs(made: Path, trained, tmp_path: Path) -> None:
    records, _ = predict(made, tmp_path, "\n".join(TEXTS) + "\n", "r.txt", logits=True, precision="fp32", batch_size=3)
    labels = trained.labels
    for text, record in zip(TEXTS, records, strict=True):
        out = forward(trained, "restaurants", text)
        assert record["restaurants"]["logits"] == pytest.approx(out.tolist(), abs=1e-5)
        assert record["restaurants"]["label"] == labels["restaurants"][int(out.argmax())]
        value = forward(trained, "stars", text)
        assert record["stars"]["logits"] == pytest.approx([value.item()], abs=1e-5)
        assert record["stars"]["value"] == record["stars"]["logits"][0]
        topics = forward(trained, "topics", text)
        assert record["topics"]["logits"] == pytest.approx(topics.tolist(), abs=1e-5)
        assert list(record["topics"]["probs"].values()) == pytest.approx(torch.sigmoid(topics).tolist(), abs=1e-5)

        words, tok = record["ner"]["words"], trained.tokenizer
        marker = tok.convert_tokens_to_ids(marker_token("ner"))
        enc = tc.encode({"tokens": [words], "tags": [[0] * len(words)]}, tok, trained.cfg.task["ner"], None, marker)
        batch = tc.collate([{k: v[0] for k, v in enc.items()}], tok.pad_token_id, None)
        with torch.no_grad():
            pieces = trained.model("ner", batch)[0]
        first = pieces[batch["labels"][0] != tc.IGNORE]  # each word's first piece
        logits = [row for row in record["ner"]["logits"] if row is not None]
        assert torch.allclose(torch.tensor(logits).reshape(first.shape), first, atol=1e-5)
        assert record["ner"]["tags"][: len(first)] == [labels["ner"][int(t)] for t in first.argmax(-1)]


def test_a_labelled_file_scores_as_mtl_eval_does(made: Path, tmp_path: Path) -> None:
    from mtl_cli.eval_run import evaluate_run

    test_file = PACKAGE_DIR / "data" / "demo" / "restaurants" / "test.tsv"
    records, summary = predict(made, tmp_path, test_file.read_text(encoding="utf-8"), "test.tsv", tasks=["restaurants"])
    assert len(records) == len(test_file.read_text(encoding="utf-8").splitlines()) - 1
    assert all(list(r) == ["text", "label", "restaurants"] for r in records)
    evaluated = evaluate_run(str(made), split="test", tasks=["restaurants"])
    assert summary["metrics"]["restaurants"] == pytest.approx(evaluated["restaurants"])
    accuracy = np.mean([r["restaurants"]["label"] == r["label"] for r in records])
    assert summary["metrics"]["restaurants"]["accuracy"] == pytest.approx(accuracy)


def test_every_type_is_scored_with_its_own_metrics(made: Path, tmp_path: Path) -> None:
    table = "text,label,rating,topic_labels\n" + "".join(
        f"text {i} was {'great' if i % 2 else 'bad'},{'positive' if i % 2 else 'negative'},{1 + 4 * (i % 2)},"
        f'"{"sports,tech" if i % 2 else "politics"}"\n'
        for i in range(10)
    )
    records, summary = predict(made, tmp_path, table, "labelled.csv")
    metrics = summary["metrics"]
    assert set(metrics) == {"restaurants", "stars", "topics"}  # ner: a csv without tags
    assert set(metrics["restaurants"]) == {"accuracy", "macro_f1"}
    assert set(metrics["stars"]) == {"pearson", "spearman", "mae", "mse"}
    assert set(metrics["topics"]) == {"micro_f1", "macro_f1", "exact_match"}
    mae = np.mean([abs(r["stars"]["value"] - float(r["rating"])) for r in records])
    assert metrics["stars"]["mae"] == pytest.approx(mae)
    exact = np.mean([set(r["topics"]["labels"]) == set(r["topic_labels"].split(",")) for r in records])
    assert metrics["topics"]["exact_match"] == pytest.approx(exact)

    sentences = [["John", "loves", "Paris"], ["Empire", "State", "is", "tall"]]
    tags = [["B-person", "O", "B-location"], ["B-location", "I-location", "O", "O"]]
    records, summary = predict(made, tmp_path, conll(sentences, tags), "tagged.conll")
    assert [r["tags"] for r in records] == tags
    ner = summary["metrics"]["ner"]
    assert set(ner) == {"f1", "precision", "recall", "accuracy"}
    right = sum(p == g for r in records for p, g in zip(r["ner"]["tags"], r["tags"], strict=True))
    assert ner["accuracy"] == pytest.approx(right / 7)


def test_csv_output_flattens_each_task(made: Path, trained, tmp_path: Path) -> None:
    source = write(tmp_path / "in.jsonl", jsonl([{"text": t, "meta": {"n": i}} for i, t in enumerate(TEXTS)]))
    out = tmp_path / "p.csv"
    predict_run(str(made), str(source), out=str(out), logits=True)
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    labels = trained.labels
    expected = ["text", "meta", "restaurants.label", *(f"restaurants.prob.{x}" for x in labels["restaurants"])]
    expected += ["restaurants.logits", "stars.value", "stars.logits", "topics.labels"]
    expected += [*(f"topics.prob.{x}" for x in labels["topics"]), "topics.logits"]
    expected += ["ner.words", "ner.tags", "ner.entities", "ner.logits"]
    assert list(rows[0]) == expected
    assert [r["text"] for r in rows] == TEXTS and json.loads(rows[1]["meta"]) == {"n": 1}
    first = rows[0]
    assert first["restaurants.label"] in labels["restaurants"]
    assert sum(float(first[f"restaurants.prob.{x}"]) for x in labels["restaurants"]) == pytest.approx(1.0)
    assert json.loads(first["ner.words"]) == ["John", "loves", "Paris", ",", "really", "."]
    assert len(first["ner.tags"].split(" ")) == 6 and isinstance(json.loads(first["ner.entities"]), list)
    assert all(t in labels["topics"] for t in first["topics.labels"].split("|") if t)
    assert len(json.loads(first["restaurants.logits"])) == 2


# --- words, entities, max_length --------------------------------------------------------------


def test_entity_spans_from_bio_tags() -> None:
    text = "Ada Lovelace met Charles Babbage in London."
    words = ["Ada", "Lovelace", "met", "Charles", "Babbage", "in", "London", "."]
    offsets = [(0, 3), (4, 12), (13, 16), (17, 24), (25, 32), (33, 35), (36, 42), (42, 43)]
    tags = ["B-PER", "I-PER", "O", "B-PER", "I-PER", "O", "B-LOC", None]
    assert entities(tags, words, offsets, text) == [
        {"text": "Ada Lovelace", "type": "PER", "start": 0, "end": 12},
        {"text": "Charles Babbage", "type": "PER", "start": 17, "end": 32},
        {"text": "London", "type": "LOC", "start": 36, "end": 42},
    ]
    assert entities(tags, words) == [
        {"text": "Ada Lovelace", "type": "PER", "start": 0, "end": 2},
        {"text": "Charles Babbage", "type": "PER", "start": 3, "end": 5},
        {"text": "London", "type": "LOC", "start": 6, "end": 7},
    ]
    # An I- after O starts an entity (seqeval's default reading, as the metrics score it).
    assert entities(["O", "I-LOC", "I-LOC", "B-LOC"], ["a", "b", "c", "d"]) == [
        {"text": "b c", "type": "LOC", "start": 1, "end": 3},
        {"text": "d", "type": "LOC", "start": 3, "end": 4},
    ]


def test_words_come_from_the_tokenizers_pre_tokenizer(trained) -> None:
    text = "Hello,  world! It's"
    spans = split_words(trained.tokenizer, text)
    assert [text[s:e] for s, e in spans] == ["Hello", ",", "world", "!", "It", "'", "s"]

    class Plain:  # a tokenizer without a Rust pre-tokenizer: whitespace
        backend_tokenizer = None

    assert split_words(Plain(), " a  bc\td ") == [(1, 2), (4, 6), (7, 8)]


def test_words_past_max_length_have_no_tag_and_are_counted(made: Path, tmp_path: Path, capsys) -> None:
    long = " ".join(f"word{i}" for i in range(15))  # max_length 12 pieces: at most 9 words after [CLS] marker [SEP]
    records, _ = predict(made, tmp_path, long + "\nshort one\n", "long.txt", tasks=["ner"], logits=True)
    tags, logits = records[0]["ner"]["tags"], records[0]["ner"]["logits"]
    assert len(tags) == 15 and tags[-1] is None and None not in records[1]["ner"]["tags"]
    kept = tags.index(None)
    assert all(t is None for t in tags[kept:]) and all(row is None for row in logits[kept:])
    err = capsys.readouterr().err
    assert f"task 'ner': {15 - kept} word(s) in 1 example(s) lie past its max_length (12 word pieces)" in err


def test_text_column_overrides_every_tasks_column(made: Path, plain: list[dict], tmp_path: Path) -> None:
    rows = [{"review": t, "tokens": "not words"} for t in TEXTS]
    records, _ = predict(made, tmp_path, jsonl(rows), "r.jsonl", text_column="review")
    assert [r["review"] for r in records] == TEXTS
    for record, same in zip(records, plain, strict=True):
        assert record["restaurants"]["probs"] == pytest.approx(same["restaurants"]["probs"])
        assert record["ner"] == same["ner"]  # the ner task splits the review, not its tokens_column


# --- out= -----------------------------------------------------------------------------------


def test_out_is_never_overwritten_unless_asked(made: Path, tmp_path: Path, mtl) -> None:
    source = write(tmp_path / "in.txt", "good food\n")
    out = write(tmp_path / "p.jsonl", "keep me\n")
    proc = mtl("predict", str(made), f"input={source}", f"out={out}", cwd=tmp_path)
    assert_one_line_error(proc, "already exists; pass overwrite=true")
    assert out.read_text() == "keep me\n"
    proc = mtl("predict", str(made), f"input={source}", f"out={out}", "overwrite=true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["text"] == "good food" and proc.stdout == ""
    assert f"wrote {out}" in proc.stderr
    for args, message in [
        ([f"out={source}", "overwrite=true"], "is the input file"),
        ([f"out={tmp_path / 'p.txt'}"], "are written as .jsonl or .csv"),
        ([f"out={tmp_path / 'nowhere' / 'p.jsonl'}"], "does not exist; create it"),
        ([f"out={tmp_path}/"], "are written as .jsonl or .csv"),
        ([f"out={source}/p.jsonl"], "is a file, not a folder"),
    ]:
        before = sorted(p.name for p in tmp_path.iterdir())
        assert_one_line_error(mtl("predict", str(made), f"input={source}", *args, cwd=tmp_path), message)
        assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert source.read_text() == "good food\n"


# --- bad input ------------------------------------------------------------------------------


BAD: dict[str, tuple[str, str | bytes, list[str], str]] = {
    "missing column": ("r.csv", "review,label\nok,positive\n", [], "has no column 'text', which task 'restaurants'"),
    "missing column lists the columns": ("r.csv", "review\nok\n", [], "its columns are ['review']; pass text_column="),
    "tab-separated .csv": ("r.csv", "text\tlabel\nok\tpositive\n", [], "it looks '\\t'-separated"),
    "empty file": ("e.txt", "", [], "holds no examples"),
    "blank lines only": ("e.txt", "\n  \n", [], "holds no examples"),
    "header only": ("e.csv", "text,label\n", [], "holds no examples"),
    "empty jsonl": ("e.jsonl", "\n", [], "holds no examples"),
    "not UTF-8": ("l.txt", "fine\ncaf\xe9\n".encode("latin-1"), [], "is not UTF-8 text (line 2, byte 9)"),
    "garbage parquet": ("g.parquet", b"\x00\x01 not parquet at all", [], "cannot be read as parquet"),
    "binary csv": ("b.csv", b"text\nab\x00cd\n", [], "holds a NUL byte (line 2): a binary file, not csv text"),
    "malformed JSON line": ("m.jsonl", '{"text": "a"}\n{"text": \n', [], "line 2 is not valid JSON"),
    "JSON line not an object": ("m.jsonl", '["a"]\n', [], "line 1 is a JSON list, not an object"),
    "wrong field count": ("w.csv", "text,label\na,b\nc,d,e\n", [], "line 3 has 3 field(s) where its header has 2"),
    "repeated header": ("h.csv", "text,text\na,b\n", [], "names column(s) ['text'] more than once"),
    "bad quoting": ("q.csv", 'text\n"a"b\n', [], "line 2 cannot be read as csv"),
    "number as text": ("n.jsonl", '{"text": "a"}\n{"text": 5}\n', [], "holds the number 5, not a text"),
    "null as text": ("n.jsonl", '{"text": null}\n', [], "column 'text' holds null, not a text"),
    "row without the column": ("n.jsonl", '{"text": "a"}\n{"other": "b"}\n', [], "has no 'text', which task"),
    "unknown format": ("r.txt", "ok\n", ["format=xls"], "unknown format=xls; use one of csv"),
    "no suffix": ("reviews", "ok\n", [], "cannot tell the format of"),
    "unknown task": ("r.txt", "ok\n", ["tasks=nope"], "this run never trained task(s) ['nope']"),
    "only MLM tasks": ("r.txt", "ok\n", ["tasks=lm"], "are masked-LM (auxiliary) tasks, which predict nothing"),
    "label outside the label set": (
        "l.csv",
        "text,label\ngood,positive\nmeh,neutral\n",
        ["tasks=restaurants"],
        "label 'neutral' (column 'label')",
    ),
    "blank label": ("b.csv", "text,label\ngood,positive\nmeh, \n", ["tasks=restaurants"], "has no label in column"),
    "regression label not a number": ("s.csv", "text,rating\na,3\nb,lots\n", ["tasks=stars"], "is not a number"),
    "multilabel label outside the set": (
        "t.jsonl",
        '{"text": "a", "topic_labels": ["sports", "cooking"]}\n',
        ["tasks=topics"],
        "label 'cooking'",
    ),
    "tags outside the label set": ("t.conll", "John\tB-person\nsings\tB-song\n", ["tasks=ner"], "label 'B-song'"),
    "tags and words differ in number": (
        "t.jsonl",
        '{"tokens": ["a", "b"], "tags": ["O"]}\n',
        ["tasks=ner"],
        "has 2 words but 1 tags",
    ),
    "conll field count": ("c.conll", "a\tO\nb\tO\textra\n", [], "line 2: 3 field(s) where the file's first line has 2"),
    "column named like a task": ("c.jsonl", '{"text": "a", "restaurants": 1}\n', [], "a column named 'restaurants'"),
    "text_column with plain text": ("r.txt", "ok\n", ["text_column=review"], "text_column= names a column of a csv"),
    "pair column missing": ("r.csv", "text\nok\n", ["text_pair_column=second"], "has no column 'second'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_changes_nothing(made: Path, tmp_path: Path, mtl, case: str) -> None:
    name, content, args, message = BAD[case]
    source = write(tmp_path / name, content)
    before = tree_digest(made)
    proc = mtl("predict", str(made), f"input={source}", *args, cwd=tmp_path)
    assert_one_line_error(proc, message)
    assert proc.stdout == ""
    assert tree_digest(made) == before


def test_unreadable_inputs_and_runs(made: Path, tmp_path: Path, mtl) -> None:
    before = tree_digest(made)
    cases = [
        ([f"input={tmp_path / 'missing.txt'}"], "input file not found"),
        ([f"input={tmp_path}"], "is a directory, not a file"),
        ([f"input={tmp_path}/r.txt", "checkpoint=step-99"], "has no 'step-000099' checkpoint"),
    ]
    write(tmp_path / "r.txt", "ok\n")
    for args, message in cases:
        assert_one_line_error(mtl("predict", str(made), *args, cwd=tmp_path), message)
    bare = tmp_path / "bare"
    shutil.copytree(made, bare, ignore=shutil.ignore_patterns("checkpoints"))
    (bare / "checkpoints").mkdir()
    assert_one_line_error(
        mtl("predict", str(bare), f"input={tmp_path / 'r.txt'}", cwd=tmp_path), "has no checkpoint yet"
    )
    assert tree_digest(made) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_out_in_a_folder_that_cannot_be_written(made: Path, tmp_path: Path, mtl) -> None:
    source = write(tmp_path / "r.txt", "ok\n")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        proc = mtl("predict", str(made), f"input={source}", f"out={locked / 'p.jsonl'}", cwd=tmp_path)
    finally:
        locked.chmod(0o700)
    assert_one_line_error(proc, f"cannot write in {locked}")
    assert list(locked.iterdir()) == []


def test_bf16_is_refused_where_the_device_has_none(made: Path, trained, tmp_path: Path, mtl) -> None:
    from mtl_cli.device import bf16_supported

    if bf16_supported(trained.device):
        pytest.skip("this machine has bfloat16")
    source = write(tmp_path / "r.txt", "ok\n")
    proc = mtl("predict", str(made), f"input={source}", "precision=bf16", cwd=tmp_path)
    assert_one_line_error(proc, "has no bfloat16 support; use precision=fp32")


def test_predict_run_raises_mtl_errors(made: Path, tmp_path: Path) -> None:
    source = write(tmp_path / "r.txt", "ok\n")
    with pytest.raises(MtlError, match="precision must be auto"):
        predict_run(str(made), str(source), precision="fp16")
    with pytest.raises(MtlError, match="batch_size must be a positive"):
        predict_run(str(made), str(source), batch_size=0)
