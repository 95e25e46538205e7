"""The tracking journal: every MLflow write of a sweep as a line on local disk, applied in order.

The Tune callback never calls MLflow. It appends small JSON operations to
``mlflow-journal.jsonl`` (beside the sweep's Tune state when ``storage.path``
is local; under ``$SMOTUNE_JOURNAL_DIR``, default ``~/.cache/smotune/journals``,
when it is remote) and returns. One writer thread per journal
(:mod:`smotune.tracking.writer`) applies them in order. Lines, one JSON object
each, by ``t``:

- ``open``: a session began (its tracking ``uri``, ``pid``, ``time``);
- ``op``: operation ``n`` (``op`` names it; runs are named by local keys:
  ``sweep-<hex>`` for a parent, ``<parent key>/<phase>/<trial id>`` for a child);
- ``run``: a local ``key`` resolved to an MLflow ``run_id`` (a resume or
  ``smotune sync`` re-attaches instead of creating a duplicate);
- ``done``: every op up to ``n`` is applied (or refused); ``refused``: the
  store rejected op ``n`` for good (``error``);
- ``drawn``: the ``plots`` op ``n`` is drawn and uploaded. The writer hands a
  ``plots`` op to the drawer (:mod:`smotune.tracking.drawer`) and goes on, so
  ``done`` passes it before it is drawn; a journal opened again draws once more
  each parent's last ``plots`` op that is done but not drawn.

A journal is locked (``flock``) by the one process that writes it; the lock
dies with that process, so ``smotune sync`` can finish what a killed sweep left.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from smotune.config import SweepConfig
from smotune.errors import UserError

JOURNAL_FILE = "mlflow-journal.jsonl"
BACKOFF = (0.5, 5.0)  # a journal's writer and drawer: first and longest wait between attempts, s
JOURNAL_DIR_ENV = "SMOTUNE_JOURNAL_DIR"
DRAIN_ENV = "SMOTUNE_TRACKING_DRAIN_S"
DRAIN_DEFAULT = 60.0

_live: dict[Path, Journal] = {}  # the journals this process writes (one writer each)
_live_lock = threading.Lock()


def drain_timeout() -> float:
    """How long the end of an experiment waits for the writer (``SMOTUNE_TRACKING_DRAIN_S``)."""
    return float(os.environ.get(DRAIN_ENV) or DRAIN_DEFAULT)


def journal_path(experiment_path: str) -> Path:
    """The journal of the sweep whose Tune experiment is at ``experiment_path`` (path or URI)."""
    parsed = urlparse(experiment_path)
    if "://" not in experiment_path:
        return Path(experiment_path).resolve() / JOURNAL_FILE
    if parsed.scheme == "file":
        return Path(parsed.path) / JOURNAL_FILE
    root = os.environ.get(JOURNAL_DIR_ENV) or Path.home() / ".cache" / "smotune" / "journals"
    digest = hashlib.sha256(experiment_path.encode()).hexdigest()[:8]
    return Path(root) / f"{Path(parsed.path).name or 'sweep'}-{digest}" / JOURNAL_FILE


def sweep_journal_path(sweep: SweepConfig) -> Path:
    """The journal of ``sweep`` (its Tune experiment: ``<storage.path>/<name>``)."""
    base = sweep.storage.path
    base = base if "://" in base else str(Path(base).resolve())
    return journal_path(f"{base.rstrip('/')}/{sweep.name}")


def new_parent_key() -> str:
    return f"sweep-{uuid.uuid4().hex[:12]}"


def trial_key(parent_key: str, phase: str, trial_id: str) -> str:
    return f"{parent_key}/{phase}/{trial_id}"


class JournalBusy(UserError):
    pass


@dataclass
class Snapshot:
    """What a journal holds: its URI, ops, run keys and how far it is applied."""

    uri: str | None = None
    ops: list[dict[str, Any]] = field(default_factory=list)
    runs: dict[str, str] = field(default_factory=dict)  # local key -> MLflow run id
    keys: set[str] = field(default_factory=set)  # every run key the journal names
    parent_key: str | None = None  # the key of the latest parent run started
    done: int = 0
    refused: list[str] = field(default_factory=list)
    drawn: int = 0  # the highest ``plots`` op drawn and uploaded

    def add(self, rec: dict[str, Any]) -> None:
        kind = rec.get("t")
        if kind == "open":
            self.uri = rec["uri"]
        elif kind == "op":
            self.ops.append(rec)
            self.keys.update(rec[f] for f in ("run", "parent") if f in rec)
            if rec["op"] == "start_parent":
                self.parent_key = rec["run"]
        elif kind == "run":
            self.runs[rec["key"]] = rec["run_id"]
            self.keys.add(rec["key"])
        elif kind == "done":
            self.done = max(self.done, rec["n"])
        elif kind == "refused":
            self.refused.append(rec["error"])
        elif kind == "drawn":
            self.drawn = max(self.drawn, rec["n"])

    @property
    def unwritten(self) -> list[dict[str, Any]]:
        return [op for op in self.ops if op["n"] > self.done]

    @property
    def undrawn(self) -> list[dict[str, Any]]:
        """Each parent's last ``plots`` op, when it was handed to the drawer (done) but a
        process ended before it was drawn."""
        last = {op["parent"]: op for op in self.ops if op["op"] == "plots"}
        return [op for op in last.values() if self.drawn < op["n"] <= self.done]

    def logged(self, key: str) -> tuple[int, dict[str, str] | None]:
        """Run ``key``'s highest epoch journalled, and the tags of its last ``end_run`` op
        (None if the journal never ended it): what the run holds whether or not Tune's
        saved state, older by up to its save period, knows it."""
        epoch, ended = 0, None
        for op in self.ops:
            if op.get("run") != key:
                continue
            if op["op"] == "log" and "epoch" in op["metrics"]:
                epoch = max(epoch, int(op["step"]))
            elif op["op"] == "end_run":
                ended = op["tags"]
            elif op["op"] == "start_trial":
                ended = None
        return epoch, ended

    def key_for(self, ref: str | None) -> str | None:
        """The run key ``ref`` names: ``ref`` if it is a key, else the key of run id ``ref``."""
        if ref is None or ref in self.keys:
            return ref
        return next((k for k, r in self.runs.items() if r == ref), None)


def snapshot(path: Path) -> Snapshot | None:
    """What the journal at ``path`` holds (this process's live view if it writes it), if any."""
    path = Path(path).absolute()
    with _live_lock:
        journal = _live.get(path)
    if journal is not None:
        return journal.snapshot()
    if not path.is_file():
        return None
    snap = Snapshot()
    for rec in read_records(path):
        snap.add(rec)
    return snap


def live(path: Path) -> Journal | None:
    with _live_lock:
        return _live.get(Path(path).absolute())


def live_journals() -> list[Journal]:
    with _live_lock:
        return list(_live.values())


def read_records(path: Path) -> list[dict[str, Any]]:
    """The journal's records; a torn last line (a process killed mid-write) is dropped."""
    lines = path.read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise UserError(
                str(path), f"line {i + 1}", "is not a journal record", "restore the file"
            ) from None
    return records


class Journal:
    """One journal file, open for appending by this process, and what it holds.

    Thread-safe: the callback appends ops from Tune's driver thread, the writer
    thread takes them in order (:meth:`head`) and marks them :meth:`done`.
    """

    def __init__(self, path: Path, uri: str | None = None):
        self.path = path
        self.cond = threading.Condition()
        self.state = Snapshot()
        self.pending: collections.deque[dict[str, Any]] = collections.deque()
        self.delayed_written = 0  # ops applied after a failed write held them up
        self.failing = False  # the last write attempt failed
        self.gave_up_at: float | None = None  # a drain timed out then (and nothing got written)
        self.last_success = 0.0
        self.writer: Any = None  # the thread that applies it (smotune.tracking.writer)
        self.drawer: Any = None  # the thread that draws its plots ops (smotune.tracking.drawer)
        self.to_draw: dict[str, dict[str, Any]] = {}  # parent key -> its newest plots op waiting
        self.drawing: dict[str, Any] | None = None  # the plots op being drawn now
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives with the journal
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.close()
            raise JournalBusy(
                str(path),
                "",
                "is being written by another running process (a sweep or `smotune sync`)",
                "let that process finish, or stop it, then run `smotune sync` again",
            ) from None
        if path.stat().st_size:
            for rec in read_records(path):
                self.state.add(rec)
        for op in self.state.unwritten:
            op["_delayed"] = True  # left unwritten by an earlier process
            self.pending.append(op)
        for op in self.state.undrawn:
            self.to_draw[op["parent"]] = op
        self.uri = uri or self.state.uri
        if self.uri is None:
            self._file.close()
            raise UserError(str(path), "", "names no tracking URI", "pass --tracking-uri")
        self._write({"t": "open", "uri": self.uri, "pid": os.getpid(), "time": time.time()})

    def _write(self, record: dict[str, Any]) -> None:
        if self._file.closed:
            return  # closed by `smotune sync` while its writer was still busy: the op stays pending
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()
        self.state.add(record)

    def snapshot(self) -> Snapshot:
        with self.cond:
            s = self.state
            return Snapshot(
                s.uri,
                list(s.ops),
                dict(s.runs),
                set(s.keys),
                s.parent_key,
                s.done,
                list(s.refused),
                s.drawn,
            )

    # -- the callback's side

    def append(self, op: str, **fields: Any) -> None:
        """Append operation ``op`` and hand it to the writer."""
        with self.cond:
            ops = self.state.ops
            record = {"t": "op", "n": ops[-1]["n"] + 1 if ops else 1, "op": op, **fields}
            self._write(record)
            record["_delayed"] = self.failing
            self.pending.append(record)
            self.cond.notify_all()

    def hint(self, key: str, run_id: str) -> None:
        """Record that ``key`` is ``run_id`` (known from Tune's saved state), unless it is known."""
        with self.cond:
            if key not in self.state.runs:
                self.resolve(key, run_id)

    def superseded(self, op: dict[str, Any]) -> bool:
        """Whether a later pending op repeats ``op`` (same ``op`` and ``parent``): skip it."""
        with self.cond:
            return any(
                p["n"] > op["n"] and p["op"] == op["op"] and p.get("parent") == op.get("parent")
                for p in self.pending
            )

    def key_for(self, ref: str | None) -> str | None:
        with self.cond:
            return self.state.key_for(ref)

    def run_id(self, key: str | None) -> str | None:
        with self.cond:
            return self.state.runs.get(key) if key else None

    # -- the writer's side

    def resolve(self, key: str, run_id: str) -> None:
        with self.cond:
            self._write({"t": "run", "key": key, "run_id": run_id})

    def head(self, stop: threading.Event) -> dict[str, Any] | None:
        """The next op to apply (it stays pending until :meth:`done`); None once ``stop`` is set."""
        with self.cond:
            while not self.pending and not stop.is_set():
                self.cond.wait(1.0)
            return None if stop.is_set() else self.pending[0]

    def done(self, op: dict[str, Any], refused: str | None = None) -> None:
        with self.cond:
            if refused is not None:
                self._write({"t": "refused", "n": op["n"], "error": refused})
            self._write({"t": "done", "n": op["n"]})
            self.pending.popleft()
            self.delayed_written += bool(op.get("_delayed"))
            self.failing = False
            self.last_success = time.monotonic()
            self.cond.notify_all()

    def hand_to_drawer(self, op: dict[str, Any]) -> None:
        """The writer's part of a ``plots`` op: queue it for the drawer (replacing an older
        one of the same parent that waits) and go on to the next write."""
        with self.cond:
            self.to_draw[op["parent"]] = op
        self.done(op)

    # -- the drawer's side

    def next_drawing(self, stop: threading.Event) -> dict[str, Any] | None:
        """The next plots op to draw (the newest of its parent); None once ``stop`` is set."""
        with self.cond:
            while not self.to_draw and not stop.is_set():
                self.cond.wait(1.0)
            if stop.is_set():
                return None
            self.drawing = self.to_draw.pop(next(iter(self.to_draw)))
            return self.drawing

    def drew(self, op: dict[str, Any], ok: bool) -> None:
        """The drawer is done with ``op``: recorded ``drawn`` if it was, else queued again
        (unless a newer one of its parent waits)."""
        with self.cond:
            if ok:
                self._write({"t": "drawn", "n": op["n"]})
            else:
                self.to_draw.setdefault(op["parent"], op)
            self.drawing = None
            self.cond.notify_all()

    def failed(self) -> None:
        """A write attempt failed: everything waiting now counts as delayed."""
        with self.cond:
            self.failing = True
            for op in self.pending:
                op["_delayed"] = True

    # -- the end

    def drain(self, timeout: float) -> bool:
        """Wait until every op is applied, at most ``timeout`` s; whether all are.

        When an earlier drain gave up and nothing was written since, wait at most
        5 s: a store that stays down does not cost the full wait at every phase.
        """
        with self.cond:
            if self.gave_up_at is not None and self.last_success < self.gave_up_at:
                timeout = min(timeout, 5.0)
            ok = self.cond.wait_for(lambda: not self.pending, timeout)
            self.gave_up_at = None if ok else time.monotonic()
            return ok

    def drawn_all(self, timeout: float) -> bool:
        """Wait until the drawer has drawn every plots op handed to it, at most ``timeout`` s
        (what is not drawn then is drawn again when the journal is next opened)."""
        with self.cond:
            return self.cond.wait_for(lambda: not self.to_draw and self.drawing is None, timeout)

    def status_line(self) -> str:
        """The sweep's last word on tracking: what was delayed and whether it is written now."""
        with self.cond:
            refused = self.state.refused
            tail = (
                f"; {len(refused)} refused by the store ({refused[-1]}; see {self.path})"
                if refused
                else ""
            )
            if self.pending:
                return (
                    f"tracking: {len(self.pending)} writes not yet written (store unreachable): "
                    f"run `smotune sync {self.path}`{tail}"
                )
            return f"tracking: {self.delayed_written} writes delayed, all written{tail}"

    def close(self) -> None:
        with self.cond:
            with contextlib.suppress(OSError):
                self._file.close()  # closing releases the lock
            self.cond.notify_all()
