"""Argument parsing only: each command calls one function of the package.

Heavy modules (torch, ray, mlflow) are imported inside the commands, after the
config has been loaded and checked, so a user's mistake is reported in one
line (exit code 2) before any cluster starts.
"""

from __future__ import annotations

import argparse
import sys

from smotune.errors import EXIT_USER_ERROR, UserError

EXIT_ALL_FAILED = 1  # a sweep in which every trial failed
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports it
VERBOSE_HELP = "also show Ray's, Tune's and Train's own logs live (always in the printed log file)"


def _data_synth(args: argparse.Namespace) -> int:
    from smotune.data import synth

    summary = synth.generate(
        args.out,
        train_samples=args.samples,
        shards=args.shards,
        eval_per_class=args.eval_per_class,
        seed=args.seed,
    )
    print(summary)
    return 0


def _train(args: argparse.Namespace) -> int:
    from smotune import config

    cfg = config.load_train(args.config)
    overrides = {"epochs": args.epochs, "workers.num": args.workers}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:
        cfg = config.apply(cfg, overrides, where="command line")
    from smotune.trial import run_train

    run_train(
        cfg, storage=args.storage, name=args.name, config_file=args.config, verbose=args.verbose
    )
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from smotune import config

    sweep_cfg = config.load_sweep(args.file)
    from smotune.sweep import run_sweep

    outcome = run_sweep(sweep_cfg, sweep_file=args.file, resume=args.resume, verbose=args.verbose)
    if outcome.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_ALL_FAILED if outcome.all_failed else 0


def _best(args: argparse.Namespace) -> int:
    from smotune.export import export_best

    print(
        export_best(
            experiment=args.experiment,
            tracking_uri=args.tracking_uri,
            out=args.out,
            fmt=args.format,
            epochs=args.epochs,
            workers=args.workers,
            address=args.address,
        )
    )
    return 0


def _report(args: argparse.Namespace) -> int:
    from smotune.report import write_report

    print(write_report(args.experiment, tracking_uri=args.tracking_uri, out=args.out))
    return 0


def _ensemble(args: argparse.Namespace) -> int:
    from smotune.ensemble import ensemble

    print(ensemble(args.experiment, args.top, tracking_uri=args.tracking_uri))
    return 0


def _sync(args: argparse.Namespace) -> int:
    from smotune.tracking import sync

    return 0 if sync(args.journal, tracking_uri=args.tracking_uri, timeout=args.timeout) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smotune", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="data sets").add_subparsers(dest="data_cmd", required=True)
    synth = data.add_parser("synth", help="write the synthetic captioned-shapes shards")
    synth.add_argument("--out", default="data/synth")
    synth.add_argument("--samples", type=int, default=20000, help="training pairs")
    synth.add_argument("--shards", type=int, default=8)
    synth.add_argument("--eval-per-class", type=int, default=20)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=_data_synth)

    train = sub.add_parser(
        "train",
        help="run one train config as a Ray Train job",
        description="Run one train config as a Ray Train job. A run is its config: the config "
        "(after --epochs/--workers) is stored as <storage>/<name>/smotune-train.json, "
        "rerunning the same config resumes the run from its last checkpoint, and another "
        "config under an existing --name is refused (a run cannot be extended to more epochs: "
        "its lr schedule spans them). Each checkpoint holds the config it was trained with "
        "(train.yaml, local data paths absolute).",
    )
    train.add_argument("config")
    train.add_argument("--storage", default="runs", help="checkpoint storage (path or URI)")
    train.add_argument(
        "--name",
        default=None,
        help="run name (default: <config file stem>-<first 8 hex digits of the sha256 of "
        'json.dumps(train_config.model_dump(mode="json"), sort_keys=True)>, the train config '
        "after --epochs/--workers, data paths as written)",
    )
    train.add_argument("--epochs", type=int, default=None, help="override epochs")
    train.add_argument("--workers", type=int, default=None, help="override workers.num")
    train.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    train.set_defaults(func=_train)

    sweep = sub.add_parser("sweep", help="run a sweep file (Tune + Optuna + ASHA + MLflow)")
    sweep.add_argument("file")
    sweep.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    sweep.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sweep.set_defaults(func=_sweep)

    best = sub.add_parser("best", help="export the best completed trial of a sweep")
    best.add_argument("--experiment", required=True, help="MLflow experiment (the sweep name)")
    best.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or sqlite")
    best.add_argument("--out", default="best.yaml")
    best.add_argument("--format", choices=["yaml", "cmd", "open_clip_train"], default="yaml")
    best.add_argument("--epochs", type=int, default=None, help="epochs of the full run")
    best.add_argument("--workers", type=int, default=None, help="workers of the full run")
    best.add_argument("--address", default="http://127.0.0.1:8265", help="Ray dashboard address")
    best.set_defaults(func=_best)

    report = sub.add_parser(
        "report", help="a sweep's plots and one HTML page (summary, verdict), from MLflow alone"
    )
    report.add_argument("--experiment", required=True, help="MLflow experiment (the sweep name)")
    report.add_argument(
        "--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or sqlite"
    )
    report.add_argument("--out", default=None, help="folder (default: <experiment>-report)")
    report.set_defaults(func=_report)

    ens = sub.add_parser(
        "ensemble",
        help="zero-shot accuracy of the mean probabilities of a sweep's top-K trials",
    )
    ens.add_argument("--experiment", required=True, help="MLflow experiment (the sweep name)")
    ens.add_argument("--top", type=int, required=True, help="K: how many of the best trials")
    ens.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or sqlite")
    ens.set_defaults(func=_ensemble)

    sync = sub.add_parser("sync", help="write to MLflow what a sweep's tracking journal kept")
    sync.add_argument("journal", help="the mlflow-journal.jsonl the sweep named (or its folder)")
    sync.add_argument("--tracking-uri", default=None, help="default: the URI the sweep used")
    sync.add_argument("--timeout", type=float, default=60.0, help="seconds to keep trying")
    sync.set_defaults(func=_sync)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as err:
        print(f"smotune: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
