"""Tune's experiment state, kept whole across a driver that dies mid-upload.

Ray 2.60 writes ``experiment_state-<session>.json`` in place (``open(..., "w")``
then ``json.dump``) in its driver staging folder, while a background thread may
still be uploading that folder to ``storage.path``; a forced sync follows every
trial checkpoint. A driver killed then leaves a cut-off JSON as the newest state
(seen in CI on S3: "Unterminated string" at char 4046), and ``Tuner.restore``
fails on it. Here the searcher, which Tune saves right after that file is
closed, keeps a copy of it written with an atomic rename (``save_to_dir``), so
an upload reads either the old or the new copy whole; ``repair`` puts that copy
back before a resume.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from typing import Any

from pyarrow import fs as pafs
from ray.tune.execution.tune_controller import TuneController
from ray.tune.search import BasicVariantGenerator

from smotune.errors import UserError

COPY = "smotune-experiment-state-{}.json"


def keep_copy(dirpath: str, session_str: str) -> None:
    """Copy the experiment state Tune just wrote in ``dirpath``, swapped in atomically."""
    state = os.path.join(dirpath, TuneController.CKPT_FILE_TMPL.format(session_str))
    if not os.path.exists(state):
        return
    copy = COPY.format(session_str)
    tmp = os.path.join(dirpath, f".tmp-{copy}")  # uploaded maybe, but never read as the copy
    shutil.copyfile(state, tmp)
    os.replace(tmp, os.path.join(dirpath, copy))


class KeepsTuneState:
    """Mixin for a Tune search algorithm or searcher: ``save_to_dir`` also keeps the copy."""

    def save_to_dir(self, dirpath: str, session_str: str = "default") -> Any:
        saved = super().save_to_dir(dirpath, session_str)
        keep_copy(dirpath, session_str)
        return saved


class KeptVariantGenerator(KeepsTuneState, BasicVariantGenerator):
    """Tune's default search algorithm (the confirm phase's preset points), keeping the copy."""


def _read(store: pafs.FileSystem, path: str) -> bytes | None:
    try:
        with store.open_input_stream(path) as f:
            return f.readall()
    except (FileNotFoundError, OSError):
        return None


def _parsed(data: bytes | None) -> dict[str, Any] | None:
    """An experiment state read whole, or None (missing, or cut off mid-write)."""
    try:
        state = json.loads(data) if data is not None else None
    except ValueError:
        return None
    return state if isinstance(state, dict) else None


def _whole(data: bytes | None) -> bool:
    return _parsed(data) is not None


def _newest_state(names: list[str]) -> str | None:
    """The experiment state among these file names that Tune resumes from: the newest by
    name (Ray's own choice), None if there is none."""
    states = fnmatch.filter(names, TuneController.CKPT_FILE_TMPL.format("*"))
    return max(states) if states else None


def _newest_at(experiment_uri: str) -> tuple[pafs.FileSystem, str, str | None]:
    """The store and folder of an experiment, and its newest state's file name (None: none)."""
    store, root = pafs.FileSystem.from_uri(experiment_uri)
    try:
        infos = store.get_file_info(pafs.FileSelector(root))
    except (FileNotFoundError, OSError):
        return store, root, None
    return store, root, _newest_state([i.base_name for i in infos if i.type == pafs.FileType.File])


def saved(experiment_uri: str) -> bool:
    """Whether Tune saved a state of this experiment (which a restored Tuner resumes from)."""
    return _newest_at(experiment_uri)[2] is not None


def repair(experiment_uri: str, where: str) -> str | None:
    """Put smotune's copy back over a cut-off newest experiment state; say what was done.

    None when the newest state reads whole (or there is none). A cut-off state
    without a whole copy is a one-line UserError: Tune could not resume it.
    """
    store, root, newest = _newest_at(experiment_uri)
    if newest is None:
        return None
    if _whole(_read(store, f"{root}/{newest}")):
        return None
    head, tail = TuneController.CKPT_FILE_TMPL.split("{}")
    copy = COPY.format(newest[len(head) : -len(tail)])  # the same session's copy
    data = _read(store, f"{root}/{copy}")
    if not _whole(data):
        raise UserError(
            where,
            "storage.path",
            f"Tune's state {experiment_uri}/{newest} was cut off when its driver died, "
            "and smotune kept no whole copy of it",
            "start the sweep again under a new name (its finished runs stay in MLflow)",
        )
    with store.open_output_stream(f"{root}/{newest}") as f:
        f.write(data)
    return (
        f"Tune's state {newest} was cut off when the sweep's driver died (Ray uploads it while "
        f"writing it); restored from smotune's copy {copy}"
    )


def end_trials(experiment_uri: str, ended: dict[str, dict[str, Any]]) -> list[str]:
    """Mark TERMINATED, in the newest experiment state, the trials that ended after it was saved.

    Tune saves its trials every few seconds (``TUNE_GLOBAL_CHECKPOINT_S``) while the
    study learns how a trial ended at once; a driver killed in that gap leaves a trial
    PENDING or RUNNING in Tune's state that the study holds as ended, and
    ``Tuner.restore`` would run it again (a pruned one to be stopped at its first
    result, a completed one trained again from its checkpoint). ``ended`` maps each such
    Tune trial id to its last result (``epoch`` and the objective): the trial's last
    result becomes that, marked ``done``, as if Tune had saved after it ended. Returns the
    ids marked, in the state's order.
    """
    store, root, newest = _newest_at(experiment_uri)
    state = _parsed(_read(store, f"{root}/{newest}") if newest else None)
    if state is None:
        return []
    marked = []
    for pair in state["trial_data"]:
        trial, meta = json.loads(pair[0]), json.loads(pair[1])
        last = ended.get(trial["trial_id"])
        if last is None or trial["status"] in ("TERMINATED", "ERROR"):
            continue
        trial["status"] = "TERMINATED"
        meta["last_result"] = {**(meta.get("last_result") or {}), **last, "done": True}
        pair[0], pair[1] = json.dumps(trial, indent=2), json.dumps(meta)
        marked.append(trial["trial_id"])
    if marked:
        tmp = f"{root}/.tmp-{newest}"
        with store.open_output_stream(tmp) as f:
            f.write(json.dumps(state).encode())
        store.move(tmp, f"{root}/{newest}")
    return marked


def trial_ids(dirpath: str) -> set[str]:
    """The ids of the trials in the newest experiment state in local folder ``dirpath``.

    That is the state ``TuneController.resume`` restored its trials from: it reads
    the newest by name in the experiment folder, then downloads that folder into
    the driver staging folder it hands the searcher's ``restore_from_dir``.
    """
    newest = _newest_state(os.listdir(dirpath))
    if newest is None:
        raise FileNotFoundError(f"no Tune experiment state in {dirpath}")
    with open(os.path.join(dirpath, newest), encoding="utf-8") as f:
        state = json.load(f)
    return {json.loads(trial)["trial_id"] for trial, _ in state["trial_data"]}
