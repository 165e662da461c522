"""Compose configs outside `@hydra.main`: for tests, and to check a command line before a run starts.

Hydra reports a bad override as a multi-line message and exit code 1; `check_overrides`
composes every configuration a command would run first, so each mistake becomes one line
naming the override to fix, and no run directory is created.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mtl_cli.config import CONF_DIR
from mtl_cli.errors import MtlError, first_line


def known_options(group: str, extra_dirs: Sequence[str] = ()) -> list[str]:
    names = set()
    for root in [CONF_DIR, *map(Path, extra_dirs)]:
        base = root / group
        if base.is_dir():
            names |= {str(p.relative_to(base).with_suffix("")) for p in base.rglob("*.yaml")}
    return sorted(names)


def compose_config(
    overrides: Sequence[str] = (),
    config_dir: str | None = None,
    config_name: str = "config",
    return_hydra_config: bool = False,
) -> DictConfig:
    """The composed (unresolved) config, as `mtl train` would see it (with its `hydra` node, the
    launcher and sweeper settings, when `return_hydra_config`). Raises MtlError."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = list(overrides)
    if config_dir is not None:
        check_config_dir(config_dir)
    if config_dir:
        overrides.append(f"hydra.searchpath=[file://{os.path.abspath(config_dir)}]")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides, return_hydra_config=return_hydra_config)
    except Exception as err:
        raise MtlError(describe_hydra_error(err, [config_dir] if config_dir else [])) from None
    finally:
        GlobalHydra.instance().clear()


def check_config_dir(config_dir: str) -> None:
    """Hydra only warns about a missing search path (a Python warning), then fails on what it lacks."""
    if not config_dir or not Path(config_dir).is_dir():
        what = "does not exist" if not config_dir or not os.path.lexists(config_dir) else "is not a directory"
        raise MtlError(
            f"--config-dir {config_dir!r} {what}; pass the folder that holds your task/ configs (mtl tasks --config-dir DIR lists them)"
        )


def describe_yaml_error(err: BaseException) -> str | None:
    """A YAML syntax error anywhere in the chain, as `FILE line N, column M: problem`; None without one."""
    import yaml

    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, yaml.MarkedYAMLError):
            mark = current.problem_mark or current.context_mark
            problem = current.problem or current.context or first_line(current)
            where = f"{mark.name} line {mark.line + 1}, column {mark.column + 1}" if mark else "a YAML file"
            start = current.context_mark
            if current.problem and current.context and start is not None and start.line != getattr(mark, "line", None):
                problem += f" ({current.context} from line {start.line + 1})"
            return f"broken YAML in {where}: {problem}; fix the YAML there"
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def describe_hydra_error(err: Exception, extra_dirs: list[str]) -> str:
    broken = describe_yaml_error(err)
    if broken:
        return broken
    text = str(err).strip()
    missing = re.search(r"Could not (?:find|load) '([^']+)'", text)
    if missing and missing.group(1).startswith("hydra/"):
        return describe_hydra_group_error(missing.group(1), text)
    if missing:
        group, _, option = missing.group(1).rpartition("/")
        top, _, rest = group.partition("/")
        option = f"{rest}/{option}" if rest else option
        known = known_options(top, extra_dirs)
        if not known:
            return f"unknown config group or file '{missing.group(1)}'; check the override's name"
        what = "task" if top == "task" else f"option for `{top}=`"
        return f"unknown {what} '{option}'; known: {', '.join(known)}"
    cause = err.__cause__ or err.__context__
    key = re.search(r"Could not override '([^']+)'", text) or re.search(r"full_key: (\S+)", str(cause or ""))
    if "not in struct" in text or "not in struct" in str(cause or "") or "Could not override" in text:
        name = key.group(1) if key else "?"
        if name.startswith("hydra."):  # a launcher's or sweeper's own keys exist only with it selected
            return (
                f"unknown config key `{name}` (misspelt, or a key of another launcher or sweeper?); "
                "`mtl train hydra/launcher=NAME hydra/sweeper=NAME --cfg hydra` shows the hydra keys"
            )
        return f"unknown config key `{name}` (misspelt?); `mtl train --cfg job` shows the valid keys"
    merging = re.search(r"Error merging override (\S+)", text)
    if merging and cause is not None:
        detail = first_line(cause)
        override = merging.group(1)
        if "is not a ListConfig" in detail and "=" in override:  # key=value where the key holds a list
            listed, _, value = override.partition("=")
            detail = detail.rstrip(".") + f"; this key takes a list: {listed}=[{value}]"
        return f"bad value in override `{override}`: {detail}"
    # not "sweep" alone: hydra.sweeper.* keys name it too
    if re.search(r"ambiguous|sweep parameters|requires --multirun", text, re.IGNORECASE):
        return f"{first_line(err)}; a sweep (a=1,2) needs -m: mtl train -m ..."
    line = first_line(err)
    if line.endswith(":") and cause is not None:  # "... raised while composing config:" then the cause
        line = f"{line} {first_line(cause)}"
    return line


def describe_hydra_group_error(missing: str, text: str) -> str:
    """`hydra/launcher=jobllib`: the options Hydra found (its message lists them); a plugin's option
    that is not installed: the extra that installs it."""
    from mtl_cli.sweeps import PLUGINS, SWEEP_EXTRA

    group, _, option = missing.rpartition("/")
    listed = re.search(r"Available options in '[^']+':\n((?:\t[^\n]*\n?)+)", text)
    known = [line.strip() for line in listed.group(1).splitlines() if line.strip()] if listed else []
    package = PLUGINS.get((group, option))
    if package:
        return f"{group}={option} needs the Hydra plugin {package}, which is not installed: {SWEEP_EXTRA}"
    hint = "" if set(known) >= {o for g, o in PLUGINS if g == group} else f" (more with {SWEEP_EXTRA})"
    return f"unknown option for `{group}=`: '{option}'; known: {', '.join(known) or 'none'}{hint}"


def check_overrides(overrides: list[str], flags: dict[str, str], multirun: bool) -> None:
    """Compose and validate every configuration the command would run (one sweep axis at a time)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    # Validation reads the plugin modules (torch, ~2 s); `mtl tasks` uses this module without it.
    from mtl_cli.validation import to_typed

    config_dir = flags.get("--config-dir") or flags.get("-cd")
    config_name = flags.get("--config-name") or flags.get("-cn") or "config"
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except Exception as err:
        for text in overrides:  # name the one that fails
            try:
                parser.parse_overrides([text])
            except Exception as one:
                raise MtlError(f"cannot parse the override `{text}`: {first_line(one)}; fix its value") from None
        raise MtlError(f"cannot parse the overrides: {first_line(err)}") from None
    choices: list[list[str]] = []
    sampled: list[str] = []
    for text, override in zip(overrides, parsed, strict=True):
        if override.is_sweep_override():
            if not multirun:
                raise MtlError(f"`{text}` is a sweep: run it with -m (mtl train -m {text})")
            if override.is_interval_sweep():  # a range only a sampling sweeper (optuna) draws from
                sampled.append(text)
                continue
            try:
                values = list(override.sweep_string_iterator())
            except Exception:  # glob sweeps need the sweeper to expand; Hydra checks them
                continue
            # get_key_element() keeps the +/++/~ prefix of the override
            choices.append([f"{override.get_key_element()}={v}" for v in values])
        else:
            choices.append([text])
    firsts = [c[0] for c in choices]
    combos = [firsts] + [firsts[:i] + [v] + firsts[i + 1 :] for i, c in enumerate(choices) for v in c[1:]]
    if sampled:
        check_sampling_sweeper(sampled, firsts, config_dir, config_name)
    for combo in combos:
        cfg = compose_config(combo, config_dir, config_name)
        check_task_names(combo, cfg)
        check_objective(to_typed(cfg))


def check_sampling_sweeper(sampled: list[str], overrides: list[str], config_dir: str | None, config_name: str) -> None:
    """`x=interval(a,b)` is drawn from by a sampling sweeper; Hydra's basic sweeper stops on it with a traceback."""
    hydra = compose_config(overrides, config_dir, config_name, return_hydra_config=True).hydra
    if "BasicSweeper" in str(hydra.sweeper.get("_target_", "")):
        raise MtlError(
            f"`{sampled[0]}` is a range for a sampling sweeper, which Hydra's basic sweeper cannot run; add "
            "hydra/sweeper=optuna (e.g. experiment=optuna_mixing), or sweep listed values: key=1,2,5"
        )


def check_objective(cfg: Any) -> None:
    """`objective=` names a metric of the validation average the run will have: `main`, or a metric of
    its (non-auxiliary) tasks' types; refused before any training, in one line."""
    from mtl_cli import task_types

    if cfg.objective == "main":
        return
    types = [task_types.get(t.type) for t in cfg.task.values()]
    scored = [t for t in types if not t.AUXILIARY] or types
    names = ["main", *dict.fromkeys(m for t in scored for m in t.METRICS if m != "loss")]
    if cfg.objective not in names:
        raise MtlError(
            f"objective={cfg.objective} is not a validation metric of these tasks; use one of: {', '.join(names)}"
        )


def check_task_names(overrides: list[str], cfg: DictConfig) -> None:
    """Two task files writing the same `task.<name>` would silently merge into one task."""
    selected: list[str] = []
    for text in overrides:
        if text.startswith("task=["):
            selected = [t.strip() for t in text[len("task=[") : -1].split(",") if t.strip()]
    twice = sorted({t for t in selected if selected.count(t) > 1})
    if twice:  # one task trained as one, whatever the count: say so rather than drop the copy silently
        raise MtlError(
            f"task {', '.join(twice)} is selected more than once in task={'+'.join(selected)}; name each task once"
        )
    if selected and len(cfg.task) != len(set(selected)):
        raise MtlError(
            f"tasks {selected} name only {len(cfg.task)} distinct task(s) ({', '.join(cfg.task)}): two of them share "
            "a name; copy one into your own --config-dir with another `# @package task.<name>` header"
        )


def compose_typed(overrides: Sequence[str] = (), config_dir: str | None = None) -> Any:
    from mtl_cli.validation import to_typed  # heavy: see check_overrides

    return to_typed(compose_config(overrides, config_dir))
