"""Every MLflow name, tag and artifact of smotune, and the Tune callback that writes them.

Layout: one experiment per sweep; one parent run per sweep (tag ``kind=sweep``;
params ``space.<path>``, ``search.*``, ``schedule.*``; artifact ``sweep.yaml``;
at the end ``best_<metric>`` metrics, tags ``best_trial`` / ``best_run_id`` and
artifact ``best.yaml``); one nested child run per Tune trial (run name = trial
id; tags ``kind=trial``, ``trial_id``, ``status``, ``reason``, ``checkpoint``,
``best``; params = the flattened train config with dotted names plus
``global_batch_size``; per-epoch metrics with ``step=epoch``; artifact
``train.yaml``).

A trial's ``status`` tag ends as ``completed`` (ran all epochs, run FINISHED),
``early_stopped`` (stopped before its last epoch, run FINISHED), ``failed``
(an error or a NaN ``train_loss``, with ``reason``, run FAILED) or ``killed``
(the sweep ended before the trial did, with ``reason``, run KILLED).

Everything is written from the Tune driver with ``MlflowClient`` and explicit
run ids; credentials come only from MLflow's own environment variables
(``MLFLOW_TRACKING_TOKEN``, ``MLFLOW_TRACKING_USERNAME`` / ``PASSWORD``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import numbers
import os
import re
import socket
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from ray.tune import Callback

from smotune.config import SweepConfig, TrainConfig, dump_train, flatten
from smotune.errors import UserError
from smotune.space import apply, fixed_values

log = logging.getLogger(__name__)

METRICS = (
    "epoch",
    "zeroshot_top1",
    "zeroshot_top5",
    "train_loss",
    "lr",
    "samples_per_s",
    "data_skipped",
)
"""smotune's metric names; other numeric result keys are logged too unless Tune's own."""

TUNE_KEYS = (
    "training_iteration",
    "time_this_iter_s",
    "time_total_s",
    "time_since_restore",
    "iterations_since_restore",
    "timesteps_total",
    "timesteps_this_iter",
    "timesteps_since_restore",
    "episodes_total",
    "episodes_this_iter",
    "timestamp",
    "pid",
    "done",
    "should_checkpoint",
)

TAG_PARENT = "mlflow.parentRunId"
TAG_KIND = "kind"
TAG_SWEEP = "sweep"
TAG_TRIAL_ID = "trial_id"
TAG_STATUS = "status"
TAG_REASON = "reason"
TAG_CHECKPOINT = "checkpoint"
TAG_BEST = "best"
TAG_BEST_TRIAL = "best_trial"
TAG_BEST_RUN_ID = "best_run_id"
KIND_SWEEP = "sweep"
KIND_TRIAL = "trial"

RUNNING = "running"
COMPLETED = "completed"
EARLY_STOPPED = "early_stopped"
FAILED = "failed"
KILLED = "killed"
_RUN_STATUS = {COMPLETED: "FINISHED", EARLY_STOPPED: "FINISHED", FAILED: "FAILED", KILLED: "KILLED"}

SWEEP_ARTIFACT = "sweep.yaml"
TRAIN_ARTIFACT = "train.yaml"
BEST_ARTIFACT = "best.yaml"
BEST_PREFIX = "best_"
PARAM_GLOBAL_BATCH = "global_batch_size"
RESULT_CHECKPOINT = "checkpoint_path"  # what Ray Train's TuneReportCallback adds to results

NAN_REASON = "nan loss"
KILLED_REASON = "the sweep ended before this trial finished; `smotune sweep --resume` continues it"

_SCHEMES = ("", "file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
_DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
_CHECK_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
_QUIET_DOWNLOAD = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
_BATCH = 100  # MLflow's limit of params or tags per log_batch call


@dataclass(frozen=True)
class TrialRecord:
    """One trial's child run as read back from MLflow."""

    run_id: str
    trial_id: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    train_yaml: str


# ---------------------------------------------------------------- names and values


def train_params(cfg: TrainConfig) -> dict[str, str]:
    """The params of a trial's child run: dotted train-config paths as text, plus global batch."""
    params = {k: str(v) for k, v in flatten(cfg.model_dump(mode="json")).items()}
    params[PARAM_GLOBAL_BATCH] = str(cfg.global_batch_size)
    return params


def trial_train_config(sweep: SweepConfig, trial_config: dict[str, Any]) -> TrainConfig:
    """The full train config of a trial: the sweep's train config, fixed values, then the sample."""
    return apply(sweep.train, {**fixed_values(sweep), **trial_config}, where="trial config")


def _sweep_params(sweep: SweepConfig) -> dict[str, str]:
    params = {
        f"space.{path}": yaml.safe_dump(
            dist.model_dump(mode="json", exclude_unset=True), default_flow_style=True
        ).strip()
        for path, dist in sweep.space.items()
    }
    params.update(
        {k: str(v) for k, v in flatten(sweep.search.model_dump(mode="json"), "search.").items()}
    )
    asha = sweep.schedule.asha
    if asha is None:
        params["schedule.asha"] = "none"
    else:
        params.update(
            {k: str(v) for k, v in flatten(asha.model_dump(mode="json"), "schedule.asha.").items()}
        )
    return params


def _result_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The loggable metrics of one Tune result."""
    out = {}
    for key, value in result.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            continue
        if key in METRICS or ("/" not in key and not key.startswith("_") and key not in TUNE_KEYS):
            out[key] = float(value)
    return out


def _error_line(text: str) -> str:
    """The telling line of an error text: its last ``SomeError: message`` line, else its first."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    pattern = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")
    for line in reversed(lines):
        if pattern.match(line):
            return line[:500]
    return lines[0][:500] if lines else "unknown error"


def _trial_error(trial: Any) -> str:
    path = trial.error_file
    if path and os.path.exists(path):
        return _error_line(Path(path).read_text())
    return _error_line(trial.get_error() or "")


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    for i in range(0, len(items), _BATCH):
        yield items[i : i + _BATCH]


# ---------------------------------------------------------------- checking a tracking URI


def redact(uri: str) -> str:
    """``uri`` with any password replaced by ``***``, for messages and logged files."""
    password = urlparse(uri).password
    return uri.replace(f":{password}@", ":***@") if password else uri


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    """Environment variables set inside the block (MLflow reads its settings from them)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _sqlite_path(uri: str) -> str | None:
    """The file of a ``sqlite:///`` URI (None for in-memory)."""
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return None if not path or path == ":memory:" else path


def _sqlite_problem(path: str) -> str | None:
    """Why MLflow could not write the sqlite file ``path`` (None if it can)."""
    target = Path(path).absolute()
    existing = target.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if existing != target.parent:
        return None if os.access(existing, os.W_OK) else f"cannot create {target.parent}"
    if target.exists() and not target.is_file():
        return f"{target} is not a file"
    try:
        with contextlib.closing(sqlite3.connect(target, timeout=5)) as db:
            db.execute("BEGIN IMMEDIATE")
            db.rollback()
    except sqlite3.Error as err:
        return f"cannot write {target} ({err})"
    return None


def _check_exists(uri: str, where: str) -> None:
    """Reject a ``sqlite:///`` URI whose file does not exist (MLflow would create it)."""
    if uri.startswith("sqlite:") and (path := _sqlite_path(uri)) and not Path(path).is_file():
        raise UserError(
            where,
            "",
            f"no MLflow database at {Path(path).absolute()}",
            "run from the directory the sweep ran in, or pass --tracking-uri",
        )


def _reason(err: Exception) -> str:
    """A short cause: the OS error if there is one, else the message's first sentence."""
    text = str(err)
    errno = re.search(r"\[Errno -?\d+\] [^\"')]+", text)
    return errno.group(0) if errno else _error_line(text).split(". ", 1)[0][:200]


def _database_problem(uri: str) -> str | None:
    """Why the database server of a postgresql/mysql/mssql URI cannot be reached, if so.

    MLflow retries a failing database connection for about 100 s; a socket tells in 5 s.
    """
    parsed = urlparse(uri)
    if not parsed.hostname:
        return None
    port = parsed.port or _DB_PORTS[parsed.scheme.split("+", 1)[0]]
    try:
        socket.create_connection((parsed.hostname, port), timeout=5).close()
    except OSError as err:
        return f"cannot reach {parsed.hostname}:{port} ({err.strerror or err})"
    return None


def check_tracking(
    uri: str, experiment: str | None = None, where: str = "tracking.uri", existing: bool = False
) -> None:
    """Raise a one-line :class:`UserError` if MLflow cannot be used at ``uri``.

    Makes one cheap real call (``search_experiments``) with no retries and a 5 s
    timeout. With ``experiment``, also rejects a deleted experiment of that
    name; with ``existing`` (for readers), a sqlite file that does not exist.
    """
    scheme = urlparse(uri).scheme.split("+", 1)[0]
    shown = redact(uri)
    if scheme not in _SCHEMES:
        raise UserError(
            where,
            "",
            f"unsupported tracking URI scheme {scheme!r} in {shown}",
            "use sqlite:///mlflow.db, http(s)://HOST:PORT of an `mlflow server`, or a "
            "postgresql/mysql/mssql URI",
        )
    if existing:
        _check_exists(uri, where)
    if scheme == "sqlite" and (path := _sqlite_path(uri)) is not None:
        problem = _sqlite_problem(path)
        if problem:
            raise UserError(
                where,
                "",
                f"cannot use the MLflow sqlite store {shown}: {problem}",
                "point it at a writable directory, e.g. sqlite:///mlflow.db",
            )
    if scheme in _DB_PORTS and (problem := _database_problem(uri)):
        raise UserError(
            where, "", f"cannot use {shown}: {problem}", "start the database or correct the URI"
        )
    try:
        with _env(_CHECK_ENV):
            client = mlflow.MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
            found = client.get_experiment_by_name(experiment) if experiment else None
    except Exception as err:  # noqa: BLE001 - any failure here is the URI the user gave
        reason = _reason(err)
        if scheme in ("http", "https"):
            if re.search(r"\b(401|403)\b|Unauthorized|Forbidden", str(err)):
                problem = f"the MLflow server at {shown} refused the request ({reason})"
                fix = "set MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD"
            else:
                problem = f"cannot reach the MLflow server at {shown} ({reason})"
                fix = "start it (`mlflow server --host 127.0.0.1 --port PORT`) or correct the URI"
        elif scheme in ("", "file"):
            problem = f"MLflow cannot use the file store {shown} ({reason})"
            fix = "use a database store such as sqlite:///mlflow.db"
        elif isinstance(err, ImportError):
            problem = f"MLflow cannot use {shown} ({reason})"
            fix = f"install the database driver {err.name} in this environment"
        else:
            problem = f"MLflow cannot use {shown} ({reason})"
            fix = "correct the URI or start the database"
        raise UserError(where, "", problem, fix) from None
    if found is not None and found.lifecycle_stage == "deleted":
        raise _deleted(shown, found, where)


def _deleted(uri: str, exp: Any, where: str) -> UserError:
    return UserError(
        where,
        "",
        f"MLflow experiment {exp.name!r} at {uri} is deleted",
        f"restore it (`mlflow experiments restore --experiment-id {exp.experiment_id}`) "
        "or choose another tracking.experiment",
    )


def _experiment_id(client: mlflow.MlflowClient, name: str, uri: str) -> str:
    """The id of the active experiment ``name``, created if missing."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name)
    if exp.lifecycle_stage == "deleted":
        raise _deleted(redact(uri), exp, "tracking.uri")
    return exp.experiment_id


# ---------------------------------------------------------------- reading runs


def _search(client: mlflow.MlflowClient, experiment_id: str, query: str, order: str) -> list[Any]:
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], query, order_by=[order], max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _children(
    client: mlflow.MlflowClient, experiment_id: str, parent_id: str, extra: str = ""
) -> list[Any]:
    query = f"tags.`{TAG_PARENT}` = '{parent_id}'" + (f" and {extra}" if extra else "")
    return _search(client, experiment_id, query, "attributes.start_time ASC")


def _artifact_text(client: mlflow.MlflowClient, run_id: str, path: str) -> str:
    with tempfile.TemporaryDirectory() as tmp, _env(_QUIET_DOWNLOAD):
        local = client.download_artifacts(run_id, path, tmp)
        return Path(local).read_text()


def _best_run(client: mlflow.MlflowClient, experiment_id: str, parent_id: str) -> Any | None:
    """The completed child of ``parent_id`` with the highest final zeroshot_top1."""
    done = _children(client, experiment_id, parent_id, f"tags.{TAG_STATUS} = '{COMPLETED}'")
    scored = [r for r in done if not math.isnan(r.data.metrics.get("zeroshot_top1", math.nan))]
    if not scored:
        return None
    return max(scored, key=lambda r: (r.data.metrics["zeroshot_top1"], -r.info.start_time))


def _record(client: mlflow.MlflowClient, run: Any) -> TrialRecord:
    return TrialRecord(
        run_id=run.info.run_id,
        trial_id=run.data.tags.get(TAG_TRIAL_ID, run.info.run_name),
        status=run.data.tags.get(TAG_STATUS, ""),
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        train_yaml=_artifact_text(client, run.info.run_id, TRAIN_ARTIFACT),
    )


def _latest_sweep(uri: str, experiment: str) -> tuple[mlflow.MlflowClient, str, Any]:
    """Client, experiment id and latest parent run (by start time) of ``experiment``."""
    where = f"MLflow {redact(uri)}"
    _check_exists(uri, where)
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None or exp.lifecycle_stage != "active":
        raise UserError(
            where,
            "experiment",
            f"no experiment named {experiment!r}",
            "pass the sweep's name (or its tracking.experiment) as --experiment",
        )
    parents = client.search_runs(
        [exp.experiment_id],
        f"tags.{TAG_KIND} = '{KIND_SWEEP}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not parents:
        raise UserError(
            where, "experiment", f"{experiment!r} holds no sweep run", "run the sweep first"
        )
    return client, exp.experiment_id, parents[0]


def best_trial_run(uri: str, experiment: str) -> TrialRecord:
    """The best completed trial of the latest sweep (parent run by start time) in ``experiment``.

    Best = status ``completed`` and the highest final ``zeroshot_top1``. Only the
    latest sweep is searched: an earlier sweep of the same name may have run a
    different space or train config, so its trials are not comparable.
    """
    client, experiment_id, parent = _latest_sweep(uri, experiment)
    best = _best_run(client, experiment_id, parent.info.run_id)
    if best is None:
        raise UserError(
            f"MLflow {redact(uri)}",
            "experiment",
            f"the latest sweep of {experiment!r} (run {parent.info.run_id}) has no completed trial",
            "resume or rerun the sweep until a trial runs all its epochs",
        )
    return _record(client, best)


def _row(
    trial_id: str,
    run_id: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    status: str,
    reason: str,
) -> dict[str, Any]:
    return {
        "trial_id": trial_id,
        "run_id": run_id,
        "params": params,
        "epochs_run": int(metrics.get("epoch", 0)),
        "zeroshot_top1": metrics.get("zeroshot_top1"),
        "status": status,
        "reason": reason,
    }


def _param_value(text: str) -> Any:
    """A param's text back as the int, float or bool it was logged from (else the text)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)


def sweep_summary(sweep: SweepConfig) -> list[dict[str, Any]]:
    """One row per trial of the sweep's latest parent run, read from MLflow.

    Row keys: ``trial_id``, ``run_id``, ``params`` (searched path -> value),
    ``epochs_run``, ``zeroshot_top1`` (final; None if never reported),
    ``status`` and ``reason``.
    """
    client, experiment_id, parent = _latest_sweep(sweep.tracking.uri, sweep.experiment)
    searched_paths = [p for p, dist in sweep.space.items() if dist.kind != "fixed"]
    rows = []
    for run in _children(client, experiment_id, parent.info.run_id):
        tags, params = run.data.tags, run.data.params
        searched = {p: _param_value(params[p]) for p in searched_paths if p in params}
        rows.append(
            _row(
                tags.get(TAG_TRIAL_ID, run.info.run_name),
                run.info.run_id,
                searched,
                run.data.metrics,
                tags.get(TAG_STATUS, ""),
                tags.get(TAG_REASON, ""),
            )
        )
    return rows


# ---------------------------------------------------------------- the Tune callback


class MlflowSweepCallback(Callback):
    """Logs a sweep to MLflow from the Tune driver: one parent run, one nested child per trial.

    Its state (parent run id; per trial: run id, searched values, last epoch,
    final metrics, status) is saved by Tune with the experiment, so
    ``Tuner.restore`` re-attaches to the same runs. A trial missing from that
    state is still found by its ``trial_id`` tag under the parent, so a restore
    never duplicates a run.
    """

    def __init__(self, sweep: SweepConfig, sweep_file_text: str):
        self.sweep = sweep
        self.sweep_file_text = sweep_file_text
        self._parent_id: str | None = None
        self._trials: dict[str, dict[str, Any]] = {}
        self._client: mlflow.MlflowClient | None = None
        self._experiment_id: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        return state

    def get_state(self) -> dict[str, Any]:
        return {"parent_run_id": self._parent_id, "trials": copy.deepcopy(self._trials)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent_id = state["parent_run_id"]
        self._trials = copy.deepcopy(state["trials"])
        self._client = None

    @property
    def parent_run_id(self) -> str | None:
        return self._parent_id

    # -- parent run

    def _attach(self) -> mlflow.MlflowClient:
        """The client, with the experiment set and the parent run created or re-attached."""
        if self._client is not None:
            return self._client
        uri = self.sweep.tracking.uri
        client = mlflow.MlflowClient(tracking_uri=uri)
        self._experiment_id = _experiment_id(client, self.sweep.experiment, uri)
        if self._parent_id is not None:
            try:
                parent = client.get_run(self._parent_id)
            except MlflowException:
                parent = None
            if parent is not None and parent.info.experiment_id == self._experiment_id:
                client.update_run(self._parent_id, status="RUNNING")
                self._client = client
                return client
            log.warning(
                "parent run %s is not in %s; starting a new one", self._parent_id, redact(uri)
            )
            self._trials = {}
        run = client.create_run(
            self._experiment_id,
            run_name=f"{self.sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            tags={TAG_KIND: KIND_SWEEP, TAG_SWEEP: self.sweep.name},
        )
        self._parent_id = run.info.run_id
        for chunk in _chunks([Param(k, v) for k, v in _sweep_params(self.sweep).items()]):
            client.log_batch(self._parent_id, params=chunk)
        sweep_text = self.sweep_file_text.replace(uri, redact(uri))
        client.log_text(self._parent_id, sweep_text, SWEEP_ARTIFACT)
        self._client = client
        return client

    def setup(self, **info: Any) -> None:
        self._attach()

    # -- child runs

    def _start(self, trial: Any) -> dict[str, Any]:
        """Create the trial's child run, or set its existing one RUNNING again."""
        client = self._attach()
        old = self._trials.get(trial.trial_id, {})
        cfg = trial_train_config(self.sweep, trial.config)
        run_id = old.get("run_id")
        if run_id is None:
            query = f"tags.{TAG_TRIAL_ID} = '{trial.trial_id}'"
            found = _children(client, self._experiment_id, self._parent_id, query)
            run_id = found[0].info.run_id if found else None
        logged_epoch = 0
        if run_id is not None:
            history = client.get_metric_history(run_id, "epoch")
            logged_epoch = max((m.step for m in history), default=0)
            client.update_run(run_id, status="RUNNING")
            if TAG_REASON in client.get_run(run_id).data.tags:
                client.delete_tag(run_id, TAG_REASON)
            client.set_tag(run_id, TAG_STATUS, RUNNING)
        else:
            tags = {
                TAG_PARENT: self._parent_id,
                TAG_KIND: KIND_TRIAL,
                TAG_TRIAL_ID: trial.trial_id,
                TAG_STATUS: RUNNING,
            }
            run_id = client.create_run(
                self._experiment_id, run_name=trial.trial_id, tags=tags
            ).info.run_id
            for chunk in _chunks([Param(k, v) for k, v in train_params(cfg).items()]):
                client.log_batch(run_id, params=chunk)
            client.log_text(run_id, dump_train(cfg), TRAIN_ARTIFACT)
        rec = {
            "run_id": run_id,
            "params": dict(trial.config),
            "epochs": cfg.epochs,
            "last_epoch": max(old.get("last_epoch", 0), logged_epoch),
            "metrics": old.get("metrics", {}),
            "checkpoint": old.get("checkpoint", ""),
            "status": RUNNING,
            "reason": "",
            "open": True,
        }
        self._trials[trial.trial_id] = rec
        return rec

    def _rec(self, trial: Any) -> dict[str, Any]:
        return self._trials.get(trial.trial_id) or self._start(trial)

    def _end(self, rec: dict[str, Any], status: str, reason: str = "") -> None:
        tags = [RunTag(TAG_STATUS, status)] + ([RunTag(TAG_REASON, reason)] if reason else [])
        client = self._attach()
        client.log_batch(rec["run_id"], tags=tags)
        client.set_terminated(rec["run_id"], status=_RUN_STATUS[status])
        rec.update(status=status, reason=reason, open=False)

    def _checkpoint_tag(self, rec: dict[str, Any], trial: Any, result: dict | None = None) -> None:
        """The trial's latest checkpoint: Ray Train's (``checkpoint_path`` in results) or Tune's."""
        path = (result or {}).get(RESULT_CHECKPOINT)
        if path is None and trial.checkpoint is not None:
            path = trial.checkpoint.path
        if path and path != rec["checkpoint"]:
            self._attach().set_tag(rec["run_id"], TAG_CHECKPOINT, path)
            rec["checkpoint"] = path

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._start(trial)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        rec = self._rec(trial)
        client = self._attach()
        metrics = _result_metrics(result)
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        now = int(time.time() * 1000)
        if "epoch" not in result or step > rec["last_epoch"]:  # a resumed run may re-report
            client.log_batch(
                rec["run_id"], metrics=[Metric(k, v, now, step) for k, v in metrics.items()]
            )
        if "epoch" in result:
            rec["last_epoch"] = max(rec["last_epoch"], step)
        rec["metrics"].update(metrics)
        self._checkpoint_tag(rec, trial, result)
        loss = metrics.get("train_loss")
        if loss is not None and math.isnan(loss) and rec["status"] != FAILED:
            client.log_batch(
                rec["run_id"], tags=[RunTag(TAG_STATUS, FAILED), RunTag(TAG_REASON, NAN_REASON)]
            )
            rec.update(status=FAILED, reason=NAN_REASON)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        rec = self._rec(trial)
        self._checkpoint_tag(rec, trial)
        if rec["status"] == FAILED:
            self._end(rec, FAILED, rec["reason"])
        else:
            self._end(rec, COMPLETED if rec["last_epoch"] >= rec["epochs"] else EARLY_STOPPED)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        rec = self._rec(trial)
        self._end(rec, FAILED, rec["reason"] if rec["status"] == FAILED else _trial_error(trial))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        client = self._attach()
        tune_trials = {t.trial_id: t for t in trials}
        for trial_id, rec in self._trials.items():
            if not rec["open"]:
                continue
            trial = tune_trials.get(trial_id)
            if rec["status"] == FAILED:
                self._end(rec, FAILED, rec["reason"])
            elif trial is not None and trial.status == "ERROR":
                self._end(rec, FAILED, _trial_error(trial))
            else:
                self._end(rec, KILLED, KILLED_REASON)
        for run in _children(
            client, self._experiment_id, self._parent_id, "attributes.status = 'RUNNING'"
        ):
            tags = [RunTag(TAG_STATUS, KILLED), RunTag(TAG_REASON, KILLED_REASON)]
            client.log_batch(run.info.run_id, tags=tags)
            client.set_terminated(run.info.run_id, status="KILLED")
        self._mark_best(client)
        client.set_terminated(self._parent_id, status="FINISHED")

    def _mark_best(self, client: mlflow.MlflowClient) -> None:
        """Tag the best completed child and copy its final metrics and config to the parent."""
        best = _best_run(client, self._experiment_id, self._parent_id)
        best_id = best.info.run_id if best is not None else None
        query = f"tags.{TAG_BEST} = 'true'"
        for run in _children(client, self._experiment_id, self._parent_id, query):
            if run.info.run_id != best_id:
                client.delete_tag(run.info.run_id, TAG_BEST)
        if best is None:
            client.set_tag(self._parent_id, TAG_BEST_TRIAL, "none")
            return
        now = int(time.time() * 1000)
        client.log_batch(
            self._parent_id,
            metrics=[Metric(BEST_PREFIX + k, v, now, 0) for k, v in best.data.metrics.items()],
            tags=[
                RunTag(TAG_BEST_TRIAL, best.data.tags[TAG_TRIAL_ID]),
                RunTag(TAG_BEST_RUN_ID, best_id),
            ],
        )
        train_yaml = _artifact_text(client, best_id, TRAIN_ARTIFACT)
        client.log_text(self._parent_id, train_yaml, BEST_ARTIFACT)
        client.set_tag(best_id, TAG_BEST, "true")

    def summary(self) -> list[dict[str, Any]]:
        """One row per trial seen by this callback, in the shape of :func:`sweep_summary`."""
        return [
            _row(tid, r["run_id"], r["params"], r["metrics"], r["status"], r["reason"])
            for tid, r in self._trials.items()
        ]
