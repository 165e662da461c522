"""Real data from ../shared/data (skipped when absent): the pretrained encoder must really learn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA, needs_shared_data, run_dirs, run_mtl


@pytest.mark.slow
@needs_shared_data
def test_minilm_learns_yelp_and_imdb_sentences(tmp_path: Path) -> None:
    proc = run_mtl(
        "train",
        "task=sentences/yelp+sentences/imdb",
        f"data_root={SHARED_DATA}",
        "trainer.epochs=2",
        "trainer.progress=false",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    (run,) = run_dirs(tmp_path / "runs")
    results = json.loads((run / "results.json").read_text())
    # Held-out test split: 200 sentences per task, carved with the fixed split_seed.
    assert results["yelp"]["accuracy"] >= 0.85, results
    assert results["imdb"]["accuracy"] >= 0.85, results
    assert "| yelp |" in (run / "metrics.md").read_text()


@pytest.mark.slow
@needs_shared_data
def test_sentiment_emotion_ner_and_mlm_train_together(tmp_path: Path) -> None:
    """One shared MiniLM, four task types; every task must beat chance on its test split."""
    proc = run_mtl(
        "train", "task=sentences/yelp+emotion+wnut17+mlm/books_unlabelled", f"data_root={SHARED_DATA}",
        "mixing=weights", "mixing.weights={yelp:0.15,emotion:0.2,wnut17:0.5,books_mlm:0.15}",
        "trainer.max_steps=160", "trainer.eval_every=80", "trainer.progress=false",
        "task.emotion.max_train_examples=4000", "task.emotion.max_eval_examples=500",
        "task.wnut17.max_eval_examples=300", "task.books_mlm.max_length=64",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (run,) = run_dirs(tmp_path / "runs")
    results = json.loads((run / "results.json").read_text())
    assert set(results) == {"yelp", "emotion", "wnut17", "books_mlm", "average"}
    assert set(results["wnut17"]) == {"precision", "recall", "f1", "accuracy"}
    assert set(results["books_mlm"]) == {"accuracy", "mlm_loss", "perplexity"}
    # Chance levels come from the run's own data: the majority class of each test split.
    report = json.loads((run / "data_check.json").read_text())
    emotion_counts = report["tasks"]["emotion"]["splits"]["test"]["label_distribution"]["counts"]
    majority = max(emotion_counts.values()) / sum(emotion_counts.values())
    assert results["yelp"]["accuracy"] > 0.75, results
    assert results["emotion"]["accuracy"] > majority + 0.05, (results, majority)
    assert results["wnut17"]["f1"] > 0.05, results  # an all-O tagger scores 0
    assert results["books_mlm"]["perplexity"] < 3000, results  # uniform guessing: 30,522
    # MLM is auxiliary: the average that picks the best checkpoint leaves it out.
    mains = [results["yelp"]["accuracy"], results["emotion"]["accuracy"], results["wnut17"]["f1"]]
    assert results["average"]["main"] == pytest.approx(sum(mains) / 3)
