"""The masked-LM task type: masking statistics, the tied head, its loss and metrics, checkpoints, a tiny run."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtl_cli.batches import TaskBatches, eval_batches, pad_inputs
from mtl_cli.checkpoints import load_weights, save_checkpoint
from mtl_cli.compose import compose_typed
from mtl_cli.config import CONF_DIR, TaskConfig, TaskMarker
from mtl_cli.encoders import encoder_from_checkpoint
from mtl_cli.model import build_model
from mtl_cli.task_types import mlm
from mtl_cli.tokenization import add_task_markers, marker_token
from tests.conftest import SHARED_DATA, tiny_encoder, tiny_run

SHARED_FDU = SHARED_DATA / "fdu-mtl"
DOMAINS = ["books", "dvd", "electronics", "imdb", "kitchen_housewares", "magazines", "MR", "music", "software", "video"]
CLS, SEP, PAD, MASK, VOCAB = 101, 102, 0, 103, 30522

REVIEWS = [
    "The plot was thin but the acting kept me watching until the very end.",
    "This blender broke after two weeks and the warranty was useless.",
    "A wonderful collection of essays, sharp and funny in equal measure.",
    "The battery lasts all day and the screen is bright even outdoors.",
    "I could not put this novel down; the last chapter is a masterpiece.",
    "Cheap plastic, loud motor, and it leaks from the bottom.",
    "Great value for the price, though the manual is badly translated.",
    "The soundtrack is the best part of this otherwise forgettable film.",
]


def synthetic_rows(n: int, seed: int, p: float = 0.15, marker: bool = False) -> list[dict]:
    """[CLS] (marker) words... [SEP] rows of varied lengths, with their special tokens masks."""
    gen = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        words = gen.integers(1000, 2000, size=int(gen.integers(1, 60))).tolist()
        lead = [CLS, 30522] if marker else [CLS]
        ids = lead + words + [SEP]
        special = [1] * len(lead) + [0] * len(words) + [1]
        rows.append(
            {
                "input_ids": ids,
                "special_tokens_mask": special,
                "mask_token_id": MASK,
                "vocab_size": VOCAB,
                "mlm_probability": p,
            }
        )
    return rows


def maskable_of(rows: list[dict]) -> torch.Tensor:
    longest = max(len(r["input_ids"]) for r in rows)
    out = torch.zeros((len(rows), longest), dtype=torch.bool)
    for i, r in enumerate(rows):
        out[i, : len(r["special_tokens_mask"])] = torch.tensor(r["special_tokens_mask"]) == 0
    return out


def within(observed: int, trials: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(observed / trials - p) <= sigmas * math.sqrt(p * (1 - p) / trials)


# --- masking ------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.15, 0.4])
def test_masking_statistics(p: float) -> None:
    rows = synthetic_rows(400, seed=1, p=p, marker=True)
    original = pad_inputs(rows, PAD)["input_ids"]
    maskable = maskable_of(rows)
    batch = mlm.collate(rows, PAD, np.random.default_rng(123))
    chosen = batch["labels"] != mlm.IGNORE

    n, m = int(maskable.sum()), int(chosen.sum())
    assert within(m, n, p)
    # Specials ([CLS], the marker, [SEP]) and padding are never chosen, nor changed.
    assert not chosen[~maskable].any()
    assert torch.equal(batch["input_ids"][~chosen], original[~chosen])
    assert torch.equal(batch["attention_mask"], (original != PAD).long())
    # Labels: the original ids at chosen positions, -100 everywhere else.
    assert torch.equal(batch["labels"][chosen], original[chosen])
    assert (batch["labels"][~chosen] == -100).all()
    # 80% [MASK], 10% random, 10% unchanged (a random draw equal to the original counts as unchanged).
    inputs, gold = batch["input_ids"][chosen], original[chosen]
    masked = int((inputs == MASK).sum())
    unchanged = int((inputs == gold).sum())
    replaced = m - masked - unchanged
    assert within(masked, m, 0.8) and within(replaced, m, 0.1) and within(unchanged, m, 0.1)
    assert (
        (inputs[(inputs != MASK) & (inputs != gold)] >= 0) & (inputs[(inputs != MASK) & (inputs != gold)] < VOCAB)
    ).all()


def test_same_rng_seed_gives_the_same_masks() -> None:
    rows = synthetic_rows(50, seed=2)
    a = mlm.collate(rows, PAD, np.random.default_rng([7, 0, 0]))
    b = mlm.collate(rows, PAD, np.random.default_rng([7, 0, 0]))
    c = mlm.collate(rows, PAD, np.random.default_rng([7, 1, 0]))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["labels"], c["labels"])


def test_eval_masks_are_identical_at_every_evaluation_and_training_masks_change_per_epoch() -> None:
    rows = synthetic_rows(30, seed=3)
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    first = list(eval_batches(cols, mlm.collate, 8, PAD))
    again = list(eval_batches(cols, mlm.collate, 8, PAD))
    assert all(torch.equal(x[k], y[k]) for x, y in zip(first, again, strict=True) for k in x)

    one, two = TaskBatches(cols, mlm.collate, 30, PAD, seed=5), TaskBatches(cols, mlm.collate, 30, PAD, seed=5)
    epoch0 = one.next_batch()
    assert torch.equal(epoch0["labels"], two.next_batch()["labels"])  # a resumed run sees the same masks
    epoch1 = one.next_batch()  # the whole set again, other order and other masks
    assert epoch1["labels"].shape == epoch0["labels"].shape and not torch.equal(epoch0["labels"], epoch1["labels"])


def test_at_least_one_position_is_masked_per_batch() -> None:
    rows = synthetic_rows(3, seed=4, p=1e-6)
    for seed in range(20):
        batch = mlm.collate(rows, PAD, np.random.default_rng(seed))
        assert int((batch["labels"] != -100).sum()) == 1
    # Rows with nothing maskable: no target, and a zero (finite) loss instead of NaN.
    empty = [
        {
            "input_ids": [CLS, SEP],
            "special_tokens_mask": [1, 1],
            "mask_token_id": MASK,
            "vocab_size": VOCAB,
            "mlm_probability": 0.15,
        }
    ]
    batch = mlm.collate(empty, PAD, np.random.default_rng(0))
    assert (batch["labels"] == -100).all()
    out = torch.zeros((0, VOCAB), requires_grad=True)
    assert mlm.loss(out, batch).item() == 0.0


# --- encoding ------------------------------------------------------------------------------


def test_encode_marks_special_tokens_and_truncates() -> None:
    _, tok = tiny_encoder()
    cfg = TaskConfig(type="mlm", max_length=12, mlm_probability=0.2)
    enc = mlm.encode({"text": [REVIEWS[0], "ok"]}, tok, cfg, None)
    assert set(enc) == {"input_ids", "special_tokens_mask", "mask_token_id", "vocab_size", "mlm_probability"}
    assert "labels" not in enc  # targets are made per batch in collate
    long, short = enc["input_ids"]
    assert len(long) == 12 and long[0] == tok.cls_token_id and long[-1] == tok.sep_token_id
    assert enc["special_tokens_mask"][0] == [1] + [0] * 10 + [1]
    assert enc["special_tokens_mask"][1] == [1] + [0] * (len(short) - 2) + [1]
    assert enc["mask_token_id"] == [tok.mask_token_id] * 2 and enc["vocab_size"] == [tok.vocab_size] * 2
    assert enc["mlm_probability"] == [0.2, 0.2]


def test_encode_never_masks_a_task_marker() -> None:
    encoder, tok = tiny_encoder()
    add_task_markers(tok, encoder, ["lm"])
    marker_id = tok.convert_tokens_to_ids(marker_token("lm"))
    enc = mlm.encode({"text": REVIEWS[:2]}, tok, TaskConfig(type="mlm"), None, marker_id)
    for ids, special in zip(enc["input_ids"], enc["special_tokens_mask"], strict=True):
        assert ids[1] == marker_id and special[:2] == [1, 1] and special[-1] == 1 and sum(special) == 3


def test_prepare_drops_empty_texts_and_has_no_labels() -> None:
    import datasets

    raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a review", "", "   ", "another"]})})
    out, labels = mlm.prepare("lm", TaskConfig(type="mlm"), raw)
    assert labels is None and out["train"]["text"] == ["a review", "another"]
    other, _ = mlm.prepare("lm", TaskConfig(type="mlm", mlm_probability=0.3), raw)
    # mlm_probability is written into the tokenized rows, so it must change the cache key.
    assert other["train"]._fingerprint != out["train"]._fingerprint
    assert mlm.columns(TaskConfig(type="mlm", text_column="review")) == {"text": "review"}


# --- head, loss, metrics -------------------------------------------------------------------


def mlm_batch(tok, seed: int = 0) -> dict:
    enc = mlm.encode({"text": REVIEWS}, tok, TaskConfig(type="mlm", mlm_probability=0.3), None)
    rows = [{k: v[i] for k, v in enc.items()} for i in range(len(REVIEWS))]
    return mlm.collate(rows, tok.pad_token_id, np.random.default_rng(seed))


def test_decoder_is_tied_to_the_input_embeddings() -> None:
    encoder, tok = tiny_encoder()
    model = build_model(encoder, {"lm": TaskConfig(type="mlm")}, {"lm": None}, compose_typed(["encoder=tiny"]).sharing)
    head, embeddings = model.heads["lm"], encoder.get_input_embeddings().weight
    assert head.decoder.weight is embeddings
    assert head.decoder.weight.data_ptr() == embeddings.data_ptr()
    hidden = encoder.config.hidden_size
    # Only the head's own weights are counted: dense, LayerNorm, output bias (not the vocabulary matrix).
    assert model.parameter_counts()["per_task"]["lm"] == hidden * hidden + hidden + 2 * hidden + embeddings.shape[0]
    # The optimizer sees the shared matrix once; the MLM loss trains the embeddings through the decoder.
    assert sum(p is embeddings for p in model.parameters()) == 1
    batch = mlm_batch(tok)
    encoder.zero_grad()
    mlm.loss(model("lm", batch), batch).backward()
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0
    encoder.zero_grad()


def test_loss_is_cross_entropy_over_masked_positions() -> None:
    encoder, tok = tiny_encoder()
    torch.manual_seed(0)
    head = mlm.build_head(encoder.config.hidden_size, None, encoder, None)
    assert isinstance(head, mlm.MaskedLMHead)
    torch.nn.init.normal_(head.bias)
    batch = mlm_batch(tok, seed=1)
    hidden = torch.randn(*batch["input_ids"].shape, encoder.config.hidden_size)
    out = head(hidden, batch)
    chosen = batch["labels"] != -100
    assert out.shape == (int(chosen.sum()), encoder.get_input_embeddings().weight.shape[0])
    # Full-vocabulary logits at every position, computed by hand, then picked at the masked ones.
    full = head.transform(hidden) @ encoder.get_input_embeddings().weight.T + head.bias
    torch.testing.assert_close(out, full[chosen])
    manual = F.cross_entropy(full.reshape(-1, full.shape[-1]), batch["labels"].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(mlm.loss(out, batch), manual)
    preds, golds = mlm.predict(out, batch)
    assert preds == full[chosen].argmax(-1).tolist() and golds == batch["labels"][chosen].tolist()


def test_metrics() -> None:
    m = mlm.metrics([5, 6, 7, 8], [5, 6, 0, 8], None, 2.5)
    assert m == pytest.approx({"accuracy": 0.75, "mlm_loss": 2.5, "perplexity": math.exp(2.5)})
    assert math.isfinite(mlm.metrics([1], [2], None, 1e6)["perplexity"])  # capped, not an overflow
    assert mlm.MAIN_METRIC == "accuracy" and mlm.AUXILIARY is True


# --- checkpoints ---------------------------------------------------------------------------


def test_checkpoint_round_trip_keeps_the_tie(tmp_path: Path) -> None:
    encoder, tok = tiny_encoder()
    add_task_markers(tok, encoder, ["lm"])  # resized embeddings: the head ties to the resized matrix
    sharing = compose_typed(["encoder=tiny"]).sharing
    cfgs = {"lm": TaskConfig(type="mlm", task_marker=TaskMarker.prefix), "cls": TaskConfig()}
    labels = {"lm": None, "cls": ["negative", "positive"]}
    model = build_model(encoder, cfgs, labels, sharing)
    torch.nn.init.normal_(model.heads["lm"].bias)
    ckpt = tmp_path / "best"
    config = tmp_path / "config.yaml"
    config.write_text("seed: 1\n")
    save_checkpoint(ckpt, model, tok, labels, {"step": 1}, config)

    from safetensors.torch import load_file

    saved = load_file(ckpt / "model.safetensors")
    assert "trunk.encoder.embeddings.word_embeddings.weight" in saved and "heads.lm.decoder.weight" not in saved

    torch.manual_seed(123)  # the fresh model starts from other random weights
    fresh_encoder, fresh_tok = encoder_from_checkpoint(ckpt)
    fresh = build_model(fresh_encoder, cfgs, labels, sharing)
    assert not torch.equal(fresh.heads["lm"].dense.weight, model.heads["lm"].dense.weight)
    load_weights(fresh, ckpt)  # strict: nothing missing or unexpected despite the tied key
    assert fresh.heads["lm"].decoder.weight is fresh_encoder.get_input_embeddings().weight
    assert fresh_encoder.get_input_embeddings().weight.shape[0] == len(tok)

    marker_id = fresh_tok.convert_tokens_to_ids(marker_token("lm"))
    enc = mlm.encode({"text": REVIEWS}, fresh_tok, cfgs["lm"], None, marker_id)
    rows = [{k: v[i] for k, v in enc.items()} for i in range(len(REVIEWS))]
    batch = mlm.collate(rows, fresh_tok.pad_token_id, np.random.default_rng(0))
    model.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh("lm", batch), model("lm", batch), rtol=0, atol=0)
        plain = {k: v for k, v in batch.items() if k != "labels"}
        torch.testing.assert_close(fresh("cls", plain), model("cls", plain), rtol=0, atol=0)


# --- runs ----------------------------------------------------------------------------------


def write_mlm_task(root: Path) -> Path:
    text = root / "reviews.txt"
    lines = [f"{r} Review number {i}." for i in range(6) for r in REVIEWS] + ["", "   "]
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    conf = root / "conf" / "task"
    conf.mkdir(parents=True)
    (conf / "mymlm.yaml").write_text(
        f"# @package task.mymlm\ntype: mlm\nformat: text\nfiles: {{train: {text}}}\n"
        "validation_size: 8\ntest_size: 8\nmax_length: 32\n",
        encoding="utf-8",
    )
    return root / "conf"


def test_tiny_run_with_an_auxiliary_mlm_task(tmp_path: Path) -> None:
    from mtl_cli.eval_run import evaluate_run

    conf = write_mlm_task(tmp_path)
    overrides = ["task=[demo/restaurants,mymlm]", "mixing=round_robin", "trainer.max_steps=4", "trainer.eval_every=2"]
    out = tiny_run(tmp_path / "runs", *overrides, config_dir=conf)
    run = Path(out["run_dir"])
    results = json.loads((run / "results.json").read_text())
    assert set(results) == {"restaurants", "mymlm", "average"}
    lm = results["mymlm"]
    assert set(lm) == {"accuracy", "mlm_loss", "perplexity"}
    assert 0.0 <= lm["accuracy"] <= 1.0 and lm["mlm_loss"] > 0
    assert lm["perplexity"] == pytest.approx(math.exp(lm["mlm_loss"]))
    # The MLM task is auxiliary: the average (which picks checkpoints/best) is the classification task's.
    assert results["average"]["main"] == pytest.approx(results["restaurants"]["accuracy"])
    assert results["average"]["accuracy"] == pytest.approx(results["restaurants"]["accuracy"])
    assert "mlm_loss" not in results["average"] and "perplexity" not in results["average"]

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in records if r["task"] == "mymlm"]
    assert [r["step"] for r in trained] == [2, 4] and all(r["examples_seen"] > 0 for r in trained)
    rows = {r["task"]: r for r in csv.DictReader((run / "metrics.csv").open())}
    assert float(rows["mymlm"]["test_perplexity"]) == pytest.approx(lm["perplexity"])
    assert rows["mymlm"]["train_examples"] == "32"  # 48 non-empty lines - 8 validation - 8 test; blanks dropped
    again = evaluate_run(str(run), split="test")  # rebuilt from the checkpoint: tied decoder reloaded
    assert again["mymlm"] == pytest.approx(results["mymlm"], abs=1e-9)


def test_every_mlm_config_composes() -> None:
    files = sorted(p.stem for p in (CONF_DIR / "task" / "mlm").glob("*.yaml"))
    assert files == sorted(f"{d}_unlabelled" for d in DOMAINS)
    for d in DOMAINS:
        path = CONF_DIR / "task" / "mlm" / f"{d}_unlabelled.yaml"
        assert path.read_text().splitlines()[0] == f"# @package task.{d}_mlm"
        cfg = compose_typed([f"task=[mlm/{d}_unlabelled]"])
        task = cfg.task[f"{d}_mlm"]
        assert (task.type, task.format, task.max_length) == ("mlm", "text", 128)
        assert task.files == {"train": f"fdu-mtl/{d}.task.unlabel"}


@pytest.mark.skipif(not SHARED_FDU.is_dir(), reason=f"FDU-MTL not found at {SHARED_FDU}")
def test_real_unlabelled_books_reviews() -> None:
    from mtl_cli.tasks import load_task

    cfg = compose_typed(["task=[mlm/books_unlabelled]", f"data_root={SHARED_FDU.parent}"])
    task = load_task("books_mlm", cfg.task["books_mlm"], cfg.data_root)
    assert task.labels is None and task.splits["train"].column_names == ["text"]
    assert task.sizes() == {"train": 1600, "validation": 200, "test": 200}
    texts = task.splits["train"]["text"]
    lines = set((SHARED_FDU / "books.task.unlabel").read_text(encoding="utf-8").splitlines())
    assert all(t.strip() for t in texts) and all(t in lines for t in texts[:50])
    assert sum(len(t.split()) for t in texts) / len(texts) > 20  # reviews, not fragments


@pytest.mark.skipif(not SHARED_FDU.is_dir(), reason=f"FDU-MTL not found at {SHARED_FDU}")
@pytest.mark.parametrize(
    "domain",
    [d for d in DOMAINS],
)
def test_every_unlabelled_domain_loads(domain: str) -> None:
    from mtl_cli.tasks import load_task

    cfg = compose_typed([f"task=[mlm/{domain}_unlabelled]", f"data_root={SHARED_FDU.parent}"])
    task = load_task(f"{domain}_mlm", cfg.task[f"{domain}_mlm"], cfg.data_root)
    assert len(task.splits["train"]) > 0 and all(t.strip() for t in task.splits["validation"]["text"])
