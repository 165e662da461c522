"""Loading task data: local formats, quoting, label encoding, carved splits, limits, paths and user-facing errors."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from mtl_cli.config import CONF_DIR, DataFormat, TaskConfig
from mtl_cli.errors import MtlError
from mtl_cli.tasks import load_task
from tests.conftest import write

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SPLITS = ("train", "validation", "test")

# Texts that a naive reader would mangle: raw quotes (leading, trailing, unbalanced) and missing-value markers.
TRICKY_TRAIN = [
    ('She said "wow" and left', 1),
    ('"Best pizza in town', 1),
    ("NA", 0),
    ("null", 1),
    ('The "chef" special was cold', 0),
    ('He called it "perfect"', 1),
    ('12" pizza, too small', 0),
    ("N/A", 0),
]


def tsv(rows: Sequence[tuple[str, object]]) -> str:
    return "".join(f"{text}\t{label}\n" for text, label in rows)


def balanced(n: int, prefix: str = "review") -> list[tuple[str, int]]:
    return [(f"{prefix} {i}", i % 2) for i in range(n)]


def sentences_cfg(files: dict[str, str], **overrides) -> TaskConfig:
    """The settings of conf/task/sentences/yelp.yaml: headerless TSV, quoting off, 0/1 mapped to names."""
    settings = {
        "files": files,
        "format": "tsv",
        "header": False,
        "quoting": False,
        "column_names": ["text", "label"],
        "label_map": {"0": "negative", "1": "positive"},
        "labels": ["negative", "positive"],
        **overrides,
    }
    return TaskConfig(**settings)


def texts(task, split: str) -> list[str]:
    return list(task.splits[split]["text"])


def labels(task, split: str) -> list[int]:
    return list(task.splits[split]["label"])


def load_error(name: str, cfg: TaskConfig, data_root: str | None) -> str:
    with pytest.raises(MtlError) as info:
        load_task(name, cfg, data_root)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def yaml_task_cfg(relative: str) -> TaskConfig:
    # The `# @package` line is a YAML comment; the file body holds TaskConfig's fields directly.
    body = OmegaConf.load(CONF_DIR / "task" / relative)
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TaskConfig), body))
    assert isinstance(cfg, TaskConfig)
    return cfg


# --- 1, 2: TSV without header, quoting ---------------------------------------------------------------------------


@pytest.fixture
def tricky_tsv(tmp_path: Path) -> Path:
    train = TRICKY_TRAIN + balanced(22, "train")
    write(tmp_path / "train.tsv", tsv(train))
    write(tmp_path / "dev.tsv", tsv([('"quoted" dev', 1), ("NULL", 0), *balanced(4, "dev")]))
    write(tmp_path / "test.tsv", tsv([("nan", 0), ('ends with "', 1), *balanced(6, "test")]))
    return tmp_path


def test_tsv_with_quoting_off_keeps_raw_quotes_and_missing_value_words_as_text(tricky_tsv: Path):
    cfg = sentences_cfg({"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"})
    task = load_task("yelp", cfg, str(tricky_tsv))

    assert task.labels == ["negative", "positive"]
    assert task.sizes() == {"train": 30, "validation": 6, "test": 8}
    assert task.splits.column_names == {split: ["text", "label"] for split in SPLITS}
    assert task.splits["train"].features["label"].names == ["negative", "positive"]

    expected_train = TRICKY_TRAIN + balanced(22, "train")
    assert texts(task, "train") == [text for text, _ in expected_train]
    assert labels(task, "train") == [label for _, label in expected_train]
    assert texts(task, "validation")[:2] == ['"quoted" dev', "NULL"]
    assert labels(task, "validation") == [1, 0, 0, 1, 0, 1]
    assert texts(task, "test")[:2] == ["nan", 'ends with "']
    assert labels(task, "test") == [0, 1, 0, 1, 0, 1, 0, 1]
    assert all(isinstance(t, str) for split in SPLITS for t in texts(task, split))


def test_tsv_with_quoting_on_swallows_tabs_and_newlines_after_a_leading_quote(tricky_tsv: Path):
    files = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
    quoted = load_task("yelp", sentences_cfg(files, quoting=True), str(tricky_tsv))
    # Read again with quoting off afterwards: the cached parse of the quoting-on run must not be reused.
    raw = load_task("yelp", sentences_cfg(files, quoting=False), str(tricky_tsv))

    assert len(raw.splits["train"]) == 30
    # '"Best pizza in town' opens a quoted field that runs through the next lines up to the next '"'.
    assert len(quoted.splits["train"]) < 30
    merged = [t for t in texts(quoted, "train") if "\t" in t or "\n" in t]
    assert merged and merged[0].startswith("Best pizza in town\t1\nNA\t0\n")
    assert '"Best pizza in town' not in texts(quoted, "train")
    assert '"Best pizza in town' in texts(raw, "train")


# --- 3, 4: CSV with header and custom columns, JSONL, Parquet ----------------------------------------------------


def test_csv_with_header_custom_columns_and_inferred_sorted_labels(tmp_path: Path):
    header = "id,review,stars,source\n"
    train = [("1", '"Good, but pricey"', "pos"), ("2", "Awful", "neg"), ("3", "Fine I guess", "neutral")] * 4
    write(tmp_path / "train.csv", header + "".join(f"{a},{b},{c},web\n" for a, b, c in train))
    write(tmp_path / "dev.csv", header + '9,"He said ""meh""",neutral,app\n10,Great,pos,app\n')
    write(tmp_path / "test.csv", header + "11,Bad,neg,app\n12,NA,pos,app\n")
    cfg = TaskConfig(
        files={"train": "train.csv", "validation": "dev.csv", "test": "test.csv"},
        text_column="review",
        label_column="stars",
    )
    task = load_task("reviews", cfg, str(tmp_path))

    assert task.labels == ["neg", "neutral", "pos"]
    assert task.sizes() == {"train": 12, "validation": 2, "test": 2}
    assert task.splits["train"].column_names == ["text", "label"]
    assert texts(task, "train")[:3] == ["Good, but pricey", "Awful", "Fine I guess"]
    assert labels(task, "train")[:3] == [2, 0, 1]
    assert texts(task, "validation") == ['He said "meh"', "Great"]
    assert labels(task, "validation") == [1, 2]
    assert texts(task, "test") == ["Bad", "NA"]
    assert labels(task, "test") == [0, 2]


def test_jsonl_files_with_label_map_and_inferred_labels(tmp_path: Path):
    def jsonl(rows: list[tuple[str, int]]) -> str:
        return "".join(json.dumps({"sentence": t, "sentiment": y, "extra": 1}) + "\n" for t, y in rows)

    write(tmp_path / "train.jsonl", jsonl([('a "quoted" one', 1), ("null", 0), *balanced(10)]))
    write(tmp_path / "dev.jsonl", jsonl([("dev a", 0), ("dev b", 1)]))
    write(tmp_path / "test.jsonl", jsonl([("test a", 1)]))
    cfg = TaskConfig(
        files={"train": "train.jsonl", "validation": "dev.jsonl", "test": "test.jsonl"},
        format=DataFormat.jsonl,
        text_column="sentence",
        label_column="sentiment",
        label_map={"0": "neg", "1": "pos"},
    )
    task = load_task("j", cfg, str(tmp_path))

    assert task.labels == ["neg", "pos"]
    assert task.sizes() == {"train": 12, "validation": 2, "test": 1}
    assert texts(task, "train")[:3] == ['a "quoted" one', "null", "review 0"]
    assert labels(task, "train")[:4] == [1, 0, 0, 1]
    assert labels(task, "validation") == [0, 1]
    assert labels(task, "test") == [1]


def test_parquet_files_are_read_and_labels_encoded(tmp_path: Path):
    def parquet(path: Path, rows: list[tuple[str, str]]) -> None:
        table = pa.table({"text": [t for t, _ in rows], "label": [y for _, y in rows], "id": list(range(len(rows)))})
        pq.write_table(table, path)

    parquet(tmp_path / "train.parquet", [("x", "b"), ("y", "a"), ('"z"', "c")] * 5)
    parquet(tmp_path / "validation.parquet", [("v", "c"), ("w", "a")])
    parquet(tmp_path / "test.parquet", [("t", "b")])
    cfg = TaskConfig(
        files={split: f"{split}.parquet" for split in SPLITS},
        format=DataFormat.parquet,
    )
    task = load_task("p", cfg, str(tmp_path))

    assert task.labels == ["a", "b", "c"]
    assert task.sizes() == {"train": 15, "validation": 2, "test": 1}
    assert texts(task, "train")[:3] == ["x", "y", '"z"']
    assert labels(task, "train")[:3] == [1, 0, 2]
    assert labels(task, "validation") == [2, 0]
    assert texts(task, "test") == ["t"]


# --- 5: carving validation/test from train ------------------------------------------------------------------------


@pytest.fixture
def train_only(tmp_path: Path) -> Path:
    write(tmp_path / "train.tsv", tsv(balanced(100)))
    return tmp_path


def carve(root: Path, **overrides):
    return load_task("c", sentences_cfg({"train": "train.tsv"}, **overrides), str(root))


def test_carved_split_sizes_from_fractions_of_train(train_only: Path):
    task = carve(train_only, validation_size=0.1, test_size=0.2)
    assert task.sizes() == {"train": 70, "validation": 10, "test": 20}


def test_carved_split_sizes_from_counts(train_only: Path):
    task = carve(train_only, validation_size=10, test_size=7)
    assert task.sizes() == {"train": 83, "validation": 10, "test": 7}


def test_carved_split_of_one_is_a_count_not_the_whole_train(train_only: Path):
    task = carve(train_only, validation_size=1, test_size=1.0)
    assert task.sizes() == {"train": 98, "validation": 1, "test": 1}


def test_carved_splits_are_stratified_on_balanced_train(train_only: Path):
    task = carve(train_only, validation_size=10, test_size=0.2)
    assert Counter(labels(task, "validation")) == {0: 5, 1: 5}
    assert Counter(labels(task, "test")) == {0: 10, 1: 10}
    assert Counter(labels(task, "train")) == {0: 35, 1: 35}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_carved_splits_keep_label_proportions_of_imbalanced_train(tmp_path: Path, seed: int):
    # 80/20: an unstratified split would miss these exact counts for most seeds.
    write(tmp_path / "train.tsv", tsv([(f"r{i}", int(i % 5 == 0)) for i in range(100)]))
    task = carve(tmp_path, validation_size=10, test_size=20, split_seed=seed)
    assert Counter(labels(task, "test")) == {0: 16, 1: 4}
    assert Counter(labels(task, "validation")) == {0: 8, 1: 2}


def test_carving_is_deterministic_per_split_seed(train_only: Path):
    first = carve(train_only, split_seed=7)
    again = carve(train_only, split_seed=7)
    other = carve(train_only, split_seed=8)
    for split in SPLITS:
        assert texts(first, split) == texts(again, split)
        assert labels(first, split) == labels(again, split)
    assert texts(first, "validation") != texts(other, "validation")
    assert texts(first, "test") != texts(other, "test")


def test_carved_splits_do_not_overlap_train_and_cover_every_row(train_only: Path):
    task = carve(train_only, validation_size=0.1, test_size=0.2)
    train, dev, test = (set(texts(task, split)) for split in SPLITS)
    assert not train & dev and not train & test and not dev & test
    assert train | dev | test == {text for text, _ in balanced(100)}


def test_split_with_a_file_is_not_carved(train_only: Path):
    write(train_only / "test.tsv", tsv(balanced(6, "held")))
    task = load_task(
        "c", sentences_cfg({"train": "train.tsv", "test": "test.tsv"}, validation_size=10), str(train_only)
    )
    assert task.sizes() == {"train": 90, "validation": 10, "test": 6}
    assert texts(task, "test") == [f"held {i}" for i in range(6)]


# --- 6: limits ----------------------------------------------------------------------------------------------------


@pytest.fixture
def three_files(tmp_path: Path) -> Path:
    write(tmp_path / "train.tsv", tsv(balanced(40, "train")))
    write(tmp_path / "dev.tsv", tsv(balanced(10, "dev")))
    write(tmp_path / "test.tsv", tsv(balanced(12, "test")))
    return tmp_path


def limited(root: Path, **overrides):
    files = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
    return load_task("l", sentences_cfg(files, **overrides), str(root))


def test_max_train_examples_limits_train_to_a_seeded_subset(three_files: Path):
    task = limited(three_files, max_train_examples=12)
    assert task.sizes() == {"train": 12, "validation": 10, "test": 12}
    assert set(texts(task, "train")) < {f"train {i}" for i in range(40)}
    assert len(set(texts(task, "train"))) == 12
    assert texts(task, "train") != [f"train {i}" for i in range(12)]
    assert texts(task, "train") == texts(limited(three_files, max_train_examples=12), "train")


def test_max_eval_examples_limits_validation_and_test_but_not_train(three_files: Path):
    task = limited(three_files, max_eval_examples=5)
    assert task.sizes() == {"train": 40, "validation": 5, "test": 5}
    assert set(texts(task, "validation")) < {f"dev {i}" for i in range(10)}
    assert set(texts(task, "test")) < {f"test {i}" for i in range(12)}


def test_limits_larger_than_the_data_keep_every_example(three_files: Path):
    task = limited(three_files, max_train_examples=1000, max_eval_examples=1000)
    assert task.sizes() == {"train": 40, "validation": 10, "test": 12}


def test_max_train_examples_does_not_change_carved_held_out_splits(train_only: Path):
    full = carve(train_only, validation_size=0.1, test_size=0.2)
    capped = carve(train_only, validation_size=0.1, test_size=0.2, max_train_examples=30)
    assert len(capped.splits["train"]) == 30
    assert texts(capped, "validation") == texts(full, "validation")
    assert texts(capped, "test") == texts(full, "test")


# --- 7: path resolution -------------------------------------------------------------------------------------------


@pytest.fixture
def two_roots(tmp_path: Path) -> Path:
    write(tmp_path / "dir" / "train.tsv", tsv(balanced(20, "from data_dir")))
    write(tmp_path / "root" / "train.tsv", tsv(balanced(20, "from data_root")))
    write(tmp_path / "cwd" / "train.tsv", tsv(balanced(20, "from cwd")))
    return tmp_path


def test_relative_paths_resolve_against_data_dir_before_data_root(two_roots: Path):
    cfg = sentences_cfg({"train": "train.tsv"}, data_dir=str(two_roots / "dir"))
    task = load_task("p", cfg, str(two_roots / "root"))
    assert all(t.startswith("from data_dir") for split in SPLITS for t in texts(task, split))


def test_relative_paths_resolve_against_data_root_without_data_dir(two_roots: Path):
    task = load_task("p", sentences_cfg({"train": "train.tsv"}), str(two_roots / "root"))
    assert all(t.startswith("from data_root") for split in SPLITS for t in texts(task, split))


def test_relative_paths_resolve_against_cwd_without_data_dir_or_data_root(
    two_roots: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(two_roots / "cwd")
    task = load_task("p", sentences_cfg({"train": "train.tsv"}), None)
    assert all(t.startswith("from cwd") for split in SPLITS for t in texts(task, split))


def test_absolute_paths_ignore_data_dir_and_data_root(two_roots: Path):
    cfg = sentences_cfg({"train": str(two_roots / "cwd" / "train.tsv")}, data_dir=str(two_roots / "dir"))
    task = load_task("p", cfg, str(two_roots / "root"))
    assert all(t.startswith("from cwd") for split in SPLITS for t in texts(task, split))


# --- 8: errors ----------------------------------------------------------------------------------------------------


def test_missing_file_without_any_root_suggests_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    message = load_error("yelp", sentences_cfg({"train": "sentences/yelp.tsv"}), None)
    assert "task 'yelp'" in message
    assert "train file not found" in message
    assert str(tmp_path / "sentences" / "yelp.tsv") in message
    assert "data_root=" in message and "MTL_DATA_ROOT" in message


def test_missing_file_under_data_root_names_the_path_and_the_files_key(tmp_path: Path):
    write(tmp_path / "train.tsv", tsv(balanced(20)))
    cfg = sentences_cfg({"train": "train.tsv", "test": "missing/test.tsv"})
    message = load_error("yelp", cfg, str(tmp_path))
    assert "test file not found" in message
    assert str(tmp_path / "missing" / "test.tsv") in message
    assert "data_root" in message and "task.yelp.files.test" in message


def test_label_outside_the_label_set_names_label_split_and_row(tmp_path: Path):
    write(tmp_path / "train.tsv", tsv(balanced(20)))
    write(tmp_path / "dev.tsv", tsv([("ok", 0), ("fine", 1), ("odd one", 2), ("odder", 3)]))
    message = load_error("yelp", sentences_cfg({"train": "train.tsv", "validation": "dev.tsv"}), str(tmp_path))
    assert "label '2'" in message
    assert "validation row 3" in message
    assert "['negative', 'positive']" in message
    assert "task.yelp.labels" in message and "task.yelp.label_map" in message


def test_label_unseen_in_train_is_rejected_when_labels_are_inferred(tmp_path: Path):
    header = "text,label\n"
    write(tmp_path / "train.csv", header + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(10)))
    write(tmp_path / "test.csv", header + "x,a\ny,c\n")
    message = load_error("abc", TaskConfig(files={"train": "train.csv", "test": "test.csv"}), str(tmp_path))
    assert "label 'c'" in message and "test row 2" in message and "['a', 'b']" in message


def test_missing_column_lists_the_available_columns(tmp_path: Path):
    write(tmp_path / "train.csv", "review,label\n" + "".join(f"r{i},{i % 2}\n" for i in range(10)))
    message = load_error("csvtask", TaskConfig(files={"train": "train.csv"}), str(tmp_path))
    assert "no column 'text'" in message
    assert "['review', 'label']" in message
    assert "task.csvtask.text_column=" in message and "column_names" in message


def test_missing_label_column_names_label_column_override(tmp_path: Path):
    write(tmp_path / "train.csv", "text,stars\n" + "".join(f"r{i},{i % 2}\n" for i in range(10)))
    message = load_error("csvtask", TaskConfig(files={"train": "train.csv"}), str(tmp_path))
    assert "no column 'label'" in message and "['text', 'stars']" in message
    assert "task.csvtask.label_column=" in message


@pytest.mark.parametrize("empty", ["train", "test"])
def test_header_only_split_file_is_reported_as_an_empty_split(tmp_path: Path, empty: str):
    write(tmp_path / "full.csv", "text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(20)))
    write(tmp_path / "empty.csv", "text,label\n")
    files = {"train": "full.csv", "test": "full.csv", empty: "empty.csv"}
    message = load_error("e", TaskConfig(files=files, labels=["0", "1"]), str(tmp_path))
    assert f"the {empty} split is empty" in message
    assert "task.e.files" in message


def test_single_class_train_is_rejected(tmp_path: Path):
    write(tmp_path / "train.tsv", tsv([(f"t{i}", 1) for i in range(20)]))
    write(tmp_path / "test.tsv", tsv(balanced(4)))
    message = load_error("one", sentences_cfg({"train": "train.tsv", "test": "test.tsv"}), str(tmp_path))
    assert "task 'one'" in message
    assert "training split holds a single label" in message and "task.one.label_column" in message


def test_carve_count_larger_than_train_names_the_size_setting(tmp_path: Path):
    write(tmp_path / "train.tsv", tsv(balanced(20)))
    message = load_error("small", sentences_cfg({"train": "train.tsv"}, validation_size=50), str(tmp_path))
    # test (10% = 2) is carved first, leaving 18.
    assert "cannot carve 50 validation examples from 18 training examples" in message
    assert "task.small.validation_size" in message and "validation file" in message


NOT_UTF8 = "caf\xe9 latte".encode("latin-1")


def test_non_utf8_tsv_is_reported_as_an_encoding_problem(tmp_path: Path):
    write(tmp_path / "train.tsv", tsv(balanced(10)).encode() + NOT_UTF8 + b"\t1\n")
    message = load_error("enc", sentences_cfg({"train": "train.tsv"}), str(tmp_path))
    assert "task 'enc'" in message and "not valid UTF-8" in message
    assert str(tmp_path / "train.tsv") in message and "iconv" in message


def test_non_utf8_csv_with_header_is_reported_as_an_encoding_problem(tmp_path: Path):
    write(
        tmp_path / "train.csv",
        b"text,label\n" + NOT_UTF8 + b",1\n" + "".join(f"r{i},{i % 2}\n" for i in range(10)).encode(),
    )
    message = load_error("enc", TaskConfig(files={"train": "train.csv"}), str(tmp_path))
    assert "not valid UTF-8" in message and "iconv" in message


def test_non_utf8_jsonl_is_reported_as_an_encoding_problem(tmp_path: Path):
    rows = "".join(json.dumps({"text": f"r{i}", "label": i % 2}) + "\n" for i in range(10)).encode()
    write(tmp_path / "train.jsonl", rows + b'{"text": "' + NOT_UTF8 + b'", "label": 1}\n')
    message = load_error("enc", TaskConfig(files={"train": "train.jsonl"}, format=DataFormat.jsonl), str(tmp_path))
    assert "not valid UTF-8" in message and "iconv" in message


def test_parse_error_names_the_offending_line_and_the_settings_to_check(tmp_path: Path):
    # With quoting off, a stray tab in a text gives the row a third field.
    write(tmp_path / "train.tsv", "a\t0\nb\t1\nstray\ttab\t1\n" + tsv(balanced(10)))
    message = load_error("parse", sentences_cfg({"train": "train.tsv"}), str(tmp_path))
    assert "could not read its tsv files" in message
    assert "Expected 2 fields in line 3, saw 3" in message
    assert "task.parse.format" in message and ".delimiter" in message and ".quoting" in message


# --- 9: the shared data sets --------------------------------------------------------------------------------------


@pytest.mark.skipif(not (SHARED_DATA / "fdu-mtl").is_dir(), reason=f"FDU-MTL not found under {SHARED_DATA}")
def test_fdu_mtl_imdb_with_builtin_config_has_official_sizes_and_raw_quotes():
    cfg = yaml_task_cfg("fdu/imdb.yaml")
    assert (cfg.quoting, cfg.header, cfg.column_names, cfg.validation_size) == (False, False, ["label", "text"], 200)
    task = load_task("imdb", cfg, str(SHARED_DATA))
    assert task.sizes() == {"train": 1400, "validation": 200, "test": 400}
    assert task.labels == ["negative", "positive"]
    assert any('"' in t for t in texts(task, "train"))
    assert not any("\t" in t or "\n" in t for split in SPLITS for t in texts(task, split))
    assert set(labels(task, "validation")) == {0, 1}


@pytest.mark.skipif(
    not (SHARED_DATA / "sentiment-sentences").is_dir(), reason=f"UCI sentences not found under {SHARED_DATA}"
)
def test_uci_yelp_sentences_with_builtin_config_carve_700_100_200():
    cfg = yaml_task_cfg("sentences/yelp.yaml")
    assert (cfg.validation_size, cfg.test_size, cfg.quoting) == (0.1, 0.2, False)
    task = load_task("yelp", cfg, str(SHARED_DATA))
    assert task.sizes() == {"train": 700, "validation": 100, "test": 200}
    assert task.labels == ["negative", "positive"]
    assert Counter(labels(task, "test")) == {0: 100, 1: 100}
