"""The background writer: one thread per journal applies its operations to MLflow, in order.

``plots`` operations go to the journal's drawer (:mod:`smotune.tracking.drawer`), a
thread of its own: a redraw's seconds of CPU hold up no write.

A failed write is retried with backoff (0.5 s doubling to 5 s) for as long as
the process lives; what is still unwritten when it ends stays in the journal
for ``smotune sync``. The writer caps MLflow's own HTTP retries and timeout
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``, ``MLFLOW_HTTP_REQUEST_TIMEOUT=10``,
unless set) so one call never blocks for minutes, and keeps MLflow's "View run"
lines out of the sweep's output. A write the store rejects
for good (a bad value, a deleted run) is given up after three attempts and
recorded as ``refused``.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from smotune.errors import UserError
from smotune.tracking import journal as journals
from smotune.tracking.check import redact, short_reason
from smotune.tracking.drawer import Drawer
from smotune.tracking.journal import BACKOFF, JOURNAL_FILE, Journal, read_records
from smotune.tracking.ops import Store, Unresolved, permanent

log = logging.getLogger(__name__)

WRITER_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # no "View run" lines from the thread
}
PERMANENT_ATTEMPTS = 3


class Writer(threading.Thread):
    """Applies a journal's pending operations one by one, retrying until each is written."""

    def __init__(self, journal: Journal):
        super().__init__(name="smotune-mlflow-writer", daemon=True)
        self.journal = journal
        self.stop = threading.Event()
        journal.writer = self

    def run(self) -> None:
        store: Store | None = None
        delay, attempts = BACKOFF[0], 0
        while (op := self.journal.head(self.stop)) is not None:
            if op["op"] == "plots":  # drawn on the drawer's thread: no write waits for a drawing
                self.journal.hand_to_drawer(op)
                continue
            try:
                store = store or Store(self.journal)
                store.apply(op)
            except Exception as err:  # noqa: BLE001 - any failure: keep it on disk, retry
                attempts += 1
                why = short_reason(err) or type(err).__name__
                given_up = permanent(err) and attempts >= PERMANENT_ATTEMPTS
                if isinstance(err, Unresolved) or given_up:
                    log.warning("MLflow refused %s #%d for good: %s", op["op"], op["n"], why)
                    self.journal.done(op, refused=f"{op['op']} #{op['n']}: {why}")
                    attempts = 0
                    continue
                if not self.journal.failing:
                    log.warning(
                        "MLflow write failed (%s); the sweep goes on, the write waits in %s",
                        why,
                        self.journal.path,
                    )
                self.journal.failed()
                if store is not None:
                    store.forget()
                self.stop.wait(delay)
                delay = min(delay * 2, BACKOFF[1])
                continue
            if self.journal.failing:
                log.warning("MLflow at %s is back; writing what waited", redact(store.uri))
            self.journal.done(op)
            delay, attempts = BACKOFF[0], 0


def open_journal(path: Path, uri: str | None = None, fresh: bool = False) -> Journal:
    """The journal at ``path``, open in this process with its writer running.

    ``fresh`` (a new sweep, not a resumed one): an earlier journal at ``path``
    is set aside first: removed when all of it was written, else kept beside it
    as ``mlflow-journal-<n>.jsonl`` for ``smotune sync``.
    """
    path = Path(path).absolute()
    with journals._live_lock:
        live = journals._live.get(path)
        if live is not None and not fresh:
            return live
        if fresh and path.exists():
            journals._live.pop(path, None)  # its writer goes on, appending to the moved file
            _set_aside(path)
        for key, value in WRITER_ENV.items():
            os.environ.setdefault(key, value)
        journal = Journal(path, uri)
        Writer(journal).start()
        Drawer(journal).start()
        journals._live[path] = journal
        return journal


def _set_aside(path: Path) -> None:
    """Move an earlier sweep's journal out of the way (keep it only if it holds unwritten ops)."""
    snap = journals.Snapshot()
    for rec in read_records(path):
        snap.add(rec)
    if not snap.unwritten:
        path.unlink()
        return
    n = 1
    while (kept := path.with_name(f"{path.stem}-{n}{path.suffix}")).exists():
        n += 1
    path.rename(kept)
    print(
        f"tracking: an earlier journal with {len(snap.unwritten)} unwritten writes was kept as "
        f"{kept}: run `smotune sync {kept}`",
        flush=True,
    )


def close_journal(journal: Journal) -> None:
    """Stop the journal's writer (what it did not write stays on disk) and release the file."""
    with journals._live_lock:
        if journals._live.get(journal.path) is journal:
            journals._live.pop(journal.path)
    for thread in (journal.writer, journal.drawer):
        thread.stop.set()
    for thread in (journal.writer, journal.drawer):
        thread.join(timeout=30)
    journal.close()


def wait_for_plots() -> str | None:
    """At a sweep's end: wait for each live journal's drawer to draw what it was handed (at
    most ``SMOTUNE_TRACKING_DRAIN_S``); a line saying so when it did not finish."""
    for journal in journals.live_journals():
        if not journal.drawn_all(journals.drain_timeout()):
            return (
                "tracking: the parent's plots are not all drawn yet; `smotune report` draws them "
                "from MLflow (and the next `smotune sync` or --resume of the sweep uploads them)"
            )
    return None


def sync(path: str | Path, tracking_uri: str | None = None, timeout: float = 60.0) -> bool:
    """Write what a sweep's journal holds unwritten; print the outcome line; whether all is written.

    ``path`` is a journal file or the directory that holds ``mlflow-journal.jsonl``.
    Applied operations are marked in the journal, so a second sync writes nothing again.
    """
    target = Path(path)
    if target.is_dir():
        target = target / JOURNAL_FILE
    if not target.is_file():
        raise UserError(
            str(path),
            "",
            "no tracking journal there",
            "pass the journal path the sweep printed after `smotune sync`",
        )
    live = journals.live(target)
    journal = live or open_journal(target, tracking_uri)
    try:
        written = journal.drain(timeout)
        if written:
            journal.drawn_all(timeout)
        print(journal.status_line(), flush=True)
    finally:
        if live is None:
            close_journal(journal)
    return written
