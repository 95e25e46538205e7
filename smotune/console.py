"""What a person sees while a sweep or a run goes: one line per event, Ray's own logs in a file.

- :class:`SweepConsole`, a Tune callback on the driver, prints one line per
  trial event (started with its searched values, each epoch's ``search.metric``,
  stopped by ASHA at epoch k with the rung's cutoff as the scheduler computed
  it, completed, failed with its one-line reason) and a progress line (trials
  done / running / total, elapsed, an ETA from the trials ended so far).
- :func:`ray_logs_to` sends the Python logs of ``ray`` (Tune's and Train's
  included) and Python warnings to a file instead of the terminal; the Ray
  workers' own output stays in the Ray session's log folder (``log_to_driver``
  off, see ``ray_cluster.connect``). ``--verbose`` keeps both on the terminal.
- :class:`EpochFeed` brings ``smotune train``'s per-epoch metrics from Ray
  Train's controller (another process) to the driver, which prints one line each.
- Damaged data is named where the user looks: each damaged or unreadable shard the
  workers met (the engine's ``data_damage``: every rank's, one line a shard) is printed
  once, as ``damaged shard <shard>: <what was met>``, by both consoles.

Nothing here names MLflow things.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ray.train import UserCallback
from ray.tune import Callback
from ray.util.queue import Empty, Queue

from smotune.config import DAMAGE_KEY, SweepConfig
from smotune.lines import epoch_line
from smotune.optuna_study import TIME_ATTR
from smotune.space import optuna_space

LOG_FILE = "smotune-ray.log"
TUNE_OUTPUT_ENGINE = "RAY_AIR_NEW_OUTPUT"
RAY_LOGGERS = ("ray",)  # ray.tune and ray.train propagate to it (Ray sets ray's propagate off)
TERMINATED, ERROR, RUNNING = "TERMINATED", "ERROR", "RUNNING"


def duration(seconds: float) -> str:
    """``45s``, ``3m07s``, ``1h02m``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def eta(elapsed: float, ended: int, remaining: int) -> float | None:
    """Seconds left if the remaining trials end at the rate the ``ended`` ones did (None: no rate
    yet). The rate holds concurrency: two trials at once end twice as often."""
    if remaining <= 0:
        return 0.0
    if ended <= 0:
        return None
    return elapsed / ended * remaining


def progress_line(done: int, running: int, total: int, elapsed: float, ended_here: int) -> str:
    left = eta(elapsed, ended_here, total - done)
    shown = "-" if left is None else duration(left)
    return (
        f"progress: {done}/{total} trials done, {running} running, elapsed {duration(elapsed)}, "
        f"ETA {shown}"
    )


def number(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def values_text(config: dict[str, Any], paths: list[str]) -> str:
    return "  ".join(f"{p}={number(config[p])}" for p in paths if p in config)


def stop_reason(
    epoch: int, epochs: int, metric: str, value: float, rung: tuple | None, mode: str = "max"
) -> str:
    """Why ASHA stopped a trial, as the console prints it and MLflow's ``reason`` tag holds it:
    the epoch, the value, and the rung's cutoff (``rung``: the scheduler's ``stop_rung``, None
    when it does not know, e.g. a trial stopped again on ``--resume``)."""
    text = f"stopped by ASHA at epoch {epoch}/{epochs}: {metric} {value:.4f}"
    if rung is not None:
        milestone, cutoff = rung
        side = "below" if mode == "max" else "above"
        text += f" {side} the epoch-{int(milestone)} rung's cutoff {cutoff:.4f}"
    return text


def stopped_line(
    who: str,
    epoch: int,
    epochs: int,
    metric: str,
    value: float,
    rung: tuple | None,
    mode: str = "max",
) -> str:
    return f"{who} {stop_reason(epoch, epochs, metric, value, rung, mode)}"


def damage_lines(result: dict[str, Any], said: set[str]) -> list[str]:
    """The damaged-shard lines of a report not said yet (and now counted as said)."""
    text = result.get(DAMAGE_KEY)
    new = [ln for ln in text.splitlines() if ln and ln not in said] if isinstance(text, str) else []
    said.update(new)
    return [f"damaged shard {ln}" for ln in new]


class SweepConsole(Callback):
    """Prints a sweep's trial events and progress, one line each (see the module's doc).

    ``phase`` names the Tuner (``search``, ``confirm`` or ``transfer``); ``total`` is how
    many trials it runs; ``scheduler`` (if it has ``stop_rung``) tells the rung and
    cutoff of an ASHA stop; ``label`` names a confirm or transfer trial's group.
    """

    def __init__(
        self,
        sweep: SweepConfig,
        total: int,
        phase: str = "search",
        scheduler: Any = None,
        label: Callable[[dict[str, Any]], str] | None = None,
    ):
        self.metric = sweep.search.metric
        self.mode = sweep.search.mode
        self.epochs = sweep.train.epochs
        self.paths = list(optuna_space(sweep))
        self.total = total
        self.phase = phase
        self.scheduler = scheduler
        self.label = label
        self._start = time.monotonic()
        self._ended: set[str] = set()
        self._ended_here = 0
        self._said: dict[str, int] = {}  # trial id -> the last epoch said
        self._damage: set[str] = set()  # damaged-shard lines said (one line a shard, once)

    def setup(self, **info: Any) -> None:
        self._start = time.monotonic()  # a resumed sweep's clock starts with its process
        self._ended_here = 0

    def _say(self, line: str) -> None:
        print(line, flush=True)

    def _who(self, trial: Any) -> str:
        return f"[{self.phase}] trial {trial.trial_id}"

    def _progress(self, trials: list[Any], starting: Any = None) -> None:
        """The progress line; ``starting`` is a trial Tune announces before marking it RUNNING."""
        done = {t.trial_id for t in trials if t.status in (TERMINATED, ERROR)} | self._ended
        running = sum(
            (t.status == RUNNING or t is starting) and t.trial_id not in done for t in trials
        )
        elapsed = time.monotonic() - self._start
        self._say(progress_line(len(done), running, self.total, elapsed, self._ended_here))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        config = dict(trial.config)
        if self.label is not None:  # a confirm or transfer run: a config at a seed
            group = self.label(config)
            what = f"seed {config.get('seed')} of {group}  {values_text(config, self.paths)}"
        else:
            what = values_text(config, self.paths)
        self._say(f"{self._who(trial)} started  {what}")
        self._progress(trials, starting=trial)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        for line in damage_lines(result, self._damage):  # every trial reads the same shards
            self._say(f"{self._who(trial)} {line}")
        epoch, value = result.get(TIME_ATTR), result.get(self.metric)
        if epoch is None or value is None or epoch <= self._said.get(trial.trial_id, 0):
            return  # no epoch, or one said already (reported again after a restart)
        self._said[trial.trial_id] = int(epoch)
        line = epoch_line({**result, "epoch": int(epoch)}, self.epochs, first=self.metric)
        self._say(f"{self._who(trial)} {line}")

    def _end(self, trials: list, trial: Any, line: str) -> None:
        if trial.trial_id not in self._ended:
            self._ended.add(trial.trial_id)
            self._ended_here += 1
        self._say(line)
        self._progress(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        epoch, value = int(result.get(TIME_ATTR, 0)), result.get(self.metric)
        who = self._who(trial)
        if value is None or not math.isfinite(value):
            line = f"{who} failed at epoch {epoch}/{self.epochs}: {self.metric} is {value}"
        elif epoch < self.epochs:
            stop_rung = getattr(self.scheduler, "stop_rung", None)
            rung = stop_rung(trial.trial_id) if stop_rung else None
            line = stopped_line(who, epoch, self.epochs, self.metric, value, rung, self.mode)
        else:
            line = f"{who} completed {epoch}/{self.epochs} epochs: {self.metric} {value:.4f}"
        self._end(trials, trial, line)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        epoch = int((trial.last_result or {}).get(TIME_ATTR, 0))
        line = f"{self._who(trial)} failed after {epoch}/{self.epochs} epochs: {_reason(trial)}"
        self._end(trials, trial, line)


def _reason(trial: Any) -> str:
    """The last ``SomeError: message`` line of the trial's error (smotune names the workers' own
    errors in that line, see ``trial.fit``)."""
    from smotune.tracking.check import error_line

    path = trial.error_file
    text = Path(path).read_text() if path and Path(path).exists() else trial.get_error() or ""
    return error_line(str(text))


def log_file(storage_path: str, name: str) -> tuple[Path, bool]:
    """Where a sweep's or run's Ray logs go: ``<storage>/<name>/smotune-ray.log`` for a local
    storage path, else ``./smotune-logs/<name>/smotune-ray.log`` (False: not under storage)."""
    from smotune.optuna_study import local_dir

    local = local_dir(storage_path)
    if local is not None:
        return Path(local).resolve() / name / LOG_FILE, True
    return Path.cwd() / "smotune-logs" / name / LOG_FILE, False


def where_logs_go(path: Path, under_storage: bool, worker_logs: str | None) -> str:
    """The line telling where Ray's logs went."""
    remote = "" if under_storage else " (storage.path is remote: a local file)"
    workers = worker_logs or "the Ray session's logs folder on each node (`ray logs`)"
    return f"ray's logs: {path}{remote}; its workers' output: {workers}; --verbose shows them live"


def is_rays_terminal(handler: logging.Handler) -> bool:
    """Whether ``handler`` is Ray's own stream handler (stderr), not a file or another's."""
    return (
        type(handler).__module__.split(".")[0] == "ray"
        and isinstance(handler, logging.StreamHandler)
        and not isinstance(handler, logging.FileHandler)
    )


@contextlib.contextmanager
def ray_logs_to(path: Path, verbose: bool = False) -> Iterator[Path]:
    """Inside the block, Ray's Python logs, Optuna's (Tune's searcher logs through it) and Python
    warnings are appended to ``path``; unless ``verbose``, they no longer reach the terminal, and
    Tune prints nothing itself: its new output engine prints an experiment header whatever the
    ``verbose`` it is given, so its old engine (``RAY_AIR_NEW_OUTPUT=0``, as Ray's own RLlib
    examples set it) runs, silent at ``verbose=0``. Everything is put back after."""
    import optuna

    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved: list[tuple[logging.Logger, list[logging.Handler]]] = []
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers)))
        if not verbose:
            for h in list(logger.handlers):
                if is_rays_terminal(h):
                    logger.removeHandler(h)
        logger.addHandler(handler)
    logging.getLogger("optuna").addHandler(handler)
    engine = os.environ.get(TUNE_OUTPUT_ENGINE)
    if not verbose:
        optuna.logging.disable_default_handler()
        os.environ[TUNE_OUTPUT_ENGINE] = "0"
    warn_logger = logging.getLogger("py.warnings")
    warn_saved = (list(warn_logger.handlers), warn_logger.propagate)
    if not verbose:
        logging.captureWarnings(True)
        warn_logger.addHandler(handler)
        warn_logger.propagate = False
    try:
        yield path
    finally:
        for logger, handlers in saved:
            logger.handlers[:] = handlers
        logging.getLogger("optuna").removeHandler(handler)
        if not verbose:
            optuna.logging.enable_default_handler()
            if engine is None:
                os.environ.pop(TUNE_OUTPUT_ENGINE, None)
            else:
                os.environ[TUNE_OUTPUT_ENGINE] = engine
            logging.captureWarnings(False)
            warn_logger.handlers[:], warn_logger.propagate = warn_saved
        handler.close()


class EpochFeed:
    """Rank 0's per-epoch metrics, from Ray Train's controller to this driver, printed as lines.

    The controller runs the trainer's callbacks in its own process; :meth:`callback`'s
    ``after_report`` puts rank 0's metrics on a Ray queue (an actor holding no CPU) and
    :meth:`printing` prints them from a thread while ``fit`` runs in the caller's thread
    (so Ctrl-C still reaches ``fit``).
    """

    def __init__(self, epochs: int):
        self.epochs = epochs
        self.queue = Queue(actor_options={"num_cpus": 0})
        self._said = 0  # the last epoch printed
        self._damage: set[str] = set()  # damaged-shard lines printed

    def callback(self) -> Any:
        return ReportToQueue(self.queue)

    def _drain(self, stop: threading.Event) -> None:
        while True:
            try:
                metrics = self.queue.get(timeout=0.5)
            except Empty:
                if stop.is_set():
                    return
                continue
            if metrics[TIME_ATTR] > self._said:  # not an epoch reported again after a restart
                self._said = metrics[TIME_ATTR]
                print(epoch_line(metrics, self.epochs), flush=True)
            for line in damage_lines(metrics, self._damage):
                print(line, flush=True)

    @contextlib.contextmanager
    def printing(self) -> Iterator[None]:
        stop = threading.Event()
        thread = threading.Thread(target=self._drain, args=(stop,), daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=10)
            self.queue.shutdown()


class ReportToQueue(UserCallback):
    """Run in Ray Train's controller: rank 0's metrics of each epoch onto a Ray queue."""

    def __init__(self, q: Any):
        self.q = q

    def after_report(self, run_context: Any, metrics: list, checkpoint: Any) -> None:
        if metrics and TIME_ATTR in metrics[0]:
            self.q.put(dict(metrics[0]))
