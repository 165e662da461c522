"""The regression and multi-label task types: loading, encoding, heads, losses, metrics, errors, and tiny runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mtl_cli import task_types
from mtl_cli.config import DataFormat, SharingConfig, TaskConfig
from mtl_cli.errors import MtlError
from mtl_cli.tasks import load_task
from mtl_cli.tokenization import tokenize_task, tokenizer_fingerprint
from tests.conftest import tiny_encoder, tiny_run

regression = task_types.get("regression")
multilabel = task_types.get("multilabel")

SPLITS = ("train", "validation", "test")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def tsv(header: str, rows: list[tuple]) -> str:
    return header + "\n" + "".join("\t".join(str(c) for c in row) + "\n" for row in rows)


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def same_files(root: Path, name: str, text: str) -> dict[str, str]:
    """One file used for all three splits (so nothing is carved and row numbers stay put)."""
    write(root / name, text)
    return {split: name for split in SPLITS}


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


@pytest.fixture
def tokenizer():
    return tiny_encoder()[1]


# --- regression: loading ----------------------------------------------------------------------

STARS = [("loved it", 5), ("hated it", 1), ("it was fine", 3.5), ("quite good", "4"), ("meh", " 2 ")]


def test_type_constants() -> None:
    assert regression.MAIN_METRIC == "pearson" and regression.AUXILIARY is False
    assert multilabel.MAIN_METRIC == "micro_f1" and multilabel.AUXILIARY is False


def test_regression_tsv_labels_become_float32(tmp_path: Path) -> None:
    files = same_files(tmp_path, "stars.tsv", tsv("text\tlabel", STARS))
    task = load_task("stars", TaskConfig(type="regression", files=files, format=DataFormat.tsv), str(tmp_path))
    assert task.labels is None
    for split in SPLITS:
        ds = task.splits[split]
        assert ds.features["label"].dtype == "float32"
        assert ds.column_names == ["text", "label"]
        assert list(ds["label"]) == [5.0, 1.0, 3.5, 4.0, 2.0]


def test_regression_jsonl_pair_and_renamed_columns(tmp_path: Path) -> None:
    rows = [{"a": f"first {i}", "b": f"second {i}", "score": i * 0.5} for i in range(10)]
    write(tmp_path / "sts.jsonl", jsonl(rows))
    cfg = TaskConfig(
        type="regression",
        files={"train": "sts.jsonl"},
        format=DataFormat.jsonl,
        text_column="a",
        text_pair_column="b",
        label_column="score",
        validation_size=2,
        test_size=2,
    )
    task = load_task("sts", cfg, str(tmp_path))
    assert task.sizes() == {"train": 6, "validation": 2, "test": 2}
    assert set(task.splits["train"].column_names) == {"text", "text_pair", "label"}
    all_labels = sorted(v for split in SPLITS for v in task.splits[split]["label"])
    assert all_labels == [i * 0.5 for i in range(10)]


def test_regression_label_map_turns_words_into_numbers(tmp_path: Path) -> None:
    files = same_files(tmp_path, "s.tsv", tsv("text\tlabel", [("a", "five"), ("b", "one"), ("c", 3)]))
    cfg = TaskConfig(type="regression", files=files, format=DataFormat.tsv, label_map={"five": "5", "one": "1"})
    task = load_task("stars", cfg, str(tmp_path))
    assert list(task.splits["train"]["label"]) == [5.0, 1.0, 3.0]


def test_regression_non_numeric_label_names_value_split_and_row(tmp_path: Path) -> None:
    write(tmp_path / "train.tsv", tsv("text\tlabel", [("a", 1), ("b", 2), ("c", "five"), ("d", 4)]))
    cfg = TaskConfig(type="regression", files={"train": "train.tsv"}, format=DataFormat.tsv)
    with pytest.raises(MtlError) as excinfo:
        load_task("stars", cfg, str(tmp_path))
    msg = one_line_error(excinfo)
    assert msg.startswith("task 'stars': label 'five' (train row 3) is not a number; ")
    assert "task.stars.label_column" in msg


@pytest.mark.parametrize("bad", ["", "nan", "inf", "3 stars"])
def test_regression_rejects_blank_and_non_finite_labels(tmp_path: Path, bad: str) -> None:
    files = same_files(tmp_path, "s.tsv", tsv("text\tlabel", [("a", 1), ("b", bad), ("c", 3)]))
    with pytest.raises(MtlError) as excinfo:
        load_task("stars", TaskConfig(type="regression", files=files, format=DataFormat.tsv), str(tmp_path))
    assert f"label '{bad}' (train row 2) is not a number" in one_line_error(excinfo)


def test_regression_prepare_names_the_split_of_a_bad_label() -> None:
    import datasets

    raw = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["a", "b"], "label": [1, 2]}),
            "validation": datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": ["1", "2.5", "n/a"]}),
        }
    )
    with pytest.raises(MtlError) as excinfo:
        regression.prepare("stars", TaskConfig(type="regression"), raw)
    assert "label 'n/a' (validation row 3) is not a number" in one_line_error(excinfo)


def test_regression_integer_train_labels_and_fractional_validation_labels(tmp_path: Path) -> None:
    write(tmp_path / "train.tsv", tsv("text\tlabel", [("a", 1), ("b", 2), ("c", 5)]))
    write(tmp_path / "dev.tsv", tsv("text\tlabel", [("a", 3.5), ("b", 2)]))
    cfg = TaskConfig(
        type="regression",
        files={"train": "train.tsv", "validation": "dev.tsv", "test": "dev.tsv"},
        format=DataFormat.tsv,
    )
    task = load_task("stars", cfg, str(tmp_path))
    assert list(task.splits["validation"]["label"]) == [3.5, 2.0]


def test_regression_constant_training_target_is_an_error(tmp_path: Path) -> None:
    files = same_files(tmp_path, "s.tsv", tsv("text\tlabel", [("a", 3), ("b", 3), ("c", 3)]))
    with pytest.raises(MtlError, match="every training label is 3.0"):
        load_task("stars", TaskConfig(type="regression", files=files, format=DataFormat.tsv), str(tmp_path))


# --- regression: encode, collate, head, loss, predict, metrics ---------------------------------


def test_regression_tokenize_and_collate(tmp_path: Path, tokenizer) -> None:
    files = same_files(tmp_path, "stars.tsv", tsv("text\tlabel", STARS))
    task = load_task("stars", TaskConfig(type="regression", files=files, format=DataFormat.tsv), str(tmp_path))
    encoded = tokenize_task(task, tokenizer, tokenizer_fingerprint(tokenizer))
    ds = encoded["train"]
    assert set(ds.column_names) == {"input_ids", "labels"}
    rows = [ds[i] for i in range(len(ds))]
    batch = regression.collate(rows, tokenizer.pad_token_id, None)
    assert batch["input_ids"].dtype == torch.long and batch["input_ids"].shape[0] == 5
    assert batch["attention_mask"].shape == batch["input_ids"].shape
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == [5.0, 1.0, 3.5, 4.0, 2.0]


def test_regression_pair_encoding_has_token_type_ids(tmp_path: Path, tokenizer) -> None:
    rows = [{"a": f"first {i}", "b": f"and a second text {i}", "score": float(i)} for i in range(4)]
    files = same_files(tmp_path, "sts.jsonl", jsonl(rows))
    cfg = TaskConfig(
        type="regression",
        files=files,
        format=DataFormat.jsonl,
        text_column="a",
        text_pair_column="b",
        label_column="score",
    )
    task = load_task("sts", cfg, str(tmp_path))
    ds = tokenize_task(task, tokenizer, tokenizer_fingerprint(tokenizer))["test"]
    batch = regression.collate([ds[i] for i in range(len(ds))], tokenizer.pad_token_id, None)
    assert batch["token_type_ids"].shape == batch["input_ids"].shape
    assert batch["token_type_ids"].max().item() == 1
    assert batch["labels"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_regression_head_loss_and_predict() -> None:
    torch.manual_seed(0)
    head = regression.build_head(8, None, None, SharingConfig(head_dropout=0.0))
    hidden = torch.randn(3, 5, 8)
    batch = {"attention_mask": torch.ones(3, 5, dtype=torch.long), "labels": torch.tensor([1.0, 2.0, 4.5])}
    out = head(hidden, batch)
    assert out.shape == (3,)
    expected = ((out - batch["labels"]) ** 2).mean()
    assert regression.loss(out, batch).item() == pytest.approx(expected.item(), rel=1e-6)
    loss = regression.loss(torch.tensor([1.0, 2.0, 3.0]), {"labels": torch.tensor([1.0, 4.0, 2.0])})
    assert loss.item() == pytest.approx((0 + 4 + 1) / 3)
    preds, golds = regression.predict(torch.tensor([0.5, 1.25]), {"labels": torch.tensor([1.0, 2.0])})
    assert preds == [0.5, 1.25] and golds == [1.0, 2.0]
    assert all(isinstance(v, float) for v in preds + golds)


def test_regression_metrics_perfect_and_hand_computed() -> None:
    perfect = regression.metrics([0.5, 1.0, 3.0], [0.5, 1.0, 3.0], None, 0.0)
    assert perfect == pytest.approx({"pearson": 1.0, "spearman": 1.0, "mae": 0.0, "mse": 0.0})
    # preds 1,2,3,4 vs golds 1,3,2,4: deviations +-1.5/+-0.5, covariance 4 over variances 5 -> r = 0.8.
    m = regression.metrics([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0], None, 0.0)
    assert m == pytest.approx({"pearson": 0.8, "spearman": 0.8, "mae": 0.5, "mse": 0.5})
    # A monotone but non-linear prediction: Spearman 1, Pearson below 1.
    m = regression.metrics([1.0, 2.0, 3.0, 100.0], [1.0, 2.0, 3.0, 4.0], None, 0.0)
    assert m["spearman"] == pytest.approx(1.0) and m["pearson"] < 0.9
    assert m["mae"] == pytest.approx(24.0) and m["mse"] == pytest.approx(96.0**2 / 4)


def test_regression_metrics_constant_side_is_zero_not_nan() -> None:
    for preds, golds in (([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]), ([1.0, 2.0, 3.0], [2.0, 2.0, 2.0]), ([1.0], [3.0])):
        m = regression.metrics(preds, golds, None, 0.0)
        assert m["pearson"] == 0.0 and m["spearman"] == 0.0
        assert all(math.isfinite(v) for v in m.values())
    assert regression.metrics([2.0, 2.0, 2.0], [1.0, 2.0, 3.0], None, 0.0)["mae"] == pytest.approx(2 / 3)


# --- multi-label: loading ---------------------------------------------------------------------

TOPICS_TSV = [
    ("the match and the vote", "sports, politics"),
    ("nothing much", ""),
    ("a new phone", "tech"),
    ("election night", " politics "),
]


def test_multilabel_tsv_strings_become_multi_hot(tmp_path: Path) -> None:
    files = same_files(tmp_path, "topics.tsv", tsv("text\tlabel", TOPICS_TSV))
    task = load_task("topics", TaskConfig(type="multilabel", files=files, format=DataFormat.tsv), str(tmp_path))
    assert task.labels == ["politics", "sports", "tech"]
    ds = task.splits["validation"]
    assert ds.features["label"].feature.dtype == "float32"
    assert [list(v) for v in ds["label"]] == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]


def test_multilabel_jsonl_lists_label_map_and_fixed_label_order(tmp_path: Path) -> None:
    rows = [
        {"text": "a", "tags": ["S", "P"]},
        {"text": "b", "tags": []},
        {"text": "c", "tags": ["T", "T"]},
    ]
    files = same_files(tmp_path, "topics.jsonl", jsonl(rows))
    cfg = TaskConfig(
        type="multilabel",
        files=files,
        format=DataFormat.jsonl,
        label_column="tags",
        labels=["tech", "sports", "politics", "science"],
        label_map={"S": "sports", "P": "politics", "T": "tech"},
    )
    task = load_task("topics", cfg, str(tmp_path))
    assert task.labels == ["tech", "sports", "politics", "science"]
    assert [list(v) for v in task.splits["train"]["label"]] == [[0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]]


def test_multilabel_custom_separator_and_carved_splits(tmp_path: Path) -> None:
    rows = [(f"text {i}", ["a|b", "b", "c", "a | c"][i % 4]) for i in range(20)]
    write(tmp_path / "train.tsv", tsv("text\tlabel", rows))
    cfg = TaskConfig(type="multilabel", files={"train": "train.tsv"}, format=DataFormat.tsv, label_separator="|")
    task = load_task("topics", cfg, str(tmp_path))
    assert task.labels == ["a", "b", "c"]
    assert task.sizes() == {"train": 16, "validation": 2, "test": 2}
    assert all(len(v) == 3 for v in task.splits["test"]["label"])


def test_multilabel_unknown_label_names_label_split_and_row(tmp_path: Path) -> None:
    write(tmp_path / "train.tsv", tsv("text\tlabel", TOPICS_TSV))
    write(tmp_path / "dev.tsv", tsv("text\tlabel", [("x", "tech"), ("y", "sports,weather")]))
    cfg = TaskConfig(
        type="multilabel",
        files={"train": "train.tsv", "validation": "dev.tsv", "test": "train.tsv"},
        format=DataFormat.tsv,
    )
    with pytest.raises(MtlError) as excinfo:
        load_task("topics", cfg, str(tmp_path))
    msg = one_line_error(excinfo)
    assert msg.startswith("task 'topics': label 'weather' (validation row 2) is not in the label set ")
    assert "task.topics.labels" in msg and "label_separator" in msg


def test_multilabel_unknown_label_against_configured_labels(tmp_path: Path) -> None:
    files = same_files(tmp_path, "t.tsv", tsv("text\tlabel", TOPICS_TSV))
    cfg = TaskConfig(type="multilabel", files=files, format=DataFormat.tsv, labels=["sports", "politics"])
    with pytest.raises(MtlError, match=r"label 'tech' \(train row 3\)"):
        load_task("topics", cfg, str(tmp_path))


def test_multilabel_fewer_than_two_labels_is_an_error(tmp_path: Path) -> None:
    files = same_files(tmp_path, "t.tsv", tsv("text\tlabel", [("a", ""), ("b", "x"), ("c", "")]))
    with pytest.raises(MtlError, match="1 distinct label"):
        load_task("topics", TaskConfig(type="multilabel", files=files, format=DataFormat.tsv), str(tmp_path))


# --- multi-label: encode, collate, head, loss, predict, metrics ---------------------------------


def test_multilabel_tokenize_and_collate_with_pairs(tmp_path: Path, tokenizer) -> None:
    rows = [{"q": f"question {i}", "d": "a document", "label": ["x", "y"][: i % 3]} for i in range(6)]
    files = same_files(tmp_path, "t.jsonl", jsonl(rows))
    cfg = TaskConfig(type="multilabel", files=files, format=DataFormat.jsonl, text_column="q", text_pair_column="d")
    task = load_task("topics", cfg, str(tmp_path))
    ds = tokenize_task(task, tokenizer, tokenizer_fingerprint(tokenizer))["train"]
    assert set(ds.column_names) == {"input_ids", "token_type_ids", "labels"}
    batch = multilabel.collate([ds[i] for i in range(len(ds))], tokenizer.pad_token_id, None)
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == (6, 2)
    assert batch["labels"].tolist() == [[0, 0], [1, 0], [1, 1], [0, 0], [1, 0], [1, 1]]
    assert batch["token_type_ids"].shape == batch["input_ids"].shape


def test_multilabel_head_loss_and_predict() -> None:
    torch.manual_seed(0)
    head = multilabel.build_head(8, ["a", "b", "c"], None, SharingConfig(head_dropout=0.0))
    hidden = torch.randn(2, 4, 8)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    out = head(hidden, {"attention_mask": mask})
    assert out.shape == (2, 3)
    logits = torch.tensor([[2.0, -1.0, 0.0], [-3.0, 0.5, 4.0]])
    gold = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    p = torch.sigmoid(logits)
    expected = -(gold * p.log() + (1 - gold) * (1 - p).log()).mean()
    assert multilabel.loss(logits, {"labels": gold}).item() == pytest.approx(expected.item(), rel=1e-5)
    assert multilabel.loss(logits, {"labels": gold}).item() == pytest.approx(
        F.binary_cross_entropy(p, gold).item(), rel=1e-5
    )
    preds, golds = multilabel.predict(logits, {"labels": gold})
    assert preds == [[1, 0, 0], [0, 1, 1]]  # sigmoid(0) = 0.5 is not above the threshold
    assert golds == [[1, 0, 1], [0, 0, 1]]


def test_multilabel_metrics_hand_computed() -> None:
    golds = [[1, 0, 1], [0, 1, 0], [1, 1, 0]]
    preds = [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    # Per label: a tp2 -> F1 1; b tp1 fn1 -> 2/3; c tp0 fp1 fn1 -> 0. Micro: tp3 fp1 fn2 -> 6/9.
    m = multilabel.metrics(preds, golds, ["a", "b", "c"], 0.0)
    assert m == pytest.approx({"micro_f1": 2 / 3, "macro_f1": 5 / 9, "exact_match": 1 / 3})
    perfect = multilabel.metrics(golds, golds, ["a", "b", "c"], 0.0)
    assert perfect == pytest.approx({"micro_f1": 1.0, "macro_f1": 1.0, "exact_match": 1.0})
    # No labels predicted or present anywhere: zero_division=0, and empty sets match exactly.
    empty = multilabel.metrics([[0, 0]] * 2, [[0, 0]] * 2, ["a", "b"], 0.0)
    assert empty == pytest.approx({"micro_f1": 0.0, "macro_f1": 0.0, "exact_match": 1.0})


# --- end to end --------------------------------------------------------------------------------


def stars_rows(n: int, offset: int = 0) -> list[tuple[str, float]]:
    nouns = ["soup", "service", "pasta", "view", "staff", "dessert", "bread", "music", "room", "coffee"]
    words = {"great": 1.0, "awful": 0.0}
    rows = []
    for i in range(offset, offset + n):
        word = "great" if i % 2 == 0 else "awful"
        rows.append((f"the {nouns[i % len(nouns)]} number {i} was {word}", words[word]))
    return rows


def write_user_tasks(root: Path) -> Path:
    data = root / "data"
    write(data / "stars" / "train.tsv", tsv("text\tlabel", [(t, 1 + 4 * y) for t, y in stars_rows(24)]))
    write(data / "stars" / "validation.tsv", tsv("text\tlabel", [(t, 1 + 4 * y) for t, y in stars_rows(8, 100)]))
    write(data / "stars" / "test.tsv", tsv("text\tlabel", [(t, 1 + 4 * y) for t, y in stars_rows(8, 200)]))
    topics = ["sports", "politics", "tech"]
    for split, n in (("train", 24), ("validation", 8), ("test", 8)):
        rows = [
            {"text": f"{split} text {i}", "label": [topics[i % 3]] + ([topics[(i + 1) % 3]] if i % 2 else [])}
            for i in range(n)
        ]
        write(data / "topics" / f"{split}.jsonl", jsonl(rows))
    conf = root / "conf"
    files = "{train: train.tsv, validation: validation.tsv, test: test.tsv}"
    write(
        conf / "task" / "stars.yaml",
        f"# @package task.stars\ntype: regression\ndata_dir: {json.dumps(str(data / 'stars'))}\nfiles: {files}\nformat: tsv\n",
    )
    jfiles = files.replace(".tsv", ".jsonl")
    write(
        conf / "task" / "topics.yaml",
        f"# @package task.topics\ntype: multilabel\ndata_dir: {json.dumps(str(data / 'topics'))}\nfiles: {jfiles}\nformat: jsonl\n",
    )
    return conf


def test_tiny_run_mixes_regression_multilabel_and_classification(tmp_path: Path) -> None:
    conf = write_user_tasks(tmp_path)
    overrides = ["task=[stars,topics,demo/restaurants]", "trainer.max_steps=4", "trainer.eval_every=2"]
    out = tiny_run(tmp_path / "runs", *overrides, config_dir=conf)
    run = Path(out["run_dir"])
    results = json.loads((run / "results.json").read_text())
    assert set(results) == {"stars", "topics", "restaurants", "average"}
    assert {"pearson", "spearman", "mae", "mse"} <= set(results["stars"])
    assert {"micro_f1", "macro_f1", "exact_match"} <= set(results["topics"])
    assert {"accuracy", "macro_f1"} <= set(results["restaurants"])
    for metrics in results.values():
        assert all(math.isfinite(v) for v in metrics.values())
    assert -1.0 <= results["stars"]["pearson"] <= 1.0 and results["stars"]["mae"] >= 0.0
    assert 0.0 <= results["topics"]["micro_f1"] <= 1.0
    # The average's main metric is the mean of the tasks' own main metrics (Pearson, micro-F1, accuracy).
    val = out["validation"]
    main = (val["stars"]["pearson"] + val["topics"]["micro_f1"] + val["restaurants"]["accuracy"]) / 3
    assert val["average"]["main"] == pytest.approx(main)
    md = (run / "metrics.md").read_text()
    for task in ("stars", "topics", "restaurants", "average"):
        assert f"| {task} |" in md
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["task"]) for r in records] == [
        (s, t) for s in (2, 4) for t in ("stars", "topics", "restaurants", "average")
    ]
    labels = json.loads((run / "checkpoints" / "best" / "labels.json").read_text())
    assert labels["stars"] is None and labels["topics"] == ["politics", "sports", "tech"]
    # `mtl eval` rebuilds both new heads from the run's config and scores the best checkpoint the same way.
    from mtl_cli.eval_run import evaluate_run

    again = evaluate_run(str(run), split="test")
    for task in ("stars", "topics", "restaurants"):
        assert again[task] == pytest.approx(results[task])


def test_tiny_encoder_learns_an_easy_regression(tmp_path: Path) -> None:
    # The target is carried by one word ("great" 1.0, "awful" 0.0); seeds 0-9 all reach validation
    # Pearson above 0.95 in about 5 s on an idle CPU, so the 0.5 bar is far from flaky.
    data = tmp_path / "data"
    write(data / "train.tsv", tsv("text\tlabel", stars_rows(60)))
    write(data / "validation.tsv", tsv("text\tlabel", stars_rows(20, 1000)))
    write(data / "test.tsv", tsv("text\tlabel", stars_rows(20, 2000)))
    conf = tmp_path / "conf"
    write(
        conf / "task" / "easy.yaml",
        f"# @package task.easy\ntype: regression\ndata_dir: {json.dumps(str(data))}\n"
        "files: {train: train.tsv, validation: validation.tsv, test: test.tsv}\nformat: tsv\n",
    )
    overrides = ["task=[easy]", "trainer.max_steps=60", "trainer.eval_every=20", "trainer.batch_size=16"]
    out = tiny_run(tmp_path / "runs", *overrides, config_dir=conf)
    assert out["validation"]["easy"]["pearson"] > 0.5, out["validation"]["easy"]
