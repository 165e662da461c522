"""`mtl export`: every task type and sharing scheme that exports, both task markers, checked against
the mtl model itself.

Four tiny runs (hard, partial, adapters, MMoE) hold a token-classification, a classification, a
multi-label and a regression task between them, with prefix and embedding markers, a sentence-pair
task, tail and head+tail truncation. Each case is exported with format=auto and loaded in ONE
subprocess that never imports mtl_cli (transformers' AutoTokenizer + AutoModelForTokenClassification,
onnxruntime), whose logits on texts the exporter never saw (padded, one past max_length) must give
the same label on every example as `mtl predict logits=true precision=fp32`, and logits within
1e-4 (hf) / 1e-3 (onnx). The bad-input cases run the CLI in this process: one line, exit 2, the run
directory unchanged, nothing written.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import run_without_mtl, tiny_run, write
from tests.test_bad_input import assert_one_line_error, tree_digest

HF_TOLERANCE, ONNX_TOLERANCE = 1e-4, 1e-3

# The runs: sharing overrides and task markers. round_robin: every task trains (an adapters task whose
# LoRA never got a step would make the merge trivially right).
RUNS = {
    "hard": [
        "task=[ner,demo/restaurants,stars,topics,lm]",
        "task.ner.task_marker=prefix",
        "task.restaurants.task_marker=prefix",
        "task.restaurants.truncation=head+tail",
        "task.stars.task_marker=embedding",
        "task.topics.truncation=tail",
    ],
    "partial": [
        "task=[ner,pairs]",
        "sharing=partial",
        "sharing.shared_layers=1",
        "task.ner.task_marker=embedding",
        "task.pairs.task_marker=prefix",
    ],
    "adapters": [
        "task=[ner,topics]",
        "sharing=adapters",
        "task.ner.task_marker=embedding",
        "task.topics.task_marker=prefix",
    ],
    "mmoe": [
        "task=[ner,demo/restaurants]",
        "sharing=mmoe",
        "task.ner.task_marker=prefix",
        "task.restaurants.task_marker=embedding",
    ],
}
COMMON = ["mixing=round_robin"]

# (run, task) -> the formats format=auto must write.
CASES = {
    ("hard", "ner"): ["hf", "onnx"],
    ("hard", "restaurants"): ["onnx"],
    ("hard", "stars"): ["onnx"],
    ("hard", "topics"): ["onnx"],
    ("partial", "ner"): ["hf", "onnx"],
    ("partial", "pairs"): ["onnx"],
    ("adapters", "ner"): ["hf", "onnx"],
    ("adapters", "topics"): ["onnx"],
    ("mmoe", "ner"): ["onnx"],
    ("mmoe", "restaurants"): ["onnx"],
}
TYPES = {"ner": "token_classification", "restaurants": "classification", "stars": "regression",
         "topics": "multilabel", "pairs": "regression"}  # fmt: skip

# What the exported models are compared on: not the exporter's own probes; padded in one batch; the
# last one is longer than every task's max_length (ner/topics/pairs 32, restaurants 128).
LONG = " ".join(["a", "rather", "long", "text", "about", "sports", "and", "John", "in", "Paris"] * 15)
TEXTS = [
    "John loves Paris",
    "Mary visits Berlin often today and John stays",
    "the item number 3 was great",
    "awful",
    LONG,
]
PAIRS = ["it was fine", "Berlin", "great indeed", "the item number 9 was awful and late", "short"]


# --- the tiny runs -----------------------------------------------------------------------------


def write_tasks(root: Path) -> Path:
    """A config dir with a NER, a regression pair, a multi-label and an MLM task on tiny local data."""
    data, conf = root / "data", root / "conf" / "task"
    words = ["John", "loves", "Paris", "and", "Mary", "visits", "Berlin", "often", "today"]
    tags = ["B-person", "O", "B-location", "O", "B-person", "O", "B-location", "O", "O"]
    sentences = ["".join(f"{words[(i + j) % 9]}\t{tags[(i + j) % 9]}\n" for j in range(3 + i % 6)) for i in range(30)]
    write(data / "ner.conll", "\n".join(sentences))
    rows = [
        (f"the item number {i} was {'great' if i % 2 else 'awful'}", f"review {i % 5}", 1 + 4 * (i % 2))
        for i in range(40)
    ]
    write(data / "pairs.tsv", "text\ttext2\tlabel\n" + "".join(f"{a}\t{b}\t{y}\n" for a, b, y in rows))
    write(data / "stars.tsv", "text\tlabel\n" + "".join(f"{a}\t{y}\n" for a, _, y in rows))
    topics = ["sports", "politics", "tech"]
    records = [
        {"text": f"a text about {topics[i % 3]} {i}", "label": topics[i % 3 : i % 3 + 1 + i % 2]} for i in range(40)
    ]
    write(data / "topics.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    write(data / "lm.txt", "".join(f"some unlabelled text number {i} about things\n" for i in range(40)))
    carve = "validation_size: 8\ntest_size: 8\nmax_length: 32\n"
    for name, body in {
        "ner": f"type: token_classification\nformat: conll\nfiles: {{train: {data / 'ner.conll'}}}\n",
        "pairs": f"type: regression\nformat: tsv\ntext_pair_column: text2\nfiles: {{train: {data / 'pairs.tsv'}}}\n",
        "stars": f"type: regression\nformat: tsv\nfiles: {{train: {data / 'stars.tsv'}}}\n",
        "topics": f"type: multilabel\nformat: jsonl\nfiles: {{train: {data / 'topics.jsonl'}}}\n",
        "lm": f"type: mlm\nformat: text\nfiles: {{train: {data / 'lm.txt'}}}\n",
    }.items():
        write(conf / f"{name}.yaml", f"# @package task.{name}\n{body}{carve}")
    return root / "conf"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def runs(workdir: Path) -> dict[str, Path]:
    conf = write_tasks(workdir)
    return {
        name: Path(tiny_run(workdir / "runs" / name, *COMMON, *overrides, config_dir=conf)["run_dir"])
        for name, overrides in RUNS.items()
    }


# --- reference logits: mtl predict ---------------------------------------------------------------


def write_input(folder: Path) -> Path:
    return write(
        folder / "input.jsonl",
        "".join(json.dumps({"text": t, "text2": p}) + "\n" for t, p in zip(TEXTS, PAIRS, strict=True)),
    )


def predictions(run: Path, tasks: list[str], folder: Path) -> list[dict]:
    """`mtl predict RUN input=... logits=true precision=fp32`'s records: per example and task its "logits"
    (sequence tasks: num_labels floats, regression one; token tasks: per word, its first piece's, or
    None past max_length) and what mtl predicts from them."""
    from mtl_cli.predict import predict_run

    out = folder / "predictions.jsonl"
    with contextlib.redirect_stderr(io.StringIO()):
        predict_run(
            str(run), str(write_input(folder)), tasks=tasks, out=str(out), logits=True, precision="fp32", overwrite=True
        )
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


# --- loading the exports without mtl ---------------------------------------------------------------

LOADER = r"""
import json, sys
import numpy as np
import onnxruntime
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

def first_pieces(logits, enc, i):
    out, seen = [], set()
    for position, word in enumerate(enc.word_ids(i)):
        if word is not None and word not in seen:
            seen.add(word)
            out.append(logits[i, position].tolist())
    return out

results = {}
for job in json.load(open(sys.argv[1])):
    folder = job["dir"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = [job["texts"]] + ([job["pairs"]] if job["pairs"] else [])
    enc = tokenizer(*texts, padding=True, truncation=True, return_tensors="np")
    if job["format"] == "onnx":
        session = onnxruntime.InferenceSession(folder + "/model.onnx", providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        logits = session.run(["logits"], {k: v.astype(np.int64) for k, v in enc.items() if k in names})[0]
    else:
        model = AutoModelForTokenClassification.from_pretrained(folder).eval()
        with torch.inference_mode():
            logits = model(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.numpy()
    out = {"logits": [first_pieces(logits, enc, i) for i in range(len(job["texts"]))] if job["token"] else logits.tolist()}
    if job["format"] == "hf":
        tagger = pipeline("token-classification", model=folder, aggregation_strategy="first")
        out["pipeline"] = [[{"type": e["entity_group"], "start": int(e["start"]), "end": int(e["end"])} for e in tagger(t)]
                           for t in job["texts"]]
    results[job["key"]] = out
assert "mtl_cli" not in sys.modules, "an export must load without mtl"
print(json.dumps(results))
"""


def load_without_mtl(jobs: list[dict], folder: Path) -> dict:
    return run_without_mtl(LOADER, jobs, folder)


@pytest.fixture(scope="module")
def exported(runs: dict[str, Path], workdir: Path) -> dict:
    """Every case exported (format=auto), the exports' logits from a subprocess without mtl, and mtl predict's."""
    from mtl_cli.export import export_task

    out: dict[str, Any] = {"summary": {}, "log": {}, "predicted": {}}
    jobs = []
    for (run, task), _ in CASES.items():
        folder = workdir / "exports" / f"{run}-{task}"
        log = io.StringIO()
        with contextlib.redirect_stderr(log), contextlib.redirect_stdout(io.StringIO()):
            out["summary"][run, task] = summary = export_task(str(runs[run]), task, str(folder))
        out["log"][run, task] = log.getvalue()
        pairs = PAIRS if task == "pairs" else None
        for fmt in summary["formats"]:
            jobs.append({"key": f"{run}-{task}-{fmt}", "dir": str(folder), "format": fmt, "token": TYPES[task] == "token_classification",
                         "texts": TEXTS, "pairs": pairs})  # fmt: skip
    for run in RUNS:
        tasks = [task for r, task in CASES if r == run]
        folder = workdir / "predict" / run
        folder.mkdir(parents=True)
        out["predicted"][run] = predictions(runs[run], tasks, folder)
    out["loaded"] = load_without_mtl(jobs, workdir)
    return out


# --- the exports reproduce the mtl model ----------------------------------------------------------


def labels_of(task_type: str, logits: list) -> Any:
    """What mtl predicts from one example's logits (regression: nothing discrete)."""
    if task_type == "classification":
        return int(np.argmax(logits))
    if task_type == "multilabel":
        return [x > 0 for x in logits]  # sigmoid > 0.5
    if task_type == "token_classification":
        return [int(np.argmax(w)) for w in logits]
    return None


def comparable(run: str, task: str, i: int) -> bool:
    # head+tail truncation: the exported tokenizer keeps the head of over-long texts (the card says so).
    return not (task == "restaurants" and run == "hard" and TEXTS[i] is LONG)


def test_auto_writes_hf_and_onnx_where_hf_fits_else_onnx(exported: dict) -> None:
    assert {case: exported["summary"][case]["formats"] for case in CASES} == CASES


EXPORTS = [(run, task, fmt) for (run, task), formats in CASES.items() for fmt in formats]


@pytest.mark.parametrize(("run", "task", "fmt"), EXPORTS, ids=["-".join(e) for e in EXPORTS])
def test_export_gives_the_mtl_models_outputs(exported: dict, run: str, task: str, fmt: str) -> None:
    task_type, tolerance = TYPES[task], HF_TOLERANCE if fmt == "hf" else ONNX_TOLERANCE
    want = [record[task]["logits"] for record in exported["predicted"][run]]
    got = exported["loaded"][f"{run}-{task}-{fmt}"]["logits"]
    assert len(got) == len(want) == len(TEXTS)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if not comparable(run, task, i):
            continue
        if task_type == "token_classification":
            # predict: None for a word past max_length pieces; the export's tokenizer cuts at the same word.
            kept = [x for x in w if x is not None]
            assert len(g) == len(kept), (i, len(g), len(kept))
            w = kept
        assert labels_of(task_type, g) == labels_of(task_type, w), (i, g, w)
        assert np.abs(np.asarray(g) - np.asarray(w)).max() <= tolerance, (i, g, w)


def test_token_classification_pipeline_tags_as_mtl_predict(exported: dict) -> None:
    """transformers' pipeline("token-classification", aggregation_strategy="first") on the hf export
    finds the entities `mtl predict` finds (same types, same character spans)."""
    records = exported["predicted"]["hard"]
    entities = exported["loaded"]["hard-ner-hf"]["pipeline"]
    for i, record in enumerate(records[:4]):  # the long one is cut at max_length pieces by both
        want = [{"type": e["type"], "start": e["start"], "end": e["end"]} for e in record["ner"]["entities"]]
        assert entities[i] == want, (TEXTS[i], entities[i], want)


def test_export_folder_config_tokenizer_and_card(exported: dict, workdir: Path) -> None:
    folder = workdir / "exports"
    ner = json.loads((folder / "hard-ner" / "config.json").read_text())
    assert ner["architectures"] == ["BertForTokenClassification"]
    assert ner["problem_type"] == "single_label_classification"
    assert ner["label2id"] == {label: int(i) for i, label in ner["id2label"].items()} and "O" in ner["label2id"]
    assert {p.name for p in (folder / "hard-ner").iterdir()} == {
        "config.json", "model.safetensors", "model.onnx", "README.md", "tokenizer.json", "tokenizer_config.json"
    }  # fmt: skip
    assert (
        json.loads((folder / "hard-topics" / "config.json").read_text())["problem_type"] == "multi_label_classification"
    )
    stars = json.loads((folder / "hard-stars" / "config.json").read_text())
    assert stars["problem_type"] == "regression" and stars["id2label"] == {"0": "stars"}
    assert not (folder / "hard-stars" / "model.safetensors").exists()
    # prefix marker: a plain fast tokenizer, which keeps the marker template when loaded.
    tokenizer = json.loads((folder / "hard-ner" / "tokenizer_config.json").read_text())
    assert tokenizer["tokenizer_class"] == "PreTrainedTokenizerFast" and tokenizer["model_max_length"] == 32
    assert json.loads((folder / "hard-topics" / "tokenizer_config.json").read_text())["truncation_side"] == "left"
    card = (folder / "hard-ner" / "README.md").read_text()
    for part in ("# ner", "token_classification", "`B-person`", "sharing: hard", "`lm` (mlm)", "checkpoint: `best`",
                 "## Test metrics", "| f1 |", 'aggregation_strategy="first"', "onnxruntime", "[TASK=ner]"):  # fmt: skip
        assert part in card, part
    restaurants = (folder / "hard-restaurants" / "README.md").read_text()
    assert "head+tail" in restaurants and "softmax" in restaurants
    assert "sigmoid" in (folder / "hard-topics" / "README.md").read_text()
    assert "pairs = [" in (folder / "partial-pairs" / "README.md").read_text()
    assert "LoRA" in (folder / "adapters-ner" / "README.md").read_text()
    umask = os.umask(0)
    os.umask(umask)
    # transformers writes model.safetensors owner-only; the export gives every file the usual mode.
    mode = 0o666 & ~umask
    assert {p.stat().st_mode & 0o777 for p in (folder / "partial-ner").iterdir()} == {mode}


def test_auto_says_why_it_writes_onnx_only(exported: dict) -> None:
    assert (
        "writing ONNX only" in exported["log"]["hard", "topics"]
        and "pools its tokens" in exported["log"]["hard", "topics"]
    )
    assert "sharing=mmoe" in exported["log"]["mmoe", "ner"]
    assert "head+tail" in exported["log"]["hard", "restaurants"]
    assert exported["log"]["hard", "ner"] == ""


def trained_tensors(run: Path, part: str) -> list[float]:
    """The largest |value| of each tensor of the run's best checkpoint whose name holds `part`."""
    from safetensors import safe_open

    with safe_open(str(run / "checkpoints" / "best" / "model.safetensors"), "pt") as f:
        return [float(f.get_tensor(k).abs().max()) for k in f.keys() if part in k]  # noqa: SIM118 (not a dict)


@pytest.mark.parametrize("run", ["hard", "partial", "adapters", "mmoe"])
def test_the_runs_trained_what_the_export_must_carry_over(runs: dict[str, Path], run: str) -> None:
    """Both start at zero: the cases prove the embedding marker's fold and the LoRA merge only if the
    task vectors and the ner adapter moved away from it."""
    assert all(v > 0 for v in trained_tensors(runs[run], "task_embeddings"))
    if run == "adapters":
        assert max(trained_tensors(runs[run], "lora_B.task_ner")) > 0


# --- the output folder: overwrite, failures ---------------------------------------------------------


def test_overwrite_replaces_an_earlier_export_only(mtl, runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "exp"
    first = mtl("export", str(runs["mmoe"]), "task=restaurants", f"out={out}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (out / "stale.txt").write_text("from before")
    again = mtl(
        "export", str(runs["mmoe"]), "task=restaurants", f"out={out}", "overwrite=true", "format=onnx", cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr
    assert not (out / "stale.txt").exists() and (out / "model.onnx").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]  # no temporary or old folder beside it
    mine = tmp_path / "mine"
    write(mine / "notes.txt", "keep me")
    refused = mtl("export", str(runs["mmoe"]), "task=restaurants", f"out={mine}", "overwrite=true", cwd=tmp_path)
    assert_one_line_error(refused, "not an mtl export")
    assert (mine / "notes.txt").read_text() == "keep me"


def test_a_failed_write_is_one_line_and_leaves_the_old_export(
    mtl, runs: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    from mtl_cli import export

    out = tmp_path / "exp"
    assert mtl("export", str(runs["mmoe"]), "task=restaurants", f"out={out}", cwd=tmp_path).returncode == 0
    before = tree_digest(out)

    def full_disk(*args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "export_onnx", full_disk)
    proc = mtl(
        "export", str(runs["mmoe"]), "task=restaurants", f"out={out}", "overwrite=true", "format=onnx", cwd=tmp_path
    )
    assert_one_line_error(proc, "No space left on device")
    assert tree_digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]


def test_an_onnx_graph_that_differs_is_an_error_not_an_export(
    mtl, runs: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    from mtl_cli import export

    monkeypatch.setattr(export, "ONNX_TOLERANCE", -1.0)  # no graph can pass: as if it computed other logits
    proc = mtl("export", str(runs["hard"]), "task=stars", f"out={tmp_path / 'exp'}", "format=onnx", cwd=tmp_path)
    assert_one_line_error(proc, "the ONNX graph (onnxruntime) gives other logits than the mtl model")
    assert list(tmp_path.iterdir()) == []


# --- bad input ------------------------------------------------------------------------------------------

BAD = {
    "unknown task": ("hard", ["task=nope"], "never trained task(s) ['nope']"),
    "mlm task": ("hard", ["task=lm"], "masked-LM task, an auxiliary task"),
    "hf on classification": ("hard", ["task=restaurants", "format=hf"], "pools its tokens"),
    "both on multilabel": ("adapters", ["task=topics", "format=both"], "use format=onnx"),
    "hf on mmoe": ("mmoe", ["task=ner", "format=hf"], "sharing=mmoe puts experts and a gate"),
    "out exists": ("hard", ["task=ner", "out={tmp}/full"], "exists and is not empty; pass overwrite=true"),
    "out inside the run": ("hard", ["task=ner", "out={run}/export"], "is inside the run directory"),
    "out inside a checkpoint": (
        "hard",
        ["task=ner", "out={run}/checkpoints/best/x", "overwrite=true"],
        "inside the run directory",
    ),
    "out holds the run": ("hard", ["task=ner", "out={run}/..", "overwrite=true"], "holds the run"),
    "unknown format": ("hard", ["task=ner", "format=tflite"], "format must be one of"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line(mtl, runs: dict[str, Path], tmp_path: Path, case: str) -> None:
    run_name, args, message = BAD[case]
    run = runs[run_name]
    write(tmp_path / "full" / "something.txt", "x")
    args = [a.format(tmp=tmp_path, run=run) for a in args]
    if not any(a.startswith("out=") for a in args):
        args.append(f"out={tmp_path / 'exp'}")
    before, outside = tree_digest(run.parent), sorted(tmp_path.iterdir())
    proc = mtl("export", str(run), *args, cwd=tmp_path)
    assert_one_line_error(proc, message)
    assert tree_digest(run.parent) == before
    assert sorted(tmp_path.iterdir()) == outside


def test_a_run_without_checkpoints_is_one_line(mtl, runs: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "bare"
    shutil.copytree(runs["hard"], run, ignore=shutil.ignore_patterns("checkpoints"))
    (run / "checkpoints").mkdir()
    before = tree_digest(run)
    proc = mtl("export", str(run), "task=ner", f"out={tmp_path / 'exp'}", cwd=tmp_path)
    assert_one_line_error(proc, "has no checkpoint yet")
    assert tree_digest(run) == before and not (tmp_path / "exp").exists()


@pytest.mark.slow
def test_inference_benchmark_measures_every_method(runs: dict[str, Path], tmp_path: Path) -> None:
    """benchmarks/predict_speed.py end to end on a tiny run: mtl predict, the hf pipeline and onnxruntime
    each label the same texts, and the report holds their rates and ratios (checked for being there,
    not for speed)."""
    from tests.conftest import REPO

    texts = write(tmp_path / "texts.txt", "".join(f"{t}\t1\n" for t in TEXTS))
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "predict_speed.py"), str(runs["hard"]), "--task", "ner",
         "--texts", str(texts), "--n", "6", "--batch-size", "4", "--repeats", "1", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["examples"] == min(6, len(TEXTS)) and report["task_type"] == "token_classification"
    assert set(report["examples_per_second"]) == {"mtl_predict", "hf_pipeline", "onnxruntime"}
    assert all(v > 0 for v in report["examples_per_second"].values())
    assert set(report["ratios"]) == {"mtl_over_hf_pipeline", "mtl_over_onnxruntime"}
