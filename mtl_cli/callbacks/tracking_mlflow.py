"""MLflow tracking (`trainer.loggers=[tensorboard,mlflow]`; `pip install 'mtl-cli[track]'`).

Where: `trainer.mlflow_tracking_uri`, else $MLFLOW_TRACKING_URI, else a local store in
`<runs_root>/mlruns` (`mlflow.db`, artifacts beside it: `mlflow ui --backend-store-uri
sqlite:///<runs_root>/mlruns/mlflow.db`). MLflow 3.17 refuses its old `file:` store unless told
otherwise, so the local store is SQLite. Experiment: `trainer.mlflow_experiment`, else the tasks'
label (restaurants+electronics); run name: the run directory's name, tagged with its path.

The run gets the resolved config as params (dotted keys), the scalars of callbacks/tracking.py
with their steps, and at the end the tables, results.json and plots as artifacts; it ends
FINISHED, FAILED, or KILLED (a stop signal). The store is checked before training starts: an
unreachable server is one line. Once training runs, an MLflow failure is a warning and the run
goes on without MLflow (the run directory has everything). A resumed run continues its MLflow
run and skips the steps the earlier process had logged (tags `mtl.logged.<group>`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mtl_cli.config import task_names_label
from mtl_cli.errors import MtlError, first_line
from mtl_cli.writers import writing

log = logging.getLogger("mtl")

LOGGED = "mtl.logged."  # + group: the last step of that group of scalars this run has logged
# MLflow's limits (mlflow.utils.validation): key and value lengths, entities per log_batch.
MAX_KEY, MAX_VALUE, MAX_PARAMS, MAX_METRICS = 250, 6000, 100, 900


def tracking_uri(cfg: Any) -> tuple[str, str]:
    """(the URI, what set it: the override to change in a message)."""
    if cfg.trainer.mlflow_tracking_uri:
        return cfg.trainer.mlflow_tracking_uri, "trainer.mlflow_tracking_uri"
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], "$MLFLOW_TRACKING_URI"
    store = Path(os.path.abspath(cfg.runs_root)) / "mlruns"
    with writing(store, what="create"):
        store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}", "the default local store (set trainer.mlflow_tracking_uri)"


def artifact_root(uri: str) -> str | None:
    """Where a new experiment's artifacts go: beside a SQLite store's database (MLflow's own default
    is ./mlruns in whatever folder mtl was started from); a server decides for itself."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "artifacts").as_uri()
    return None


def check_reachable(uri: str, source: str) -> None:
    """An HTTP store answers (any answer, 401 or 404 included) within seconds, or one line: MLflow's own
    client retries a refused connection with backoff for minutes before it gives up."""
    if not uri.startswith(("http://", "https://")):
        return
    timeout = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") or 10)
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=min(timeout, 10)).close()
    except urllib.error.HTTPError:
        return  # it answered
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, ssl.SSLError):
            return  # a certificate MLflow may be told to accept (MLFLOW_TRACKING_INSECURE_TLS): its client decides
        raise MtlError(
            f"cannot reach the MLflow tracking server {uri} ({source}): {first_line(reason)}; start it, fix {source}, "
            "or drop mlflow from trainer.loggers"
        ) from None


def params(cfg: Any) -> dict[str, str]:
    """The resolved config as dotted keys, values in MLflow's limits."""
    flat: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            text = node if isinstance(node, str) else json.dumps(node)
            flat[metric_key(prefix[:-1])[:MAX_KEY]] = text[:MAX_VALUE]

    walk(OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True), "")
    return flat


def metric_key(name: str) -> str:
    # MLflow keys allow letters, digits, _ - . / : and spaces: an affinity pair a~b becomes a_vs_b.
    return re.sub(r"[^\w.\-/ :]", "_", name.replace("~", "_vs_"))


def status_of(error: BaseException | None) -> str:
    if error is None:
        return "FINISHED"
    stopped = isinstance(error, KeyboardInterrupt) or (isinstance(error, MtlError) and error.exit_code > 128)
    return "KILLED" if stopped else "FAILED"


class Mlflow:
    name = "mlflow"

    def __init__(self, parts: Any) -> None:
        try:  # delayed: mlflow takes seconds to import, and is an optional extra
            from mlflow.entities import Metric, Param, RunTag
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise MtlError(
                "trainer.loggers has mlflow, which is not installed: pip install mlflow (or pip install "
                "'mtl-cli[track]'), or drop mlflow from trainer.loggers"
            ) from None
        self.Metric, self.Param, self.RunTag = Metric, Param, RunTag
        cfg = parts.cfg
        self.uri, self.source = tracking_uri(cfg)
        check_reachable(self.uri, self.source)
        # A new SQLite store logs its table migrations at INFO through MLflow's own handler.
        for name in ("mlflow.store.db.utils", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        experiment = cfg.trainer.mlflow_experiment or task_names_label(cfg.task)
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            found = self.client.get_experiment_by_name(experiment)
            if found is not None and found.lifecycle_stage == "deleted":
                raise MtlError(
                    f"the MLflow experiment {experiment!r} at {self.uri} is deleted; restore it (mlflow experiments "
                    "restore) or set trainer.mlflow_experiment to another name"
                )
            self.experiment_id = (
                found.experiment_id if found is not None
                else self.client.create_experiment(experiment, artifact_location=artifact_root(self.uri))
            )  # fmt: skip
        except MtlError:
            raise
        except Exception as err:
            raise MtlError(
                f"MLflow at {self.uri} ({self.source}) failed: {first_line(err)}; fix {self.source}, "
                "or drop mlflow from trainer.loggers"
            ) from None
        self.run_id: str | None = None
        self.resume_id: str | None = None
        self.logged: dict[str, int] = {}
        self.done = False

    def safely(self, what: str, call: Any) -> None:
        """`call()`; a failure stops MLflow tracking for the rest of the run with one warning, not the run."""
        if self.done:
            return
        try:
            call()
        except Exception as err:
            self.done = True
            log.warning(
                "mlflow: could not %s at %s (%s); the run goes on without MLflow, its files have everything",
                what, self.uri, first_line(err),
            )  # fmt: skip

    def start(self, parts: Any, first_step: int) -> None:
        self.safely("start the run", lambda: self._start(parts))

    def _start(self, parts: Any) -> None:
        if self.resume_id is not None:
            try:
                run = self.client.get_run(self.resume_id)
            except Exception as err:
                log.warning("mlflow: run %s of %s not found (%s); logging to a new run",
                            self.resume_id, parts.run, first_line(err))  # fmt: skip
            else:
                self.run_id = run.info.run_id
                self.client.update_run(self.run_id, status="RUNNING")
                tags = run.data.tags
                self.logged = {k[len(LOGGED) :]: int(v) for k, v in tags.items() if k.startswith(LOGGED)}
                return
        tags = {"mtl.run_dir": str(parts.run.path), "mlflow.source.name": "mtl train", "mlflow.source.type": "LOCAL"}
        self.run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=parts.run.path.name).info.run_id
        items = [self.Param(k, v) for k, v in params(parts.cfg).items()]
        for i in range(0, len(items), MAX_PARAMS):
            self.client.log_batch(self.run_id, params=items[i : i + MAX_PARAMS])

    def scalars(self, step: int, values: dict[str, float], group: str) -> None:
        if self.run_id is None or step <= self.logged.get(group, 0):
            return  # not started, or logged by the process this one resumed
        run_id, now = self.run_id, int(time.time() * 1000)
        metrics = [self.Metric(metric_key(k)[:MAX_KEY], v, now, step) for k, v in values.items()]

        def send() -> None:
            chunks = [metrics[i : i + MAX_METRICS] for i in range(0, len(metrics), MAX_METRICS)]
            for i, chunk in enumerate(chunks):  # the last one says the step is logged
                tags = [self.RunTag(LOGGED + group, str(step))] if i == len(chunks) - 1 else []
                self.client.log_batch(run_id, metrics=chunk, tags=tags)

        self.safely("log metrics", send)

    def matrix(self, step: int, kind: str, tasks: list[str], matrix: list[list[float]]) -> None:
        return None  # the pairs are scalars; affinity.png comes with the artifacts

    def flush(self) -> None:
        return None  # every call is sent as it is made

    def finish(self, parts: Any) -> None:
        run = parts.run
        files = [run.table, run.table.with_suffix(".csv"), run.results, *sorted(run.path.glob("*.png"))]

        def send() -> None:
            for path in files:
                if path.is_file():
                    self.client.log_artifact(self.run_id, str(path))

        if self.run_id is not None:
            self.safely("log the results as artifacts", send)
            self.close(None)

    def close(self, error: BaseException | None) -> None:
        if self.run_id is not None:
            run_id, self.run_id = self.run_id, None
            status = status_of(error)
            self.safely(f"mark the run {status}", lambda: self.client.set_terminated(run_id, status))

    def state_dict(self) -> dict:
        return {"run_id": self.run_id or self.resume_id}

    def load_state_dict(self, state: dict) -> None:
        if isinstance(state.get("run_id"), str):
            self.resume_id = state["run_id"]
