"""`mtl export` of a seq2seq (translation) task: a transformers EncoderDecoderModel that loads and
generates without mtl as mtl's own head does.

One tiny run trains two translation tasks: `first` with a prefix marker (greedy), `second` with an
embedding marker and beam search. Each is exported with format=auto and loaded in ONE subprocess
that never imports mtl_cli (AutoTokenizer + EncoderDecoderModel.from_pretrained, generate with the
saved generation config), whose texts for sources the exporter never saw (padded, one past
max_length) must be what `mtl predict` writes. A decoder trained for a few steps hardly reads its
source yet (it writes the same words for every one), so the teacher-forced logits, which do depend
on the source, are compared with the mtl model's too. The refusals and failures run the CLI in this
process: one line, exit 2, nothing written.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_without_mtl, tiny_run, write
from tests.test_bad_input import assert_one_line_error, tree_digest
from tests.test_seq2seq import numbers_task

TASKS = ("first", "second")
MAX_NEW_TOKENS = 8  # numbers_task's
# Not the exporter's probes; capitals and accents (an uncased tokenizer folds them), and one source
# past the task's max_length (128 tokens), which both mtl and the exported tokenizer cut at its head.
TEXTS = ["eins und zwei", "Drei und VIER und fünf", "acht", " ".join(["sieben und sechs"] * 50)]
TARGETS = ["one and two", "three and four and five", "eight", "seven"]  # teacher-forced, padded too
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export_seq2seq")


@pytest.fixture(scope="module")
def run(workdir: Path) -> Path:
    conf = numbers_task(workdir / "conf", workdir / "first", "first", task_marker="prefix")
    numbers_task(conf, workdir / "second", "second", task_marker="embedding", num_beams=2)
    trained = tiny_run(
        workdir / "runs", "task=[first,second]", "trainer.max_steps=4", "trainer.eval_every=4", config_dir=conf
    )
    return Path(trained["run_dir"])


LOADER = r"""
import contextlib, io, json, re, sys
import numpy as np
import torch
from transformers import AutoTokenizer, EncoderDecoderModel

request = json.load(open(sys.argv[1]))
results = {}
for task, folder in request["exports"].items():
    tok = AutoTokenizer.from_pretrained(folder)
    model, info = EncoderDecoderModel.from_pretrained(folder, output_loading_info=True)
    model.eval()
    enc = tok(request["texts"], padding=True, truncation=True, return_tensors="pt")
    decoder_inputs = {k: torch.tensor(v) for k, v in request["decoder"].items()}
    with torch.inference_mode():
        ids = model.generate(**enc)  # everything from the folder's generation_config.json
        np.save(f"{task}-logits.npy", model(**enc, **decoder_inputs).logits.numpy())
    decoder, generation = model.decoder, model.generation_config
    results[task] = {
        "outputs": tok.batch_decode(ids, skip_special_tokens=True),
        "fresh": sorted(str(k) for key in ("missing_keys", "unexpected_keys", "mismatched_keys") for k in info[key]),
        "tied": decoder.get_output_embeddings().weight.data_ptr() == decoder.get_input_embeddings().weight.data_ptr(),
        "input_ids": tok(request["texts"][0])["input_ids"],
        "generation": {k: getattr(generation, k) for k in ("decoder_start_token_id", "eos_token_id", "pad_token_id",
                                                           "max_new_tokens", "num_beams")},
        "special": {"cls": tok.cls_token_id, "sep": tok.sep_token_id, "pad": tok.pad_token_id},
    }
    snippet = re.search(r"```python\n(.*?)```", open(folder + "/README.md").read(), re.S).group(1)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(snippet, {})  # the model card's code, as a user copies it
    results[task]["snippet"] = printed.getvalue()
assert "mtl_cli" not in sys.modules, "an export must load without mtl"
print(json.dumps(results))
"""


def load_without_mtl(exports: dict[str, str], decoder: dict, folder: Path) -> dict:
    return run_without_mtl(LOADER, {"exports": exports, "texts": TEXTS, "decoder": decoder}, folder)


def predicted(run: Path, folder: Path) -> list[dict]:
    """`mtl predict RUN input=...`'s records for TEXTS (per task: {"output": generated text})."""
    from mtl_cli.predict import predict_run

    source = write(folder / "input.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    out = folder / "predictions.jsonl"
    with contextlib.redirect_stderr(io.StringIO()):
        predict_run(str(run), str(source), tasks=list(TASKS), out=str(out), precision="fp32")
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def mtl_logits(run: Path) -> tuple[dict[str, Any], dict[str, list]]:
    """The mtl model's teacher-forced logits for TEXTS -> TARGETS per task, and the decoder inputs (the
    targets as mtl encodes them, shared by the tasks: one tokenizer, no marker on the target side)."""
    import numpy as np
    import torch

    from mtl_cli import task_types
    from mtl_cli.tokenization import marker_token
    from mtl_cli.trained import load_trained

    trained = load_trained(str(run), device="cpu")
    seq2seq, tokenizer = task_types.get("seq2seq"), trained.tokenizer
    logits, decoder = {}, {}
    for task in TASKS:
        cfg = trained.cfg.task[task]
        marker = tokenizer.convert_tokens_to_ids(marker_token(task)) if cfg.task_marker == "prefix" else None
        columns = seq2seq.encode({"text": TEXTS, "target": TARGETS}, tokenizer, cfg, None, marker)
        rows = [{key: values[i] for key, values in columns.items()} for i in range(len(TEXTS))]
        batch = seq2seq.collate(rows, tokenizer.pad_token_id, np.random.default_rng(0))
        with torch.inference_mode():
            logits[task] = trained.model(task, batch)["logits"].numpy()
        decoder = {key: batch[key].tolist() for key in ("decoder_input_ids", "decoder_attention_mask")}
    return logits, decoder


@pytest.fixture(scope="module")
def exported(run: Path, workdir: Path) -> dict[str, Any]:
    from mtl_cli.export import export_task

    summaries, exports = {}, {}
    for task in TASKS:
        folder = workdir / "exports" / task
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            summaries[task] = export_task(str(run), task, str(folder))
        exports[task] = str(folder)
    predict_dir = workdir / "predict"
    predict_dir.mkdir()
    logits, decoder = mtl_logits(run)
    return {
        "summary": summaries,
        "predicted": predicted(run, predict_dir),
        "logits": logits,
        "decoder_mask": decoder["decoder_attention_mask"],
        "loaded": load_without_mtl(exports, decoder, workdir),
    }


@pytest.mark.parametrize("task", TASKS)
def test_the_export_generates_what_mtl_predict_writes(exported: dict, task: str) -> None:
    want = [record[task]["output"] for record in exported["predicted"]]
    got = exported["loaded"][task]["outputs"]
    assert got == want
    assert any(want), want  # not only empty texts: the comparison is of generated words
    assert exported["summary"][task]["formats"] == ["hf"]
    assert exported["summary"][task]["max_diff"]["hf"] <= TOLERANCE


@pytest.mark.parametrize("task", TASKS)
def test_the_export_reads_each_source_as_mtl_does(exported: dict, workdir: Path, task: str) -> None:
    """Teacher-forced logits of the export (its own tokenizer: marker, truncation) equal mtl's on the
    real target positions, and the source moves them far more than the tolerance: a source read
    otherwise (no marker, no task vector, other pieces) would show."""
    import numpy as np

    want = exported["logits"][task]
    got = np.load(workdir / f"{task}-logits.npy")
    real = np.asarray(exported["decoder_mask"], dtype=bool)
    assert got.shape == want.shape
    assert np.abs(got - want)[real].max() <= TOLERANCE
    first = 0  # every target has its first position: compare the sources there
    spread = min(np.abs(want[0, first] - want[i, first]).max() for i in range(1, len(TEXTS)))
    assert spread > 10 * TOLERANCE, spread


def test_the_run_trained_the_task_vector_the_export_must_fold(run: Path) -> None:
    """The embedding marker starts at zero: `second` proves the fold only if its vector moved."""
    from safetensors import safe_open

    with safe_open(str(run / "checkpoints" / "best" / "model.safetensors"), "pt") as f:
        vectors = [f.get_tensor(k) for k in f.keys() if "task_embeddings" in k]  # noqa: SIM118 (not a dict)
    assert vectors and all(float(v.abs().max()) > 0 for v in vectors)


@pytest.mark.parametrize("task", TASKS)
def test_the_export_reloads_every_weight_with_the_tasks_generation_settings(
    exported: dict, workdir: Path, task: str
) -> None:
    loaded = exported["loaded"][task]
    assert loaded["fresh"] == []  # no weight newly initialised (the pooler mtl drops is saved too)
    assert loaded["tied"]  # the decoder's output layer is its word embeddings again
    special = loaded["special"]
    assert loaded["generation"] == {
        "decoder_start_token_id": special["cls"],
        "eos_token_id": special["sep"],
        "pad_token_id": special["pad"],
        "max_new_tokens": MAX_NEW_TOKENS,
        "num_beams": 2 if task == "second" else 1,
    }
    config = json.loads((workdir / "exports" / task / "config.json").read_text())
    assert config["architectures"] == ["EncoderDecoderModel"] and config["model_type"] == "encoder-decoder"
    assert (config["decoder_start_token_id"], config["eos_token_id"]) == (special["cls"], special["sep"])
    assert config["mtl_export"]["task"] == task and config["mtl_export"]["task_type"] == "seq2seq"
    ids = loaded["input_ids"]
    assert ids[0] == special["cls"] and ids[-1] == special["sep"]
    marker = json.loads((workdir / "exports" / task / "tokenizer.json").read_text())["added_tokens"]
    marker_ids = [t["id"] for t in marker if t["content"] == "[TASK=first]"]
    # prefix: the exported tokenizer puts the marker after [CLS]; embedding: no marker token.
    assert (ids[1] in marker_ids) == (task == "first")


def test_the_model_card_shows_how_to_generate_and_the_test_scores(exported: dict, run: Path, workdir: Path) -> None:
    results = json.loads((run / "results.json").read_text())
    for task in TASKS:
        card = (workdir / "exports" / task / "README.md").read_text()
        for part in (
            f"# {task}", "EncoderDecoderModel.from_pretrained(", "AutoTokenizer.from_pretrained(",
            f"max_new_tokens={MAX_NEW_TOKENS})", "skip_special_tokens=True", "## Test metrics", "uncased",
            "English word pieces", "accents stripped", "output is lower-cased", "sharing: hard (one shared encoder)\n",
        ):  # fmt: skip
            assert part in card, (task, part)
        for metric in ("chrf", "bleu", "copy_chrf"):
            assert f"| {metric} | {results[task][metric]:.4f} |" in card, (task, metric)
        assert "pooling" not in card and "AutoModelForTokenClassification" not in card
        printed = ast.literal_eval(exported["loaded"][task]["snippet"].strip())  # what the card's code prints
        assert isinstance(printed, list) and len(printed) == 2 and all(isinstance(t, str) for t in printed)
    assert "beam search, 2 beams" in (workdir / "exports" / "second" / "README.md").read_text()
    assert "(greedy)" in (workdir / "exports" / "first" / "README.md").read_text()


@pytest.mark.parametrize("fmt", ["onnx", "both"])
def test_onnx_is_refused_in_one_line(mtl, run: Path, tmp_path: Path, fmt: str) -> None:
    before = tree_digest(run)
    proc = mtl("export", str(run), "task=first", f"out={tmp_path / 'exp'}", f"format={fmt}", cwd=tmp_path)
    assert_one_line_error(proc, "use format=hf (or auto): a transformers EncoderDecoderModel")
    assert tree_digest(run) == before and list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_replaced_only_when_it_is_an_earlier_export(mtl, run: Path, tmp_path: Path) -> None:
    out = tmp_path / "exp"
    first = mtl("export", str(run), "task=first", f"out={out}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (out / "stale.txt").write_text("from before")
    refused = mtl("export", str(run), "task=first", f"out={out}", cwd=tmp_path)
    assert_one_line_error(refused, "exists and is not empty; pass overwrite=true")
    assert (out / "stale.txt").is_file()
    again = mtl("export", str(run), "task=second", f"out={out}", "overwrite=true", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert json.loads((out / "config.json").read_text())["mtl_export"]["task"] == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]  # no temporary or old folder beside it
    mine = tmp_path / "mine"
    write(mine / "notes.txt", "keep me")
    proc = mtl("export", str(run), "task=first", f"out={mine}", "overwrite=true", cwd=tmp_path)
    assert_one_line_error(proc, "not an mtl export")
    assert (mine / "notes.txt").read_text() == "keep me"


def test_an_export_without_the_task_vector_is_an_error_not_an_export(
    mtl, run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The logits check catches an encoder that reads the source otherwise than mtl's (here: the
    embedding marker not folded in)."""
    from mtl_cli import export

    monkeypatch.setattr(export, "task_vector", lambda job: None)
    proc = mtl("export", str(run), "task=second", f"out={tmp_path / 'exp'}", cwd=tmp_path)
    assert_one_line_error(proc, "the exported EncoderDecoderModel gives other logits than the mtl model")
    assert list(tmp_path.iterdir()) == []


def test_other_generated_tokens_are_an_error_not_an_export(
    mtl, run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The generation check compares token ids: mtl's head made to generate other ones fails the export."""
    from mtl_cli.task_types.seq2seq import Seq2SeqHead

    generate = Seq2SeqHead.generate
    monkeypatch.setattr(Seq2SeqHead, "generate", lambda self, hidden, mask: generate(self, hidden, mask) + 1)
    proc = mtl("export", str(run), "task=first", f"out={tmp_path / 'exp'}", cwd=tmp_path)
    assert_one_line_error(proc, "generates other tokens than the mtl model")
    assert list(tmp_path.iterdir()) == []


PRETRAINED_LOADER = r"""
import json, sys
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
folder, texts = json.load(open(sys.argv[1]))
tok = AutoTokenizer.from_pretrained(folder)
model, info = AutoModelForSeq2SeqLM.from_pretrained(folder, output_loading_info=True)
ids = model.eval().generate(**tok(texts, padding=True, truncation=True, return_tensors="pt"))
fresh = sorted(str(k) for key in ("missing_keys", "unexpected_keys", "mismatched_keys") for k in info[key])
assert "mtl_cli" not in sys.modules, "an export must load without mtl"
print(json.dumps({"class": type(model).__name__, "fresh": fresh, "outputs": tok.batch_decode(ids, skip_special_tokens=True)}))
"""


def pretrained_run(tmp_path: Path, kind: str, marker: str) -> str:
    """A 4-step numbers run on a tiny random T5 or BART (encoder=hf), the task with `marker`."""
    from tests.test_seq2seq import tiny_encoder_decoder

    model_dir = tiny_encoder_decoder(tmp_path / kind, kind)
    conf = numbers_task(tmp_path / "conf", tmp_path / "data", task_marker=marker)
    return tiny_run(
        tmp_path / "runs", "task=[numbers]", "encoder=hf", f"encoder.name_or_path={model_dir}",
        "encoder.random_init=true", "trainer.max_steps=4", "trainer.eval_every=4", config_dir=conf,
    )["run_dir"]  # fmt: skip


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_a_pretrained_encoder_decoder_task_exports_as_its_own_class(mtl, tmp_path: Path, kind: str) -> None:
    """encoder=hf on T5 / BART: the export is that model (the trained shared encoder put back into it),
    which AutoModelForSeq2SeqLM loads without mtl and whose generate writes what mtl predict writes."""
    from mtl_cli.predict import predict_run

    run = pretrained_run(tmp_path, kind, "prefix")
    proc = mtl("export", run, "task=numbers", f"out={tmp_path / 'exp'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    card = (tmp_path / "exp" / "README.md").read_text()
    assert "AutoModelForSeq2SeqLM.from_pretrained(" in card and "EncoderDecoderModel" not in card
    got = run_without_mtl(PRETRAINED_LOADER, [str(tmp_path / "exp"), TEXTS], tmp_path)
    assert got["class"] == {"t5": "T5ForConditionalGeneration", "bart": "BartForConditionalGeneration"}[kind]
    assert got["fresh"] == []
    source = write(tmp_path / "input.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    with contextlib.redirect_stderr(io.StringIO()):
        predict_run(run, str(source), out=str(tmp_path / "pred.jsonl"), precision="fp32")
    want = [json.loads(line)["numbers"]["output"] for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert got["outputs"] == want


def test_a_pretrained_encoder_decoder_task_with_an_embedding_marker_is_refused_in_one_line(mtl, tmp_path: Path) -> None:
    run = pretrained_run(tmp_path, "t5", "embedding")
    proc = mtl("export", run, "task=numbers", f"out={tmp_path / 'exp'}", cwd=tmp_path)
    assert_one_line_error(proc, "its encoder and decoder share one embedding matrix")
    assert not (tmp_path / "exp").exists()
