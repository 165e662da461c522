"""One registry per plugin family: its folder, its registry and its conf/ group cannot drift apart,
each plugin declares what it can do, and a plugin added by the README's steps validates and trains.

Adding a plugin (README, Development): a module in the family's folder, its name in the family's
registry, and a YAML (a task with `type: <name>`, or conf/<family>/<name>.yaml). The tests below
do exactly that, with the module put in `sys.modules` as `mtl_cli.<family>.<name>`, the registry
extended through monkeypatch, and the YAML written to a user --config-dir.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import mtl_cli
from mtl_cli import loss_weighting, mixing, sharing, task_types
from mtl_cli.compose import compose_config, known_options
from mtl_cli.config import CONF_DIR, LossWeightingConfig
from mtl_cli.errors import MtlError
from mtl_cli.loss_weighting import equal
from mtl_cli.mixing.sampler import random_strategy
from mtl_cli.mixing.uniform import uniform_probabilities
from mtl_cli.sharing import hard
from mtl_cli.task_types import classification
from mtl_cli.validation import to_typed

PACKAGE = Path(mtl_cli.__file__).parent

# family folder -> (its registry's names, the modules in the folder that are helpers, not plugins)
FAMILIES = {
    "task_types": (lambda: task_types.TASK_TYPES, {"sequence"}),
    "sharing": (lambda: sharing.SCHEMES, set()),
    "loss_weighting": (lambda: loss_weighting.METHODS, {"surgery", "weighted"}),
    "mixing": (lambda: tuple(mixing.STRATEGIES), {"sampler"}),
}
# The families chosen by a conf/ group of the same name (task types are chosen by `type:` in a task).
GROUPS = ("sharing", "loss_weighting", "mixing")

# A tiny training run: the smoke experiment cut to two steps and one evaluation.
TINY_RUN = ["experiment=smoke", "trainer.max_steps=2", "trainer.eval_every=2", "trainer.progress=false"]


def plugin_modules(family: str) -> set[str]:
    return {p.stem for p in (PACKAGE / family).glob("*.py") if p.stem != "__init__"}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_registry_equals_the_modules_in_its_folder(family: str) -> None:
    names, helpers = FAMILIES[family]
    assert helpers <= plugin_modules(family), "a helper named here is gone: update FAMILIES"
    assert set(names()) == plugin_modules(family) - helpers
    assert len(set(names())) == len(names())


@pytest.mark.parametrize("family", GROUPS)
def test_registry_equals_its_conf_group(family: str) -> None:
    names, _ = FAMILIES[family]
    assert set(known_options(family)) == set(names())
    for name in names():
        assert OmegaConf.load(CONF_DIR / family / f"{name}.yaml").name == name


@pytest.mark.parametrize(
    ("family", "get"),
    [("task_types", task_types.get), ("sharing", sharing.get), ("loss_weighting", loss_weighting.get),
     ("mixing", mixing.get)],
)  # fmt: skip
def test_unknown_name_gives_one_line_listing_the_registry(family: str, get) -> None:
    with pytest.raises(MtlError) as info:
        get("nosuch")
    message = str(info.value)
    assert "'nosuch'" in message and "one of" in message and "\n" not in message
    names, _ = FAMILIES[family]
    assert all(name in message for name in names())


# --- what each plugin can do: flags on the plugin module ---------------------------------------


@pytest.mark.parametrize("name", loss_weighting.METHODS)
def test_loss_weighting_flags(name: str) -> None:
    module = loss_weighting.get(name)
    flags = ("NEEDS_ALL_TASKS", "ACTS_ON_SHARED_GRADIENTS", "SUPPORTS_EARLY_STOPPING", "SUPPORTS_ACCUMULATION")
    assert all(isinstance(getattr(module, flag), bool) for flag in flags)
    # The built object reads its module's flag: one source for the training loop and validation.
    built = module.build(LossWeightingConfig(name=name), ["a", "b"], 10)
    assert built.needs_all_tasks is module.NEEDS_ALL_TASKS


def test_loss_weighting_flag_values() -> None:
    surgery = {"gradnorm", "pcgrad", "cagrad"}
    assert {n for n in loss_weighting.METHODS if loss_weighting.get(n).NEEDS_ALL_TASKS} == surgery
    assert {n for n in loss_weighting.METHODS if loss_weighting.get(n).ACTS_ON_SHARED_GRADIENTS} == surgery
    assert {n for n in loss_weighting.METHODS if not loss_weighting.get(n).SUPPORTS_EARLY_STOPPING} == {"gradnorm"}


def test_sharing_flags() -> None:
    assert {n: sharing.get(n).FREEZES_ENCODER for n in sharing.SCHEMES} == {
        "hard": False, "partial": False, "adapters": True, "mmoe": False,
    }  # fmt: skip


# Small inputs each type's metrics() accepts: (predictions, gold values, labels, loss).
METRIC_INPUTS = {
    "classification": ([0, 1, 1], [0, 1, 0], ["a", "b"], 0.5),
    "regression": ([0.1, 0.5, 0.9], [0.0, 0.6, 1.0], None, 0.1),
    "multilabel": ([[1, 0], [0, 1], [1, 1]], [[1, 0], [1, 1], [0, 1]], ["x", "y"], 0.3),
    "token_classification": ([[0, 1, 2], [0]], [[0, 1, 0], [0]], ["O", "B-LOC", "I-LOC"], 0.4),
    "mlm": ([3, 4, 5], [3, 4, 6], None, 2.0),
    "seq2seq": ([("one and two", "eins und zwei")], ["one and two"], None, 1.5),
}


@pytest.mark.parametrize("name", task_types.TASK_TYPES)
def test_task_type_metrics_lists_what_metrics_returns(name: str) -> None:
    module = task_types.get(name)
    assert module.METRICS[0] == module.MAIN_METRIC
    assert isinstance(module.AUXILIARY, bool)
    assert set(module.metrics(*METRIC_INPUTS[name])) == set(module.METRICS)


# --- a plugin added by the documented steps validates and trains -------------------------------


def copy_module(name: str, base: types.ModuleType | None, **changes: object) -> types.ModuleType:
    """A plugin module `name` with `base`'s contents and `changes`: what a user's new file would hold."""
    module = types.ModuleType(name)
    if base is not None:
        vars(module).update({k: v for k, v in vars(base).items() if not k.startswith("__")})
    vars(module).update(changes)
    return module


def add_plugin(monkeypatch, family: str, name: str, module: types.ModuleType) -> None:
    """The README's first two steps: the module in the family's folder, its name in the registry."""
    monkeypatch.setitem(sys.modules, f"mtl_cli.{family}.{name}", module)
    package = sys.modules[f"mtl_cli.{family}"]
    if family == "mixing":
        # A random strategy's module holds its probability function; STRATEGIES maps the name to it.
        monkeypatch.setitem(mixing.STRATEGIES, name, random_strategy(getattr(module, f"{name}_probabilities")))
    else:
        registry = {"task_types": "TASK_TYPES", "sharing": "SCHEMES", "loss_weighting": "METHODS"}[family]
        monkeypatch.setattr(package, registry, (*getattr(package, registry), name))


def user_conf(tmp_path: Path, files: dict[str, str]) -> str:
    """The README's third step: the YAML in the user's --config-dir."""
    for rel, text in files.items():
        path = tmp_path / "myconf" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(tmp_path / "myconf")


def train_tiny(tmp_path: Path, overrides: list[str], config_dir: str) -> dict:
    from mtl_cli.train import train  # torch and transformers: only the tests that train need them

    return train(compose_config([*TINY_RUN, f"runs_root={tmp_path / 'runs'}", *overrides], config_dir=config_dir))


def test_new_task_type(monkeypatch, tmp_path: Path) -> None:
    calls = []

    def metrics(preds: list, golds: list, labels: list[str], loss: float) -> dict[str, float]:
        calls.append(len(preds))
        return {**classification.metrics(preds, golds, labels, loss), "mine_score": 1.0}

    module = copy_module(
        "mtl_cli.task_types.mine", classification, METRICS=(*classification.METRICS, "mine_score"), metrics=metrics
    )
    add_plugin(monkeypatch, "task_types", "mine", module)
    restaurants = (CONF_DIR / "task" / "demo" / "restaurants.yaml").read_text()
    task_yaml = restaurants.replace("task.restaurants", "task.mine") + "type: mine\n"
    conf = user_conf(tmp_path, {"task/mine.yaml": task_yaml})
    # best_metric names the new type's own metric: validation reads it from the plugin's METRICS.
    overrides = ["task=[mine]", "trainer.best_metric=mine_score"]
    cfg = to_typed(compose_config(overrides, config_dir=conf))
    assert cfg.task["mine"].type == "mine"
    out = train_tiny(tmp_path, overrides, conf)
    assert calls and out["results"]["mine"]["mine_score"] == 1.0


def test_new_sharing_scheme(monkeypatch, tmp_path: Path) -> None:
    built = []

    def build(encoder, tasks, cfg):
        built.append(cfg.name)
        return hard.build(encoder, tasks, cfg)

    add_plugin(monkeypatch, "sharing", "mine", copy_module("mtl_cli.sharing.mine", hard, build=build))
    conf = user_conf(tmp_path, {"sharing/mine.yaml": "# mtl train sharing=mine\nname: mine\n"})
    assert to_typed(compose_config(["sharing=mine"], config_dir=conf)).sharing.name == "mine"
    train_tiny(tmp_path, ["sharing=mine"], conf)
    assert built == ["mine"]


def test_new_loss_weighting(monkeypatch, tmp_path: Path) -> None:
    built = []

    def build(cfg, tasks, steps_per_epoch):
        built.append(cfg.name)
        return equal.build(cfg, tasks, steps_per_epoch)

    module = copy_module("mtl_cli.loss_weighting.mine", equal, build=build, SUPPORTS_EARLY_STOPPING=False)
    add_plugin(monkeypatch, "loss_weighting", "mine", module)
    conf = user_conf(tmp_path, {"loss_weighting/mine.yaml": "# mtl train loss_weighting=mine\nname: mine\n"})
    assert to_typed(compose_config(["loss_weighting=mine"], config_dir=conf)).loss_weighting.name == "mine"
    # Its flags are read from the module, not from a list of names elsewhere.
    with pytest.raises(MtlError, match="loss_weighting=mine .* cannot stop early"):
        to_typed(compose_config(["loss_weighting=mine", "trainer.early_stopping_patience=2"], config_dir=conf))
    train_tiny(tmp_path, ["loss_weighting=mine"], conf)
    assert built == ["mine"]


def test_new_mixing_strategy(monkeypatch, tmp_path: Path) -> None:
    seen = []

    def mine_probabilities(cfg, sizes: dict[str, int]) -> dict[str, float]:
        seen.append(dict(sizes))
        return uniform_probabilities(cfg, sizes)

    module = copy_module("mtl_cli.mixing.mine", None, mine_probabilities=mine_probabilities)
    add_plugin(monkeypatch, "mixing", "mine", module)
    conf = user_conf(tmp_path, {"mixing/mine.yaml": "# mtl train mixing=mine\nname: mine\n"})
    assert to_typed(compose_config(["mixing=mine"], config_dir=conf)).mixing.name == "mine"
    out = train_tiny(tmp_path, ["mixing=mine"], conf)
    assert seen and set(seen[0]) == {"restaurants", "electronics"} <= set(out["results"])
