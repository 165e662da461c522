"""`mtl`: a thin command line over `train()` and `evaluate_run()`.

    mtl train [-m] [hydra overrides]     e.g. mtl train task=sentences/yelp+sentences/imdb
    mtl eval RUN_DIR [split=test] [checkpoint=best] [tasks=a+b] [data_root=...]
    mtl predict RUN_DIR input=FILE [tasks=a+b] [out=FILE]   label new data with a trained run
    mtl export RUN_DIR task=NAME out=DIR [format=auto]      one task as a standalone model (hf, onnx)
    mtl transfer [overrides] [seeds=[..]] single-task baselines vs the multi-task run
    mtl report FOLDER                    the runs under FOLDER by configuration (seeds averaged), report.html
    mtl data check [overrides]           counts, labels, empty/over-long texts, duplicates, leakage
    mtl tasks [--config-dir DIR]         the task configs: built-in, and DIR's own

Heavy libraries (torch, transformers, datasets) are imported only by the command that needs them.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

USAGE = """usage: mtl <command> [args]

Multi-task NLP training driven by Hydra configs.

commands:
  train [-m] [overrides...]   train; e.g. mtl train task=sentences/yelp+sentences/imdb data_root=../shared/data
                              (mtl train --help lists the config groups; -m runs a sweep)
  train resume=RUN_DIR        continue a stopped run from its last checkpoint (Ctrl-C saves one)
  eval RUN_DIR [key=value]    evaluate a run's checkpoint: split=test|validation|test_<name> checkpoint=best|last|step-<n>
                              tasks=a+b data_root=DIR batch_size=N; RUN_DIR may be `latest`
  predict RUN_DIR input=FILE [key=value]
                              label new data: input=FILE|- (csv, tsv, json, jsonl, parquet, txt, conll) tasks=a+b
                              checkpoint=best out=FILE(.jsonl|.csv; default: standard output) overwrite=true
                              text_column=NAME text_pair_column=NAME batch_size=N logits=true
  export RUN_DIR task=NAME out=DIR [format=auto|hf|onnx|both] [checkpoint=best]
                              write one task as a model that runs without mtl: a transformers folder
                              (where the task maps onto a transformers class) and/or one ONNX graph
  transfer [overrides] [seeds=[1,2,3]]
                              single-task baselines vs the multi-task run, per task and seed, with a
                              report (transfer.md/.png); e.g. mtl transfer task=sentences/yelp+sentences/imdb
                              data_root=../shared/data seeds=[1,2,3]
  report FOLDER [split=validation|test]
                              the runs under FOLDER (e.g. a multirun sweep), seeds averaged per configuration,
                              best on validation: report.md/.csv/.json/.png and one page, report.html
  data check [overrides...]   check the tasks' data: counts, label distribution, empty and over-long
                              texts, duplicates, train/test overlap within and across tasks;
                              e.g. mtl data check task=emotion+sentences/yelp data_root=../shared/data
                              (--config-dir DIR for your own tasks, --out FILE for the JSON report)
  tasks [--config-dir DIR]    list the built-in tasks, and your own under DIR/task/

The run directory (runs/<date>/<time>_<tasks>/) holds config.yaml, checkpoints/, metrics.jsonl,
metrics.md/.csv, results.json and train.log.
"""

# Flags of Hydra's command line that take the next argument as their value.
_VALUE_FLAGS = {
    "-cd",
    "--config-dir",
    "-cn",
    "--config-name",
    "-cp",
    "--config-path",
    "--cfg",
    "-c",
    "-p",
    "--package",
    "--info",
    "--experimental-rerun",
}
# Free-form dictionaries: their keys are the user's (task names, label values), so an override
# may add a key. Hydra requires `++` for that; users should not have to know.
_OPEN_DICTS = re.compile(
    r"^(mixing\.weights|mixing\.schedule|loss_weighting\.weights|encoder\.config_overrides|task\.[^.=]+\.(label_map|files))(\.|=)"
)


def fail(message: str, code: int = 2) -> None:
    # One write (print writes the line and its end apart): the ranks of a distributed run share the
    # terminal, and their lines must not mix.
    sys.stderr.write(f"mtl: error: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


def rewrite_overrides(args: list[str]) -> list[str]:
    """`task=a+b` -> `task=[a,b]` (and sweeps `task=a+b,c` -> `task=[a,b],[c]`); open dict keys get `++`."""
    out: list[str] = []
    takes_value = False
    for arg in args:
        if takes_value or arg.startswith("-"):
            takes_value = arg in _VALUE_FLAGS
            out.append(arg)
            continue
        key, sep, value = arg.partition("=")
        if sep and key == "task" and not value.startswith("["):
            value = ",".join("[" + ",".join(p for p in alt.split("+")) + "]" for alt in value.split(","))
            arg = f"task={value}"
        elif sep and _OPEN_DICTS.match(arg):
            arg = "++" + arg
        out.append(arg)
    return out


def split_hydra_args(args: list[str]) -> tuple[list[str], dict[str, str], bool]:
    """(overrides, {flag: value}, multirun) from a `mtl train` command line."""
    overrides, flags, multirun = [], {}, False
    it = iter(args)
    for arg in it:
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg.startswith("-"):
            name, eq, val = arg.partition("=")
            flags[name] = val if eq else (next(it, "") if name in _VALUE_FLAGS else "")
        else:
            overrides.append(arg)
    return overrides, flags, multirun


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return
    if argv[0] in ("-V", "--version"):
        from mtl_cli import __version__

        print(f"mtl {__version__}")
        return
    command, rest = argv[0], argv[1:]
    commands = {
        "train": train_command, "eval": eval_command, "predict": predict_command, "export": export_command,
        "transfer": transfer_command, "report": report_command, "data": data_command, "tasks": tasks_command,
    }  # fmt: skip
    if command not in commands:
        fail(f"unknown command '{command}'; use one of: {', '.join(commands)} (mtl --help)")
    from mtl_cli.interrupts import StopRequest, exit_code, signal_name

    try:
        with StopRequest(at_once=True):  # SIGTERM like Ctrl-C, in every phase; the training loop sets its own
            commands[command](rest)
    except KeyboardInterrupt as err:  # a phase with nothing to save: its writes clean up after themselves
        fail(f"{signal_name(err)}: stopped; mtl {command} did not finish and wrote nothing", exit_code(err))


def train_command(args: list[str]) -> None:
    from mtl_cli.errors import MtlError

    completion = shell_completion_arg(args)
    if completion is not None:
        # Hydra's own bash script would call `mtl -sc ...` without `train` (see completion.py).
        from mtl_cli.completion import shell_completion

        try:
            return shell_completion(completion, rewrite_overrides, hydra_train)
        except MtlError as err:
            fail(str(err))
    resume_dir, rest = resume_args(args)
    if resume_dir is not None:
        return resume_command(resume_dir, rest)
    args = rewrite_overrides(args)
    overrides, flags, multirun = split_hydra_args(args)
    config_dir = flags.get("--config-dir", flags.get("-cd"))
    if config_dir is not None:  # also for --help and --cfg, which Hydra would only warn about
        from mtl_cli.compose import check_config_dir

        try:
            check_config_dir(config_dir)
        except MtlError as err:
            fail(str(err))
    informational = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "--version"}
    if not informational & set(flags):
        from mtl_cli.compose import check_overrides

        try:
            check_overrides(overrides, flags, multirun)
            check_run_dir_overrides(overrides)
            check_runs_writable(overrides, multirun)  # before Hydra makes the run's folder
        except MtlError as err:
            fail(str(err))
        try:
            if data_parallel(args, overrides, config_dir, multirun):
                return
        except MtlError as err:
            fail(str(err))
    from mtl_cli.sweeps import SWEEP

    SWEEP.start(overrides if multirun else None)
    sys.argv = ["mtl train", *args]
    hydra_train()


def data_parallel(args: list[str], overrides: list[str], config_dir: str | None, multirun: bool) -> bool:
    """Train data-parallel when asked: inside a launcher's process (torchrun, accelerate launch) this
    process trains as its rank; with trainer.devices=N > 1 and no launcher, torch's elastic launcher
    starts the N ranks. False: an ordinary one-process run (or sweep)."""
    from mtl_cli.compose import compose_config
    from mtl_cli.distributed import launched_world
    from mtl_cli.errors import MtlError

    world = launched_world()
    own = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/", "override hydra"))]
    if not world.distributed:
        if multirun:  # the first job stands for the sweep
            from mtl_cli.sweeps import first_job

            own = first_job(own)
        cfg = compose_config(own, config_dir)
        devices = cfg.trainer.get("devices")
        if not isinstance(devices, int) or devices <= 1:
            return False
        from mtl_cli.distributed import World
        from mtl_cli.train import check_distributed
        from mtl_cli.validation import to_typed

        typed = to_typed(cfg)
        check_distributed(typed, World(0, devices, 0, devices))  # one line here, not one per rank
        check_gpus(devices, typed.trainer.device)
        if multirun:
            raise MtlError(
                f"trainer.devices={devices} in a sweep (-m): a sweep's jobs are single processes; run each "
                "data-parallel job as its own command (mtl train trainer.devices=N ..., or torchrun)"
            )
        sys.exit(launch_ranks(devices, ["train", *args]))
    if multirun:
        raise MtlError(
            f"a sweep (-m) inside torchrun ({world.size} processes): run each job as its own torchrun command"
        )
    from mtl_cli.train import train

    cfg = compose_config(own, config_dir)
    named = [o.partition("=")[2] for o in overrides if o.lstrip("+~").startswith("hydra.run.dir=")]
    run_dir = Path(named[-1]) if named and "${" not in named[-1] else None
    rank_run(lambda: train(cfg, run_dir=run_dir, overrides=overrides), world.rank)
    return True


def check_gpus(devices: int, device: str) -> None:
    """On GPUs one rank per device: no more ranks than this machine has GPUs."""
    from mtl_cli.distributed import device_kind
    from mtl_cli.errors import MtlError

    if device_kind(device) != "cuda":
        return
    import torch

    count = torch.cuda.device_count()
    if devices > count:
        raise MtlError(
            f"trainer.devices={devices}, but this machine has {count} CUDA device(s); use trainer.devices={count} "
            "or fewer (more machines: torchrun --nnodes, see the README's Scaling out)"
        )


def launch_ranks(devices: int, argv: list[str]) -> int:
    """trainer.devices=N: N ranks of this command on this machine (torchrun --standalone's engine)."""
    from mtl_cli.distributed import launch

    print(f"mtl: starting {devices} processes (torch.distributed elastic launcher)", file=sys.stderr)
    code, rank = launch(devices, argv)
    if code > 128 and rank >= 0:
        import signal

        name = signal.Signals(code - 128).name if code - 128 in signal.Signals._value2member_map_ else code - 128
        print(f"mtl: rank {rank} ended by {name}; the other processes stopped", file=sys.stderr)
    return code


def rank_run(work, rank: int) -> None:
    """Run a distributed rank's training: its one-line error (prefixed with its rank beyond 0), and a
    failed peer (a collective broken by a rank that died) as one line, not a traceback."""
    from mtl_cli.distributed import RankZeroError
    from mtl_cli.errors import MtlError

    prefix = f"rank {rank}: " if rank else ""
    try:
        work()
    except MtlError as err:
        if rank and (isinstance(err, RankZeroError) or err.exit_code > 128):
            sys.exit(err.exit_code)  # rank 0's decision (or a stop signal to all): rank 0 says it
        fail(prefix + str(err), err.exit_code)
    except KeyboardInterrupt:
        raise
    except Exception as err:
        from mtl_cli.distributed import describe_failure, peer_failure

        if not peer_failure(err):
            raise
        fail(f"rank {rank}: stopped: another process of the run failed or stopped ({describe_failure(err)})", 1)


def shell_completion_arg(args: list[str]) -> str | None:
    """The value of `--shell-completion X` / `-sc X` / `--shell-completion=X`; None without."""
    for i, arg in enumerate(args):
        if arg in ("--shell-completion", "-sc"):
            return args[i + 1] if i + 1 < len(args) else ""
        if arg.startswith("--shell-completion="):
            return arg.partition("=")[2]
    return None


def resume_args(args: list[str]) -> tuple[str | None, list[str]]:
    """(run dir, other args) from `resume=DIR`, `--resume DIR` or `--resume=DIR`; (None, args) without."""
    for i, arg in enumerate(args):
        if arg.startswith(("resume=", "--resume=", "+resume=")):
            return arg.partition("=")[2], args[:i] + args[i + 1 :]
        if arg == "--resume":
            if i + 1 >= len(args):
                fail("--resume needs a run directory: mtl train --resume runs/<date>/<time>_<tasks>")
            return args[i + 1], args[:i] + args[i + 2 :]
    return None, args


def resume_command(run_dir: str, rest: list[str]) -> None:
    from mtl_cli.errors import MtlError
    from mtl_cli.train import resume

    trust = {"trust_remote_code=true", "encoder.trust_remote_code=true"}
    extra = [a for a in rest if a.lower() not in trust]
    if extra:
        fail(
            f"a resumed run keeps the config it started with (its config.yaml); drop {' '.join(extra)}, "
            "or start a new run with those overrides"
        )
    if not run_dir:
        fail("resume= needs a run directory: mtl train resume=runs/<date>/<time>_<tasks>")
    try:
        from mtl_cli.distributed import launched_world

        world = launched_world()
        if not world.distributed:
            devices = resume_devices(Path(run_dir))
            if devices > 1:  # a run started with trainer.devices=N goes on on N processes
                sys.exit(launch_ranks(devices, ["train", f"resume={run_dir}", *rest]))
        else:
            return rank_run(lambda: resume(Path(run_dir), trust_remote_code=len(rest) > len(extra)), world.rank)
        resume(Path(run_dir), trust_remote_code=len(rest) > len(extra))
    except MtlError as err:
        fail(str(err), err.exit_code)
    except KeyboardInterrupt as err:  # before training went on: the run directory is as it was
        from mtl_cli.interrupts import exit_code, signal_name

        fail(
            f"{signal_name(err)}: stopped before training went on; nothing was trained: mtl train resume={run_dir}",
            exit_code(err),
        )


def resume_devices(run_dir: Path) -> int:
    """trainer.devices of the run's config.yaml (1 when it cannot be read: resume then says why)."""
    from mtl_cli.errors import MtlError
    from mtl_cli.rundir import load_run_config

    try:
        devices = load_run_config(run_dir).trainer.devices
    except MtlError:
        return 1
    return devices or 1


def hydra_train() -> None:
    import hydra

    from mtl_cli.config import CONF_DIR  # importing it registers the schema and resolvers

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
    def _run(cfg):
        """One run, or one job of a sweep; a sweep's job returns the objective (hydra/sweeper=optuna)."""
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
        from omegaconf import read_write

        from mtl_cli.errors import MtlError
        from mtl_cli.rundir import remove_empty_dirs
        from mtl_cli.sweeps import SWEEP, in_turn, job_failed, job_threads, objective_value
        from mtl_cli.train import train

        hc = HydraConfig.get()
        out = Path(hc.runtime.output_dir)
        multirun = hc.mode == RunMode.MULTIRUN
        # The basic launcher runs the jobs in turn in this process: the first failure stops the sweep.
        # On a launcher or sweeper plugin a failed job returns a record instead (mtl_cli/sweeps.py).
        sweep = SWEEP if multirun and in_turn(hc) else None
        try:
            check_hydra_run_dir(out, list(hc.overrides.hydra), multirun)
            threads = job_threads(hc, cfg.trainer.threads) if multirun else cfg.trainer.threads
            if threads != cfg.trainer.threads:  # parallel jobs (joblib) share the cores
                with read_write(cfg):
                    cfg.trainer.threads = threads
            result = train(cfg, run_dir=out, overrides=list(hc.overrides.task))
            value = objective_value(result, cfg.objective) if multirun else None
        except MtlError as err:
            remove_empty_dirs(out, levels=2)
            message, code = str(err), err.exit_code
        except KeyboardInterrupt as err:  # before training started: nothing to save yet
            from mtl_cli.interrupts import exit_code, signal_name

            remove_empty_dirs(out, levels=2)
            message, code = f"{signal_name(err)}: stopped before training started; nothing was saved", exit_code(err)
        else:
            if sweep is not None:
                sweep.ran(hc.job.num, result.get("run_dir", out), list(hc.overrides.task))
            return value
        if multirun and sweep is None and code == 2:  # a mistake, not a signal: the other jobs go on
            return job_failed(hc, message, code)
        if sweep is not None:
            message = sweep.failed(hc.job.num, message, out, Path(hc.sweep.dir), list(hc.overrides.task))
        fail(message, code)

    from mtl_cli.errors import MtlError
    from mtl_cli.sweeps import SWEEP

    try:
        with SWEEP.outcome():  # a plugin sweep's failed jobs: one line at the end
            _run()
    except MtlError as err:
        fail(str(err), err.exit_code)


def check_runs_writable(overrides: list[str], multirun: bool) -> None:
    """The folder the run goes in can really be written (root passes `os.access` on a read-only
    folder): one line now, not Hydra's traceback when it makes the folder."""
    from mtl_cli.writers import check_writable

    values = dict(o.lstrip("+~").partition("=")[::2] for o in overrides if "=" in o)
    named = values.get("hydra.sweep.dir" if multirun else "hydra.run.dir")
    root = values.get("runs_root") or os.environ.get("MTL_RUNS_ROOT") or "runs"
    folder = Path(named if named and "${" not in named else root)
    check_writable(folder, ", or set runs_root=<a folder with room that you can write>")


def check_run_dir_overrides(overrides: list[str]) -> None:
    """`hydra.run.dir=` / `hydra.sweep.dir=` / `runs_root=` given as plain paths: checked before Hydra
    makes the folder (inside an existing run, a name longer than the filesystem takes)."""
    from mtl_cli.errors import MtlError
    from mtl_cli.rundir import check_run_dir_path, looks_like_run

    roots = [f"runs_root={os.environ['MTL_RUNS_ROOT']}"] if os.environ.get("MTL_RUNS_ROOT") else []
    for text in [*roots, *overrides]:
        key, _, value = text.lstrip("+~").partition("=")
        if key not in ("hydra.run.dir", "hydra.sweep.dir", "runs_root") or not value or "${" in value:
            continue
        check_run_dir_path(Path(value) if key == "hydra.run.dir" else Path(value) / "x")
        if key == "hydra.run.dir" and looks_like_run(Path(value)):
            raise MtlError(existing_run_message(Path(value)))


def existing_run_message(path: Path) -> str:
    return (
        f"hydra.run.dir={path} is an existing run; a new run needs a folder of its own (drop hydra.run.dir, "
        f"or continue that run with: mtl train resume={path})"
    )


def check_hydra_run_dir(out: Path, hydra_overrides: list[str], multirun: bool) -> None:
    """The folder Hydra chose: an existing run only by the same-second clash of its default name
    (train() then takes `_2`); one the user named with hydra.run.dir is refused. Inside a run: refused
    by train() (rundir.check_run_dir_path)."""
    from mtl_cli.errors import MtlError
    from mtl_cli.rundir import looks_like_run

    named = any(o.lstrip("+~").startswith("hydra.run.dir=") for o in hydra_overrides)
    if named and not multirun and looks_like_run(out):
        raise MtlError(existing_run_message(out))


def parse_key_values(args: list[str], allowed: dict[str, str]) -> dict[str, str]:
    out = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in allowed:
            fail(f"unknown argument '{arg}'; this command takes " + ", ".join(f"{k}=<{v}>" for k, v in allowed.items()))
        out[key] = value
    return out


def positive_int(opts: dict[str, str], key: str) -> int | None:
    value = opts.get(key)
    if value is None:
        return None
    if not (value.isdigit() and int(value) > 0):
        fail(f"{key} must be a positive whole number; got {key}={value}")
    return int(value)


def true_or_false(opts: dict[str, str], key: str) -> bool:
    value = opts.get(key, "false").lower()
    if value not in ("true", "false"):
        fail(f"{key} must be true or false; got {key}={opts[key]}")
    return value == "true"


def eval_command(args: list[str]) -> None:
    if not args or args[0] in ("-h", "--help"):
        print(
            "usage: mtl eval RUN_DIR|latest [split=test|validation|test_<name>] [checkpoint=best|last|best-<task>|step-<n>] "
            "[tasks=a+b] [data_root=DIR] [batch_size=N] [trust_remote_code=true] [allow_changed_data=true]"
        )
        return
    allowed = {
        "split": "test|validation",
        "checkpoint": "best|last",
        "tasks": "a+b",
        "data_root": "dir",
        "batch_size": "n",
        "runs_root": "dir",
        "trust_remote_code": "true|false",
        "allow_changed_data": "true|false",
    }
    opts = parse_key_values(args[1:], allowed)
    from mtl_cli.errors import MtlError
    from mtl_cli.eval_run import evaluate_run

    try:
        evaluate_run(
            args[0],
            split=opts.get("split", "test"),
            checkpoint=opts.get("checkpoint", "best"),
            tasks=split_tasks(opts.get("tasks")),
            data_root=opts.get("data_root"),
            batch_size=positive_int(opts, "batch_size"),
            runs_root=opts.get("runs_root") or os.environ.get("MTL_RUNS_ROOT", "runs"),
            trust_remote_code=true_or_false(opts, "trust_remote_code"),
            allow_changed_data=true_or_false(opts, "allow_changed_data"),
        )
    except MtlError as err:
        fail(str(err))


def split_tasks(value: str | None) -> list[str] | None:
    return [t for t in re.split(r"[+,]", value) if t] if value else None


PREDICT_USAGE = (
    "usage: mtl predict RUN_DIR|latest input=FILE|- [tasks=a+b] [checkpoint=best|last|best-<task>|step-<n>] "
    "[out=FILE.jsonl|FILE.csv] [overwrite=true] [format=csv|tsv|json|jsonl|parquet|text|conll] [text_column=NAME] "
    "[text_pair_column=NAME] [batch_size=N] [precision=auto|fp32|bf16] [logits=true] [trust_remote_code=true]"
)


def predict_command(args: list[str]) -> None:
    if not args or args[0] in ("-h", "--help"):
        print(PREDICT_USAGE)
        return
    allowed = {
        "input": "file|-", "tasks": "a+b", "checkpoint": "best|last", "out": "file", "overwrite": "true|false",
        "format": "csv|tsv|json|jsonl|parquet|text|conll", "text_column": "name", "text_pair_column": "name",
        "batch_size": "n", "precision": "auto|fp32|bf16", "logits": "true|false", "runs_root": "dir",
        "trust_remote_code": "true|false",
    }  # fmt: skip
    opts = parse_key_values(args[1:], allowed)
    if opts.get("precision", "auto") not in ("auto", "fp32", "bf16"):
        fail(f"precision must be auto (as the run trained), fp32 or bf16; got precision={opts['precision']}")
    if not opts.get("input"):
        fail("mtl predict needs input=FILE (or input=- for standard input); " + PREDICT_USAGE.removeprefix("usage: "))
    from mtl_cli.errors import MtlError
    from mtl_cli.predict import predict_run

    try:
        predict_run(
            args[0],
            opts["input"],
            tasks=split_tasks(opts.get("tasks")),
            checkpoint=opts.get("checkpoint", "best"),
            out=opts.get("out"),
            overwrite=true_or_false(opts, "overwrite"),
            input_format=opts.get("format"),
            text_column=opts.get("text_column"),
            text_pair_column=opts.get("text_pair_column"),
            batch_size=positive_int(opts, "batch_size"),
            precision=opts.get("precision", "auto"),
            logits=true_or_false(opts, "logits"),
            runs_root=opts.get("runs_root") or os.environ.get("MTL_RUNS_ROOT", "runs"),
            trust_remote_code=true_or_false(opts, "trust_remote_code"),
        )
    except MtlError as err:
        fail(str(err))


EXPORT_USAGE = (
    "usage: mtl export RUN_DIR|latest task=NAME out=DIR [format=auto|hf|onnx|both] "
    "[checkpoint=best|last|best-<task>|step-<n>] [overwrite=true] [trust_remote_code=true]"
)


def export_command(args: list[str]) -> None:
    if not args or args[0] in ("-h", "--help"):
        print(EXPORT_USAGE)
        return
    allowed = {
        "task": "name", "out": "dir", "format": "auto|hf|onnx|both", "checkpoint": "best|last",
        "overwrite": "true|false", "runs_root": "dir", "trust_remote_code": "true|false",
    }  # fmt: skip
    opts = parse_key_values(args[1:], allowed)
    missing = [k for k in ("task", "out") if not opts.get(k)]
    if missing:
        fail(f"mtl export needs {' and '.join(k + '=' for k in missing)}; " + EXPORT_USAGE.removeprefix("usage: "))
    formats = ("auto", "hf", "onnx", "both")
    if opts.get("format", "auto") not in formats:
        fail(f"format must be one of {', '.join(formats)}; got format={opts['format']}")
    from mtl_cli.errors import MtlError
    from mtl_cli.export import export_task

    try:
        export_task(
            args[0],
            task=opts["task"],
            out=opts["out"],
            export_format=opts.get("format", "auto"),
            checkpoint=opts.get("checkpoint", "best"),
            overwrite=true_or_false(opts, "overwrite"),
            runs_root=opts.get("runs_root") or os.environ.get("MTL_RUNS_ROOT", "runs"),
            trust_remote_code=true_or_false(opts, "trust_remote_code"),
        )
    except MtlError as err:
        fail(str(err))


def data_command(args: list[str]) -> None:
    if not args or args[0] != "check" or any(a in ("-h", "--help") for a in args):
        print(
            "usage: mtl data check [task=a+b] [data_root=DIR] [other overrides] [--config-dir DIR] [--out FILE]\n"
            "Writes the report as JSON to --out (default: data_check.json in the current directory)."
        )
        if args and args[0] != "check" and args[0] not in ("-h", "--help"):
            fail(f"unknown data command '{args[0]}'; use: mtl data check ...")
        return
    flags, overrides = {}, []
    it = iter(rewrite_overrides(args[1:]))
    for arg in it:
        if arg in ("--config-dir", "-cd", "--out"):
            flags[arg] = next(it, "")
        elif arg.startswith("-"):
            fail(f"unknown option '{arg}'; mtl data check takes overrides, --config-dir DIR and --out FILE")
        else:
            overrides.append(arg)
    from mtl_cli.compose import check_task_names, compose_config
    from mtl_cli.datacheck import run_data_check
    from mtl_cli.errors import MtlError
    from mtl_cli.validation import to_typed

    try:
        composed = compose_config(overrides, flags.get("--config-dir") or flags.get("-cd"))
        check_task_names(overrides, composed)
        run_data_check(to_typed(composed), Path(flags.get("--out") or "data_check.json"), full=True)
    except MtlError as err:
        fail(str(err))


def transfer_command(args: list[str]) -> None:
    if any(a in ("-h", "--help") for a in args):
        print("usage: mtl transfer [task=a+b+c] [other overrides] [seeds=[1,2,3]] [--config-dir DIR]")
        return
    from mtl_cli.compose import check_overrides, compose_config
    from mtl_cli.errors import MtlError
    from mtl_cli.transfer import parse_seeds, run_transfer
    from mtl_cli.validation import to_typed

    seeds_text, overrides, flags = None, [], {}
    it = iter(rewrite_overrides(args))
    for arg in it:
        if arg in ("--config-dir", "-cd"):
            flags["--config-dir"] = next(it, "")
        elif arg.startswith("seeds="):
            seeds_text = arg.partition("=")[2]
        elif arg.startswith("-"):
            fail(f"unknown option '{arg}'; mtl transfer takes overrides, seeds=[...] and --config-dir DIR")
        else:
            overrides.append(arg)
    try:
        seeds = parse_seeds(seeds_text) if seeds_text is not None else None
        check_overrides(overrides, flags, multirun=False)
        cfg = to_typed(compose_config(overrides, flags.get("--config-dir")))
        seeds = seeds or [cfg.seed]
        if len(cfg.task) < 2:
            raise MtlError(f"a transfer study needs at least two tasks; got {list(cfg.task)} (task=a+b)")
        run_transfer(cfg, seeds, overrides)
    except MtlError as err:
        fail(str(err))


def report_command(args: list[str]) -> None:
    if not args or args[0] in ("-h", "--help"):
        print(
            "usage: mtl report FOLDER [split=validation|test]: the runs under FOLDER, seeds averaged per configuration "
            "(report.md/.csv/.json/.png/.html); split= is the split the table shows first"
        )
        return
    opts = parse_key_values(args[1:], {"split": "validation|test"})
    from mtl_cli.errors import MtlError
    from mtl_cli.report_files import report_command as run_report

    try:
        run_report(args[0], split=opts.get("split", "validation"))
    except MtlError as err:
        fail(str(err))


def tasks_command(args: list[str]) -> None:
    """The task names `task=` accepts: the built-in ones and, with --config-dir, the user's."""
    from mtl_cli.compose import known_options

    config_dirs, it = [], iter(args)
    for arg in it:
        name, eq, value = arg.partition("=")
        if name in ("--config-dir", "-cd"):
            config_dirs.append(value if eq else next(it, ""))
        elif arg in ("-h", "--help"):
            print("usage: mtl tasks [--config-dir DIR]  (DIR/task/*.yaml are listed with the built-in tasks)")
            return
        else:
            fail(f"unknown argument '{arg}'; mtl tasks takes only --config-dir DIR")
    for folder in config_dirs:
        # A mistyped folder would otherwise silently list only the built-in tasks.
        if not folder or not Path(folder).is_dir():
            fail(f"--config-dir {folder!r} is not a directory; pass the folder that holds your task/ configs")
    for name in known_options("task", config_dirs):
        print(name)


if __name__ == "__main__":
    main()
