"""The forgetting monitor: scripted validation curves (one warning per episode, the records' field,
a resume in the middle), its range check, and a real tiny run in which a swamped task forgets."""

from __future__ import annotations

import csv
import json
import logging
import math
import random
from pathlib import Path

import pytest

from mtl_cli.callbacks.forgetting import Forgetting, summary
from mtl_cli.compose import compose_typed
from mtl_cli.errors import MtlError
from mtl_cli.evaluate import Evaluation
from tests.conftest import tiny_run, write

THRESHOLD = 0.05


def evaluation(step: int, scores: dict[str, float]) -> Evaluation:
    """A validation pass as evaluate_and_save hands it to callbacks: results, scores, records."""
    results = {task: {"accuracy": v} for task, v in scores.items()}
    results["average"] = {"main": sum(scores.values()) / len(scores)}
    records = {task: {"step": step, "split": "validation", "task": task, **m} for task, m in results.items()}
    return Evaluation(step, results, dict(scores), records)


def drive(cb: Forgetting, curves: dict[str, list[float]], first: int = 0, every: int = 10) -> list[Evaluation]:
    """Evaluations at steps every, 2*every, ... of the scripted curves, from the `first`-th on."""
    n = max(len(c) for c in curves.values())
    evs = [evaluation((i + 1) * every, {t: c[i] for t, c in curves.items()}) for i in range(first, n)]
    for ev in evs:
        cb.on_evaluate(None, None, ev)  # never stops training: it returns nothing
    return evs


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "forgetting" in r.getMessage()]


# rising, a fall of 0.1 (> 0.05), staying down, back within 0.05, a second fall
CURVE = [0.5, 0.6, 0.7, 0.6, 0.62, 0.6, 0.68, 0.6, 0.61]
IN_EPISODE = [False, False, False, True, True, True, False, True, True]


def test_one_warning_per_episode(caplog: pytest.LogCaptureFixture) -> None:
    cb = Forgetting(THRESHOLD, {"a": "accuracy", "b": "accuracy"})
    with caplog.at_level(logging.INFO, logger="mtl"):
        evs = drive(cb, {"a": CURVE, "b": [0.5 + 0.01 * i for i in range(len(CURVE))]})
    said = warnings(caplog)
    assert len(said) == 2 and all("task a's" in s for s in said)
    assert said[0].startswith(
        "forgetting: task a's accuracy fell 0.1 below its best (0.7 at step 30) to 0.6 at step 40"
    )
    assert "(0.7 at step 30) to 0.6 at step 80" in said[1]
    assert "back within 0.05 of its best at step 70" in caplog.text
    # Every trained task's record says whether it is in an episode; the average's says nothing.
    assert [ev.records["a"]["forgetting"] for ev in evs] == IN_EPISODE
    assert not any(ev.records["b"]["forgetting"] for ev in evs)
    assert all("forgetting" not in ev.records["average"] for ev in evs)
    found = cb.summary()
    assert found["a"] == {"episodes": 2, "drop": pytest.approx(0.1), "peak_step": 30}
    assert found["b"] == {"episodes": 0, "drop": 0.0, "peak_step": None}


def test_falls_within_the_threshold_are_no_episode(caplog: pytest.LogCaptureFixture) -> None:
    cb = Forgetting(THRESHOLD, {"a": "accuracy"})
    # 0.04 below the best, then exactly 0.05 below it (3 of 60 examples: no episode by a rounding error).
    evs = drive(cb, {"a": [0.5, 0.7, 0.66, 0.68, 0.65, 0.72, 0.69]})
    assert [ev.records["a"]["forgetting"] for ev in evs] == [False] * 7
    assert warnings(caplog) == []
    assert cb.summary()["a"] == {"episodes": 0, "drop": pytest.approx(0.05), "peak_step": 20}


def test_threshold_zero_flags_any_fall_and_nan_scores_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    cb = Forgetting(0.0, {"a": "pearson"})
    evs = drive(cb, {"a": [0.3, 0.29, math.nan, 0.3, 0.31]})
    # NaN tells nothing: the episode goes on through it; back at the best it ends.
    assert [ev.records["a"]["forgetting"] for ev in evs] == [False, True, True, False, False]
    assert len(warnings(caplog)) == 1 and "task a's pearson fell 0.01" in warnings(caplog)[0]


def test_threshold_null_turns_it_off(caplog: pytest.LogCaptureFixture) -> None:
    cb = Forgetting(None, {"a": "accuracy"})
    evs = drive(cb, {"a": CURVE})
    assert warnings(caplog) == []
    assert all("forgetting" not in ev.records["a"] for ev in evs)
    assert cb.state_dict() == {} and cb.summary() == {}


def test_state_round_trips_through_json_mid_episode(caplog: pytest.LogCaptureFixture) -> None:
    """A resume inside an episode neither warns again nor loses the episode (trainer_state.json holds it)."""
    curves = {"a": CURVE, "b": CURVE[::-1]}
    whole = Forgetting(THRESHOLD, {"a": "accuracy", "b": "accuracy"})
    expected = drive(whole, curves)
    expected_warnings = warnings(caplog)
    caplog.clear()

    first = Forgetting(THRESHOLD, {"a": "accuracy", "b": "accuracy"})
    before = drive(first, {t: c[:5] for t, c in curves.items()})  # stopped in a's first episode
    saved = json.loads(json.dumps(first.state_dict()))
    resumed = Forgetting(THRESHOLD, {"a": "accuracy", "b": "accuracy"})
    resumed.load_state_dict(saved)
    after = drive(resumed, curves, first=5)
    assert warnings(caplog) == expected_warnings
    assert [ev.records for ev in before + after] == [ev.records for ev in expected]
    assert resumed.state_dict() == whole.state_dict()
    assert summary(resumed.state_dict()) == whole.summary()


@pytest.mark.parametrize(
    "state",
    [
        {"tasks": []},
        {"tasks": {"a": {"best": "0.9"}}},
        {"tasks": {"a": {**Forgetting(THRESHOLD, {"a": "x"}).state_dict()["tasks"]["a"], "episodes": True}}},
    ],
)
def test_a_damaged_state_is_refused_in_one_line(state: dict) -> None:
    with pytest.raises(MtlError, match=r"callbacks.forgetting` is not the forgetting monitor's state"):
        Forgetting(THRESHOLD, {"a": "accuracy"}).load_state_dict(state)


def test_negative_threshold_is_refused() -> None:
    with pytest.raises(MtlError, match=r"`trainer.forgetting_threshold` must be >= 0, or null"):
        compose_typed(["trainer.forgetting_threshold=-0.1"])
    assert compose_typed(["trainer.forgetting_threshold=null"]).trainer.forgetting_threshold is None


# --- a real run: a small task swamped by a big one -------------------------------------------------

FRUIT, VEHICLE = ["apple", "banana", "cherry", "grape"], ["car", "bus", "train", "truck"]
HAPPY, SAD = ["happy", "glad", "joyful", "cheerful"], ["sad", "angry", "upset", "gloomy"]
FILLER = ["the", "a", "was", "is", "today", "very", "and", "my", "it", "so"]


def write_topic_and_mood(root: Path) -> Path:
    """Two tasks on the same kind of text ("the apple was happy ..."): `topic` (fruit or vehicle) and
    `mood` (happy or sad). The tiny random encoder learns each within a few dozen steps; trained
    mostly on topic, its shared representation comes to carry the topic word, and mood, which
    reads the other word, falls back towards chance. (The packaged demo tasks are not used: the
    tiny encoder stays near chance on them, so their falls are noise, not forgetting.)"""
    rng = random.Random(0)
    conf = root / "conf"
    for task, labels in (("topic", ["fruit", "vehicle"]), ("mood", ["happy", "sad"])):
        for split, n in (("train", 240), ("validation", 60), ("test", 60)):
            lines = ["text\tlabel"]
            for _ in range(n):
                topic, mood = rng.randrange(2), rng.randrange(2)
                words = [rng.choice((FRUIT, VEHICLE)[topic]), rng.choice((HAPPY, SAD)[mood]), *rng.sample(FILLER, 3)]
                rng.shuffle(words)
                lines.append(" ".join(words) + "\t" + labels[topic if task == "topic" else mood])
            write(root / "data" / task / f"{split}.tsv", "\n".join(lines) + "\n")
        write(
            conf / "task" / f"{task}.yaml",
            f"# @package task.{task}\ndata_dir: {json.dumps(str(root / 'data' / task))}\n"
            f"files: {{train: train.tsv, validation: validation.tsv, test: test.tsv}}\nformat: tsv\nlabels: {labels}\n",
        )
    return conf


# mood gets 1 batch in 10, at a learning rate high enough that topic's batches rewrite the encoder.
SWAMPED = [
    "task=[topic,mood]", "mixing=weights", "++mixing.weights.mood=0.1", "trainer.lr=1e-2",
    "trainer.max_steps=45", "trainer.eval_every=3", "trainer.forgetting_threshold=0.05", "seed=0",
]  # fmt: skip


def test_a_swamped_task_forgets_in_a_real_run(tmp_path: Path) -> None:
    run = Path(tiny_run(tmp_path / "runs", *SWAMPED, config_dir=write_topic_and_mood(tmp_path))["run_dir"])
    log = (run / "train.log").read_text()
    assert "forgetting: task mood's accuracy fell" in log
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    mood = [r for r in records if r["task"] == "mood"]
    assert all(isinstance(r["forgetting"], bool) for r in records if r["task"] != "average")
    flagged = [r["step"] for r in mood if r["forgetting"]]
    assert flagged, [r["accuracy"] for r in mood]
    # The flagged evaluations are exactly those more than the threshold below the best so far.
    best = -1.0
    for r in mood:
        best = max(best, r["accuracy"])
        assert r["forgetting"] == (best - r["accuracy"] > 0.05 + 1e-9)
    rows = {r["task"]: r for r in csv.DictReader((run / "metrics.csv").open())}
    episodes = int(rows["mood"]["forgetting_episodes"])
    assert episodes >= 1 and float(rows["mood"]["forgetting_drop"]) > 0.05
    assert rows["average"]["forgetting_episodes"] == ""
    md = (run / "metrics.md").read_text()
    assert f"{float(rows['mood']['forgetting_drop']):.4f} ({episodes} episode" in md
    assert "trainer.forgetting_threshold=0.05" in md
    state = json.loads((run / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert state["callbacks"]["forgetting"]["tasks"]["mood"]["episodes"] == episodes
