"""type: seq2seq: parallel files, splits carved by source sentence, a warm-started decoder trained
next to other tasks, generation (greedy and beam, KV cache) scored with chrF/BLEU, mtl eval."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import SHARED_DATA, needs_shared_data, tiny_encoder, tiny_run

WORDS = ["eins", "zwei", "drei", "vier", "fuenf", "sechs", "sieben", "acht"]
ENGLISH = ["one", "two", "three", "four", "five", "six", "seven", "eight"]


def parallel_files(folder: Path, n: int = 80) -> Path:
    """n German/English pairs of number words; every 10th source repeated with another reference."""
    src, tgt = [], []
    for i in range(n):
        a, b = i % 8, (i // 8) % 8
        src.append(f"{WORDS[a]} und {WORDS[b]}")
        tgt.append(f"{ENGLISH[a]} and {ENGLISH[b]}" if i % 10 else f"{ENGLISH[a]} plus {ENGLISH[b]}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "numbers.de").write_text("\n".join(src) + "\n")
    (folder / "numbers.en").write_text("\n".join(tgt) + "\n")
    return folder / "numbers"


def numbers_task(conf: Path, data: Path, name: str = "numbers", **extra: object) -> Path:
    """conf/task/<name>.yaml for the number pairs in `data`; returns the config folder (--config-dir)."""
    stem = parallel_files(data)
    settings = {
        "type": "seq2seq", "format": "parallel", "files": {"train": str(stem)}, "source_language": "de",
        "target_language": "en", "validation_size": 16, "test_size": 16, "max_new_tokens": 8, **extra,
    }  # fmt: skip
    (conf / "task").mkdir(parents=True, exist_ok=True)
    (conf / "task" / f"{name}.yaml").write_text(f"# @package task.{name}\n" + json.dumps(settings) + "\n")
    return conf


def test_splits_are_carved_by_source_sentence(tmp_path: Path) -> None:
    from mtl_cli.compose import compose_config
    from mtl_cli.tasks import load_tasks
    from mtl_cli.validation import to_typed

    conf = numbers_task(tmp_path / "conf", tmp_path, validation_size=10, test_size=10)
    (tmp_path / "numbers.de").write_text("\n".join(["ein satz"] * 30 + [f"satz {i}" for i in range(50)]) + "\n")
    (tmp_path / "numbers.en").write_text(
        "\n".join([f"a sentence {i}" for i in range(30)] + [f"s {i}" for i in range(50)]) + "\n"
    )
    cfg = to_typed(compose_config(["task=[numbers]"], str(conf)))
    task = load_tasks(cfg)["numbers"]
    sources = {split: set(task.splits[split]["text"]) for split in ("train", "validation", "test")}
    assert not sources["train"] & sources["test"] and not sources["train"] & sources["validation"]
    assert sum(len(task.splits[s]) for s in sources) == 80


def test_misaligned_parallel_files_are_one_line(tmp_path: Path, capsys) -> None:
    from mtl_cli.cli import main

    conf = numbers_task(tmp_path / "conf", tmp_path / "data")
    (tmp_path / "data" / "numbers.en").write_text("one\ntwo\n")
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config-dir", str(conf), "experiment=smoke", "task=[numbers]", f"runs_root={tmp_path}"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "not line-aligned (80 source lines, 2 target lines" in err
    assert len(err.strip().splitlines()) == 1


def test_translation_trains_next_to_classification_and_eval_reproduces_it(tmp_path: Path) -> None:
    conf = numbers_task(tmp_path / "conf", tmp_path / "data")
    run = tiny_run(tmp_path / "runs", "task=[demo/restaurants,numbers]", config_dir=conf)
    out = Path(run["run_dir"])
    results = json.loads((out / "results.json").read_text())
    assert set(results["numbers"]) == {"chrf", "bleu", "copy_chrf"} and "accuracy" in results["restaurants"]
    assert all(0 <= v <= 1 for v in results["numbers"].values())
    assert results["numbers"]["copy_chrf"] > 0  # the copied sources share letters with the references
    log = (out / "train.log").read_text()
    assert "numbers example | source: " in log and " | hypothesis: " in log
    from mtl_cli.cli import main

    main(["eval", str(out)])
    evaluated = json.loads(next((out / "eval").glob("best_test*.json")).read_text())
    for metric, value in results["numbers"].items():
        assert evaluated["numbers"][metric] == pytest.approx(value, abs=1e-12)


def test_tasks_naming_one_decoder_share_it_and_reload(tmp_path: Path) -> None:
    conf = numbers_task(tmp_path / "conf", tmp_path / "a", "first", decoder="en")
    numbers_task(conf, tmp_path / "b", "second", decoder="en")
    run = tiny_run(
        tmp_path / "runs", "task=[first,second]", "trainer.max_steps=4", "trainer.eval_every=4", config_dir=conf
    )
    from mtl_cli.trained import load_trained

    trained = load_trained(run["run_dir"])
    heads = trained.model.heads
    assert heads["first"].decoder is heads["second"].decoder
    counts = json.loads((Path(run["run_dir"]) / "parameters.json").read_text())
    decoder = sum(
        p.numel()
        for p in heads["first"].decoder.parameters()
        if id(p) not in {id(q) for q in trained.model.trunk.parameters()}
    )
    assert counts["per_task"]["first"] + counts["per_task"]["second"] <= decoder + 1000  # counted once, not twice


def test_cached_greedy_and_beam_generation() -> None:
    """The KV-cached greedy search gives the step-by-step argmax decoding; beams return as many rows."""
    from mtl_cli.task_types.seq2seq import Seq2SeqHead, warm_started_decoder

    encoder, tokenizer = tiny_encoder()
    head = Seq2SeqHead(warm_started_decoder(encoder)).eval()
    head.tokenizer, head.max_new_tokens = tokenizer, 6
    batch = tokenizer(["eins und zwei", "drei"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = encoder(**batch).last_hidden_state
        greedy = head.generate(hidden, batch["attention_mask"])
        ids = torch.full((2, 1), tokenizer.cls_token_id)
        for _ in range(greedy.shape[1]):
            logits = head.decoder(
                input_ids=ids, encoder_hidden_states=hidden, encoder_attention_mask=batch["attention_mask"]
            ).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], 1)
        for row in range(2):  # equal up to the end token (after it, generate pads)
            seq = greedy[row].tolist()
            end = seq.index(tokenizer.sep_token_id) + 1 if tokenizer.sep_token_id in seq else len(seq)
            assert seq[:end] == ids[row, 1 : end + 1].tolist()
        head.num_beams = 3
        assert head.generate(hidden, batch["attention_mask"]).shape[0] == 2


@pytest.mark.slow
@needs_shared_data
def test_minilm_learns_german_to_english(tmp_path: Path) -> None:
    """A short MiniLM run on Tatoeba de->en: the validation loss falls between two evaluations, and the
    generated text is scored, on Tatoeba's test and on FLORES-200 devtest (the README's longer run
    measures how far it gets)."""
    run = tiny_run(
        tmp_path, "encoder=minilm", "task=[translation/de_en]", f"data_root={SHARED_DATA}", "trainer.max_steps=60",
        "trainer.eval_every=30", "trainer.batch_size=16", "trainer.threads=null", "task.de_en.max_eval_examples=64",
        "task.de_en.max_new_tokens=24",
    )  # fmt: skip
    records = [json.loads(line) for line in (Path(run["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["task"] == "de_en"]
    assert len(losses) == 2 and losses[1] < losses[0], losses
    assert 0 < run["results"]["de_en"]["chrf"] <= 1
    import csv

    (row,) = [r for r in csv.DictReader((Path(run["run_dir"]) / "metrics.csv").open()) if r["task"] == "de_en"]
    assert 0 < float(row["test_flores_chrf"]) <= 1 and float(row["test_flores_copy_chrf"]) > 0  # FLORES-200 beside


def test_predict_writes_the_generated_text_and_scores_a_labelled_input(tmp_path: Path, capsys) -> None:
    from mtl_cli.cli import main

    conf = numbers_task(tmp_path / "conf", tmp_path / "data")
    run = tiny_run(tmp_path / "runs", "task=[numbers]", "trainer.max_steps=4", "trainer.eval_every=4", config_dir=conf)
    (tmp_path / "new.csv").write_text("text,target\neins und zwei,one and two\ndrei,three\n")
    capsys.readouterr()
    main(["predict", run["run_dir"], f"input={tmp_path / 'new.csv'}"])
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in records] == ["eins und zwei", "drei"]
    assert all(isinstance(r["numbers"]["output"], str) for r in records)
    assert "numbers (2 labelled examples): chrf " in err


def test_an_extra_test_split_is_scored_beside_test_and_eval_reproduces_it(tmp_path: Path, capsys) -> None:
    """files.test_ood: scored at the end in metrics.md/.csv (test_ood_* columns, the tasks that have it,
    no average), not in results.json and not used to pick checkpoints; `mtl eval split=test_ood` gives
    the same figures; the generated examples of each evaluation are in metrics.jsonl."""
    import csv

    from mtl_cli.cli import main

    ood = parallel_files(tmp_path / "ood", n=24)
    conf = numbers_task(tmp_path / "conf", tmp_path / "data", files={"train": str(tmp_path / "data" / "numbers"),
                                                                      "test_ood": str(ood)})  # fmt: skip
    run = tiny_run(tmp_path / "runs", "task=[demo/restaurants,numbers]", config_dir=conf)
    out = Path(run["run_dir"])
    rows = {r["task"]: r for r in csv.DictReader((out / "metrics.csv").open())}
    assert 0 <= float(rows["numbers"]["test_ood_chrf"]) <= 1 and rows["numbers"]["test_ood_copy_chrf"]
    assert rows["restaurants"]["test_ood_chrf"] == "" and rows["average"]["test_ood_chrf"] == ""
    assert "test_ood_accuracy" not in rows["numbers"]  # restaurants has no test_ood: no columns of its metrics
    assert "test_ood_main" not in rows["numbers"]  # nor of the average over tasks
    assert set(json.loads((out / "results.json").read_text())) == {"restaurants", "numbers", "average"}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    numbers = [r for r in records if r["task"] == "numbers"]
    assert numbers and all(set(r["examples"][0]) == {"source", "reference", "hypothesis"} for r in numbers)
    assert not any("examples" in r for r in records if r["task"] == "restaurants")
    capsys.readouterr()
    main(["eval", str(out), "split=test_ood"])
    evaluated = json.loads((out / "eval" / "best_test_ood.json").read_text())
    assert set(evaluated) == {"numbers", "average"}
    for metric in ("chrf", "bleu", "copy_chrf"):
        assert evaluated["numbers"][metric] == pytest.approx(float(rows["numbers"][f"test_ood_{metric}"]), abs=1e-4)
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(out), "split=test_other"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "no task of this run has a test_other split; its extra test splits: test_ood" in err


def test_a_split_name_that_is_not_train_validation_test_or_test_name_is_one_line(tmp_path: Path, capsys) -> None:
    from mtl_cli.cli import main

    conf = numbers_task(tmp_path / "conf", tmp_path / "data", files={"train": str(tmp_path / "data" / "numbers"),
                                                                      "dev": str(tmp_path / "data" / "numbers")})  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config-dir", str(conf), "experiment=smoke", "task=[numbers]", f"runs_root={tmp_path}"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "unknown split(s) ['dev']" in err and "test_<name>" in err
    assert len(err.strip().splitlines()) == 1


def test_data_check_counts_repeated_pairs_not_repeated_sources_as_duplicates(tmp_path: Path) -> None:
    """A source repeated with another reference is one more reference; the same pair twice is a duplicate."""
    from mtl_cli.compose import compose_config
    from mtl_cli.datacheck import check_tasks
    from mtl_cli.tasks import load_tasks
    from mtl_cli.validation import to_typed

    conf = numbers_task(tmp_path / "conf", tmp_path, validation_size=2, test_size=2)
    (tmp_path / "numbers.de").write_text("ein satz\nein satz\nzwei\nzwei\ndrei\nvier\nfuenf\nsechs\n")
    (tmp_path / "numbers.en").write_text("a sentence\none sentence\ntwo\ntwo\nthree\nfour\nfive\nsix\n")
    cfg = to_typed(compose_config(["task=[numbers]"], str(conf)))
    tasks = load_tasks(cfg)
    found = {split: s["duplicates"] for split, s in check_tasks(tasks)["tasks"]["numbers"]["splits"].items()}
    assert sum(d["count"] for d in found.values()) == 2  # "zwei -> two" twice; "ein satz" has two references
    assert [e["text"] for d in found.values() for e in d["examples"]] == ["zwei"]


def test_transfer_baseline_key_hashes_both_sides_of_parallel_files(tmp_path: Path) -> None:
    from mtl_cli.compose import compose_config
    from mtl_cli.transfer import data_digests
    from mtl_cli.validation import to_typed

    conf = numbers_task(tmp_path / "conf", tmp_path / "data")
    cfg = to_typed(compose_config(["task=[numbers]"], str(conf)))
    before = data_digests(cfg)["numbers"]
    assert set(before) == {"train.de", "train.en"}
    (tmp_path / "data" / "numbers.en").write_text((tmp_path / "data" / "numbers.en").read_text().replace("one", "1"))
    after = data_digests(cfg)["numbers"]
    assert after["train.en"] != before["train.en"] and after["train.de"] == before["train.de"]


def tiny_encoder_decoder(folder: Path, kind: str) -> Path:
    """A randomly initialised T5 or BART config of a few thousand parameters with MiniLM's tokenizer,
    saved as a model folder (what `encoder=hf encoder.name_or_path=t5-small` downloads, shrunk)."""
    from transformers import BartConfig, T5Config

    _, tokenizer = tiny_encoder()
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.sep_token_id}
    config: Any  # the start id reaches both configs through PretrainedConfig's **kwargs
    if kind == "t5":
        config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                          **{"decoder_start_token_id": tokenizer.pad_token_id, **ids})  # fmt: skip
    else:
        config = BartConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                            decoder_ffn_dim=64, max_position_embeddings=128, bos_token_id=tokenizer.cls_token_id,
                            decoder_start_token_id=tokenizer.sep_token_id, forced_eos_token_id=None, **ids)  # fmt: skip
    tokenizer.save_pretrained(folder)
    config.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_a_pretrained_encoder_decoder_shares_its_encoder_and_translates_with_its_decoder(
    tmp_path: Path, kind: str
) -> None:
    """encoder=hf on an encoder-decoder: the trunk is its encoder (the classification task runs on it
    too), the seq2seq task trains and generates with its own decoder, and mtl eval reproduces the run."""
    from mtl_cli.cli import main
    from mtl_cli.trained import load_trained

    model_dir = tiny_encoder_decoder(tmp_path / kind, kind)
    conf = numbers_task(tmp_path / "conf", tmp_path / "data")
    run = tiny_run(
        tmp_path / "runs", "task=[demo/restaurants,numbers]", "encoder=hf", f"encoder.name_or_path={model_dir}",
        "encoder.random_init=true", config_dir=conf,
    )  # fmt: skip
    out = Path(run["run_dir"])
    results = json.loads((out / "results.json").read_text())
    assert set(results["numbers"]) == {"chrf", "bleu", "copy_chrf"} and "accuracy" in results["restaurants"]
    trained = load_trained(str(out))
    head, encoder = trained.model.heads["numbers"], trained.model.trunk.encoder
    assert head.pretrained and type(encoder).__name__ in ("T5Stack", "BartEncoder")
    assert not trained.model.takes_token_types  # no segment embeddings: MiniLM's tokenizer's ids are not passed
    # The encoder is the trunk's only: cut out of the head's model (T5: decoder.encoder, BART: decoder.model.encoder)
    assert not any(n.startswith(("decoder.encoder.", "decoder.model.encoder.")) for n, _ in head.named_parameters())
    with pytest.raises(RuntimeError, match="mtl's trunk"):
        head.decoder.get_encoder()(input_ids=torch.zeros(1, 2, dtype=torch.long))
    main(["eval", str(out)])
    evaluated = json.loads(next((out / "eval").glob("best_test*.json")).read_text())
    for metric, value in results["numbers"].items():
        assert evaluated["numbers"][metric] == pytest.approx(value, abs=1e-12)


def test_pretrained_encoder_decoder_targets_start_with_its_decoder_start_and_gradients_reach_the_trunk(
    tmp_path: Path,
) -> None:
    from mtl_cli.compose import compose_typed
    from mtl_cli.encoders import load_encoder
    from mtl_cli.model import build_model
    from mtl_cli.task_types import seq2seq

    model_dir = tiny_encoder_decoder(tmp_path / "t5", "t5")
    cfg = compose_typed(["encoder=hf", f"encoder.name_or_path={model_dir}", "encoder.random_init=true"])
    encoder, tokenizer = load_encoder(cfg.encoder)
    task_cfg = compose_typed(["task=[demo/restaurants]"]).task["restaurants"]
    task_cfg.type, task_cfg.max_target_length = "seq2seq", 16
    enc = seq2seq.encode({"text": ["eins"], "target": ["one and two"]}, tokenizer, task_cfg, None)
    target = enc["target_ids"][0]
    assert target[0] == tokenizer.pad_token_id and target[-1] == tokenizer.sep_token_id  # T5: start = pad
    model = build_model(encoder, {"a": task_cfg, "b": task_cfg}, {"a": None, "b": None}, cfg.sharing)
    assert model.heads["a"].decoder is not model.heads["b"].decoder  # private decoders: no name shared
    batch = seq2seq.collate([{"input_ids": enc["input_ids"][0], "target_ids": target}], tokenizer.pad_token_id, None)
    model.train()
    seq2seq.loss(model("b", batch), batch).backward()
    first_layer = next(p for n, p in model.trunk.encoder.named_parameters() if "block.0" in n)
    assert first_layer.grad is not None and first_layer.grad.abs().sum() > 0


def test_an_encoder_decoder_from_the_unreachable_hub_is_one_line(tmp_path: Path) -> None:
    from tests.conftest import run_mtl

    proc = run_mtl("train", "encoder=hf", "encoder.name_or_path=t5-small", "task=[demo/restaurants]", cwd=tmp_path,
                   env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"})  # fmt: skip
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "'t5-small' must come from the Hugging Face Hub, which is unreachable" in proc.stderr


def test_a_translation_run_stopped_and_resumed_ends_as_an_uninterrupted_one(tmp_path: Path, mtl, monkeypatch) -> None:
    """SIGINT between two evaluations of a translation + classification run (temperature mixing,
    uncertainty weighting, early stopping, the affinity probe), then resume: results, metrics.jsonl
    (the generated examples too), affinity.jsonl and both checkpoints are bit for bit those of the run left alone."""
    import signal

    from mtl_cli import train as train_module
    from tests.conftest import TINY_RUN, run_dirs
    from tests.test_resume import assert_same_run, signal_at

    conf = numbers_task(tmp_path / "conf", tmp_path / "data")
    args = [
        "--config-dir", str(conf), *TINY_RUN, "task=[demo/restaurants,numbers]", "trainer.max_steps=12",
        "trainer.eval_every=4", "mixing=temperature", "loss_weighting=uncertainty",
        "trainer.early_stopping_patience=2", "trainer.affinity_every=4",
    ]  # fmt: skip
    (tmp_path / "alone").mkdir()
    (tmp_path / "stopped").mkdir()
    assert mtl("train", *args, cwd=tmp_path / "alone").returncode == 0
    (reference,) = run_dirs(tmp_path / "alone" / "runs")
    with monkeypatch.context() as patched:
        patched.setattr(train_module, "build_callbacks", signal_at(6, signal.SIGINT))
        assert mtl("train", *args, cwd=tmp_path / "stopped").returncode == 130
    (run,) = run_dirs(tmp_path / "stopped" / "runs")
    assert not (run / "results.json").exists()
    proc = mtl("train", f"resume={run}", cwd=tmp_path / "stopped")
    assert proc.returncode == 0, proc.stderr
    assert any("examples" in json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())
    assert_same_run(reference, run)
