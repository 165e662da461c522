"""Validation: closed choices are enums the schema rejects, cross-field checks read the plugins'
flags, and every mistake (trainer.best_metric included) fails before anything runs."""

from __future__ import annotations

import ast
import dataclasses
import json
from enum import Enum
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

import mtl_cli.config
from mtl_cli.cli import rewrite_overrides
from mtl_cli.compose import check_overrides, compose_config, compose_typed
from mtl_cli.config import Choice, NonFinite, Precision, Truncation
from mtl_cli.errors import MtlError
from mtl_cli.validation import to_typed

# override -> (the key it names, the allowed names)
CHOICES = {
    "trainer.precision=fp8": ("trainer.precision", "[auto, fp32, bf16, fp16]"),
    "trainer.nonfinite=ignore": ("trainer.nonfinite", "[stop, skip]"),
    "task.restaurants.truncation=middle": ("task.restaurants.truncation", "[head, tail, head+tail]"),
    "task.restaurants.task_marker=suffix": ("task.restaurants.task_marker", "[prefix, embedding]"),
    "sharing.pooling=max": ("sharing.pooling", "[mean, cls]"),
    "sharing.adapter=ia3": ("sharing.adapter", "[lora]"),
    "task.restaurants.format=xml": (
        "task.restaurants.format",
        "[csv, tsv, json, jsonl, parquet, conll, text, parallel]",
    ),
    "task.restaurants.source=s3": ("task.restaurants.source", "[local, hub]"),
}


def one_line_error(overrides: list[str]) -> str:
    with pytest.raises(MtlError) as info:
        check_overrides(rewrite_overrides(overrides), {}, multirun=False)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("override", list(CHOICES))
def test_a_value_outside_a_closed_choice_names_the_override(override: str) -> None:
    key, allowed = CHOICES[override]
    message = one_line_error([override])
    assert f"`{override}`" in message and allowed in message


@pytest.mark.parametrize("override", list(CHOICES))
def test_a_bad_choice_in_a_saved_config_names_the_key(override: str) -> None:
    """A YAML (say a run's config.yaml edited by hand) goes through to_typed, not Hydra."""
    key, allowed = CHOICES[override]
    raw = OmegaConf.create(OmegaConf.to_container(compose_config()))
    assert isinstance(raw, DictConfig)
    OmegaConf.update(raw, key, override.partition("=")[2])
    with pytest.raises(MtlError) as info:
        to_typed(raw)
    assert f"bad config value at `{key}`" in str(info.value) and allowed in str(info.value)
    assert "\n" not in str(info.value)


def test_choices_read_as_their_plain_names() -> None:
    overrides = ["trainer.precision=bf16", "task.restaurants.truncation=head+tail"]
    cfg = to_typed(compose_config(rewrite_overrides(overrides)))
    t, task = cfg.trainer, cfg.task["restaurants"]
    assert t.precision is Precision.bf16 and t.precision == "bf16" and t.nonfinite == NonFinite.stop == "stop"
    assert task.truncation is Truncation["head+tail"] and task.truncation == "head+tail"
    # Log lines (%-formatted), messages and `datasets` fingerprints (which repr their settings) see
    # the plain name.
    assert f"{t.precision}" == str(t.precision) == "bf16" and "%s" % task.truncation == "head+tail"  # noqa: UP031
    assert repr(task.truncation) == repr("head+tail")
    assert cfg.task["electronics"].task_marker is None


def test_every_choice_member_is_named_by_its_value() -> None:
    """OmegaConf reads YAML and overrides by member name, JSON and comparisons use the value."""
    found = vars(mtl_cli.config).values()
    choices = [v for v in found if isinstance(v, type) and issubclass(v, Choice) and v is not Choice]
    assert len(choices) >= 8
    for choice in choices:
        assert all(member.name == member.value for member in choice), choice


def test_typed_config_round_trips_through_yaml_and_json() -> None:
    overrides = ["trainer.precision=bf16", "trainer.nonfinite=skip", "sharing.pooling=cls",
                 "task.restaurants.truncation=head+tail", "task.restaurants.task_marker=embedding"]  # fmt: skip
    cfg = to_typed(compose_config(rewrite_overrides(overrides)))
    text = OmegaConf.to_yaml(OmegaConf.structured(cfg))
    assert "precision: bf16\n" in text and "truncation: head+tail\n" in text and "Precision" not in text
    loaded = OmegaConf.create(text)
    assert isinstance(loaded, DictConfig)
    again = to_typed(loaded)
    assert again == cfg
    json.dumps(dataclasses.asdict(cfg.encoder))
    json.dumps(dataclasses.asdict(cfg.trainer))
    # transfer.cache_key hashes this string: with enums it must read as it did with plain strings.
    container = OmegaConf.to_container(OmegaConf.structured(cfg))
    plain = OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)
    assert isinstance(container, dict) and isinstance(plain, dict)
    assert isinstance(container["trainer"]["precision"], Enum) and not isinstance(plain["trainer"]["precision"], Enum)
    assert json.dumps(container, sort_keys=True) == json.dumps(plain, sort_keys=True)


# --- trainer.best_metric: checked against the task types' METRICS before anything runs ----------


@pytest.mark.parametrize("metric", ["main", "accuracy", "macro_f1"])
def test_best_metric_of_the_tasks_is_accepted(metric: str) -> None:
    assert to_typed(compose_config([f"trainer.best_metric={metric}"])).trainer.best_metric == metric


def test_unknown_best_metric_is_refused_at_start_up() -> None:
    message = one_line_error(["trainer.best_metric=bogus"])
    assert "`trainer.best_metric=bogus`" in message and "use main or one of ['accuracy', 'macro_f1']" in message


def test_best_metric_of_an_auxiliary_task_only_counts_when_every_task_is_auxiliary() -> None:
    # The average that picks checkpoints/best leaves auxiliary (MLM) tasks out, so their metrics
    # are not candidates beside a classification task...
    mixed = ["task=[demo/restaurants,mlm/books_unlabelled]", "data_root=/data", "trainer.best_metric=perplexity"]
    assert "`trainer.best_metric=perplexity`" in one_line_error(mixed)
    # ...but are when every task is auxiliary (the average then covers them all).
    only_mlm = ["task=[mlm/books_unlabelled]", "data_root=/data", "trainer.best_metric=perplexity"]
    assert to_typed(compose_config(only_mlm)).trainer.best_metric == "perplexity"


# --- checks that span several fields, reading the plugins' flags ---------------------------------


@pytest.mark.parametrize("method", ["gradnorm", "pcgrad", "cagrad"])
def test_gradient_methods_need_a_trainable_shared_encoder(method: str) -> None:
    message = one_line_error([f"loss_weighting={method}", "sharing=adapters"])
    assert f"loss_weighting={method} acts on the shared encoder's gradients" in message
    assert "sharing.train_encoder=true" in message
    to_typed(compose_config([f"loss_weighting={method}", "sharing=adapters", "sharing.train_encoder=true"]))
    to_typed(compose_config([f"loss_weighting={method}", "sharing=partial"]))


def test_early_stopping_needs_a_method_that_supports_it() -> None:
    message = one_line_error(["loss_weighting=gradnorm", "trainer.early_stopping_patience=2"])
    assert "loss_weighting=gradnorm balances every task at every step" in message
    to_typed(compose_config(["loss_weighting=pcgrad", "trainer.early_stopping_patience=2"]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["task.restaurants.type=seq3seq"], "`task.restaurants.type`: unknown task type 'seq3seq'; use one of"),
        (["sharing.name=tree"], "unknown sharing scheme 'tree' (`sharing=`); use one of"),
        (["loss_weighting.name=max"], "unknown loss weighting 'max' (`loss_weighting=`); use one of"),
        (["mixing.name=softmax"], "unknown mixing strategy 'softmax' (`mixing=`): choose one of"),
        (["task.restaurants.head_tokens=500"], "`task.restaurants.head_tokens` must be between 1"),
    ],
)
def test_plugin_names_and_ranges(overrides: list[str], message: str) -> None:
    assert message in one_line_error(overrides)


def test_config_is_a_leaf_module() -> None:
    """config.py imports nothing else of mtl_cli: the plugins import their typed configs from it."""
    tree = ast.parse(Path(mtl_cli.config.__file__).read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m.startswith("mtl_cli")}


def test_encoding_errors_is_checked_as_a_plain_string() -> None:
    """Not a Choice: a member named `replace` would hide str.replace on every member."""
    assert "`task.restaurants.encoding_errors` must be one of [strict, replace, ignore]; got 'loose'" in one_line_error(
        ["task.restaurants.encoding_errors=loose"]
    )
    assert compose_typed(["task.restaurants.encoding_errors=replace"]).task["restaurants"].encoding_errors == "replace"
