"""A sweep's progress (`mtl train -m`), so that a failure says which jobs ran and which failed.

Hydra's basic sweeper on its basic launcher runs the jobs in turn, in this process: a failure on
job k stops the sweep, saying which jobs ran, which failed and which were not run (`Sweep.failed`).

On a launcher plugin (hydra/launcher=joblib: jobs in parallel worker processes; submitit) or a
sweeper plugin (hydra/sweeper=optuna) a job that fails with a user's mistake (an MtlError) does
not stop its process: it returns a `JobFailed` record as its result, so the jobs running beside it
finish (joblib cancels them all on a raised error) and Optuna marks the trial failed and goes on.
The records reach this process however the launcher brings results back (a pickle: unpickling one
counts it here), and `Sweep.outcome` turns them into one line at the end of the sweep.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mtl_cli.errors import MtlError, first_line
from mtl_cli.rundir import remove_empty_dirs

SWEEP_EXTRA = "pip install 'mtl-cli[sweep]'"
# The Hydra plugins the `sweep` extra installs: the group option each provides, and its package.
PLUGINS = {
    ("hydra/launcher", "joblib"): "hydra-joblib-launcher",
    ("hydra/launcher", "submitit_local"): "hydra-submitit-launcher",
    ("hydra/launcher", "submitit_slurm"): "hydra-submitit-launcher",
    ("hydra/sweeper", "optuna"): "hydra-optuna-sweeper",
}


class Sweep:
    """What the sweep of this process has done so far."""

    def __init__(self) -> None:
        self.start(None)

    def start(self, overrides: list[str] | None) -> None:
        """A new command: `overrides` of a sweep (-m), None for a single run."""
        self.multirun = overrides is not None
        self.overrides = list(overrides or [])
        self.jobs: list[list[str]] | None = sweep_jobs(overrides) if overrides is not None else None
        self.done: list[tuple[int, str]] = []
        self.failures: dict[tuple[str, int], JobFailed] = {}

    def ran(self, num: int, run_dir: Path | str, overrides: list[str]) -> None:
        self.done.append((num, f"job {num} ({self.swept(overrides)}): {run_dir}"))

    def swept(self, overrides: list[str]) -> str:
        """The overrides that tell this job from the others (all of them without a plan)."""
        if self.jobs:
            common = set.intersection(*map(set, self.jobs))
            return " ".join(o for o in overrides if o not in common) or " ".join(overrides) or "no overrides"
        fixed = fixed_keys(self.overrides)  # a sweeper's job: the command line's plain overrides are the same for all
        own = [o for o in overrides if _key(o) not in fixed]
        return " ".join(own) or " ".join(overrides) or "no overrides"

    def failed(self, num: int, reason: str, out: Path, sweep_dir: Path, overrides: list[str]) -> str:
        kept = f" (its folder {out})" if out.is_dir() and any(out.iterdir()) else ""
        total = len(self.jobs) if self.jobs else None
        ran = "; ".join(text for _, text in self.done) if self.done else "none"
        if total is None:
            rest = "the rest of the sweep"
        else:
            later = [f"job {n} ({self.swept(self.jobs[n])})" for n in range(num + 1, total)]  # type: ignore[index]
            rest = ", ".join(later) or "none"
        if not self.done and not kept:  # nothing of the sweep exists: no folder left behind either
            (sweep_dir / "multirun.yaml").unlink(missing_ok=True)
            remove_empty_dirs(sweep_dir, levels=3)
        of = f" of {total}" if total else ""
        return (
            f"sweep stopped: job {num}{of} ({self.swept(overrides)}) failed{kept}: {reason} | ran: {ran} | "
            f"not run: {rest}"
        )

    # --- sweeps on launcher and sweeper plugins ------------------------------------------------

    def record(self, failure: JobFailed) -> None:
        self.failures[(failure.sweep_dir, failure.num)] = failure

    def summary(self, stopped: Exception | None = None) -> MtlError | None:
        """One line for the failed jobs of a plugin sweep (None when none failed); `stopped`: the error the
        sweeper gave up with after them (Optuna without one finished trial)."""
        if not self.failures:
            return None
        fails = sorted(self.failures.values(), key=lambda f: f.num)
        first = fails[0]
        what = "trial" if first.trials is not None else "job"
        total = first.trials if first.trials is not None else (len(self.jobs) if self.jobs else None)
        of = f" of {total}" if total else ""  # "1 of 2 jobs failed", "1 job failed"
        by_reason: dict[str, list[str]] = {}  # the same mistake in every job: said once
        for f in fails:
            by_reason.setdefault(f.message, []).append(f"job {f.num} ({self.swept(f.overrides)})")
        failed = "; ".join(f"{', '.join(jobs)}: {reason}" for reason, jobs in by_reason.items())
        if total is not None and total <= len(fails):
            rest = f"no {what} finished"
        elif total is not None:
            n = total - len(fails)
            rest = f"the other {n} {what}{'s' if n != 1 else ''} ran: mtl report {first.sweep_dir}"
        else:
            rest = f"the others ran: mtl report {first.sweep_dir}"
        best = optuna_best(Path(first.sweep_dir)) if first.trials is not None else None
        rest += f" | best: {best}" if best else ""
        if stopped is not None and not rest.startswith("no "):  # with none finished, that is why it stopped
            rest += f" | the sweeper stopped: {first_line(stopped)}"
        state = "stopped" if stopped is not None else "finished"
        plural = "s" if len(fails) != 1 or total else ""
        code = max(f.code for f in fails)
        return MtlError(f"sweep {state}: {len(fails)}{of} {what}{plural} failed: {failed} | {rest}", code)

    @contextmanager
    def outcome(self) -> Iterator[None]:
        """Around Hydra's run of the command: a plugin sweep whose jobs failed raises MtlError (one line),
        also when the sweeper gave up because of them; any other error is reported as Hydra would."""
        if not self.multirun:
            yield
            return
        # Hydra prints an error that leaves the sweeper (a traceback) and exits 1, unless HYDRA_FULL_ERROR
        # is set: then it re-raises it, and the failed jobs behind it can be told in one line.
        own = "HYDRA_FULL_ERROR" not in os.environ
        if own:
            os.environ["HYDRA_FULL_ERROR"] = "1"
        try:
            yield
        except Exception as err:
            if own:
                os.environ.pop("HYDRA_FULL_ERROR", None)
            summary = self.summary(stopped=err)
            if summary is not None:
                raise summary from None
            if str(err).startswith("Only one of --run, --multirun, --cfg"):
                raise MtlError(
                    "--cfg, --info and --help show one configuration: drop -m (e.g. mtl train "
                    "hydra/launcher=joblib --cfg hydra shows the launcher's settings)"
                ) from None
            if not own:
                raise
            hydra_report(err)  # not from the jobs: Hydra's own report, as without the variable
        finally:
            if own:
                os.environ.pop("HYDRA_FULL_ERROR", None)
        summary = self.summary()
        if summary is not None:
            raise summary


class SweepFolder(Callback):
    """A Hydra callback (hydra.callbacks, see conf/experiment/optuna_mixing.yaml), before the sweeper
    starts: makes the sweep folder, so that Optuna's sqlite storage can live in it; Optuna's and
    alembic's messages go where Hydra's go (standard output), leaving standard error to errors."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        logging.getLogger("alembic").setLevel(logging.WARNING)  # "setup plugin ..." as each study opens
        if "optuna" in str(OmegaConf.select(config, "hydra.sweeper._target_", default="")).lower():
            import optuna

            optuna.logging.disable_default_handler()  # its own handler writes to standard error
            optuna.logging.enable_propagation()


class JobFailed:
    """What a job of a plugin sweep returns when it fails with a user's mistake: a record, not an
    exception, so that the launcher and the sweeper go on with the other jobs.

    Made in a process, or unpickled there (`__reduce__` builds it again), it is counted in that
    process's SWEEP: the launching process learns of a job that failed in a worker when the launcher
    brings the job's result back. Not a number: Optuna marks the trial failed.
    """

    def __init__(
        self, num: int, overrides: list[str], message: str, code: int, sweep_dir: str, trials: int | None
    ) -> None:
        self.num, self.overrides, self.message, self.code = num, list(overrides), message, code
        self.sweep_dir, self.trials = sweep_dir, trials
        SWEEP.record(self)

    def __reduce__(self) -> tuple[Any, tuple]:
        return (JobFailed, (self.num, self.overrides, self.message, self.code, self.sweep_dir, self.trials))

    def __str__(self) -> str:
        return f"job {self.num} failed: {self.message}"

    __repr__ = __str__


def in_turn(hc: Any) -> bool:
    """Hydra's basic sweeper on its basic launcher: the jobs run one after another in this process."""
    choices = hc.runtime.choices
    return bool(choices.get("hydra/launcher", "basic") == "basic" and choices.get("hydra/sweeper", "basic") == "basic")


def job_failed(hc: Any, message: str, code: int) -> JobFailed:
    """The record a plugin sweep's job returns for an MtlError (see JobFailed)."""
    optuna = hc.runtime.choices.get("hydra/sweeper") == "optuna"
    trials = int(hc.sweeper.n_trials) if optuna and hc.sweeper.get("n_trials") is not None else None
    return JobFailed(hc.job.num, list(hc.overrides.task), message, code, str(hc.sweep.dir), trials)


def job_threads(hc: Any, threads: int | None) -> int | None:
    """`trainer.threads` for a job of a sweep on a local launcher plugin, when unset: under joblib each
    of the n_jobs jobs that run at once gets its share of the physical cores (at least one), so that
    they do not oversubscribe them; under submitit_local, hydra.launcher.cpus_per_task when given
    (SLURM confines a job to its CPUs itself, and one thread per core counts only those)."""
    launcher = hc.runtime.choices.get("hydra/launcher")
    if threads is not None:
        return threads
    if launcher == "submitit_local" and hc.launcher.get("cpus_per_task"):
        return int(hc.launcher.cpus_per_task)
    if launcher != "joblib":
        return None
    from mtl_cli.device import physical_cores

    return max(1, physical_cores() // parallel_jobs(hc.launcher.get("n_jobs")))


def parallel_jobs(n_jobs: Any) -> int:
    """How many jobs joblib runs at once for `n_jobs` (-1: one per CPU, -2: all but one, ...)."""
    if n_jobs is None:
        return 1
    n = int(n_jobs)
    if n > 0:
        return n
    import joblib

    return max(1, joblib.cpu_count() + 1 + n)


def objective_value(result: dict, objective: str) -> float:
    """What `mtl train` returns to a sweeper: the validation average of `objective` at the best checkpoint."""
    validation = result.get("validation")
    average = validation.get("average") if isinstance(validation, dict) else None
    if not isinstance(average, dict) or not average:
        raise MtlError(f"objective={objective}: the run has no validation results to return to the sweeper")
    if objective not in average:
        raise MtlError(
            f"objective={objective} is not a validation metric of this run; use one of: {', '.join(average)}"
        )
    value = average[objective]
    if not isinstance(value, (int, float)):
        raise MtlError(f"objective={objective} has no value in this run's validation results ({value!r})")
    return float(value)


def optuna_best(sweep_dir: Path) -> str | None:
    """`value V with k=v ... (FILE)` from the study's optimization_results.yaml; None without one."""
    from mtl_cli.readers import read_yaml

    path = sweep_dir / "optimization_results.yaml"
    if not path.is_file():
        return None
    try:
        data = read_yaml(path)
    except MtlError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("best_params"), dict):
        return None
    params = " ".join(f"{k}={v}" for k, v in data["best_params"].items())
    return f"value {data.get('best_value')} with {params} ({path})"


def hydra_report(err: Exception) -> None:
    """Hydra's own report of an error (a one-line message, or its trimmed traceback), then exit 1."""
    from hydra._internal.utils import run_and_report

    def again() -> None:
        raise err

    run_and_report(again)


def _key(override: str) -> str:
    return str(override).partition("=")[0].lstrip("+~")


def fixed_keys(overrides: list[str]) -> set[str]:
    """The keys of the overrides that are not sweeps (the same in every job)."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:
        return set()
    return {o.get_key_element().lstrip("+~") for o in parsed if not o.is_sweep_override()}


def first_job(overrides: list[str]) -> list[str]:
    """A sweep's first job, as far as it can be told before the sweeper runs: the basic sweeper's first
    job; where that cannot be told (a range a sampling sweeper draws from, `interval(1,10)`; a glob),
    each listed sweep's first value, and no override for the others (their config defaults stand)."""
    jobs = sweep_jobs(overrides)
    if jobs:
        return jobs[0]
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for text in overrides:
        try:
            (override,) = OverridesParser.create().parse_overrides([text])
        except Exception:
            out.append(text)  # Hydra says what is wrong with it
            continue
        if not override.is_sweep_override():
            out.append(text)
            continue
        try:
            out.append(f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}")
        except Exception:  # interval(), glob(): drawn or expanded by the sweeper
            continue
    return out


def sweep_jobs(overrides: list[str]) -> list[list[str]] | None:
    """Each job's overrides, in the order Hydra's basic sweeper runs them (None when it cannot be told)."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        own = [o for o in overrides if not o.lstrip("+~").startswith("hydra.")]
        batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(own), None)
        return [list(job) for batch in batches for job in batch]
    except Exception:  # a sweep Hydra's basic sweeper expands otherwise (globs): no plan, still a summary
        return None


SWEEP = Sweep()
