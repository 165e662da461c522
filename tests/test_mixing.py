"""Task-mixing strategies: configured probabilities, realised frequencies, determinism, resume, bad configs;
the scheduled ones (annealed, schedule) step by step, composed from overrides and in tiny real runs."""

from __future__ import annotations

import json
import math
import signal
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mtl_cli.callbacks import Callback
from mtl_cli.compose import compose_config
from mtl_cli.config import CONF_DIR, MixingConfig
from mtl_cli.errors import MtlError
from mtl_cli.mixing import (
    STRATEGIES,
    RandomSampler,
    RoundRobinSampler,
    ScheduledSampler,
    StepCounts,
    build_sampler,
    check_config,
)
from mtl_cli.mixing.annealed import annealed_alpha
from mtl_cli.mixing.schedule import weight_at
from mtl_cli.validation import to_typed
from tests.conftest import TINY_RUN, run_dirs, tiny_run

SIZES = {"a": 100, "b": 400}
DRAWS = 20_000
# 10 steps an epoch, 3 epochs: what train.prepare passes a sampler.
STEPS = StepCounts(steps_per_epoch=10, total_steps=30)


def draw(sampler, n: int) -> list[str]:
    return [sampler.next_task() for _ in range(n)]


def assert_frequencies_match(sampler, n: int = DRAWS) -> None:
    # The probabilities of the first of the n draws (a scheduled sampler's may change after the last).
    probabilities = dict(sampler.probabilities)
    counts = Counter(draw(sampler, n))
    assert set(counts) <= set(probabilities)
    for task, p in probabilities.items():
        # 5 binomial standard deviations: a false failure is ~1 in 10^6 per task.
        sigma = math.sqrt(n * p * (1 - p))
        assert abs(counts[task] - n * p) <= 5 * sigma + 1e-9, (task, counts[task], n * p)


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        (MixingConfig(name="proportional"), {"a": 0.2, "b": 0.8}),
        (MixingConfig(name="proportional", max_examples=200), {"a": 1 / 3, "b": 2 / 3}),
        (MixingConfig(name="uniform"), {"a": 0.5, "b": 0.5}),
        (MixingConfig(name="temperature", temperature=1.0), {"a": 0.2, "b": 0.8}),
        (MixingConfig(name="temperature", temperature=2.0), {"a": 1 / 3, "b": 2 / 3}),
        (MixingConfig(name="temperature", temperature=2.0, max_examples=100), {"a": 0.5, "b": 0.5}),
        (MixingConfig(name="weights", weights={"a": 0.3, "b": 0.7}), {"a": 0.3, "b": 0.7}),
        (MixingConfig(name="weights", weights={"a": 3, "b": 7}), {"a": 0.3, "b": 0.7}),
        (MixingConfig(name="round_robin"), {"a": 0.5, "b": 0.5}),
        # The first epoch of annealed mixing is proportional (alpha = 1).
        (MixingConfig(name="annealed"), {"a": 0.2, "b": 0.8}),
        (MixingConfig(name="annealed", max_examples=200), {"a": 1 / 3, "b": 2 / 3}),
        (MixingConfig(name="schedule", schedule={"a": [[0, 3.0], [10, 1.0]]}), {"a": 0.75, "b": 0.25}),
        (MixingConfig(name="schedule"), {"a": 0.5, "b": 0.5}),  # no keyframes: every task weight 1
    ],
    ids=lambda value: value.name if isinstance(value, MixingConfig) else "",
)
def test_probabilities_match_hand_computed_values(cfg: MixingConfig, expected: dict[str, float]) -> None:
    probabilities = build_sampler(cfg, SIZES, seed=0, steps=STEPS).probabilities
    assert list(probabilities) == list(SIZES)
    assert probabilities == pytest.approx(expected)
    assert sum(probabilities.values()) == pytest.approx(1.0)


def test_large_temperature_approaches_uniform() -> None:
    probabilities = build_sampler(MixingConfig(name="temperature", temperature=1e6), SIZES, seed=0).probabilities
    assert probabilities == pytest.approx({"a": 0.5, "b": 0.5}, abs=1e-5)


@pytest.mark.parametrize(
    "cfg",
    [
        MixingConfig(name="proportional"),
        MixingConfig(name="uniform"),
        MixingConfig(name="temperature", temperature=2.0),
        MixingConfig(name="weights", weights={"a": 0.3, "b": 0.7, "c": 0.0}),
    ],
    ids=lambda cfg: cfg.name,
)
def test_realised_frequencies_match_probabilities(cfg: MixingConfig) -> None:
    sizes = {"a": 100, "b": 400, "c": 50}
    sampler = build_sampler(cfg, sizes, seed=7)
    assert_frequencies_match(sampler)


def test_zero_weight_task_is_never_drawn() -> None:
    sampler = build_sampler(MixingConfig(name="weights", weights={"a": 0, "b": 1, "c": 0}), {"a": 1, "b": 1, "c": 1}, 3)
    assert set(draw(sampler, 2_000)) == {"b"}


def test_round_robin_cycles_in_task_order() -> None:
    sampler = build_sampler(MixingConfig(name="round_robin"), {"a": 5, "b": 1, "c": 900}, seed=0)
    assert draw(sampler, 7) == ["a", "b", "c", "a", "b", "c", "a"]


@pytest.mark.parametrize("name", ["proportional", "uniform", "temperature"])
def test_same_seed_same_sequence_different_seed_differs(name: str) -> None:
    cfg = MixingConfig(name=name)
    first = draw(build_sampler(cfg, SIZES, seed=1), 200)
    assert draw(build_sampler(cfg, SIZES, seed=1), 200) == first
    assert draw(build_sampler(cfg, SIZES, seed=2), 200) != first


@pytest.mark.parametrize(
    "cfg",
    [
        MixingConfig(name="temperature", temperature=2.0),
        MixingConfig(name="round_robin"),
        MixingConfig(name="annealed", alpha_floor=0.0),
        MixingConfig(name="schedule", schedule={"a": [[0, 0.0], [60, 5.0]], "c": [[40, 1.0], [100, 0.0]]}),
    ],
    ids=lambda cfg: cfg.name,
)
def test_state_dict_resumes_the_identical_continuation(cfg: MixingConfig) -> None:
    sizes = {"a": 100, "b": 400, "c": 50}
    steps = StepCounts(steps_per_epoch=25, total_steps=150)  # the continuation crosses epochs 2 to 6
    original = build_sampler(cfg, sizes, seed=11, steps=steps)
    draw(original, 37)
    # Through JSON, as trainer_state.json keeps it.
    state = json.loads(json.dumps(original.state_dict()))
    probabilities = dict(original.probabilities)
    expected = draw(original, 100)

    # A fresh sampler with another seed, as after a restart, must follow the saved position.
    resumed = build_sampler(cfg, sizes, seed=99, steps=steps)
    draw(resumed, 5)
    resumed.load_state_dict(state)
    assert resumed.probabilities == probabilities
    assert draw(resumed, 100) == expected
    assert resumed.probabilities == original.probabilities


def test_state_dict_is_a_snapshot() -> None:
    sampler = build_sampler(MixingConfig(name="uniform"), SIZES, seed=0)
    state = sampler.state_dict()
    first = draw(sampler, 50)
    sampler.load_state_dict(state)
    assert draw(sampler, 50) == first


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        (MixingConfig(name="x"), "`mixing=`"),
        (MixingConfig(name="temperature", temperature=0.0), "`mixing.temperature`"),
        (MixingConfig(name="temperature", temperature=-1.0), "`mixing.temperature`"),
        (MixingConfig(name="temperature", max_examples=0), "`mixing.max_examples`"),
        (MixingConfig(name="proportional", max_examples=-5), "`mixing.max_examples`"),
        (MixingConfig(name="weights", weights={"a": 0.0, "b": 0.0}), "`mixing.weights` must sum to a positive"),
        (MixingConfig(name="weights", weights={"a": 1.0}), "mixing.weights.b=<w>"),
        (MixingConfig(name="weights", weights={"a": 1.0, "b": 1.0, "foo": 1.0}), "unknown task 'foo'"),
        (MixingConfig(name="weights", weights={"a": -1.0, "b": 2.0}), "`mixing.weights.a`"),
        (MixingConfig(name="weights", weights={"a": math.nan, "b": 2.0}), "`mixing.weights.a`"),
        (MixingConfig(name="uniform", weights={"a": 1.0, "b": 1.0}), "`mixing.weights`"),
        (MixingConfig(name="annealed", alpha_floor=-0.1), "`mixing.alpha_floor`"),
        (MixingConfig(name="annealed", alpha_floor=1.5), "`mixing.alpha_floor`"),
        (MixingConfig(name="schedule", schedule={"foo": [[0, 1.0]]}), "`mixing.schedule` names unknown task 'foo'"),
        (MixingConfig(name="schedule", schedule={"a": [[0, 1], [50, 0], [50, 1]]}), "steps must increase"),
        (MixingConfig(name="schedule", schedule={"a": [[10, 1], [5, 0]]}), "`mixing.schedule.a`: keyframe steps"),
        (MixingConfig(name="schedule", schedule={"a": [[-1, 1]]}), "`mixing.schedule.a`: steps must be 0 or more"),
        (MixingConfig(name="schedule", schedule={"a": [[0, 1], [9, -0.5]]}), "`mixing.schedule.a`: weights must not"),
        (MixingConfig(name="schedule", schedule={"a": [[0, 1, 2]]}), "`mixing.schedule.a` keyframes must be"),
        (MixingConfig(name="schedule", schedule={"a": [[0, "x"]]}), "`mixing.schedule.a` keyframes must be"),
        (MixingConfig(name="schedule", schedule={"a": [[0, True]]}), "`mixing.schedule.a` keyframes must be"),
        (MixingConfig(name="schedule", schedule={"a": []}), "`mixing.schedule.a` has no keyframe"),
        (
            MixingConfig(name="schedule", schedule={"a": [[0, 1], [100, 0]], "b": [[0, 0], [50, 1], [100, 0]]}),
            "`mixing.schedule` gives every task weight 0 at step 100 ({a: 0, b: 0})",
        ),
        (MixingConfig(name="weights", weights={"a": 1}, schedule={"a": [[0, 1]]}), "only used by mixing=schedule"),
    ],
)
def test_bad_config_raises_mtl_error_naming_the_key(cfg: MixingConfig, key: str) -> None:
    with pytest.raises(MtlError) as info:
        check_config(cfg, list(SIZES))
    message = str(info.value)
    assert key in message
    assert "\n" not in message
    # build_sampler must refuse the same config before drawing anything.
    with pytest.raises(MtlError):
        build_sampler(cfg, SIZES, seed=0, steps=STEPS)


def test_error_messages_read_as_documented() -> None:
    with pytest.raises(MtlError) as info:
        check_config(MixingConfig(name="weights", weights={"yelp": 0, "imdb": 0}), ["yelp", "imdb"])
    assert str(info.value) == "`mixing.weights` must sum to a positive number; got {yelp: 0, imdb: 0}"
    with pytest.raises(MtlError) as info:
        check_config(MixingConfig(name="temperature", temperature=0), ["yelp"])
    assert str(info.value) == "`mixing.temperature` must be positive; got 0"
    with pytest.raises(MtlError) as info:
        check_config(MixingConfig(name="x"), ["yelp"])
    assert str(info.value).startswith("unknown mixing strategy 'x' (`mixing=`): choose one of ['proportional'")


def test_every_task_with_no_examples_is_a_user_error() -> None:
    with pytest.raises(MtlError, match="zero training examples"):
        build_sampler(MixingConfig(name="proportional"), {"a": 0, "b": 0}, seed=0)


def test_every_strategy_has_a_config_file_and_vice_versa() -> None:
    files = {path.stem: OmegaConf.load(path) for path in (CONF_DIR / "mixing").glob("*.yaml")}
    assert set(files) == set(STRATEGIES)
    for stem, conf in files.items():
        assert conf.name == stem
        # Each file must merge cleanly onto the schema (no misspelt keys).
        merged = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(MixingConfig), conf))
        assert isinstance(merged, MixingConfig)
        if stem == "weights":
            merged.weights = {"yelp": 0.3, "imdb": 0.7}
        check_config(merged, ["yelp", "imdb"])


def test_set_active_stops_drawing_stopped_tasks() -> None:
    sampler = build_sampler(MixingConfig(name="proportional"), {"a": 100, "b": 300, "c": 600}, seed=0)
    assert isinstance(sampler, RandomSampler)  # TaskSampler (the Protocol) does not declare set_active
    sampler.set_active(["a", "c"])
    assert sampler.probabilities == pytest.approx({"a": 100 / 700, "b": 0.0, "c": 600 / 700})
    assert "b" not in draw(sampler, 2000)
    robin = build_sampler(MixingConfig(name="round_robin"), {"a": 1, "b": 1, "c": 1}, seed=0)
    assert isinstance(robin, RoundRobinSampler)
    robin.set_active(["a", "c"])
    assert draw(robin, 4) == ["a", "c", "a", "c"]


def test_tasks_left_out_of_the_weights_share_the_remainder() -> None:
    cfg = MixingConfig(name="weights", weights={"a": 0.1})
    assert build_sampler(cfg, {"a": 10, "b": 10, "c": 10}, seed=0).probabilities == pytest.approx(
        {"a": 0.1, "b": 0.45, "c": 0.45}
    )
    with pytest.raises(MtlError, match="leave nothing of 1"):
        check_config(MixingConfig(name="weights", weights={"a": 1.0}), ["a", "b"])


# --- scheduled mixing: annealed ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("epoch", "epochs", "expected"),
    [
        (1, 5, 1.0),
        (3, 5, 0.6),
        (5, 5, 0.2),  # Stickland & Murray's last epoch: 1 - 0.8
        (1, 1, 1.0),  # one epoch: proportional throughout
        (1, 0.5, 1.0),
        (2, 2.5, 1 - 0.8 / 1.5),  # max_steps cuts the third epoch short: E = 2.5
        (3, 2.5, 0.2),  # that partial last epoch is clamped at the floor
    ],
)
def test_annealed_alpha_follows_stickland_and_murray(epoch: int, epochs: float, expected: float) -> None:
    assert annealed_alpha(epoch, epochs, floor=0.2) == pytest.approx(expected)


def test_annealed_probabilities_change_at_epoch_boundaries() -> None:
    sampler = build_sampler(MixingConfig(name="annealed"), SIZES, seed=0, steps=STEPS)
    # alpha 1, 0.6, 0.2 in epochs 1-3: p_a = 100**alpha / (100**alpha + 400**alpha).
    by_epoch = [100**a / (100**a + 400**a) for a in (1.0, 0.6, 0.2)]
    seen = []
    for _ in range(35):  # past the end of the 3 epochs: the last epoch's alpha stays
        seen.append(sampler.probabilities["a"])
        sampler.next_task()
    expected = [by_epoch[0]] * 10 + [by_epoch[1]] * 10 + [by_epoch[2]] * 15
    assert seen == pytest.approx(expected)
    assert sum(sampler.probabilities.values()) == pytest.approx(1.0)


def test_annealed_realised_frequencies_match_each_epoch() -> None:
    steps = StepCounts(steps_per_epoch=DRAWS, total_steps=3 * DRAWS)
    sampler = build_sampler(MixingConfig(name="annealed", alpha_floor=0.0), {"a": 100, "b": 400, "c": 50}, 5, steps)
    for alpha in (1.0, 0.5, 0.0):  # one epoch per call: the probabilities hold for the whole of it
        rates = {"a": 100**alpha, "b": 400**alpha, "c": 50**alpha}
        assert sampler.probabilities == pytest.approx({t: r / sum(rates.values()) for t, r in rates.items()})
        assert_frequencies_match(sampler, DRAWS)


def test_annealed_needs_the_runs_step_counts() -> None:
    with pytest.raises(ValueError, match="step counts"):
        build_sampler(MixingConfig(name="annealed"), SIZES, seed=0)


# --- scheduled mixing: schedule ---------------------------------------------------------------


def test_weight_at_is_piecewise_linear_and_constant_outside() -> None:
    frames = [(10.0, 1.0), (20.0, 0.0), (40.0, 2.0)]
    assert [weight_at(frames, s) for s in (0, 10, 15, 20, 30, 40, 1000)] == pytest.approx(
        [1.0, 1.0, 0.5, 0.0, 1.0, 2.0, 2.0]
    )
    assert weight_at([(5.0, 0.3)], 0) == weight_at([(5.0, 0.3)], 99) == 0.3


def test_schedule_probabilities_follow_the_keyframes_step_by_step() -> None:
    # The README example: yelp fades from 1 to 0.1 over 200 steps while imdb rises from 0 to 1; amazon,
    # not named, keeps weight 1.
    schedule = {"yelp": [[0, 1.0], [200, 0.1]], "imdb": [[0, 0.0], [200, 1.0]]}
    sampler = build_sampler(MixingConfig(name="schedule", schedule=schedule), {"yelp": 1, "imdb": 1, "amazon": 1}, 0)
    seen = {}
    for step in range(301):
        seen[step] = dict(sampler.probabilities)
        sampler.next_task()
    for step, (yelp, imdb) in {0: (1.0, 0.0), 100: (0.55, 0.5), 200: (0.1, 1.0), 300: (0.1, 1.0)}.items():
        total = yelp + imdb + 1.0
        assert seen[step] == pytest.approx({"yelp": yelp / total, "imdb": imdb / total, "amazon": 1 / total})


def test_a_task_at_weight_zero_is_not_drawn_until_its_weight_rises() -> None:
    schedule = {"a": [[0, 1.0], [99, 1.0], [100, 0.0]], "b": [[0, 0.0], [99, 0.0], [100, 1.0]]}
    sampler = build_sampler(MixingConfig(name="schedule", schedule=schedule), SIZES, seed=3)
    assert set(draw(sampler, 100)) == {"a"}
    assert set(draw(sampler, 100)) == {"b"}


def test_schedule_realised_frequencies_on_a_constant_stretch() -> None:
    schedule = {"a": [[0, 1.0], [10, 3.0]], "c": [[0, 0.5]]}
    sampler = build_sampler(MixingConfig(name="schedule", schedule=schedule), {"a": 1, "b": 1, "c": 1}, seed=2)
    draw(sampler, 10)  # past the ramp: a 3, b 1, c 0.5 from here on
    assert sampler.probabilities == pytest.approx({"a": 3 / 4.5, "b": 1 / 4.5, "c": 0.5 / 4.5})
    assert_frequencies_match(sampler)


@pytest.mark.parametrize("name", ["annealed", "schedule"])
def test_scheduled_same_seed_same_sequence_different_seed_differs(name: str) -> None:
    cfg = MixingConfig(name=name, schedule={"a": [[0, 1.0], [100, 0.2]]} if name == "schedule" else {})
    first = draw(build_sampler(cfg, SIZES, seed=1, steps=STEPS), 200)
    assert draw(build_sampler(cfg, SIZES, seed=1, steps=STEPS), 200) == first
    assert draw(build_sampler(cfg, SIZES, seed=2, steps=STEPS), 200) != first


def test_scheduled_samplers_drop_a_stopped_task_and_renormalise() -> None:
    sizes = {"a": 100, "b": 300, "c": 600}
    annealed = build_sampler(MixingConfig(name="annealed"), sizes, seed=0, steps=STEPS)
    assert isinstance(annealed, ScheduledSampler)
    annealed.set_active(["a", "c"])
    assert annealed.probabilities == pytest.approx({"a": 100 / 700, "b": 0.0, "c": 600 / 700})
    assert "b" not in draw(annealed, 2000)  # epochs 2 and 3 and beyond: still without b
    alpha = 0.2
    assert annealed.probabilities == pytest.approx(
        {"a": 100**alpha / (100**alpha + 600**alpha), "b": 0.0, "c": 600**alpha / (100**alpha + 600**alpha)}
    )

    schedule = {"a": [[0, 1.0], [10, 0.0]], "b": [[0, 1.0]], "c": [[0, 0.0], [10, 2.0]]}
    scheduled = build_sampler(MixingConfig(name="schedule", schedule=schedule), sizes, seed=0)
    assert isinstance(scheduled, ScheduledSampler)
    scheduled.set_active(["a", "c"])
    assert scheduled.probabilities == pytest.approx({"a": 1.0, "b": 0.0, "c": 0.0})
    draws = draw(scheduled, 2000)
    assert "b" not in draws and set(draws[10:]) == {"c"}
    # Every task the schedule still weighs stopped: the ones left are drawn uniformly.
    scheduled.set_active(["a"])
    assert scheduled.probabilities == {"a": 1.0, "b": 0.0, "c": 0.0}
    assert set(draw(scheduled, 100)) == {"a"}


def test_a_resumed_scheduled_sampler_keeps_the_stopped_tasks_out() -> None:
    """train.restore loads the sampler's state, then sets the active tasks: in that order, as here."""
    cfg = MixingConfig(name="schedule", schedule={"a": [[0, 1.0], [50, 0.1]]})
    sizes = {"a": 1, "b": 1, "c": 1}
    original = build_sampler(cfg, sizes, seed=4)
    draw(original, 20)
    original.set_active(["a", "b"])
    draw(original, 7)
    state = original.state_dict()
    expected = draw(original, 60)
    resumed = build_sampler(cfg, sizes, seed=4)
    resumed.load_state_dict(state)
    resumed.set_active(["a", "b"])
    assert draw(resumed, 60) == expected and "c" not in expected


def test_a_sampler_state_without_a_draw_count_is_refused() -> None:
    temperature = build_sampler(MixingConfig(name="temperature"), SIZES, seed=0).state_dict()
    with pytest.raises(MtlError, match="draw count"):
        build_sampler(MixingConfig(name="annealed"), SIZES, seed=0, steps=STEPS).load_state_dict(temperature)


# --- composing the new options from overrides -------------------------------------------------

TWO = ["task=[sentences/yelp,sentences/imdb]"]


@pytest.mark.parametrize(
    "override",
    [
        "++mixing.schedule={yelp:[[0,1.0],[200,0.1]],imdb:[[0,0],[200,1]]}",
        # Ints where floats are meant: why the schema types keyframes as list[list[Any]].
        "++mixing.schedule={yelp:[[0,1],[200,0]],imdb:[[0,0.0],[200.0,1.0]]}",
    ],
)
def test_schedule_composes_from_one_override(override: str) -> None:
    cfg = to_typed(compose_config([*TWO, "mixing=schedule", override]))
    assert list(cfg.mixing.schedule) == ["yelp", "imdb"]
    assert [[float(v) for v in frame] for frame in cfg.mixing.schedule["yelp"]][0] == [0.0, 1.0]
    assert [float(s) for s, _ in cfg.mixing.schedule["imdb"]] == [0.0, 200.0]


def test_schedule_composes_one_task_at_a_time() -> None:
    overrides = [*TWO, "mixing=schedule", "+mixing.schedule.yelp=[[0,1.0],[200,0.1]]", "++mixing.schedule.imdb=[[0,1]]"]
    assert to_typed(compose_config(overrides)).mixing.schedule == {"yelp": [[0, 1.0], [200, 0.1]], "imdb": [[0, 1]]}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["mixing=schedule", "++mixing.schedule={yelpp:[[0,1]]}"], "names unknown task 'yelpp'"),
        (["mixing=schedule", "++mixing.schedule={yelp:[[0,1],[200,-1]]}"], "`mixing.schedule.yelp`: weights must"),
        (["mixing=schedule", "++mixing.schedule={yelp:[[0,nan]]}"], "`mixing.schedule.yelp[0][1]` must be a finite"),
        (["mixing=schedule", "++mixing.schedule={yelp:[0,1]}"], "mixing.schedule"),
        (["mixing=uniform", "++mixing.schedule={yelp:[[0,1]]}"], "`mixing.schedule` is only used by mixing=schedule"),
        (["mixing=annealed", "mixing.alpha_floor=2"], "`mixing.alpha_floor` must be in [0, 1]"),
    ],
)
def test_bad_schedule_overrides_are_one_line_naming_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(MtlError) as info:
        to_typed(compose_config([*TWO, *overrides]))
    assert message in str(info.value) and "\n" not in str(info.value)


# --- tiny real runs -------------------------------------------------------------------------


def validation_records(run_dir: Path) -> dict[int, dict[str, dict]]:
    """step -> task -> its validation record of metrics.jsonl."""
    out: dict[int, dict[str, dict]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("split") == "validation":
            out.setdefault(rec["step"], {})[rec["task"]] = rec
    return out


def batches_drawn(records: dict[int, dict[str, dict]], step: int, batch_size: int = 8) -> dict[str, int]:
    return {task: rec["examples_seen"] // batch_size for task, rec in records[step].items() if "examples_seen" in rec}


def test_tiny_run_with_a_schedule_trains_the_tasks_in_turn(tmp_path: Path) -> None:
    # restaurants alone for the first 10 steps, electronics alone for the next 10.
    schedule = "{restaurants:[[0,1],[9,1],[10,0]],electronics:[[0,0],[9,0],[10,1]]}"
    out = tiny_run(
        tmp_path / "runs", "mixing=schedule", f"++mixing.schedule={schedule}", "trainer.max_steps=20",
        "trainer.eval_every=10",
    )  # fmt: skip
    records = validation_records(Path(out["run_dir"]))
    assert batches_drawn(records, 10) == {"restaurants": 10, "electronics": 0}
    assert batches_drawn(records, 20) == {"restaurants": 10, "electronics": 10}
    state = json.loads((Path(out["run_dir"]) / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert state["sampler"]["draws"] == 20


def test_tiny_annealed_run_measures_epochs_as_the_run_does(tmp_path: Path) -> None:
    # 40 + 240 training examples in batches of 8: 35 steps an epoch, 2 epochs; alpha 1 then 0.
    overrides = ["mixing=annealed", "mixing.alpha_floor=0", "task.restaurants.max_train_examples=40",
                 "trainer.max_steps=70", "trainer.eval_every=35"]  # fmt: skip
    out = tiny_run(tmp_path / "runs", *overrides)
    records = validation_records(Path(out["run_dir"]))
    log = (Path(out["run_dir"]) / "train.log").read_text()
    assert "70 steps (2.00 epochs of 35 steps)" in log

    # The same sampler as train.prepare builds: the run drew one task per step from it, epoch by epoch.
    sampler = build_sampler(
        MixingConfig(name="annealed", alpha_floor=0.0), {"restaurants": 40, "electronics": 240}, 42, StepCounts(35, 70)
    )
    first, second = Counter(draw(sampler, 35)), Counter(draw(sampler, 35))
    assert batches_drawn(records, 35) == {"restaurants": first["restaurants"], "electronics": first["electronics"]}
    assert batches_drawn(records, 70) == {t: first[t] + second[t] for t in ("restaurants", "electronics")}
    # Proportional (1/7 of the batches) in the first epoch, uniform (1/2) in the second.
    assert first["restaurants"] < second["restaurants"]


class SignalAt(Callback):
    """Sends SIGINT to this process after step `step`, as a user's Ctrl-C would (see test_resume)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, parts, state, step) -> None:
        if state.step == self.step:
            signal.raise_signal(signal.SIGINT)


def test_a_scheduled_run_stopped_and_resumed_ends_as_an_uninterrupted_one(tmp_path: Path, mtl, monkeypatch) -> None:
    from mtl_cli import train as train_module  # torch: imported by the tests that train

    args = ["mixing=schedule", "++mixing.schedule={restaurants:[[0,1],[20,0.1]]}", "trainer.max_steps=24",
            "trainer.eval_every=12"]  # fmt: skip
    reference = Path(tiny_run(tmp_path / "reference", *args)["run_dir"])
    build = train_module.build_callbacks
    with monkeypatch.context() as patched:
        patched.setattr(train_module, "build_callbacks", lambda parts: [*build(parts), SignalAt(7)])
        stopped = mtl("train", *TINY_RUN, *args, cwd=tmp_path)
    assert stopped.returncode == 130, stopped.stderr
    (run,) = run_dirs(tmp_path / "runs")
    state = json.loads((run / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert state["step"] == 7 and state["sampler"]["draws"] == 7
    resumed = mtl("train", f"resume={run}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert (run / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()
    assert (run / "results.json").read_bytes() == (reference / "results.json").read_bytes()
