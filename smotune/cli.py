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


DESCRIPTION = (
    "smotune finds the regularisation recipe of CLIP pre-training before the full run is "
    "paid for. A sweep trains many small open_clip models, each a Ray Train job with DDP "
    "workers; Optuna picks the next label smoothing, weight decay, text dropout or any other "
    "value of the train config; ASHA stops weak trials early on zero-shot accuracy; a confirm "
    "phase re-runs the best configs and the baseline over new seeds; MLflow records every "
    "run. The winner is exported as a plain train config that `smotune train` runs at full "
    "scale unchanged."
)
EPILOG = (
    "Typical use: `smotune data synth`, `smotune sweep search_spaces/demo.yaml`, then "
    "`smotune report`, `smotune best` and `smotune train best.yaml`. `smotune COMMAND --help` "
    "explains each command. A mistake in a config file, a path or a tracking URI is reported "
    "in one line naming the file, the field and the fix, with exit status 2, before any "
    "cluster starts."
)
TRACKING_URI_HELP = (
    "MLflow tracking URI to read from (default: $MLFLOW_TRACKING_URI if set, else "
    "sqlite:///mlflow.db in the current folder)"
)
EXPERIMENT_HELP = "MLflow experiment of the sweep (its `name:`, or `tracking.experiment` if set)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smotune", description=DESCRIPTION, epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data_help = "write data sets (the synthetic captioned-shapes set)"
    data = sub.add_parser("data", help=data_help, description=data_help[0].upper() + data_help[1:])
    data_sub = data.add_subparsers(dest="data_cmd", required=True, metavar="SET")
    synth = data_sub.add_parser(
        "synth",
        help="write the synthetic captioned-shapes shards",
        description="Write the synthetic captioned-shapes data set that the demo and the tests "
        "train on: 48 classes (8 shapes x 6 colours), training shards in img2dataset's layout "
        "(jpg, txt caption, json with LaCLIP-style rewrites) plus sizes.json, and a held-out "
        "zero-shot set in clip_benchmark's webdataset layout under OUT/zeroshot. The same "
        "arguments always write the same bytes; OUT is rewritten.",
    )
    synth.add_argument(
        "--out", default="data/synth", help="folder to write into (default: %(default)s)"
    )
    synth.add_argument(
        "--samples", type=int, default=20000, help="training pairs (default: %(default)s)"
    )
    synth.add_argument(
        "--shards",
        type=int,
        default=8,
        help="training shards the pairs are split over; at least one per Ray Train worker "
        "(default: %(default)s)",
    )
    synth.add_argument(
        "--eval-per-class",
        type=int,
        default=20,
        help="zero-shot eval images per class (default: %(default)s)",
    )
    synth.add_argument(
        "--seed", type=int, default=0, help="seed of every image and caption (default: %(default)s)"
    )
    synth.set_defaults(func=_data_synth)

    train = sub.add_parser(
        "train",
        help="run one train config as a Ray Train job",
        description="Run one train config as a Ray Train job (a local Ray, or the cluster at "
        "RAY_ADDRESS), printing a line per epoch. A run is its config: the config "
        "(after --epochs/--workers) is stored as <storage>/<name>/smotune-train.json, "
        "rerunning the same config resumes the run from its last checkpoint, and another "
        "config under an existing --name is refused (a run cannot be extended to more epochs: "
        "its lr schedule spans them). Each checkpoint holds the config it was trained with "
        "(train.yaml, local data paths absolute).",
    )
    train.add_argument(
        "config", help="train config YAML (a sweep file works too: its train: section is run)"
    )
    train.add_argument(
        "--storage",
        default="runs",
        help="where checkpoints go: a folder or a URI such as s3://bucket/prefix "
        "(default: %(default)s)",
    )
    train.add_argument(
        "--name",
        default=None,
        help="run name (default: the config file's name without .yaml, a dash, and the first "
        "8 hex digits of the SHA-256 of the train config written as JSON with sorted keys; "
        "the config is taken after --epochs/--workers, with data paths as written, so the "
        "same config gets the same name)",
    )
    train.add_argument("--epochs", type=int, default=None, help="train this many epochs instead")
    train.add_argument(
        "--workers", type=int, default=None, help="use this many Ray Train workers (workers.num)"
    )
    train.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    train.set_defaults(func=_train)

    sweep = sub.add_parser(
        "sweep",
        help="run a sweep file (Tune + Optuna + ASHA + MLflow)",
        description="Run a sweep file: each trial trains the sweep's train config with values "
        "Optuna picked from space:, ASHA stops the weak ones on search.metric, and with "
        "search.confirm the best configs and the baseline run again over new seeds for a "
        "verdict. Prints a line per trial event and a progress line; ends with the summary "
        "table (and the verdict, with search.confirm) and writes best.yaml. Exit status: "
        "0 done, 1 every trial failed, 2 a mistake in the file, 130 interrupted (then "
        "--resume continues it).",
    )
    sweep.add_argument("file", help="sweep YAML: train:, space:, search:, schedule:, tracking:")
    sweep.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted sweep of the same file: finished trials are not run "
        "again, MLflow runs are reused, ASHA's rungs are rebuilt",
    )
    sweep.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sweep.set_defaults(func=_sweep)

    best = sub.add_parser(
        "best",
        help="export the best completed trial of a sweep",
        description="Export the best trial of a sweep's latest run, read from MLflow: the "
        "confirmed winner when the sweep ran search.confirm, else the completed trial with "
        "the best search.metric. Writes its train config to --out and prints, by --format, "
        "how to run it.",
    )
    best.add_argument("--experiment", required=True, help=EXPERIMENT_HELP)
    best.add_argument("--tracking-uri", default=None, help=TRACKING_URI_HELP)
    best.add_argument(
        "--out",
        default="best.yaml",
        help="file to write the train config to, always written (default: %(default)s)",
    )
    best.add_argument(
        "--format",
        choices=["yaml", "cmd", "open_clip_train"],
        default="yaml",
        help="what to print: yaml = where the config went and its metrics; cmd = a "
        "`ray job submit` line that trains it on the cluster at --address; open_clip_train "
        "= the equivalent open_clip_train command and what it has no flag for "
        "(default: %(default)s)",
    )
    best.add_argument(
        "--epochs", type=int, default=None, help="epochs of the full run (default: the sweep's)"
    )
    best.add_argument(
        "--workers",
        type=int,
        default=None,
        help="Ray Train workers of the full run (default: the sweep's; the global batch "
        "changes with it)",
    )
    best.add_argument(
        "--address",
        default="http://127.0.0.1:8265",
        help="Ray dashboard address for --format cmd (default: %(default)s)",
    )
    best.set_defaults(func=_best)

    report = sub.add_parser(
        "report",
        help="a sweep's plots and one HTML page (summary, verdict), from MLflow alone",
        description="Write the latest sweep of an experiment as one HTML page (objective, "
        "verdict, summary and confirm tables) and its plots, read from MLflow alone: it works "
        "wherever the tracking server is reachable, not only where the sweep ran.",
    )
    report.add_argument("--experiment", required=True, help=EXPERIMENT_HELP)
    report.add_argument("--tracking-uri", default=None, help=TRACKING_URI_HELP)
    report.add_argument(
        "--out",
        default=None,
        help="folder for index.html and plots/ (default: <experiment>-report)",
    )
    report.set_defaults(func=_report)

    ens = sub.add_parser(
        "ensemble",
        help="zero-shot accuracy of the mean probabilities of a sweep's top-K trials",
        description="Score an ensemble: load the K best completed search trials of the "
        "latest sweep from their checkpoints, score each on the zero-shot eval set, then "
        "score the mean of their class probabilities. Prints the table and logs "
        "ensemble_top1, ensemble_top5 and ensemble_k on the sweep's parent run.",
    )
    ens.add_argument("--experiment", required=True, help=EXPERIMENT_HELP)
    ens.add_argument(
        "--top", type=int, required=True, help="K: how many of the best trials to average"
    )
    ens.add_argument("--tracking-uri", default=None, help=TRACKING_URI_HELP)
    ens.set_defaults(func=_ensemble)

    sync = sub.add_parser(
        "sync",
        help="write to MLflow what a sweep's tracking journal kept",
        description="Write to MLflow what a sweep's tracking journal kept while the tracking "
        "server was unreachable. Nothing is written twice; exit status 0 when everything is "
        "written, 1 when some writes still wait (run it again later).",
    )
    sync.add_argument(
        "journal", help="the mlflow-journal.jsonl the sweep named at its end (or its folder)"
    )
    sync.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI to write to (default: the one the sweep used)",
    )
    sync.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to keep retrying an unreachable server (default: %(default)s)",
    )
    sync.set_defaults(func=_sync)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as err:
        print(f"smotune: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
