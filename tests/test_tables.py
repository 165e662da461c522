"""metrics.md/.csv: each task's own `main`, an average row that averages only like with like (and says
what its `main` is a mean of), and the forgetting monitor's column."""

from __future__ import annotations

import csv
from pathlib import Path

from mtl_cli.evaluate import average, main_metrics
from mtl_cli.tables import add_forgetting, average_note, forgetting_note, table_rows, write_table

TYPES = {"stars": "regression", "ner": "token_classification", "restaurants": "classification"}
SCORES = {
    "stars": {"pearson": 0.5, "spearman": 0.4, "mae": 0.9, "mse": 1.2, "loss": 1.0},
    "ner": {"f1": 0.3, "precision": 0.35, "recall": 0.25, "accuracy": 0.8, "loss": 0.5},
    "restaurants": {"accuracy": 0.9, "macro_f1": 0.88, "loss": 0.3},
}


def results(types: dict[str, str] = TYPES) -> dict[str, dict[str, dict[str, float]]]:
    per_task = {t: dict(SCORES[t]) if t in SCORES else {"accuracy": 0.4, "mlm_loss": 3.0, "loss": 3.0} for t in types}
    return {split: {**per_task, "average": average(per_task, types)} for split in ("validation", "test")}


def test_each_task_row_has_its_own_main_and_the_average_only_like_metrics() -> None:
    res, mains = results(), main_metrics(TYPES)
    assert mains == {"stars": "pearson", "ner": "f1", "restaurants": "accuracy"}
    rows = {r["task"]: r for r in table_rows(res, {}, mains)}
    assert rows["stars"]["validation_main"] == 0.5 and rows["ner"]["test_main"] == 0.3
    assert rows["restaurants"]["validation_main"] == 0.9
    assert rows["average"]["validation_main"] == (0.5 + 0.3 + 0.9) / 3  # what picks checkpoints/best
    # accuracy: ner and restaurants only; pearson: stars only. An average of some tasks is left empty.
    assert rows["average"]["validation_accuracy"] is None and rows["average"]["test_pearson"] is None
    assert rows["ner"]["validation_accuracy"] == 0.8 and rows["stars"]["validation_macro_f1"] is None
    # results.json keeps the average over the tasks that have a metric (trainer.best_metric reads it).
    assert res["validation"]["average"]["accuracy"] == (0.8 + 0.9) / 2


def test_the_note_says_what_the_average_row_is() -> None:
    note = average_note(results(), main_metrics(TYPES))
    assert "- average main = mean of stars pearson, ner f1, restaurants accuracy.\n" in note
    assert "pearson (stars only)" in note and "accuracy (ner, restaurants only)" in note
    assert "macro_f1 (restaurants only)" in note
    same = {"restaurants": "classification", "electronics": "classification"}
    two = {t: {"accuracy": 0.7, "macro_f1": 0.6} for t in same}
    res = {"validation": {**two, "average": average(two, same)}}
    assert average_note(res, main_metrics(same)) == ""  # like with like: nothing to say
    rows = {r["task"]: r for r in table_rows(res, {}, main_metrics(same))}
    assert rows["average"]["validation_accuracy"] == 0.7 and rows["electronics"]["validation_main"] == 0.7


def test_an_auxiliary_task_is_named_as_left_out() -> None:
    types = {"restaurants": "classification", "lm": "mlm"}
    res, mains = results(types), main_metrics(types)
    assert mains == {"restaurants": "accuracy"}
    rows = {r["task"]: r for r in table_rows(res, {}, mains)}
    assert rows["lm"]["validation_main"] is None  # not part of the average's main
    assert rows["average"]["validation_macro_f1"] == 0.88  # every averaged task has it
    assert "lm (auxiliary) not in the average" in average_note(res, mains)


def test_without_mains_the_table_is_as_before() -> None:
    rows = {r["task"]: r for r in table_rows(results(), {})}  # `mtl eval`'s call
    assert rows["stars"]["validation_main"] is None
    assert rows["average"]["validation_accuracy"] == (0.8 + 0.9) / 2


def test_forgetting_column_in_markdown_numbers_in_csv(tmp_path: Path) -> None:
    types = {"restaurants": "classification", "electronics": "classification"}
    res = results(types)
    rows = table_rows(res, {}, main_metrics(types))
    add_forgetting(rows, {"restaurants": {"episodes": 1, "drop": 0.08, "peak_step": 40},
                          "electronics": {"episodes": 0, "drop": 0.01, "peak_step": 20}})  # fmt: skip
    write_table(tmp_path / "metrics.md", rows, "header\n\n", note=forgetting_note(0.05))
    md = (tmp_path / "metrics.md").read_text()
    assert md.startswith("header\n\n| task |") and "| forgetting |" in md.splitlines()[2]
    assert "| 0.0800 (1 episode, best at step 40) |" in md
    assert "forgetting_drop" not in md and "trainer.forgetting_threshold=0.05" in md.splitlines()[-1]
    table = {r["task"]: r for r in csv.DictReader((tmp_path / "metrics.csv").open())}
    assert table["restaurants"]["forgetting_drop"] == "0.08" and table["restaurants"]["forgetting_episodes"] == "1"
    assert table["electronics"]["forgetting_episodes"] == "0" and table["electronics"]["forgetting_peak_step"] == "20"
    assert table["average"]["forgetting_episodes"] == ""
