"""Token classification (NER): the CoNLL reader, tag ids, word-piece alignment, batching, loss, seqeval metrics,
user-facing errors, a tiny end-to-end run, and the real WNUT-17 files (skipped when absent)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from mtl_cli.compose import compose_typed
from mtl_cli.config import DataFormat, TaskConfig
from mtl_cli.errors import MtlError
from mtl_cli.task_types import token_classification as tc
from mtl_cli.tasks import load_task
from tests.conftest import SHARED_DATA, tiny_encoder, tiny_run, write

WNUT_TYPES = ("corporation", "creative-work", "group", "location", "person", "product")

# Three sentences; the first separator is a lone TAB (as in WNUT-17's train.conll), then two blank lines.
TRAIN = (
    "Empire\tB-location\nState\tI-location\nBuilding\tI-location\nis\tO\nunbelievably\tO\ntall\tO\n"
    "\t\n"
    "John\tB-person\nloves\tO\nParis\tB-location\n"
    "\n\n"
    "ok\tO\n"
)
DEV = "Paris\tB-location\nis\tO\nnice\tO\n\nJohn\tB-person\nSmith\tI-person\n"


def ner_cfg(files: dict[str, str], **overrides) -> TaskConfig:
    return TaskConfig(type="token_classification", format=DataFormat.conll, files=files, **overrides)


@pytest.fixture
def tokenizer():
    return tiny_encoder()[1]


def encode_one(tokenizer, words: list[str], tags: list[int], marker_id=None, **cfg) -> dict:
    out = tc.encode({"tokens": [words], "tags": [tags]}, tokenizer, TaskConfig(**cfg), None, marker_id)
    return {k: v[0] for k, v in out.items()}


# --- the CoNLL reader ------------------------------------------------------------------------


def test_reader_splits_sentences_on_blank_and_lone_tab_lines(tmp_path: Path) -> None:
    from mtl_cli.conll import load_conll

    raw = load_conll("ner", {"train": str(write(tmp_path / "train.conll", TRAIN))})
    ds = raw["train"]
    assert ds.column_names == ["tokens", "tags"] and len(ds) == 3
    assert ds[0]["tokens"] == ["Empire", "State", "Building", "is", "unbelievably", "tall"]
    assert ds[0]["tags"] == ["B-location", "I-location", "I-location", "O", "O", "O"]
    assert ds[1] == {"tokens": ["John", "loves", "Paris"], "tags": ["B-person", "O", "B-location"]}
    assert ds[2] == {"tokens": ["ok"], "tags": ["O"]}


def test_reader_handles_crlf_bom_docstart_and_space_separated_columns(tmp_path: Path) -> None:
    from mtl_cli.conll import load_conll

    tabbed = "\ufeffa\tO\r\nb\tB-x\r\n\r\nc\tI-x\r\n\ufeff\r\n"  # BOM at the start and on a line of its own
    spaced = "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n"
    raw = load_conll(
        "ner", {"train": str(write(tmp_path / "a.conll", tabbed)), "test": str(write(tmp_path / "b.conll", spaced))}
    )
    assert raw["train"]["tokens"][:] == [["a", "b"], ["c"]]
    assert raw["train"]["tags"][:] == [["O", "B-x"], ["I-x"]]
    assert raw["test"]["tokens"][:] == [["EU", "rejects"], ["Peter"]]
    assert raw["test"]["tags"][:] == [["B-ORG", "O"], ["B-PER"]]


def test_reader_cache_follows_the_file(tmp_path: Path) -> None:
    from mtl_cli.conll import load_conll

    path = write(tmp_path / "train.conll", "a\tO\n")
    assert load_conll("ner", {"train": str(path)})["train"]["tokens"][:] == [["a"]]
    write(path, "b\tO\n")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert load_conll("ner", {"train": str(path)})["train"]["tokens"][:] == [["b"]]


def test_bad_field_count_names_file_line_and_fix(tmp_path: Path) -> None:
    path = write(tmp_path / "train.conll", "a\tO\nb\tB-x\textra\n")
    with pytest.raises(MtlError) as err:
        load_task("ner", ner_cfg({"train": str(path)}), None)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("task 'ner': ") and str(path) in msg and "line 2" in msg and "fix that line" in msg


def test_single_column_file_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "train.conll", "words\n")
    with pytest.raises(MtlError, match=r"line 1: expected `token<TAB>tag`"):
        load_task("ner", ner_cfg({"train": str(path)}), None)


def test_non_utf8_file_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path / "train.conll", b"a\tO\n" + "caf\xe9\tO\n".encode("latin-1"))
    with pytest.raises(MtlError, match=r"not valid UTF-8 \(line 2.*iconv"):
        load_task("ner", ner_cfg({"train": str(path)}), None)


def test_reader_takes_another_encoding(tmp_path: Path) -> None:
    from mtl_cli.conll import load_conll

    path = write(tmp_path / "train.conll", "caf\xe9\tO\n".encode("cp1252"))
    with pytest.raises(MtlError, match=r"task 'ner': .*not valid UTF-8.*set task.ner.encoding"):
        load_conll("ner", {"train": str(path)})
    assert load_conll("ner", {"train": str(path)}, encoding="cp1252")["train"]["tokens"][:] == [["caf\xe9"]]


# --- tag ids ---------------------------------------------------------------------------------


def test_tags_become_ids_with_o_first(tmp_path: Path) -> None:
    path = str(write(tmp_path / "train.conll", TRAIN))
    task = load_task("ner", ner_cfg({"train": path, "validation": path, "test": path}), None)
    assert task.labels == ["O", "B-location", "B-person", "I-location"]  # "O" first, then sorted
    assert task.splits["train"][1]["tags"] == [2, 0, 1]
    assert task.splits["train"][1]["tokens"] == ["John", "loves", "Paris"]


def test_tag_outside_the_label_set_names_tag_split_and_sentence(tmp_path: Path) -> None:
    files = {"train": str(write(tmp_path / "train.conll", TRAIN)), "validation": str(write(tmp_path / "d.conll", DEV))}
    with pytest.raises(MtlError) as err:
        load_task("ner", ner_cfg(files), None)
    msg = str(err.value)  # I-person is only in dev: outside the tags inferred from train
    assert "tag 'I-person' (validation sentence 2) is not in the label set" in msg
    assert "task.ner.labels" in msg and "\n" not in msg


def test_label_map_and_explicit_labels(tmp_path: Path) -> None:
    files = {
        "train": str(write(tmp_path / "train.conll", TRAIN)),
        "validation": str(write(tmp_path / "d.conll", DEV)),
        "test": str(write(tmp_path / "t.conll", DEV)),
    }
    labels = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    label_map = {"B-location": "B-LOC", "I-location": "I-LOC", "B-person": "B-PER", "I-person": "I-PER"}
    task = load_task("ner", ner_cfg(files, labels=labels, label_map=label_map), None)
    assert task.labels == labels
    assert task.splits["validation"][1]["tags"] == [3, 4]
    assert task.splits["train"].features["tags"].feature.names == labels


def test_hub_style_classlabel_ints_map_through_their_names() -> None:
    import datasets

    names = ["O", "B-corporation", "I-corporation", "B-person"]
    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "tags": datasets.Sequence(datasets.ClassLabel(names=names)),
        }
    )
    ds = datasets.Dataset.from_dict(
        {"tokens": [["Acme", "Corp", "hires"], ["Bob"]], "tags": [[1, 2, 0], [3]]}, features
    )
    raw, labels = tc.prepare("wnut17", TaskConfig(type="token_classification"), datasets.DatasetDict({"train": ds}))
    assert labels == ["O", "B-corporation", "B-person", "I-corporation"]  # O first, the rest sorted
    assert raw["train"]["tags"][:] == [[1, 3, 0], [2]]


def test_words_and_tags_must_pair_up() -> None:
    import datasets

    ds = datasets.Dataset.from_dict({"tokens": [["a", "b"], ["c"]], "tags": [["O", "B-x"], ["O", "O"]]})
    with pytest.raises(MtlError, match=r"train sentence 2 has 1 words but 2 tags"):
        tc.prepare("ner", TaskConfig(type="token_classification"), datasets.DatasetDict({"train": ds}))


def test_a_single_training_tag_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "train.conll", "a\tO\nb\tO\n")
    with pytest.raises(MtlError, match="1 distinct tag"):
        load_task("ner", ner_cfg({"train": str(path)}), None)


# --- word pieces -----------------------------------------------------------------------------


def test_tag_goes_on_the_first_piece_of_each_word(tokenizer) -> None:
    words, tags = ["Empire", "unbelievably", "tall"], [1, 0, 2]
    enc = encode_one(tokenizer, words, tags)
    pieces = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    split = tokenizer.tokenize("unbelievably")
    assert len(split) > 1  # the word really is split into several pieces
    assert pieces[1:-1] == tokenizer.tokenize("Empire") + split + tokenizer.tokenize("tall")
    start = 1 + len(tokenizer.tokenize("Empire"))
    expected = [-100, 1, 0] + [-100] * (len(split) - 1) + [2, -100]
    assert len(tokenizer.tokenize("Empire")) == 1 and len(tokenizer.tokenize("tall")) == 1
    assert enc["labels"] == expected and len(enc["labels"]) == len(enc["input_ids"])
    assert enc["labels"][start] == 0 and all(x == -100 for x in enc["labels"][start + 1 : start + len(split)])


def test_task_marker_goes_after_cls_with_no_tag(tokenizer) -> None:
    plain = encode_one(tokenizer, ["John", "loves", "Paris"], [2, 0, 1])
    marked = encode_one(tokenizer, ["John", "loves", "Paris"], [2, 0, 1], marker_id=999)
    assert marked["input_ids"] == plain["input_ids"][:1] + [999] + plain["input_ids"][1:]
    assert marked["labels"] == [-100, -100] + plain["labels"][1:]


def test_long_sentences_are_cut_to_max_length(tokenizer) -> None:
    words = [f"word{i}" for i in range(40)]
    enc = encode_one(tokenizer, words, [i % 3 for i in range(40)], marker_id=999, max_length=16)
    assert len(enc["input_ids"]) == len(enc["labels"]) == 16
    kept = [x for x in enc["labels"] if x != -100]
    assert kept == [i % 3 for i in range(len(kept))] and 0 < len(kept) < 40


def test_a_word_with_no_pieces_keeps_its_tag(tokenizer) -> None:
    assert tokenizer("\ufe0f", add_special_tokens=False)["input_ids"] == []  # a lone emoji variation selector
    enc = encode_one(tokenizer, ["hi", "\ufe0f", "Bob"], [0, 1, 2])
    assert [x for x in enc["labels"] if x != -100] == [0, 1, 2]
    assert tokenizer.unk_token_id in enc["input_ids"]


def test_collate_pads_inputs_and_tags(tokenizer) -> None:
    rows = [encode_one(tokenizer, ["John", "loves", "Paris"], [2, 0, 1]), encode_one(tokenizer, ["ok"], [0])]
    batch = tc.collate(rows, tokenizer.pad_token_id, None)
    n = len(rows[0]["input_ids"])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, n)
    assert batch["labels"][1].tolist() == rows[1]["labels"] + [-100] * (n - len(rows[1]["labels"]))
    assert batch["input_ids"][1, len(rows[1]["input_ids"]) :].eq(tokenizer.pad_token_id).all()
    assert batch["attention_mask"][1].tolist() == [1] * len(rows[1]["input_ids"]) + [0] * (n - 3)


# --- head, loss, predictions, metrics --------------------------------------------------------


def test_head_scores_every_token() -> None:
    from mtl_cli.config import SharingConfig

    head = tc.build_head(8, ["O", "B-x", "I-x"], None, SharingConfig())
    out = head(torch.randn(2, 5, 8), {"attention_mask": torch.ones(2, 5, dtype=torch.long)})
    assert out.shape == (2, 5, 3)


def test_loss_ignores_untagged_positions() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3)
    labels = torch.tensor([[-100, 1, 2, -100], [-100, 0, -100, -100]])
    expected = torch.nn.functional.cross_entropy(logits[labels != -100], labels[labels != -100])
    assert tc.loss(logits, {"labels": labels}).item() == pytest.approx(expected.item())
    changed = logits.clone()
    changed[labels == -100] = 100.0  # whatever the head says there does not count
    assert tc.loss(changed, {"labels": labels}).item() == pytest.approx(expected.item())
    nothing = tc.loss(logits.requires_grad_(), {"labels": torch.full((2, 4), -100)})
    assert nothing.item() == 0.0 and torch.isfinite(nothing)
    nothing.backward()


def test_predict_keeps_only_tagged_positions() -> None:
    logits = torch.zeros(2, 4, 3)
    logits[0, 1, 1] = logits[0, 2, 2] = logits[1, 1, 0] = 1.0
    labels = torch.tensor([[-100, 1, 1, -100], [-100, 0, -100, -100]])
    preds, golds = tc.predict(logits, {"labels": labels})
    assert preds == [[1, 2], [0]] and golds == [[1, 1], [0]]


def test_entity_level_metrics_on_known_predictions() -> None:
    labels = ["O", "B-PER", "I-PER", "B-LOC", "B-ORG"]
    ids = {name: i for i, name in enumerate(labels)}

    def to_ids(sentences):
        return [[ids[t] for t in s] for s in sentences]

    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    # PER found; LOC missed; ORG predicted as LOC: 1 of 2 predicted entities right, 1 of 3 gold entities found.
    pred = [["B-PER", "I-PER", "O", "O"], ["B-LOC", "O"]]
    out = tc.metrics(to_ids(pred), to_ids(gold), labels, 0.0)
    assert out["precision"] == pytest.approx(1 / 2)
    assert out["recall"] == pytest.approx(1 / 3)
    assert out["f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    assert out["accuracy"] == pytest.approx(4 / 6)
    perfect = tc.metrics(to_ids(gold), to_ids(gold), labels, 0.0)
    assert perfect == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "accuracy": 1.0}
    # A partial span is not an entity: I-PER cut short counts as a miss.
    partial = tc.metrics(to_ids([["B-PER", "O", "O", "B-LOC"], ["B-ORG", "O"]]), to_ids(gold), labels, 0.0)
    assert partial["f1"] == pytest.approx(2 / 3) and partial["accuracy"] == pytest.approx(5 / 6)
    nothing = tc.metrics(to_ids([["O"] * 4, ["O", "O"]]), to_ids(gold), labels, 0.0)
    assert nothing["precision"] == nothing["recall"] == nothing["f1"] == 0.0


# --- end to end ------------------------------------------------------------------------------


def test_tiny_training_run_with_a_user_ner_task(tmp_path: Path) -> None:
    data, conf = tmp_path / "data", tmp_path / "conf" / "task"
    sentences = TRAIN + "\n" + DEV + "\n"
    write(data / "train.conll", sentences * 6)
    write(data / "dev.conll", sentences)
    write(data / "test.conll", sentences)
    write(
        conf / "ner.yaml",
        f"# @package task.ner\ntype: token_classification\nformat: conll\ndata_dir: {data}\n"
        "files: {train: train.conll, validation: dev.conll, test: test.conll}\nmax_length: 32\n",
    )
    overrides = ["task=[ner,demo/restaurants]", "trainer.max_steps=4", "trainer.eval_every=2"]
    out = tiny_run(tmp_path / "runs", *overrides, config_dir=tmp_path / "conf")
    results = json.loads((Path(out["run_dir"]) / "results.json").read_text())
    assert set(results) == {"ner", "restaurants", "average"}
    assert set(results["ner"]) == {"precision", "recall", "f1", "accuracy"}
    assert all(0.0 <= v <= 1.0 for v in results["ner"].values())
    assert "f1" in results["average"] and "macro_f1" in results["average"]
    labels = json.loads((Path(out["run_dir"]) / "checkpoints" / "best" / "labels.json").read_text())
    assert labels["ner"] == ["O", "B-location", "B-person", "I-location", "I-person"]


def test_hub_config_reads_wnut_17_columns() -> None:
    cfg = compose_typed(["task=hub/wnut_17"]).task["wnut17"]
    assert cfg.type == "token_classification" and cfg.source == "hub" and "wnut_17" in cfg.hub_name
    assert (cfg.tokens_column, cfg.tags_column) == ("tokens", "ner_tags")
    assert cfg.labels[0] == "O" and len(cfg.labels) == 13


@pytest.mark.skipif(not (SHARED_DATA / "wnut17").is_dir(), reason=f"WNUT-17 not found under {SHARED_DATA}")
def test_real_wnut17_files() -> None:
    cfg = compose_typed(["task=wnut17", f"data_root={SHARED_DATA}"])
    task = load_task("wnut17", cfg.task["wnut17"], cfg.data_root)
    # dev.conll holds 1,009 sentences (as on the Hub); it ends with a line holding a lone byte-order mark.
    assert task.sizes() == {"train": 3394, "validation": 1009, "test": 1287}
    assert task.labels is not None
    assert len(task.labels) == 13 and task.labels[0] == "O"
    assert set(task.labels) == {"O"} | {f"{p}-{t}" for t in WNUT_TYPES for p in "BI"}
    assert task.splits["train"][0]["tokens"][14:17] == ["Empire", "State", "Building"]
    names = task.splits["train"].features["tags"].feature.names
    assert [names[i] for i in task.splits["train"][0]["tags"][14:17]] == ["B-location", "I-location", "I-location"]
