"""Task-mixing strategies: configured probabilities, realised frequencies, determinism, resume, bad configs."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from omegaconf import OmegaConf

from mtl_cli.config import CONF_DIR, MixingConfig
from mtl_cli.errors import MtlError
from mtl_cli.mixing import STRATEGIES, RandomSampler, RoundRobinSampler, build_sampler, check_config

SIZES = {"a": 100, "b": 400}
DRAWS = 20_000


def draw(sampler, n: int) -> list[str]:
    return [sampler.next_task() for _ in range(n)]


def assert_frequencies_match(sampler, n: int = DRAWS) -> None:
    counts = Counter(draw(sampler, n))
    assert set(counts) <= set(sampler.probabilities)
    for task, p in sampler.probabilities.items():
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
    ],
    ids=lambda value: value.name if isinstance(value, MixingConfig) else "",
)
def test_probabilities_match_hand_computed_values(cfg: MixingConfig, expected: dict[str, float]) -> None:
    probabilities = build_sampler(cfg, SIZES, seed=0).probabilities
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
    [MixingConfig(name="temperature", temperature=2.0), MixingConfig(name="round_robin")],
    ids=lambda cfg: cfg.name,
)
def test_state_dict_resumes_the_identical_continuation(cfg: MixingConfig) -> None:
    sizes = {"a": 100, "b": 400, "c": 50}
    original = build_sampler(cfg, sizes, seed=11)
    draw(original, 37)
    state = original.state_dict()
    expected = draw(original, 100)

    # A fresh sampler with another seed, as after a restart, must follow the saved position.
    resumed = build_sampler(cfg, sizes, seed=99)
    draw(resumed, 5)
    resumed.load_state_dict(state)
    assert draw(resumed, 100) == expected


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
        build_sampler(cfg, SIZES, seed=0)


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
