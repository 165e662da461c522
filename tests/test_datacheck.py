"""Data checks: planted duplicates, leaks, empty, over-long and rare-class examples are found and counted exactly;
the rare-class share is each task's `min_class_share` (classes, multilabel labels, entity types)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtl_cli.compose import compose_typed
from mtl_cli.config import DataFormat, EncoderConfig, MtlConfig, TaskConfig
from mtl_cli.datacheck import check_tasks, print_report, report_markdown, report_warnings, run_data_check
from mtl_cli.errors import MtlError
from mtl_cli.tasks import load_task
from tests.conftest import tiny_encoder

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

LONG_TEXT = " ".join(f"word{i}" for i in range(40))  # far over 16 tokens
ALPHA_TRAIN_PLANTED = [
    ("The pasta was great", "pos"),  # exact duplicate, with conflicting labels
    ("The pasta was great", "neg"),
    ("Service was slow", "neg"),  # case/whitespace variant duplicate
    ("  service   WAS Slow ", "neg"),
    ("   ", "neg"),  # whitespace-only text
    ("a strange one-off remark", "rare"),  # 1 of 118 train examples: under 1%
    ("The soup arrived cold", "pos"),  # also in alpha/test (as a variant)
    ("Delivery took forever", "neg"),  # also in beta/test
]


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{text}\t{label}\n" for text, label in rows), encoding="utf-8")
    return path.name


def clean(prefix: str, n: int) -> list[tuple[str, str]]:
    return [(f"{prefix} {i}", "neg" if i % 2 else "pos") for i in range(n)]


def task_cfg(files: dict[str, str], labels: list[str]) -> TaskConfig:
    return TaskConfig(
        files=files,
        format=DataFormat.tsv,
        header=False,
        quoting=False,
        column_names=["text", "label"],
        labels=labels,
        max_length=16,
    )


def make_tasks(root: Path, planted: bool = True) -> dict:
    alpha_train = clean("alpha clean review", 110) + (ALPHA_TRAIN_PLANTED if planted else [])
    alpha_test = clean("alpha test review", 10) + ([("the soup  arrived COLD", "pos")] if planted else [])
    beta_val = clean("beta validation text", 6) + ([(LONG_TEXT, "pos")] if planted else [])
    beta_test = clean("beta test text", 6) + ([("Delivery took forever", "neg")] if planted else [])
    files = {
        "alpha": {
            "train": write_tsv(root / "alpha_train.tsv", alpha_train),
            "validation": write_tsv(root / "alpha_val.tsv", clean("alpha validation review", 10)),
            "test": write_tsv(root / "alpha_test.tsv", alpha_test),
        },
        "beta": {
            "train": write_tsv(root / "beta_train.tsv", clean("beta clean text", 20)),
            "validation": write_tsv(root / "beta_val.tsv", beta_val),
            "test": write_tsv(root / "beta_test.tsv", beta_test),
        },
    }
    labels = {"alpha": ["neg", "pos", "rare"] if planted else ["neg", "pos"], "beta": ["neg", "pos"]}
    return {name: task_cfg(files[name], labels[name]) for name in files}


def load(cfgs: dict, root: Path) -> dict:
    return {name: load_task(name, cfg, str(root)) for name, cfg in cfgs.items()}


@pytest.fixture
def tokenizer():
    return tiny_encoder()[1]


@pytest.fixture
def planted(tmp_path):
    return load(make_tasks(tmp_path), tmp_path)


def test_planted_problems_are_counted_exactly(planted, tokenizer):
    report = check_tasks(planted, tokenizer, full=True)
    alpha, beta = report["tasks"]["alpha"]["splits"], report["tasks"]["beta"]["splits"]

    assert {s: v["examples"] for s, v in alpha.items()} == {"train": 118, "validation": 10, "test": 11}
    assert alpha["train"]["label_distribution"] == {"kind": "classes", "counts": {"neg": 60, "pos": 57, "rare": 1}}
    assert alpha["train"]["empty"] == 1
    assert sum(v["empty"] for s in (alpha, beta) for v in s.values()) == 1

    dup = alpha["train"]["duplicates"]
    assert (dup["count"], dup["distinct"], dup["conflicting_labels"]) == (4, 2, 1)
    assert {e["text"] for e in dup["examples"]} == {"The pasta was great", "Service was slow"}
    assert all(e["occurrences"] == 2 for e in dup["examples"])
    assert sum(v["duplicates"]["count"] for s in (alpha, beta) for v in s.values()) == 4

    assert beta["validation"]["over_length"] == 1
    assert beta["validation"]["max_tokens"] > 16
    assert sum(v["over_length"] for s in (alpha, beta) for v in s.values()) == 1

    leakage = report["tasks"]["alpha"]["leakage"]
    assert leakage["test"] == {"count": 1, "examples": ["the soup  arrived COLD"]}
    assert leakage["validation"]["count"] == 0
    assert all(v["count"] == 0 for v in report["tasks"]["beta"]["leakage"].values())
    assert report["cross_task"] == [
        {"train_task": "alpha", "task": "beta", "split": "test", "count": 1, "examples": ["Delivery took forever"]}
    ]

    warnings = report_warnings(report)
    expected = [
        "alpha/train: 1 of 118 examples have empty texts",
        "alpha/train: 4 examples are duplicates (2 distinct texts, 1 with conflicting labels)",
        "alpha/test: 1 example also in alpha/train",
        "alpha/train: class 'rare' is in only 1 of 118 examples",
        "beta/validation: 1 of 7 examples (14.3%) are longer than max_length=16 tokens",
        "beta/test: 1 example also in alpha/train",
    ]
    assert len(warnings) == len(expected), warnings
    for start in expected:
        assert sum(w.startswith(start) for w in warnings) == 1, (start, warnings)


def test_clean_data_has_no_warnings(tmp_path, tokenizer, capsys):
    report = check_tasks(load(make_tasks(tmp_path, planted=False), tmp_path), tokenizer, full=True)
    assert report_warnings(report) == []
    assert report["cross_task"] == []
    print_report(report)
    assert "No data problems found" in capsys.readouterr().out


def test_quick_check_needs_no_tokenizer(planted, tokenizer):
    quick = check_tasks(planted, full=False)
    # A tokenizer passed to the quick check is not used.
    assert check_tasks(planted, tokenizer, full=False)["tokenizer"] is None
    assert quick["full"] is False and quick["tokenizer"] is None
    splits = quick["tasks"]["alpha"]["splits"]
    assert all(v["over_length"] is None for t in quick["tasks"].values() for v in t["splits"].values())
    assert splits["train"]["duplicates"]["count"] == 4
    assert splits["train"]["empty"] == 1
    assert quick["tasks"]["alpha"]["leakage"]["test"]["count"] == 1
    assert [(c["train_task"], c["task"], c["split"], c["count"]) for c in quick["cross_task"]] == [
        ("alpha", "beta", "test", 1)
    ]
    warnings = report_warnings(quick)
    assert len(warnings) == 5 and not any("longer than" in w for w in warnings)
    # The same findings as the full check, apart from the token counts.
    full = check_tasks(planted, tokenizer, full=True)
    for name in planted:
        for split, v in quick["tasks"][name]["splits"].items():
            w = full["tasks"][name]["splits"][split]
            assert {k: v[k] for k in ("examples", "label_distribution", "empty", "duplicates")} == {
                k: w[k] for k in ("examples", "label_distribution", "empty", "duplicates")
            }


def test_report_is_json_and_printable(planted, tokenizer, capsys):
    report = check_tasks(planted, tokenizer, full=True)
    assert json.loads(json.dumps(report)) == report
    print_report(report)
    out = capsys.readouterr().out
    assert "Data check" in out and "Leakage" in out and "alpha/train" in out
    assert out.count("warning:") == 6
    md = report_markdown(report)
    assert "| task | split |" in md and "## Leakage" in md and "beta/test: 1 example also in alpha/train" in md


def test_texts_with_markup_characters_print(tmp_path, capsys):
    root = tmp_path
    cfg = task_cfg(
        {
            "train": write_tsv(root / "t.tsv", clean("text", 20) + [("[/bold] [red]x", "pos")] * 2),
            "test": write_tsv(root / "s.tsv", clean("test", 4) + [("[/bold] [red]x", "pos")]),
        },
        ["neg", "pos"],
    )
    report = check_tasks(load({"m": cfg}, root), full=False)
    print_report(report)
    assert "[/bold] [red]x" in capsys.readouterr().out


def test_run_data_check_writes_json(tmp_path, capsys):
    cfgs = make_tasks(tmp_path)
    cfg = MtlConfig(task=cfgs, encoder=compose_typed(["encoder=tiny"]).encoder, data_root=str(tmp_path))
    out = tmp_path / "reports" / "data_check.json"
    report = run_data_check(cfg, out, full=True)
    assert json.loads(out.read_text(encoding="utf-8")) == report
    assert report["tokenizer"] and report["tasks"]["beta"]["splits"]["validation"]["over_length"] == 1
    assert "warning:" in capsys.readouterr().out
    quick = run_data_check(cfg, None, full=False)
    assert quick["tokenizer"] is None and quick["tasks"]["alpha"]["leakage"]["test"]["count"] == 1


def test_run_data_check_without_tokenizer_notes_it(tmp_path, capsys):
    empty_model = tmp_path / "empty-model"  # a local folder with no tokenizer files: fails fast, no network
    empty_model.mkdir()
    cfg = MtlConfig(
        task=make_tasks(tmp_path), encoder=EncoderConfig(name_or_path=str(empty_model)), data_root=str(tmp_path)
    )
    report = run_data_check(cfg, tmp_path / "data_check.json", full=True)
    assert report["tokenizer"] is None and report["full"] is True
    assert report["notes"] and report["notes"][0].startswith("over-long examples not counted")
    assert report["tasks"]["alpha"]["splits"]["train"]["duplicates"]["count"] == 4
    assert "note: over-long examples not counted" in capsys.readouterr().out


@pytest.mark.skipif(
    not (SHARED_DATA / "sentiment-sentences").is_dir(), reason=f"shared data not found at {SHARED_DATA}"
)
def test_uci_sentences(tokenizer):
    from mtl_cli.tasks import load_tasks

    cfg = compose_typed(["task=[sentences/yelp,sentences/imdb,sentences/amazon]", f"data_root={SHARED_DATA}"])
    report = check_tasks(load_tasks(cfg), tokenizer, full=True)
    assert json.loads(json.dumps(report)) == report
    assert set(report["tasks"]) == {"yelp", "imdb", "amazon"}
    for entry in report["tasks"].values():
        assert {s: v["examples"] for s, v in entry["splits"].items()} == {"train": 700, "validation": 100, "test": 200}
        assert sum(v["label_distribution"]["counts"]["positive"] for v in entry["splits"].values()) == 500
        assert all(v["empty"] == 0 and v["over_length"] == 0 for v in entry["splits"].values())
    # The UCI sentences repeat a few short phrases ("I love this place.", "Great phone!"), within and
    # across domains; the carved splits therefore leak a few examples.
    dups = {n: e["splits"]["train"]["duplicates"]["count"] for n, e in report["tasks"].items()}
    assert dups == {"yelp": 4, "imdb": 2, "amazon": 8}
    leaks = {n: e["leakage"]["test"]["count"] for n, e in report["tasks"].items()}
    assert leaks == {"yelp": 1, "imdb": 1, "amazon": 7}
    assert [(c["train_task"], c["task"], c["split"], c["count"]) for c in report["cross_task"]] == [
        ("imdb", "amazon", "test", 1)
    ]
    warnings = report_warnings(report)
    assert any(w.startswith("yelp/train: 4 examples are duplicates") for w in warnings)
    assert not any("longer than" in w or "empty" in w or "class '" in w for w in warnings)


def test_data_check_command_through_the_cli(tmp_path, mtl):
    """`mtl data check` as a user runs it: tasks from a --config-dir, report printed and written."""
    data, conf = tmp_path / "data", tmp_path / "conf" / "task"
    conf.mkdir(parents=True)
    for name, cfg in make_tasks(data).items():
        files = ", ".join(f"{split}: {file}" for split, file in cfg.files.items())
        conf.joinpath(f"{name}.yaml").write_text(
            f"# @package task.{name}\nfiles: {{{files}}}\ndata_dir: {data}\nformat: tsv\nheader: false\n"
            f"quoting: false\ncolumn_names: [text, label]\nlabels: {cfg.labels}\nmax_length: 16\n"
        )
    out = tmp_path / "report.json"
    args = [
        "data",
        "check",
        "--config-dir",
        str(tmp_path / "conf"),
        "task=alpha+beta",
        "encoder=tiny",
        "--out",
        str(out),
    ]
    proc = mtl(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["tasks"]["alpha"]["splits"]["train"]["duplicates"]["count"] == 4
    assert report["tasks"]["beta"]["splits"]["validation"]["over_length"] == 1
    assert any(e["train_task"] == "alpha" and e["task"] == "beta" for e in report["cross_task"])
    assert "alpha" in proc.stdout and "leak" in proc.stdout.lower()

    bad = mtl("data", "check", "task=nosuchtask", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown task 'nosuchtask'" in bad.stderr


# --- label imbalance: task.<name>.min_class_share ---------------------------------------------

RARE = "alpha/train: class 'rare' is in only 1 of 118 examples (0.8%, under task.alpha.min_class_share=0.02; "


def class_warnings(report: dict) -> list[str]:
    return [w for w in report_warnings(report) if "min_class_share" in w]


def test_rare_class_warning_names_the_task_class_share_count_and_override(planted):
    report = check_tasks(planted, full=False)
    assert report["tasks"]["alpha"]["min_class_share"] == 0.02  # the TaskConfig default
    assert class_warnings(report) == [RARE + "set it to 0 to silence this)"]


@pytest.mark.parametrize(("share", "expected"), [(None, []), (0.0, []), (0.005, []), (0.485, ["pos", "rare"])])
def test_min_class_share_is_the_tasks_own_threshold(tmp_path, share, expected):
    cfgs = make_tasks(tmp_path)
    cfgs["alpha"].min_class_share = share
    report = check_tasks(load(cfgs, tmp_path), full=False)
    assert report["tasks"]["alpha"]["min_class_share"] == (share or None)
    # pos: 57 of 118 = 48.3%; neg 60 of 118 = 50.8%; beta is 50/50 at the default.
    found = [w.split("'")[1] for w in class_warnings(report)]
    assert found == expected
    assert json.loads(json.dumps(report)) == report


@pytest.mark.parametrize("share", [-0.1, 1.0, 2.0])
def test_a_min_class_share_outside_0_1_is_a_one_line_error(tmp_path, share):
    cfgs = make_tasks(tmp_path)
    cfgs["beta"].min_class_share = share
    with pytest.raises(MtlError) as info:
        check_tasks(load(cfgs, tmp_path), full=False)
    assert "`task.beta.min_class_share` must be in [0, 1)" in str(info.value) and "\n" not in str(info.value)


def test_multilabel_labels_are_counted_per_label(tmp_path):
    rows = [(f"text {i}", "news" if i % 2 else "news,sports") for i in range(99)] + [("a rare one", "weather")]
    for name, part in (("train.tsv", rows), ("held_out.tsv", rows[:4])):
        lines = "".join(f"{text}\t{labels}\n" for text, labels in part)
        (tmp_path / name).write_text("text\tlabel\n" + lines, encoding="utf-8")
    files = {"train": "train.tsv", "validation": "held_out.tsv", "test": "held_out.tsv"}
    cfg = TaskConfig(type="multilabel", files=files, format=DataFormat.tsv)
    report = check_tasks(load({"topics": cfg}, tmp_path), full=False)
    counts = report["tasks"]["topics"]["splits"]["train"]["label_distribution"]["counts"]
    assert counts == {"news": 99, "sports": 50, "weather": 1}  # sports is in half the examples: no warning
    assert class_warnings(report) == [
        "topics/train: label 'weather' is in only 1 of 100 examples (1.0%, under "
        "task.topics.min_class_share=0.02; set it to 0 to silence this)"
    ]


def conll(sentences: list[list[tuple[str, str]]]) -> str:
    return "\n".join("".join(f"{w}\t{tag}\n" for w, tag in s) for s in sentences)


def test_token_classification_counts_entity_mentions_never_the_o_tag(tmp_path):
    # 60 person mentions (two tokens each: B- and I-), 40 location, 1 product; the O tag is most tokens.
    sentences = [[("John", "B-person"), ("Smith", "I-person"), ("said", "O"), ("so", "O")]] * 60
    sentences += [[("in", "O"), ("Paris", "B-location"), ("today", "O")]] * 40
    sentences += [[("my", "O"), ("iPhone", "B-product"), ("broke", "O")]]
    (tmp_path / "train.conll").write_text(conll(sentences), encoding="utf-8")
    (tmp_path / "dev.conll").write_text(conll(sentences[:3]), encoding="utf-8")
    files = {"train": "train.conll", "validation": "dev.conll", "test": "dev.conll"}
    cfg = TaskConfig(type="token_classification", format=DataFormat.conll, files=files)
    report = check_tasks(load({"ner": cfg}, tmp_path), full=False)
    dist = report["tasks"]["ner"]["splits"]["train"]["label_distribution"]
    assert dist["entities"] == {"location": 40, "person": 60, "product": 1}
    assert class_warnings(report) == [
        "ner/train: entity type 'product' has only 1 of 101 entity mentions (1.0%, under "
        "task.ner.min_class_share=0.02; set it to 0 to silence this)"
    ]


@pytest.mark.skipif(
    not (SHARED_DATA / "emotion").is_dir() or not (SHARED_DATA / "wnut17").is_dir(),
    reason=f"shared data not found at {SHARED_DATA}",
)
def test_the_default_share_is_below_every_class_of_the_shared_data():
    """The measurements behind TaskConfig.min_class_share = 0.02: emotion's rarest class (surprise)
    is 3.6% of its training labels and WNUT-17's rarest entity types 7.1% of its mentions, so the
    default warns on neither; a user who asks for more hears about them."""
    from mtl_cli.tasks import load_tasks

    cfg = compose_typed(["task=[emotion,wnut17]", f"data_root={SHARED_DATA}"])
    tasks = load_tasks(cfg)
    report = check_tasks(tasks, full=False)
    assert class_warnings(report) == []
    emotion = report["tasks"]["emotion"]["splits"]["train"]["label_distribution"]["counts"]
    assert min(emotion.values()) == emotion["surprise"] == 572 and sum(emotion.values()) == 16000
    assert report["tasks"]["wnut17"]["splits"]["train"]["label_distribution"]["entities"] == {
        "corporation": 221, "creative-work": 140, "group": 264, "location": 548, "person": 660, "product": 142,
    }  # fmt: skip
    tasks["emotion"].cfg.min_class_share, tasks["wnut17"].cfg.min_class_share = 0.05, 0.072
    warnings = class_warnings(check_tasks(tasks, full=False))
    assert [w.split(":")[0] + " " + w.split("'")[1] for w in warnings] == [
        "emotion/train surprise", "wnut17/train creative-work", "wnut17/train product",
    ]  # fmt: skip
    assert warnings[0].startswith("emotion/train: class 'surprise' is in only 572 of 16000 examples (3.6%")
