"""Train configs and sweep files: pydantic models, YAML loading, one clear error per mistake.

One module a job: ``models`` (the pydantic models and smotune's metric names),
``messages`` (a mistake as one line), ``paths`` (data paths checked and made absolute),
``dotted`` (dotted paths, the space and the transfer checked), ``loading`` (files read
and written). Everything is imported from here.

A *train config* fully describes one training run. A *sweep file* is a train
config (``train:``) plus a ``space:`` of dotted paths into it and the sweep's
own settings. Every mistake is raised as :class:`smotune.errors.UserError`
naming the file, the field and the fix.

Relative local data paths are read from the directory the command runs in
(checked there) and kept as written in the config a user gave;
:func:`absolute_paths` turns them into absolute ones before a run leaves that
directory (Ray workers and Tune trials run elsewhere) and before a trial's
config is logged, so the config a sweep exports runs the same from anywhere.
Object-store URIs (``s3://``, ...) are never touched.
"""

from __future__ import annotations

from smotune.config.dotted import (
    apply,
    check_space,
    check_transfer,
    flatten,
    is_train_field,
    set_dotted,
    transfer_train,
    validate_train,
)
from smotune.config.loading import (
    dump_train,
    load_sweep,
    load_train,
)
from smotune.config.models import (
    DAMAGE_KEY,
    DEFAULT_TRACKING_URI,
    DIST_KINDS,
    METRICS,
    MODEL_CONFIG_DIR,
    NOT_SEARCHABLE,
    OBJECTIVES,
    REMOTE_PREFIXES,
    AshaConfig,
    ConfirmConfig,
    DataConfig,
    DistKind,
    Distribution,
    EvalConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    SearchConfig,
    StorageConfig,
    SweepConfig,
    TrackingConfig,
    TrainConfig,
    TransferConfig,
    WorkersConfig,
)
from smotune.config.paths import (
    absolute_paths,
    expand_shards,
    is_remote,
    relative_paths,
)

__all__ = [
    "AshaConfig",
    "ConfirmConfig",
    "DAMAGE_KEY",
    "DEFAULT_TRACKING_URI",
    "DIST_KINDS",
    "DataConfig",
    "DistKind",
    "Distribution",
    "EvalConfig",
    "LossConfig",
    "METRICS",
    "MODEL_CONFIG_DIR",
    "ModelConfig",
    "NOT_SEARCHABLE",
    "OBJECTIVES",
    "OptimConfig",
    "REMOTE_PREFIXES",
    "ScheduleConfig",
    "SearchConfig",
    "StorageConfig",
    "SweepConfig",
    "TrackingConfig",
    "TrainConfig",
    "TransferConfig",
    "WorkersConfig",
    "absolute_paths",
    "apply",
    "check_space",
    "check_transfer",
    "dump_train",
    "expand_shards",
    "flatten",
    "is_remote",
    "is_train_field",
    "load_sweep",
    "load_train",
    "relative_paths",
    "set_dotted",
    "transfer_train",
    "validate_train",
]
