"""The drawer: one thread per journal draws the parent's plots, so no MLflow write waits for one.

A redraw costs seconds of CPU (matplotlib, Optuna's figures, fANOVA); on the
writer's thread every write queued behind it waited as long. The writer hands
each ``plots`` op to this thread and goes on (:meth:`Journal.hand_to_drawer`);
of several waiting for one parent only the newest is drawn. A drawing reads
what MLflow holds when it starts, so it is never older than the op that asked
for it. Only the files whose bytes changed since this thread last uploaded
them are uploaded again (``optuna.html`` is megabytes and changes only with
the search's trials). A store that cannot be read or written is retried with
the writer's backoff; a plot that cannot be drawn is a logged warning
(:func:`smotune.tracking.history.upload_plots`), never a stopped sweep.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import mlflow

from smotune.tracking.journal import BACKOFF, Journal

log = logging.getLogger(__name__)


class Drawer(threading.Thread):
    """Draws the plots ops a journal's writer hands over, one at a time, the newest per parent."""

    def __init__(self, journal: Journal):
        super().__init__(name="smotune-plot-drawer", daemon=True)
        self.journal = journal
        self.stop = threading.Event()
        self.uploaded: dict[str, dict[str, str]] = {}  # parent run id -> file -> sha256
        journal.drawer = self

    def run(self) -> None:
        delay = BACKOFF[0]
        client: mlflow.MlflowClient | None = None
        while (op := self.journal.next_drawing(self.stop)) is not None:
            ok = True
            try:
                if not self.journal.superseded(op):  # a newer one waits in the writer's queue
                    client = client or mlflow.MlflowClient(tracking_uri=self.journal.uri)
                    self.draw(client, op)
            except Exception as err:  # noqa: BLE001 - the store is down: draw it again later
                ok = False
                log.debug("plots not drawn yet: %s: %s", type(err).__name__, err)
                client = None
            self.journal.drew(op, ok)
            if ok:
                delay = BACKOFF[0]
            else:
                self.stop.wait(delay)
                delay = min(delay * 2, BACKOFF[1])

    def draw(self, client: mlflow.MlflowClient, op: dict[str, Any]) -> None:
        from smotune.tracking.history import upload_plots  # matplotlib: only where plots are drawn

        run_id = self.journal.run_id(op["parent"])
        if run_id is None:
            return  # the parent was never created (its start was refused): nothing to draw on
        upload_plots(client, run_id, self.uploaded.setdefault(run_id, {}))
