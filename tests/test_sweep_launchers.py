"""Sweeps on Hydra's launcher and sweeper plugins (the `sweep` extra): hydra/launcher=joblib (jobs in
parallel worker processes), submitit (composed only: no SLURM here), hydra/sweeper=optuna with the
objective `mtl train` returns, the one-line errors, and `mtl report` of a study.

The real sweeps run through the real CLI in a subprocess, as a user types them (a joblib worker is
another process anyway); the checks of the command line and of the pieces run in this process.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from mtl_cli import sweeps
from mtl_cli.compose import check_overrides, compose_config
from mtl_cli.errors import MtlError
from mtl_cli.report import build_report
from mtl_cli.sweeps import SWEEP, JobFailed, job_threads, objective_value, parallel_jobs
from tests.conftest import run_dirs, run_mtl

SHORT = ["experiment=smoke", "trainer.progress=false", "trainer.max_steps=2", "trainer.eval_every=2"]
# experiment=smoke and the study together: a list of experiments (the later one wins where both set a key)
STUDY = ["experiment=[smoke,optuna_mixing]", "trainer.progress=false", "trainer.threads=1",
         "trainer.max_steps=2", "trainer.eval_every=2"]  # fmt: skip


def one_line_error(proc: subprocess.CompletedProcess, *parts: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:] + proc.stdout[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mtl: error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def sweep_folder(root: Path) -> Path:
    (folder,) = (root / "multirun").glob("*/*")
    return folder


# --- composing: the plugins' groups and keys, checked before a run --------------------------------


def test_launcher_and_sweeper_groups_compose() -> None:
    hydra = compose_config(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], return_hydra_config=True).hydra
    assert hydra.launcher._target_.endswith("JoblibLauncher") and hydra.launcher.n_jobs == 2
    hydra = compose_config(["hydra/launcher=submitit_local"], return_hydra_config=True).hydra
    assert hydra.launcher._target_.endswith("LocalLauncher")
    hydra = compose_config(["hydra/sweeper=optuna", "hydra.sweeper.n_trials=3"], return_hydra_config=True).hydra
    assert hydra.sweeper._target_.endswith("OptunaSweeper") and hydra.sweeper.n_trials == 3


def test_slurm_launcher_settings_are_shown(tmp_path: Path, mtl) -> None:
    # No SLURM here: the composed launcher is what a user checks before submitting.
    args = ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=240"]
    proc = mtl("train", *args, "experiment=smoke", "--cfg", "hydra", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    launcher = OmegaConf.create(proc.stdout).hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.timeout_min, launcher.nodes) == ("gpu", 240, 1)
    assert "submitit_folder" in launcher and not (tmp_path / "runs").exists()


def test_a_sweeps_cfg_is_one_line_to_drop_m(tmp_path: Path, mtl) -> None:
    proc = mtl("train", "-m", "hydra/launcher=submitit_slurm", "--cfg", "hydra", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "mtl: error: --cfg, --info and --help show one configuration: drop -m (e.g. mtl train "
        "hydra/launcher=joblib --cfg hydra shows the launcher's settings)"
    ]


def test_the_study_experiment_composes() -> None:
    cfg = compose_config([*STUDY], return_hydra_config=True)
    assert cfg.encoder.random_init and cfg.trainer.max_steps == 2 and cfg.mixing.name == "temperature"
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == cfg.seed
    assert sweeper.storage.startswith("sqlite:///") and sweeper.storage.endswith("/optuna.db")
    assert set(sweeper.params) == {"mixing.temperature", "trainer.lr"}
    assert all("interval(" in v and "log" in v for v in sweeper.params.values())


@pytest.mark.parametrize(
    "overrides",
    [
        ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=1,2"],
        [
            "hydra/sweeper=optuna",
            "hydra.sweeper.n_trials=3",
            "mixing=temperature",
            "mixing.temperature=interval(1,10)",
            "trainer.lr=tag(log, interval(1e-5,1e-3))",
        ],  # fmt: skip
        ["experiment=optuna_mixing", "hydra.sweeper.n_trials=3", "hydra/launcher=joblib", "hydra.sweeper.n_jobs=2"],
        ["hydra/sweeper=optuna", "sharing=partial", "sharing.shared_layers=choice(0,1)", "objective=macro_f1"],
    ],
)
def test_plugin_overrides_pass_the_checks(overrides: list[str]) -> None:
    check_overrides(overrides, {}, multirun=True)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["hydra/launcher=jobllib"],
            "unknown option for `hydra/launcher=`: 'jobllib'; known: basic, joblib, submitit_local, submitit_slurm",
        ),  # fmt: skip
        (["hydra/sweeper=optunaa"], "unknown option for `hydra/sweeper=`: 'optunaa'; known: basic, optuna"),
        (["hydra.sweeper.n_trials=3"], "unknown config key `hydra.sweeper.n_trials` (misspelt, or a key of another"),
        (
            ["mixing.temperature=interval(1,10)"],
            "`mixing.temperature=interval(1,10)` is a range for a sampling "
            "sweeper, which Hydra's basic sweeper cannot run; add hydra/sweeper=optuna",
        ),  # fmt: skip
        (
            ["objective=acuracy"],
            "objective=acuracy is not a validation metric of these tasks; use one of: main, accuracy, macro_f1",
        ),  # fmt: skip
    ],
)
def test_plugin_mistakes_are_one_line_before_a_run(overrides: list[str], message: str) -> None:
    with pytest.raises(MtlError) as err:
        check_overrides(overrides, {}, multirun=True)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_misspelt_launcher_through_the_cli(tmp_path: Path) -> None:
    proc = run_mtl("train", "-m", "hydra/launcher=jobllib", "experiment=smoke", "seed=1,2", cwd=tmp_path)
    one_line_error(proc, "known: basic, joblib, submitit_local, submitit_slurm")
    assert not (tmp_path / "runs").exists()


# Hydra finds its plugins in the hydra_plugins namespace package; an empty path is a Python without them.
WITHOUT_PLUGINS = (
    "import sys, hydra_plugins; hydra_plugins.__path__ = []; from mtl_cli.cli import main; main(sys.argv[1:])"
)


@pytest.mark.parametrize(
    "override, package",
    [
        ("hydra/launcher=joblib", "hydra-joblib-launcher"),
        ("hydra/launcher=submitit_slurm", "hydra-submitit-launcher"),
        ("hydra/sweeper=optuna", "hydra-optuna-sweeper"),
        ("experiment=[smoke,optuna_mixing]", "hydra-optuna-sweeper"),  # the experiment selects the sweeper
    ],
)
def test_without_the_plugins_the_error_names_the_extra(tmp_path: Path, override: str, package: str) -> None:
    args = ["train", "-m", "experiment=smoke", "seed=1,2", override]
    proc = subprocess.run([sys.executable, "-c", WITHOUT_PLUGINS, *args], cwd=tmp_path, capture_output=True, text=True)
    one_line_error(proc, f"needs the Hydra plugin {package}, which is not installed: pip install 'mtl-cli[sweep]'")


# --- the pieces: the objective, each job's threads, failed jobs' records ---------------------------


def test_the_objective_is_the_validation_average() -> None:
    result = {"validation": {"a": {"accuracy": 0.5}, "average": {"main": 0.25, "accuracy": 0.5, "macro_f1": 0.4}}}
    assert objective_value(result, "main") == 0.25 and objective_value(result, "macro_f1") == 0.4
    with pytest.raises(MtlError, match=r"^objective=f1 is not a validation metric of this run; use one of: main, "):
        objective_value(result, "f1")
    with pytest.raises(MtlError, match="no validation results"):
        objective_value({"validation": None}, "main")


def hydra_node(launcher: str, n_jobs: int | None = None) -> object:
    return OmegaConf.create({"runtime": {"choices": {"hydra/launcher": launcher}}, "launcher": {"n_jobs": n_jobs}})


def test_parallel_jobs_share_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    import joblib

    monkeypatch.setattr("mtl_cli.device.physical_cores", lambda: 8)
    assert job_threads(hydra_node("joblib", 2), None) == 4
    assert job_threads(hydra_node("joblib", 3), None) == 2
    assert job_threads(hydra_node("joblib", 16), None) == 1  # never none
    assert job_threads(hydra_node("joblib", 2), 6) == 6  # trainer.threads set: kept
    assert job_threads(hydra_node("basic"), None) is None  # one job at a time: one thread per core
    local = OmegaConf.create({"runtime": {"choices": {"hydra/launcher": "submitit_local"}}, "launcher": {}})
    assert job_threads(local, None) is None
    local.launcher.cpus_per_task = 3
    assert job_threads(local, None) == 3
    assert parallel_jobs(-1) == joblib.cpu_count() and parallel_jobs(None) == 1
    monkeypatch.setattr("mtl_cli.device.physical_cores", lambda: 2)
    assert job_threads(hydra_node("joblib", 2), None) == 1  # this machine: 2 jobs on 2 cores


def test_a_sweeps_first_job_before_the_sweeper_runs() -> None:
    assert sweeps.first_job(["experiment=smoke", "seed=1,2", "hydra/launcher=joblib"]) == [
        "experiment=smoke", "seed=1", "hydra/launcher=joblib",
    ]  # fmt: skip
    # Ranges a sampling sweeper draws from (and globs) are left to their config defaults.
    drawn = ["experiment=smoke", "mixing.temperature=interval(1,10)", "trainer.lr=tag(log, interval(1e-5,1e-3))",
             "seed=choice(3,4)", "mixing=glob(t*)"]  # fmt: skip
    assert sweeps.first_job(drawn) == ["experiment=smoke", "seed=3"]
    compose_config(sweeps.first_job(drawn))  # composes: no sweep left in it


def fail_in_a_worker(num: int) -> JobFailed:
    return JobFailed(num, [f"seed={num}", "trainer.lr=1"], f"bad {num}", 2, "/sweep", None)


def test_a_failed_jobs_record_reaches_the_launching_process() -> None:
    """A joblib worker's failed job is counted here when its result comes back (unpickled)."""
    from joblib import Parallel, delayed

    SWEEP.start(["seed=0,1,2", "trainer.lr=1"])
    try:
        returned = Parallel(n_jobs=2, backend="loky")(delayed(fail_in_a_worker)(n) for n in (0, 2))
        assert [str(r) for r in returned] == ["job 0 failed: bad 0", "job 2 failed: bad 2"]
        assert sorted(SWEEP.failures) == [("/sweep", 0), ("/sweep", 2)]
        pickle.loads(pickle.dumps(returned[0]))  # the same job again: counted once
        assert len(SWEEP.failures) == 2
        summary = SWEEP.summary()
        assert summary is not None and summary.exit_code == 2
        assert str(summary) == (
            "sweep finished: 2 of 3 jobs failed: job 0 (seed=0): bad 0; job 2 (seed=2): bad 2 | "
            "the other 1 job ran: mtl report /sweep"
        )
    finally:
        SWEEP.start(None)


def test_a_studys_summary_names_the_best_trial(tmp_path: Path) -> None:
    (tmp_path / "optimization_results.yaml").write_text(
        "name: optuna\nbest_params:\n  mixing.temperature: 2.5\nbest_value: 0.75\n", encoding="utf-8"
    )
    SWEEP.start(["experiment=optuna_mixing", "seed=1"])
    try:
        for num in (1, 2):
            JobFailed(num, ["mixing.temperature=9.5", f"trainer.lr=1e-{num}", "seed=1"], "same", 2, str(tmp_path), 4)
        summary = str(SWEEP.summary())
        assert summary.startswith(
            "sweep finished: 2 of 4 trials failed: job 1 (mixing.temperature=9.5 trainer.lr=1e-1), "
            "job 2 (mixing.temperature=9.5 trainer.lr=1e-2): same | the other 2 trials ran: mtl report "
        )
        assert "| best: value 0.75 with mixing.temperature=2.5 (" in summary
        stopped = str(SWEEP.summary(stopped=ValueError("the sweeper's own reason")))
        assert stopped.startswith("sweep stopped: ") and stopped.endswith(
            "| the sweeper stopped: the sweeper's own reason"
        )
    finally:
        SWEEP.start(None)


# --- real sweeps, through the CLI ------------------------------------------------------------------


@pytest.mark.slow
def test_joblib_runs_two_jobs_at_once_and_a_failed_job_leaves_the_others(tmp_path: Path) -> None:
    from mtl_cli.device import physical_cores

    # Jobs 0 and 2 train; job 1 asks for more layers than the tiny encoder has: a mistake found in train().
    sweep = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "sharing=partial", "sharing.shared_layers=0,3,1"]
    proc = run_mtl("train", "-m", *SHORT, *sweep, cwd=tmp_path)
    line = one_line_error(
        proc,
        "sweep finished: 1 of 3 jobs failed: job 1 (sharing.shared_layers=3): `sharing.shared_layers=3` but BertModel",
        "| the other 2 jobs ran: mtl report ",
    )
    folder = sweep_folder(tmp_path / "runs")
    assert str(folder) in line and (folder / "multirun.yaml").is_file()
    runs = run_dirs(tmp_path / "runs")
    assert [r.name for r in runs] == ["0_restaurants+electronics", "2_restaurants+electronics"]  # no folder for job 1
    threads = max(1, physical_cores() // 2)  # trainer.threads unset: each of the 2 jobs gets its share
    for run, layers in zip(runs, (0, 1), strict=True):
        config = OmegaConf.load(run / "config.yaml")
        assert config.sharing.shared_layers == layers and config.trainer.threads == threads
        assert (run / "results.json").is_file() and (run / "checkpoints" / "best").is_dir()
        assert f"torch threads: {threads}" in (run / "train.log").read_text()
    report = build_report(folder)
    assert report["swept"] == {"sharing.shared_layers": [0, 1]} and len(report["rows"]) == 2


# optuna 2 (what hydra-optuna-sweeper allows) on SQLAlchemy 1.4 warns about SQLAlchemy 2 as it loads.
OPTUNA_ON_SQLALCHEMY_14 = "ignore:Deprecated API features detected:DeprecationWarning"


@pytest.mark.slow
@pytest.mark.filterwarnings(OPTUNA_ON_SQLALCHEMY_14)
def test_an_optuna_study_of_three_trials_and_its_continuation(tmp_path: Path) -> None:
    import optuna

    proc = run_mtl("train", "-m", *STUDY, "hydra.sweeper.n_trials=3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mtl: error" not in proc.stderr and "Traceback" not in proc.stderr
    folder = sweep_folder(tmp_path / "runs")
    runs = run_dirs(folder)
    assert [r.name.split("_")[0] for r in runs] == ["0", "1", "2"]
    for run in runs:
        config = OmegaConf.load(run / "config.yaml")
        assert (run / "results.json").is_file() and config.mixing.name == "temperature"
        assert 1.0 <= config.mixing.temperature <= 10.0 and 1e-5 <= config.trainer.lr <= 1e-3

    # What each trial returned: its validation average of `main` at the best checkpoint.
    validation = build_report(folder, split="validation")
    returned = {run["run"]: run["validation"]["average"] for run in validation["runs"]}
    best = yaml.safe_load((folder / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"mixing.temperature", "trainer.lr"}
    assert best["best_value"] == pytest.approx(max(returned.values()))

    storage = f"sqlite:///{folder / 'optuna.db'}"
    study = optuna.load_study(study_name="optuna_mixing", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert study.best_trial.params == best["best_params"]
    assert sorted(float(t.value or 0) for t in study.trials) == pytest.approx(sorted(returned.values()))

    # mtl report reads the trials' runs like any sweep's, and names the study's best trial.
    report_proc = run_mtl("report", str(folder), cwd=tmp_path)
    assert report_proc.returncode == 0, report_proc.stderr
    report = json.loads((folder / "report.json").read_text())
    assert set(report["swept"]) == {"mixing.temperature", "trainer.lr"} and len(report["rows"]) == 3
    assert report["study"]["best_params"] == best["best_params"]
    best_runs = [r for r, value in returned.items() if value == max(returned.values())]
    assert report["study"]["runs"] and set(report["study"]["runs"]) <= set(best_runs)
    assert "Optuna's best trial (validation objective" in (folder / "report.md").read_text()

    # The study goes on in its sqlite file, from a new sweep folder.
    again = run_mtl("train", "-m", *STUDY, "hydra.sweeper.n_trials=1", f"hydra.sweeper.storage={storage}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(optuna.load_study(study_name="optuna_mixing", storage=storage).trials) == 4
    assert len(list((tmp_path / "runs" / "multirun").glob("*/*"))) == 2


@pytest.mark.slow
@pytest.mark.filterwarnings(OPTUNA_ON_SQLALCHEMY_14)
def test_a_study_whose_trials_all_fail_is_one_line(tmp_path: Path) -> None:
    import optuna

    proc = run_mtl("train", "-m", *STUDY, "hydra.sweeper.n_trials=2", "sharing=partial", "sharing.shared_layers=3",
                   cwd=tmp_path)  # fmt: skip
    line = one_line_error(
        proc,
        "sweep stopped: 2 of 2 trials failed: job 0 (mixing.temperature=",
        "`sharing.shared_layers=3` but BertModel has 2 layers",
    )
    assert line.endswith("| no trial finished")
    folder = sweep_folder(tmp_path / "runs")
    assert run_dirs(folder) == []  # failed before training: no run folders left
    study = optuna.load_study(study_name="optuna_mixing", storage=f"sqlite:///{folder / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2  # told, not left running


def test_basic_sweeps_are_not_affected_by_the_plugin_path() -> None:
    """The basic launcher keeps its stop-at-the-first-failure summary (tests/test_one_writer.py)."""
    hc = OmegaConf.create({"runtime": {"choices": {"hydra/launcher": "basic", "hydra/sweeper": "basic"}}})
    assert sweeps.in_turn(hc)
    for launcher, sweeper in (("joblib", "basic"), ("basic", "optuna"), ("submitit_slurm", "basic")):
        hc.runtime.choices = {"hydra/launcher": launcher, "hydra/sweeper": sweeper}
        assert not sweeps.in_turn(hc)
