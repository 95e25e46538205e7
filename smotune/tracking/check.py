"""Checking a tracking URI before use: one real MLflow call, each failure as one line.

Also the URI helpers the readers and the callback share: :func:`redact`, the
environment MLflow reads its settings from, a missing sqlite file, a deleted
experiment, and the telling line of an error text.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow

from smotune.config import DEFAULT_TRACKING_URI
from smotune.errors import UserError, redact

_SCHEMES = ("", "file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
_DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
_CHECK_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


def error_line(text: str) -> str:
    """The telling line of an error text: its last ``SomeError: message`` line (module path
    dropped), else its first."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    pattern = re.compile(r"^(?:[A-Za-z_]\w*\.)*(\w*(Error|Exception|Exit|Interrupt)\b.*)")
    for line in reversed(lines):
        if found := pattern.match(line):
            return found.group(1)[:500]
    return lines[0][:500] if lines else "unknown error"


@contextlib.contextmanager
def env(values: dict[str, str]) -> Iterator[None]:
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


def choose_uri(tracking_uri: str | None) -> tuple[str, str]:
    """A reader's tracking URI and where it came from (for error messages): the
    ``--tracking-uri`` given, else ``MLFLOW_TRACKING_URI``, else smotune's default."""
    if tracking_uri:
        return tracking_uri, "--tracking-uri"
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], "MLFLOW_TRACKING_URI"
    return DEFAULT_TRACKING_URI, "--tracking-uri (default)"


def check_exists(uri: str, where: str) -> None:
    """Reject a ``sqlite:///`` URI whose file does not exist (MLflow would create it)."""
    if uri.startswith("sqlite:") and (path := _sqlite_path(uri)) and not Path(path).is_file():
        raise UserError(
            where,
            "",
            f"no MLflow database at {Path(path).absolute()}",
            "run from the directory the sweep ran in, or pass --tracking-uri",
        )


def short_reason(err: Exception) -> str:
    """A short cause: the OS error if there is one, else the message's first sentence."""
    text = str(err)
    errno = re.search(r"\[Errno -?\d+\] [^\"')]+", text)
    return errno.group(0) if errno else error_line(text).split(". ", 1)[0][:200]


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
        check_exists(uri, where)
        _check_written(uri, where)
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
        with env(_CHECK_ENV):
            client = mlflow.MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
            found = client.get_experiment_by_name(experiment) if experiment else None
    except Exception as err:  # noqa: BLE001 - any failure here is the URI the user gave
        reason = short_reason(err)
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
        raise deleted(shown, found, where)


def _check_written(uri: str, where: str) -> None:
    """Refuse to read a store this process's sweep has not finished writing (its journal)."""
    from smotune.tracking.journal import live_journals

    for journal in live_journals():
        unwritten = len(journal.pending)
        if journal.uri == uri and unwritten:
            ops = journal.snapshot().ops
            exp = next((op["experiment"] for op in ops if op["op"] == "start_parent"), "NAME")
            raise UserError(
                where,
                "",
                f"{unwritten} MLflow writes of this sweep are not yet written to {redact(uri)} "
                f"(kept in {journal.path})",
                f"once the store is back, run `smotune sync {journal.path}`, then "
                f"`smotune best --experiment {exp} --tracking-uri {redact(uri)}`",
            )


def deleted(uri: str, exp: Any, where: str) -> UserError:
    """The error for the deleted experiment ``exp`` at (redacted) ``uri``."""
    return UserError(
        where,
        "",
        f"MLflow experiment {exp.name!r} at {uri} is deleted",
        f"restore it (`mlflow experiments restore --experiment-id {exp.experiment_id}`) "
        "or choose another tracking.experiment",
    )
