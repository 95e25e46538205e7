"""A sweep from start to verdict: checks, the search Tuner, the confirm phase, the summary.

- Everything a user can get wrong is checked before any cluster starts: the
  tracking URI, the space, the Optuna storage, an existing or missing sweep,
  and on ``--resume`` a sweep file that differs from the one the sweep
  started with (its canonical form is kept as ``smotune-sweep.json`` beside
  Tune's state).
- The search is a Tuner with smotune's searcher and ASHA (``search.py``); trial
  drivers ask for no CPU, only a ``trial_driver`` slot, so trials never starve
  their own Train workers on a small machine.
- With ``search.confirm``, the baseline and the top configs then re-run over new
  shared seeds, in rounds when they race (``confirm_run.py``), and the verdict
  (``confirm.py`` over ``stats.py``) decides ``best.yaml``.
- With ``search.transfer``, the baseline and the best confirmed configs then re-run
  at the larger fidelity (``transfer_run.py``): whether their order held
  (``transfer.py``), and the verdict there decides ``best.yaml``.
- At the end, the rung check (``rungs.py``): whether the order of the runs that
  ran every epoch at ASHA's rungs held at the last epoch; on the parent run and
  printed after the verdict, with advice when the first rung is not shown to.
- ``--resume`` restores whichever Tuner was interrupted; the MLflow callback
  re-attaches to the same parent and child runs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pyarrow import fs as pafs
from ray import tune

from smotune import (
    confirm,
    confirm_run,
    console,
    optuna_study,
    ray_cluster,
    search,
    tracking,
    transfer,
    transfer_run,
    trial,
    tune_state,
    tuners,
)
from smotune.config import SweepConfig, flatten
from smotune.errors import UserError, redact
from smotune.space import optuna_space

SWEEP_RECORD = "smotune-sweep.json"


def _fs_path(uri: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(trial.storage_uri(uri))


def _read_record(path: str) -> dict[str, Any] | None:
    """The sweep file a sweep started with (canonical JSON beside Tune's state), if any."""
    fs, root = _fs_path(path)
    try:
        with fs.open_input_stream(f"{root}/{SWEEP_RECORD}") as f:
            return json.loads(f.readall())
    except (FileNotFoundError, OSError):
        return None


def _write_record(sweep: SweepConfig, path: str, where: str, resume: bool) -> None:
    """Write the sweep record (a new sweep) or a probe (a resumed one): storage must be writable."""
    name = f"{SWEEP_RECORD}.probe" if resume else SWEEP_RECORD
    text = json.dumps(sweep.model_dump(mode="json"), indent=1, sort_keys=True)
    try:
        fs, root = _fs_path(path)
        fs.create_dir(root, recursive=True)
        with fs.open_output_stream(f"{root}/{name}") as f:
            f.write(text.encode())
        if resume:
            fs.delete_file(f"{root}/{name}")
    except (OSError, ValueError) as err:  # pyarrow: OSError and its subclasses; bad URI: ValueError
        raise UserError(
            where,
            "storage.path",
            f"cannot create or write {path} ({err})".replace("\n", " "),
            "choose a storage.path you can write to (a local folder, file://, s3://...)",
        ) from None


def _check_unchanged(sweep: SweepConfig, path: str, where: str) -> None:
    """A resumed sweep must be the sweep that started: name the fields that changed."""
    started = _read_record(path)
    if started is None:
        return  # a sweep started before smotune kept the record
    old, new = flatten(started), flatten(sweep.model_dump(mode="json"))
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if changed:
        shown = ", ".join(f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in changed[:3])
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise UserError(
            where,
            changed[0],
            f"differs from the sweep file the sweep started with: {shown}{more}",
            f"resume with the original file (its copy: {path}/{SWEEP_RECORD}) or start a new "
            "sweep under another name",
        )


def _check_object_store(sweep: SweepConfig, where: str) -> None:
    """Credentials come from the environment only; a remote storage.path needs its bucket."""
    shards = sweep.train.data.train
    for field, url in [("storage.path", sweep.storage.path), ("train.data.train", shards)]:
        for part in [url] if isinstance(url, str) else url:
            if "://" in part and "@" in urlparse(part).netloc:  # the URI itself is not shown
                raise UserError(
                    where,
                    field,
                    "names credentials in the URI (user:secret@...), which would be logged",
                    "remove them and set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the "
                    "store's own variables) in the environment",
                )
    storage = sweep.storage.path
    if urlparse(storage).scheme in ("", "file"):
        return
    try:
        fs, root = _fs_path(storage)
        bucket = root.split("/", 1)[0]
        found = fs.get_file_info(bucket).type != pafs.FileType.NotFound
    except (OSError, ValueError) as err:
        raise UserError(
            where,
            "storage.path",
            f"cannot reach {storage} ({err})".replace("\n", " "),
            "check the store's endpoint and credentials in the environment (AWS_ENDPOINT_URL, "
            "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION)",
        ) from None
    if not found:
        scheme = urlparse(storage).scheme
        raise UserError(
            where,
            "storage.path",
            f"bucket {scheme}://{bucket} does not exist",
            "create it (smotune creates folders, not buckets) or correct storage.path",
        )


def _check_start(sweep: SweepConfig, where: str, resume: bool) -> str:
    """Every check a sweep can fail before a cluster starts; returns the Tune experiment path."""
    storage = sweep.storage.path
    if os.environ.get("RAY_ADDRESS") and "://" not in storage and not os.path.isabs(storage):
        raise UserError(
            where,
            "storage.path",
            f"relative path {storage!r} with RAY_ADDRESS set: on a cluster it lands in the "
            "job's temporary working dir",
            "use a URI (s3://, gs://, file:///shared/...) or an absolute path every node reaches",
        )
    _check_object_store(sweep, where)
    tracking.check_tracking(sweep.tracking.uri, experiment=sweep.experiment)
    if not optuna_space(sweep):
        raise UserError(where, "space", "has nothing to search", "add a distribution")
    path = tuners.experiment_path(sweep)
    restorable = tune.Tuner.can_restore(path)
    if resume and not restorable:
        raise UserError(
            where,
            "storage.path",
            f"no interrupted sweep to resume at {path}",
            "run without --resume to start it",
        )
    if not resume and restorable:
        raise UserError(
            where,
            "name",
            f"a sweep named {sweep.name!r} already exists at {path}",
            "add --resume to continue it, or change name or storage.path",
        )
    if resume:
        _check_unchanged(sweep, path, where)
        # the search's Tuner, the confirm phase's rounds, the transfer phase's
        for name in (sweep.name, *confirm_run.round_names(sweep), *transfer_run.round_names(sweep)):
            repaired = tune_state.repair(tuners.experiment_path(sweep, name), where)
            if repaired:
                print(repaired)
    _write_record(sweep, path, where, resume)
    return path


@dataclass
class Outcome:
    """How a sweep ended: its summary rows, and whether it ran to its end."""

    rows: list[dict[str, Any]]
    finished: bool  # every trial of the search (and of the confirm phase) ended
    interrupted: bool  # stopped by Ctrl-C / SIGINT before that (not by search.time_budget)

    @property
    def all_failed(self) -> bool:
        return bool(self.rows) and all(r["status"] == tracking.FAILED for r in self.rows)


def run_sweep(
    sweep: SweepConfig, sweep_file: str | Path, resume: bool = False, verbose: bool = False
) -> Outcome:
    """Run (or resume) a sweep and its confirm phase; print the summary; say how it ended.

    The console shows one line per trial event (``console.py``); Ray's own logs go to a
    file whose path is printed first, or also to the terminal with ``verbose``.
    """
    where = str(sweep_file)
    started = time.monotonic()
    path = _check_start(sweep, where, resume)
    study_url, study_storage = optuna_study.prepare_study(sweep, resume, where)
    if resume:  # a trial that ended after Tune's last save is not run again
        ended = optuna_study.ended_trials(study_storage, sweep.name, sweep.search.metric)
        marked = tune_state.end_trials(tuners.experiment_path(sweep), ended)
        if marked:
            print(
                f"resume: {len(marked)} trial{'s' if len(marked) != 1 else ''} ended after Tune's "
                f"last save ({', '.join(marked)}): the study holds how, not run again",
                flush=True,
            )
    log, under_storage = console.log_file(sweep.storage.path, sweep.name)
    with console.ray_logs_to(log, verbose):
        resources = ray_cluster.connect(trial_drivers=sweep.search.concurrent, verbose=verbose)
        print(console.where_logs_go(log, under_storage, ray_cluster.worker_logs()), flush=True)
        ray_cluster.check_fits(sweep.train, resources)
        if sweep.search.transfer is not None:  # its overrides may ask for more workers
            ray_cluster.check_fits(transfer_run.high_sweep(sweep).train, resources)
        _say(ray_cluster.release())  # what a finished job left on a shared cluster
        try:  # after ray.init, whose own SIGTERM handler (it prints a stack and exits) it replaces
            with _sigterm_is_ctrl_c():
                return _run(
                    sweep, sweep_file, resume, verbose, started, path, study_url, study_storage
                )
        finally:  # normal end, Ctrl-C, `ray job stop`: nothing of this job stays on the cluster
            _say(ray_cluster.release(at_exit=True))


def _say(line: str | None) -> None:
    if line is not None:
        print(line, flush=True)


@contextlib.contextmanager
def _sigterm_is_ctrl_c() -> Iterator[None]:
    """SIGTERM (what `ray job stop` sends the driver) stops the sweep as Ctrl-C does: Tune
    ends its trials and saves its state, the runs are ended in MLflow, placement groups
    released. `ray job stop` waits ``RAY_JOB_STOP_WAIT_TIME_S`` (Ray's default: 3 s) before
    SIGKILL; cluster/README.md sets it on the head so that this fits."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if before is None else before)


def _run(sweep, sweep_file, resume, verbose, started, path, study_url, study_storage) -> Outcome:
    """The search, the confirm phase and the summary, on a connected cluster."""

    text = Path(sweep_file).read_text()
    parent_tags = {
        tracking.TAG_OPTUNA_STORAGE: redact(study_url),
        tracking.TAG_SWEEP_PATH: path,
    }
    scheduler = search.make_scheduler(sweep, study_url)
    grid = tuners.make(
        sweep,
        sweep.name,
        search.make_searcher(sweep, study_storage),
        scheduler,
        sweep.search.samples,
        [
            tracking.MlflowSweepCallback(
                sweep, text, parent_tags=parent_tags, scheduler=scheduler, resumed=resume
            ),
            console.SweepConsole(sweep, sweep.search.samples, "search", scheduler=scheduler),
        ],
        resume,
        verbose,
    ).fit()
    finished = tuners.ended(grid, sweep.search.samples, sweep.train.epochs)
    parent_id = tracking.sweep_parent_id(sweep.tracking.uri, sweep.experiment, path)
    confirmed = None
    if sweep.search.confirm is not None and finished:
        confirmed = confirm_run.run(sweep, text, study_storage, parent_id, resume, verbose)
        finished = confirmed is not None
    transferred, skipped = None, None
    if sweep.search.transfer is not None and confirmed is not None:
        skipped = transfer_run.skip_reason(sweep, confirmed)
        if skipped is None:
            transferred = transfer_run.run(sweep, text, parent_id, confirmed, resume, verbose)
            finished = transferred is not None
    budget = sweep.search.time_budget
    interrupted = not finished and not (budget and time.monotonic() - started >= budget)
    rows = tracking.sweep_summary(sweep, parent_id)
    print(format_summary([r for r in rows if r["phase"] == tracking.PHASE_SEARCH], sweep))
    if confirmed is not None and len(confirmed.groups) > 1:
        print(confirm.format_table(confirmed, sweep.search.metric))
    if confirmed is not None:
        print(confirmed.words(sweep.search.metric))
    if transferred is not None:
        print(transfer.format_table(transferred, sweep.search.metric))
        print("\n".join(transferred.lines(sweep.search.metric)))
    elif skipped is not None:
        print(skipped)
    if sweep.schedule.asha is not None:  # did ASHA's rungs order the runs as their ends did?
        for line in tracking.log_rungs(sweep.tracking.uri, parent_id):
            print(line, flush=True)
    partial = None
    if not finished:
        why = "interrupted" if interrupted else "out of search.time_budget"
        partial = f"from a partial sweep ({why}): `smotune sweep {sweep_file} --resume` finishes it"
        print(f"the sweep ended early ({why}): no verdict; resume it with --resume")
    print(_write_best(sweep, partial))
    _say(tracking.wait_for_plots())
    print(tracking.where_to_look(sweep))
    return Outcome(rows, finished, interrupted)


def _write_best(sweep: SweepConfig, partial: str | None) -> str:
    """Write best.yaml (headed ``partial`` when the sweep is partial); the line saying so."""
    from smotune.export import export_best

    try:
        return export_best(
            sweep.experiment, tracking_uri=sweep.tracking.uri, out="best.yaml", note=partial
        )
    except UserError as err:
        return f"no best.yaml: {err}"


def _cell(value: Any) -> str:
    """A searched value as the summary shows it: numbers in 4 digits, anything else as text."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def format_summary(rows: list[dict[str, Any]], sweep: SweepConfig) -> str:
    """The summary table: trial, searched values, epochs run, the objective, status."""
    names = list(optuna_space(sweep))
    short = [n.rsplit(".", 1)[-1] for n in names]
    head = ["trial", *short, "epochs", sweep.search.metric, "status"]
    table = [head]
    for r in rows:
        value = r.get("value")
        table.append(
            [
                r["trial_id"],
                *(_cell(r["params"].get(n, "-")) for n in names),
                f"{r.get('epochs_run', 0)}/{sweep.train.epochs}",
                "-" if value is None else f"{value:.4f}",
                r["status"],
            ]
        )
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in table]
    return "\n".join(lines)
