"""The best trial of a sweep as a train config, and the commands that run it at full scale.

Reads MLflow only (through :mod:`smotune.tracking`), never Tune's files: the
best trial is the completed child run with the highest final ``zeroshot_top1``
of the experiment's latest sweep, or the run of the config its verdict chose (the
confirm phase's, or the transfer phase's at its larger fidelity, which the
file's header then names). Its train config is rebuilt from the run's
config artifact, validated, checked against the run's params, and written as
YAML that ``smotune train`` runs unchanged, from any directory: the sweep logs
local data paths absolute (a sweep that logged them relative gets a note saying
where to run it).
"""

from __future__ import annotations

import os
import shlex
import sys
import textwrap
from pathlib import Path
from typing import Any

import yaml

from smotune import tracking
from smotune.config import (
    MODEL_CONFIG_DIR,
    TrainConfig,
    apply,
    dump_train,
    is_remote,
    relative_paths,
    validate_train,
)
from smotune.confirm import BASELINE
from smotune.errors import UserError

FORMATS = ("yaml", "cmd", "open_clip_train")
SHOWN_METRICS = ("zeroshot_top1", "zeroshot_top5", "train_loss", "epoch")

OPEN_CLIP_TRAIN_VERSION = "3.3.0"
OPEN_CLIP_TRAIN_WEBDATASET = "0.2.86"
"""The webdataset open_clip_train runs with. From webdataset 0.2.96 on (1.0.2 included) each
shard ends with an empty sample ``{}``, and open_clip_train 3.3.0's ``group_by_keys_nothrow``
fails on it with ``KeyError: 'fname'`` in the first batch; 0.2.86, the release before, is the
newest open_clip_torch's ``training`` extra allows (``webdataset<=0.2.86``). Measured
2026-12-04 (torch 2.14.1, CPU, smotune's synthetic shards): 0.2.86 trains, 0.2.111 and 1.0.2
fail. smotune itself needs webdataset >= 1.0, so open_clip_train gets a venv of its own."""


def best_config(record: tracking.TrialRecord) -> TrainConfig:
    """The train config of a trial's run, validated and checked against the run's params."""
    where = f"MLflow run {record.run_id} (trial {record.trial_id}) {tracking.TRAIN_ARTIFACT}"
    data = yaml.safe_load(record.train_yaml)
    if not isinstance(data, dict):
        raise UserError(where, "", "is not a YAML mapping", "export another run of the sweep")
    cfg = validate_train(data, where)
    for name, value in tracking.train_params(cfg).items():
        logged = record.params.get(name)
        if logged != value:
            raise UserError(
                where,
                name,
                f"is {value} in {tracking.TRAIN_ARTIFACT} but {logged} in the run's params",
                "the run was changed after the sweep; export from an unchanged run",
            )
    return cfg


def _comment(text: str, width: int = 98) -> str:
    """``text`` as YAML comment lines."""
    return "".join(f"# {line}\n" for line in textwrap.wrap(text, width) or [""])


def _mean_std(info: dict[str, Any], who: str) -> str:
    mean = info.get(f"{who}_top1_mean", float("nan"))
    std = info.get(f"{who}_top1_std", float("nan"))
    return f"{mean:.4f} ± {std:.4f}"


def _metrics_text(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k} {metrics[k]:.4g}" for k in SHOWN_METRICS if k in metrics)


def _override_notes(before: TrainConfig, after: TrainConfig) -> list[str]:
    notes = []
    if after.epochs != before.epochs:
        notes.append(f"epochs {before.epochs} -> {after.epochs}")
    if after.workers.num != before.workers.num:
        notes.append(
            f"workers.num {before.workers.num} -> {after.workers.num}: global batch "
            f"{before.global_batch_size} -> {after.global_batch_size} (label smoothing's "
            "effect depends on the global batch)"
        )
    return notes


def _job_path(out: Path) -> tuple[str, list[str]]:
    """``out`` as the job sees it from ``--working-dir .``, and a note if it is outside."""
    rel = os.path.relpath(out.absolute(), Path.cwd())
    if rel.startswith(".."):
        return str(out), [f"# {out} is outside the working dir: copy it into . before submitting"]
    return rel, []


def _here(path: Path) -> str:
    """``path`` as a user types it from the current folder (relative when inside it)."""
    rel = os.path.relpath(path, Path.cwd())
    return rel if not rel.startswith("..") else str(path)


def submit_command(out: Path, address: str) -> list[str]:
    """Comment lines, then a ``ray job submit`` line that trains ``out`` as printed, from here.

    - ``ray`` is this environment's (a user after ``make demo`` has no venv activated);
    - ``RAY_AUTH_MODE=token``: Ray 2.60's clusters need the token (``~/.ray/auth_token``);
    - ``--working-dir .`` leaves out what ``.gitignore`` names, ``best.yaml`` and ``data/``
      among them in this repository: ``RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1`` ships them, and
      ``.rayignore`` keeps the venv, the data and the checkpoints out instead;
    - ``--storage``: the job's own folder is a temporary copy, so checkpoints go to
      ``./runs`` by its absolute path.
    """
    job_path, outside = _job_path(out)
    ray = Path(sys.executable).with_name("ray")
    lines = [
        *outside,
        "# RAY_AUTH_MODE=token: Ray's clusters use token auth by default (the token is read from "
        "~/.ray/auth_token; on another machine set RAY_AUTH_TOKEN too)",
        "# the job runs the head's smotune, with the PATH of the process that started the head: "
        "start the head from this project's venv",
        "# on a cluster of other machines, train on data and --storage every node reaches "
        "(URIs such as s3://, or a shared mount)",
    ]
    env = "RAY_AUTH_MODE=token"
    if (Path.cwd() / ".gitignore").is_file():
        env += " RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1"
        lines.append(
            "# RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1: the upload of --working-dir . leaves out what "
            ".gitignore names (best.yaml); .rayignore says what to leave out instead"
        )
        if not (Path.cwd() / ".rayignore").is_file():
            lines.append(
                "# no .rayignore here: all of this folder is uploaded (Ray refuses more than "
                "500 MiB); copy the project's .rayignore here first"
            )
    storage = Path("runs").absolute()
    lines.append(
        f"{env} {shlex.quote(_here(ray) if ray.is_file() else 'ray')} job submit --address "
        f"{shlex.quote(address)} --working-dir . -- smotune train {shlex.quote(job_path)} "
        f"--storage {shlex.quote(str(storage))}"
    )
    return lines


def _imagenet_val(cfg: TrainConfig) -> str | None:
    """The zero-shot dir if it is an ImageNet folder (1000 class dirs) open_clip_train can read."""
    if is_remote(cfg.data.zeroshot):
        return None
    root = Path(cfg.data.zeroshot)
    if (root / "classnames.txt").exists():
        return None
    for cand in (root / cfg.data.zeroshot_split, root):
        if cand.is_dir() and sum(1 for p in cand.iterdir() if p.is_dir()) == 1000:
            return str(cand)
    return None


def _rewrite_note(cfg: TrainConfig) -> str:
    rule = f"data.rewrite = {cfg.data.rewrite}"
    if cfg.data.rewrite == "prob":
        rule += f", data.rewrite_prob = {cfg.data.rewrite_prob}"
    return f"{rule} (LaCLIP caption rewrites; open_clip_train reads the txt caption only)"


def open_clip_precision(cfg: TrainConfig) -> str:
    """open_clip_train's ``--precision`` for what smotune would compute with (``runtime``).

    The command runs where the config says: on GPUs when ``workers.gpus`` > 0, else on
    CPU, so ``precision: auto`` is ``amp_bf16`` on GPUs and ``fp32`` on CPU.
    """
    import torch

    from smotune.runtime import choose_runtime

    rt = choose_runtime(cfg.workers.gpus, cfg.precision, cuda_available=True)
    return {None: "fp32", torch.bfloat16: "amp_bf16", torch.float16: "amp"}[rt.autocast_dtype]


def open_clip_train_command(cfg: TrainConfig) -> str:
    """An ``open_clip_train`` command for ``cfg``, then a comment per setting it cannot take."""
    o = cfg.optim
    train_data = cfg.data.train if isinstance(cfg.data.train, str) else "::".join(cfg.data.train)
    args: list[Any] = ["python", "-m", "open_clip_train.main", "--model", cfg.model.arch]
    args += ["--lr", o.lr, "--wd", o.weight_decay, "--beta1", o.beta1, "--beta2", o.beta2]
    args += ["--eps", o.eps, "--warmup", o.warmup_steps, "--epochs", cfg.epochs]
    precision = open_clip_precision(cfg)
    args += ["--batch-size", o.batch_size, "--precision", precision]
    if o.grad_clip is not None:
        args += ["--grad-clip-norm", o.grad_clip]
    args += ["--train-data", train_data, "--dataset-type", "webdataset"]
    if cfg.data.samples_per_epoch is not None:
        args += ["--train-num-samples", cfg.data.samples_per_epoch * cfg.workers.num]
    imagenet = _imagenet_val(cfg)
    if imagenet is not None:
        args += ["--imagenet-val", imagenet]
    if cfg.loss.local_loss:
        args.append("--local-loss")
    if cfg.loss.gather_with_grad:
        args.append("--gather-with-grad")
    args += ["--workers", cfg.data.loader_workers, "--seed", cfg.seed, "--lr-scheduler", "cosine"]

    notes = [
        f"loss.label_smoothing = {cfg.loss.label_smoothing} (open_clip_train's loss has none)",
        f"model.text_dropout = {cfg.model.text_dropout} (open_clip's text tower has none)",
        f"optim.min_lr = {o.min_lr} (open_clip_train's cosine decays to 0)",
        _rewrite_note(cfg),
    ]
    lines = [
        f"# open_clip_train {OPEN_CLIP_TRAIN_VERSION} runs with webdataset=="
        f"{OPEN_CLIP_TRAIN_WEBDATASET}, in a venv apart from smotune's (which needs webdataset "
        f">= 1.0): pip install 'open_clip_torch[training]=={OPEN_CLIP_TRAIN_VERSION}' "
        f"'webdataset=={OPEN_CLIP_TRAIN_WEBDATASET}' (with webdataset 1.0.2 it fails: "
        "KeyError: 'fname' in group_by_keys_nothrow)",
        shlex.join(str(a) for a in args),
    ]
    lines += [f"# no open_clip_train flag for {n}" for n in notes]
    if cfg.precision == "auto":
        where = (
            "bf16 autocast, as smotune computes on GPUs"
            if cfg.workers.gpus > 0
            else "as smotune computes on CPU (workers.gpus 0)"
        )
        lines.append(f"# precision auto -> {precision}: {where}")
    if cfg.workers.num > 1:
        lines.append(
            f"# the sweep used {cfg.workers.num} workers: run on {cfg.workers.num} GPUs "
            f"(torchrun --nproc_per_node {cfg.workers.num} -m open_clip_train.main ...) "
            f"to keep the global batch of {cfg.global_batch_size}"
        )
    if imagenet is None:
        lines.append(
            f"# no --imagenet-val: data.zeroshot {cfg.data.zeroshot} is not an ImageNet folder; "
            "evaluate the checkpoints with clip_benchmark instead"
        )
    if cfg.data.samples_per_epoch is None:
        lines.append(
            "# add --train-num-samples N (pairs per epoch) unless the shards have sizes.json"
        )
    if (MODEL_CONFIG_DIR / f"{cfg.model.arch}.json").is_file():
        lines.append(
            f"# --model {cfg.model.arch} is smotune's: copy smotune/model_configs/"
            f"{cfg.model.arch}.json into open_clip's model_configs first"
        )
    return "\n".join(lines)


def export_best(
    experiment: str,
    tracking_uri: str | None = None,
    out: str = "best.yaml",
    fmt: str = "yaml",
    epochs: int | None = None,
    workers: int | None = None,
    address: str = "http://127.0.0.1:8265",
    note: str | None = None,
) -> str:
    """Write the best trial's train config to ``out``; return a text for ``fmt``.

    ``yaml``: the path and the best metrics. ``cmd``: a ``ray job submit`` line
    that trains ``out`` on the cluster at ``address``. ``open_clip_train``: the
    equivalent open_clip_train command plus what it cannot express.
    ``epochs`` / ``workers`` override ``epochs`` / ``workers.num``. A ``note``
    (e.g. "from a partial sweep") heads the file as a comment and the returned text.
    """
    if fmt not in FORMATS:
        raise UserError(
            "--format", "", f"unknown format {fmt!r}", f"use one of {', '.join(FORMATS)}"
        )
    uri, where = tracking.choose_uri(tracking_uri)
    tracking.check_tracking(uri, where=where, existing=True)
    record, sweep_info = tracking.best_trial_run(uri, experiment)
    swept = best_config(record)
    overrides = {
        k: v for k, v in {"epochs": epochs, "workers.num": workers}.items() if v is not None
    }
    cfg = apply(swept, overrides, where="command line") if overrides else swept
    path = Path(out)
    verdict = sweep_info.get(tracking.TAG_VERDICT)
    confirmed = verdict not in (None, "none")
    header = f"# {note}\n" if note else ""  # one line: the command that finishes the sweep
    relative = relative_paths(cfg)
    where_to_run = (
        f"its data paths are relative ({', '.join(relative)}; the sweep logged them so): "
        "run it from the directory the sweep ran in"
        if relative
        else None
    )
    if where_to_run:
        header += _comment(where_to_run)
    if confirmed and sweep_info.get(tracking.TAG_DESCRIPTION):
        header += _comment(f"sweep {experiment!r}, {sweep_info[tracking.TAG_DESCRIPTION]}")
    fidelity = sweep_info.get(tracking.TAG_TRANSFER_FIDELITY)
    at_transfer = fidelity is not None and sweep_info.get(tracking.TAG_TRANSFER_VERDICT) not in (
        None,
        "none",
    )
    if at_transfer:
        header += _comment(f"confirmed at the transfer fidelity: {fidelity}")
    elif confirmed:
        header += _comment(
            "confirmed at the search fidelity (the sweep's train:)"
            + (f"; the transfer phase ({fidelity}) reached no verdict" if fidelity else "")
        )
    try:
        path.write_text(header + dump_train(cfg))
    except OSError as err:
        raise UserError(
            str(path), "", f"cannot write ({err.strerror})", "choose another --out"
        ) from None

    one_run = f"MLflow run {record.run_id}: {_metrics_text(record.metrics)}"
    if at_transfer:
        chosen = sweep_info.get(tracking.TAG_BEST_TRIAL, record.trial_id)

        def at(label: str) -> str:
            mean = sweep_info.get(tracking.transfer_mean(label, "transfer"), float("nan"))
            std = sweep_info.get(tracking.transfer_mean(label, "transfer", "std"), float("nan"))
            return f"{mean:.4f} ± {std:.4f}"

        seeds = sweep_info.get(tracking.transfer_mean(chosen, "transfer", "seeds"), float("nan"))
        head = (
            f"wrote {path}: {chosen} at the transfer fidelity ({fidelity}), verdict there "
            f"{sweep_info[tracking.TAG_TRANSFER_VERDICT]}; over {seeds:.0f} new seeds: "
            f"{sweep_info[tracking.OBJECTIVE]} {at(chosen)} (baseline {at('baseline')}); the "
            f"config of its seed {record.params.get('seed')} run ({one_run})"
        )
    elif confirmed:
        chosen = sweep_info.get(tracking.TAG_BEST_TRIAL, record.trial_id)
        seeds = sweep_info.get(tracking.SEEDS_PREFIX + chosen, float("nan"))
        against = "" if chosen == BASELINE else f" (baseline {_mean_std(sweep_info, 'baseline')})"
        head = (
            f"wrote {path}: {chosen}, verdict {verdict}; confirmed over {seeds:.0f} new seeds: "
            f"{sweep_info[tracking.OBJECTIVE]} {_mean_std(sweep_info, 'best')}{against}; the "
            f"config of its seed {record.params.get('seed')} run ({one_run})"
        )
    else:
        head = (
            f"wrote {path}: trial {record.trial_id} of {experiment!r}, one run at one seed, "
            f"not confirmed over seeds ({one_run})"
        )
    notes = _override_notes(swept, cfg) + ([note] if note else [])
    notes += [where_to_run] if where_to_run else []
    if fmt == "yaml":
        return "\n".join([head, *(f"  {n}" for n in notes), f"run it: smotune train {path}"])
    comments = [f"# {head}", *(f"# {n}" for n in notes)]
    if fmt == "cmd":
        return "\n".join([*comments, *submit_command(path, address)])
    return "\n".join([*comments, open_clip_train_command(cfg)])
