"""Train configs and sweep files: pydantic models, YAML loading, one clear error per mistake.

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

import builtins
import copy
import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from smotune.errors import UserError

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"  # smotune's own open_clip archs
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # also MLflow 3's own default
METRICS = (
    "epoch",
    "zeroshot_top1",
    "zeroshot_top5",
    "train_loss",
    "lr",
    "samples_per_s",
    "train_s",
    "data_skipped",
    "data_damaged_shards",
    "restarts",
)
"""The metrics the engine reports each epoch (the names Tune, ASHA, MLflow and the export share)."""
DAMAGE_KEY = "data_damage"
"""Not a metric: a report's damaged or unreadable shards met so far by any rank, one line each
(``<shard>: <what was met>``), in one string (Tune's TensorBoard logger takes a list for a
histogram; it skips a string), present once there is one. The consoles print each line once;
MLflow keeps them as the trial run's tag of that name."""
OBJECTIVES = tuple(m for m in METRICS if m != "epoch")
"""What ``search.metric`` may name: any reported metric but the epoch counter itself."""
NOT_SEARCHABLE = {
    "epochs": "ASHA and the searcher need one epoch count for every trial",
    "seed": "search.confirm varies the seed itself",
}
"""Train-config paths ``space:`` refuses, with why."""
REMOTE_PREFIXES = ("s3://", "gs://", "gcs://", "http://", "https://", "pipe:", "hf://", "azure://")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    arch: str = Field(
        "tiny-vit", description="open_clip model name (ViT-B-32, RN50, tiny-vit, ...)"
    )
    text_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on text-block outputs")


class DataConfig(_Strict):
    train: str | list[str] = Field(..., description="webdataset shards: brace pattern, list, URLs")
    zeroshot: str = Field(..., description="zero-shot eval set: clip_benchmark wds dir or folders")
    zeroshot_split: str = "test"
    rewrite: Literal["prob", "laclip"] = Field(
        "prob",
        description="caption rule when a sample's json holds rewrites: prob (a rewrite with "
        "probability rewrite_prob; 0, the default, trains on the original captions only) or "
        "laclip (LaCLIP's: uniform over the original and its k rewrites, 1/(k+1) each)",
    )
    rewrite_prob: float = Field(
        0.0, ge=0.0, le=1.0, description="rewrite: prob: P(use a uniformly drawn rewrite)"
    )
    shuffle_buffer: int = Field(1000, ge=0)
    loader_workers: int = Field(1, ge=0)
    samples_per_epoch: int | None = Field(None, ge=1, description="fixed epoch length per worker")

    @field_validator("rewrite_prob")
    @classmethod
    def _prob_rule_only(cls, value: float, info: ValidationInfo) -> float:
        if value > 0 and info.data.get("rewrite") == "laclip":
            raise ValueError(
                "is read only with data.rewrite: prob (laclip draws the original with "
                "probability 1/(k+1)); fix: leave rewrite_prob out, or set data.rewrite: prob"
            )
        return value


class LossConfig(_Strict):
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    local_loss: bool = False
    gather_with_grad: bool = True


class OptimConfig(_Strict):
    lr: float = Field(1.0e-3, gt=0.0)
    min_lr: float = Field(1.0e-5, ge=0.0, description="floor of the cosine schedule")
    weight_decay: float = Field(0.1, ge=0.0)
    beta1: float = Field(0.9, ge=0.0, lt=1.0)
    beta2: float = Field(0.98, ge=0.0, lt=1.0)
    eps: float = Field(1.0e-6, gt=0.0)
    warmup_steps: int = Field(50, ge=0)
    batch_size: int = Field(128, ge=1, description="per worker; global = batch_size * workers.num")
    grad_clip: float | None = Field(None, gt=0.0)


class WorkersConfig(_Strict):
    num: int = Field(2, ge=1)
    cpus: float = Field(1.0, ge=0.0)
    gpus: float = Field(0.0, ge=0.0)
    max_failures: int = Field(
        1, ge=0, description="worker-group restarts from the latest checkpoint before failing"
    )


class EvalConfig(_Strict):
    batch_size: int = Field(256, ge=1)
    max_samples: int | None = Field(
        None,
        ge=1,
        description="cap on the zero-shot eval set, spread evenly over its classes "
        "(data/zeroshot.py: a webdataset set's labels are read first, seeking past images)",
    )


class TrainConfig(_Strict):
    model: ModelConfig = ModelConfig()
    data: DataConfig
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    epochs: int = Field(6, ge=1)
    workers: WorkersConfig = WorkersConfig()
    eval: EvalConfig = EvalConfig()
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on GPU, fp32 on CPU"
    )
    seed: int = 0

    @property
    def global_batch_size(self) -> int:
        return self.optim.batch_size * self.workers.num


@dataclass(frozen=True)
class DistKind:
    """What one kind of ``space:`` entry is; every place that treats kinds apart reads this."""

    shape: Literal["range", "choices", "value"]  # [low, high], [a, b, ...] or one value
    optuna: str | None  # the optuna.distributions class that searches it; None: not searched
    log: bool = False


DIST_KINDS: dict[str, DistKind] = {
    "uniform": DistKind("range", "FloatDistribution"),
    "loguniform": DistKind("range", "FloatDistribution", log=True),
    "int": DistKind("range", "IntDistribution"),
    "choice": DistKind("choices", "CategoricalDistribution"),
    "fixed": DistKind("value", None),
}


class Distribution(_Strict):
    """One entry of ``space:``: exactly one of the keys of :data:`DIST_KINDS`."""

    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    int: tuple[builtins.int, builtins.int] | None = None
    choice: list[Any] | None = None
    fixed: Any = None

    @model_validator(mode="before")
    @classmethod
    def _one_kind(cls, value: Any) -> Any:
        if not isinstance(value, dict) or len(value) != 1 or not set(value) <= set(DIST_KINDS):
            raise ValueError(
                f"needs exactly one of {', '.join(DIST_KINDS)}, e.g. {{uniform: [0.0, 0.3]}}"
            )
        return value

    @property
    def kind(self) -> str:
        return next(k for k in DIST_KINDS if k in self.model_fields_set)

    @property
    def value(self) -> Any:
        """The entry's own value: ``[low, high]``, the choices, or the fixed value."""
        return getattr(self, self.kind)

    @property
    def searched(self) -> bool:
        return DIST_KINDS[self.kind].optuna is not None

    def extremes(self) -> list[Any]:
        """The values to check against the train config: the bounds, every choice, the value."""
        return [self.value] if DIST_KINDS[self.kind].shape == "value" else list(self.value)

    def words(self) -> str:
        """The entry as a person reads it: ``uniform 0-0.3``, ``loguniform 0.01-1``,
        ``choice prob, laclip``, ``fixed 0.1`` (``-1 to 1`` when a bound is negative)."""
        shape = DIST_KINDS[self.kind].shape
        if shape == "range":
            low, high = self.value
            joint = "-" if low >= 0 and high >= 0 else " to "
            return f"{self.kind} {low:g}{joint}{high:g}"
        if shape == "choices":
            return f"{self.kind} {', '.join(str(v) for v in self.value)}"
        return f"{self.kind} {self.value}"

    def contains(self, value: Any) -> bool:
        shape = DIST_KINDS[self.kind].shape
        if shape == "range":
            low, high = self.value
            return low <= value <= high
        return value in self.value if shape == "choices" else value == self.value

    @model_validator(mode="after")
    def _bounds(self) -> Distribution:
        kind, spec = self.kind, DIST_KINDS[self.kind]
        if spec.shape == "range":
            low, high = self.value
            if low >= high:
                raise ValueError(f"{kind} needs low < high, got [{low}, {high}]")
            if spec.log and low <= 0:
                raise ValueError(f"{kind} needs low > 0, got {low}")
        if spec.shape == "choices" and not self.value:
            raise ValueError(f"{kind} needs a non-empty list")
        return self


class ConfirmConfig(_Strict):
    top: int = Field(1, ge=1, description="how many of the best completed configs to re-run")
    seeds: int = Field(3, ge=2, description="new seeds per config (and for the baseline)")
    max_seeds: int | None = Field(
        None,
        ge=2,
        le=100,
        description="race: after `seeds`, one more seed a round for the configs still racing, "
        "up to this many (default: `seeds`, no racing)",
    )
    min_gain: float = Field(
        0.0, ge=0.0, description="the gain over the baseline (metric's units) worth claiming"
    )

    @field_validator("max_seeds")
    @classmethod
    def _race(cls, value: int | None, info: ValidationInfo) -> int | None:
        seeds = info.data.get("seeds")
        if value is not None and seeds is not None and value < seeds:
            raise ValueError(f"must be at least search.confirm.seeds ({seeds}), got {value}")
        return value

    @property
    def most_seeds(self) -> int:
        """The most seeds a config runs (``max_seeds``, or ``seeds`` without racing)."""
        return self.max_seeds if self.max_seeds is not None else self.seeds


class TransferConfig(_Strict):
    """After the confirm phase: the baseline and the ``top`` best confirmed configs re-run at a
    larger fidelity (``train:`` with ``overrides`` applied), ``seeds`` new seeds each."""

    overrides: dict[str, Any] = Field(
        ..., min_length=1, description="dotted train paths and their values at that fidelity"
    )
    top: int = Field(1, ge=1, description="how many of the best confirmed configs to re-run")
    seeds: int = Field(2, ge=2, description="new seeds per config at that fidelity")


class SearchConfig(_Strict):
    metric: str = Field("zeroshot_top1", description="the one objective of the whole sweep")
    mode: Literal["max", "min"] = "max"
    algo: Literal["tpe", "random"] = "tpe"
    samples: int = Field(12, ge=1)
    concurrent: int = Field(1, ge=1)
    seed: int = 0
    time_budget: float | None = Field(None, gt=0, description="wall seconds for the whole sweep")
    include_default: bool = Field(
        False, description="the first trial runs the train config's own values (a baseline)"
    )
    storage: str | None = Field(
        None, description="Optuna storage URL (default: sqlite next to the sweep's Tune state)"
    )
    warm_start: str | None = Field(
        None, description="name of an earlier sweep whose finished trials seed this search"
    )
    confirm: ConfirmConfig | None = Field(
        None, description="re-run the baseline and the top configs over new seeds"
    )
    transfer: TransferConfig | None = Field(
        None, description="after confirm: re-run the best confirmed configs at a larger fidelity"
    )

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in OBJECTIVES:
            raise ValueError(f"must be a metric the engine reports ({', '.join(OBJECTIVES)})")
        return value


class AshaConfig(_Strict):
    """ASHA on epochs; its metric and mode are ``search.metric`` and ``search.mode``."""

    @model_validator(mode="before")
    @classmethod
    def _no_metric(cls, value: Any) -> Any:
        if isinstance(value, dict) and "metric" in value:
            raise ValueError(
                "schedule.asha.metric is gone: the sweep has one objective, set search.metric"
            )
        return value

    grace: int = Field(1, ge=1)
    reduction: float = Field(3.0, gt=1.0)


class ScheduleConfig(_Strict):
    asha: AshaConfig | None = AshaConfig()


class TrackingConfig(_Strict):
    uri: str = DEFAULT_TRACKING_URI
    experiment: str | None = None


class StorageConfig(_Strict):
    path: str = "runs"


class SweepConfig(_Strict):
    name: str = Field(..., min_length=1)
    train: TrainConfig
    space: dict[str, Distribution] = Field(default_factory=dict)
    search: SearchConfig = SearchConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    tracking: TrackingConfig = TrackingConfig()
    storage: StorageConfig = StorageConfig()

    @field_validator("name")
    @classmethod
    def _name_chars(cls, value: str) -> str:
        bad = set(value) - set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
        if bad:
            raise ValueError(f"may hold only letters, digits, '-', '_' and '.', got {value!r}")
        return value

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name


# ---------------------------------------------------------------- errors


def _dotted(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not str(p).startswith(("function-", "tagged-union"))]
    return ".".join(parts)


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed next to ``loc[-1]`` in ``model``, for an 'unknown key' message."""
    current: Any = model
    for part in loc[:-1]:
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return []
        ann = fields[part].annotation
        current = next(
            (a for a in getattr(ann, "__args__", (ann,)) if hasattr(a, "model_fields")), ann
        )
    fields = getattr(current, "model_fields", None)
    return list(fields) if fields else []


def _user_error(where: str, err: ValidationError, model: type[BaseModel], prefix: str) -> UserError:
    first = err.errors()[0]
    loc = tuple(first["loc"])
    field = prefix + _dotted(loc)
    kind = first["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc)
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return UserError(where, field, "unknown key", f"remove it or correct its spelling{hint}")
    got = first.get("input")
    # a validator of ours may name its fix after "; fix: "
    problem, _, own_fix = first["msg"].replace("Value error, ", "").partition("; fix: ")
    if kind != "missing":
        problem += f", got {got!r}"
    if own_fix:
        fix = own_fix
    elif kind == "missing":
        fix = "add the key"
    elif "should be " in first["msg"]:
        fix = "set a value that is " + first["msg"].split("should be ", 1)[1]
    else:
        fix = "correct the value"
    return UserError(where, field, problem, fix)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(str(path), "", "file not found", "check the path of the config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}" if mark else "YAML"
        raise UserError(str(path), line, "not valid YAML", "fix the syntax there") from None
    if not isinstance(data, dict):
        raise UserError(str(path), "", "must be a YAML mapping", "write key: value pairs")
    return data


# ---------------------------------------------------------------- paths


def is_remote(url: str) -> bool:
    return url.startswith(REMOTE_PREFIXES)


def expand_shards(spec: str | list[str]) -> list[str]:
    """Brace-expand a shard spec (``a-{0000..0007}.tar``, ``::``-joined or a list)."""
    import braceexpand

    specs = [spec] if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for item in specs:
        for part in item.split("::"):
            urls.extend(braceexpand.braceexpand(part))
    return urls


def _check_paths(where: str, train: TrainConfig, prefix: str, base: Path) -> None:
    urls = expand_shards(train.data.train)
    if not urls:
        raise UserError(where, prefix + "data.train", "expands to no shards", "name .tar shards")
    for url in urls:
        if is_remote(url):
            continue
        path = base / url
        if not path.exists() and not glob.has_magic(url):
            raise UserError(
                where,
                prefix + "data.train",
                f"shard {url} does not exist{_relative_to(url, base)}",
                _missing_fix(url, "write the data (`smotune data synth --out DIR` for the demo's)"),
            )
    zs = train.data.zeroshot
    if not is_remote(zs) and not (base / zs).is_dir():
        raise UserError(
            where,
            prefix + "data.zeroshot",
            f"directory {zs} does not exist{_relative_to(zs, base)}",
            _missing_fix(
                zs, "point it at a clip_benchmark webdataset dir or an ImageNet-style folder"
            ),
        )


def _relative_to(path: str, base: Path) -> str:
    return "" if os.path.isabs(path) else f" (relative to {base}, where smotune runs)"


def _missing_fix(path: str, otherwise: str) -> str:
    """The fix for a local data path that is not there. A relative one may be right but read
    from another directory than it was written for (a config exported by a sweep that logged
    relative paths, a config moved), so that comes first."""
    if os.path.isabs(path):
        return f"correct the path, or {otherwise}"
    return (
        "run from the directory the path is relative to (for an exported best.yaml: where "
        f"its sweep ran) or write it absolute; else {otherwise}"
    )


def relative_paths(train: TrainConfig) -> list[str]:
    """The config's local data paths that are relative (read from where smotune runs)."""
    specs = [train.data.train] if isinstance(train.data.train, str) else list(train.data.train)
    urls = [u for spec in specs for u in spec.split("::")] + [train.data.zeroshot]
    return [u for u in urls if not is_remote(u) and not os.path.isabs(u)]


def absolute_paths(train: TrainConfig, base: Path | None = None) -> TrainConfig:
    """A copy of ``train`` whose local data paths are absolute (from ``base`` or the cwd)."""
    base = Path(base or os.getcwd())

    def fix(url: str) -> str:
        return url if is_remote(url) or os.path.isabs(url) else str(base / url)

    out = train.model_copy(deep=True)
    if isinstance(out.data.train, str):
        out.data.train = "::".join(fix(u) for u in out.data.train.split("::"))
    else:
        out.data.train = [fix(u) for u in out.data.train]
    out.data.zeroshot = fix(out.data.zeroshot)
    return out


# ---------------------------------------------------------------- dotted paths


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"loss": {"label_smoothing": 0.1}}`` -> ``{"loss.label_smoothing": 0.1}``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def is_train_field(path: str) -> bool:
    """Whether ``path`` (e.g. ``loss.label_smoothing``) names a leaf field of TrainConfig."""
    current: Any = TrainConfig
    for part in path.split("."):
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return False
        current = fields[part].annotation
    return getattr(current, "model_fields", None) is None


def set_dotted(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``data`` with ``path`` set to ``value``."""
    out = copy.deepcopy(data)
    node = out
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return out


def validate_train(data: dict[str, Any], where: str, prefix: str = "") -> TrainConfig:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        raise _user_error(where, err, TrainConfig, prefix) from None


def apply(train: TrainConfig, sample: dict[str, Any], where: str = "sample") -> TrainConfig:
    """A new train config with each dotted path of ``sample`` set; validated."""
    data = train.model_dump(mode="json")
    for path, value in sample.items():
        if not is_train_field(path):
            raise UserError(where, path, "is not a field of the train config", "use a dotted path")
        data = set_dotted(data, path, value)
    return validate_train(data, where)


def check_space(sweep: SweepConfig, where: str) -> None:
    """Every path names a train-config field and every value the space can take is valid there."""
    for path, dist in sweep.space.items():
        field = f"space.{path}"
        if not is_train_field(path):
            raise UserError(
                where,
                field,
                "is not a field of the train config",
                "use a dotted path such as loss.label_smoothing, optim.weight_decay, "
                "model.text_dropout",
            )
        # a fixed seed is harmless; fixed epochs would differ from the epochs ASHA counts
        if path in NOT_SEARCHABLE and (dist.searched or path == "epochs"):
            raise UserError(
                where,
                field,
                f"cannot be searched: {NOT_SEARCHABLE[path]}",
                f"remove it from space: and set train.{path} once",
            )
        for value in dist.extremes():
            try:
                apply(sweep.train, {path: value}, where)
            except UserError as err:
                raise UserError(
                    where,
                    field,
                    f"value {value!r} is not valid for train.{path} ({err.problem})",
                    f"keep the {dist.kind} range inside what train.{path} accepts",
                ) from None
    if sweep.search.include_default:
        flat = flatten(sweep.train.model_dump(mode="json"))
        for path, dist in sweep.space.items():
            if dist.searched and not dist.contains(flat[path]):
                raise UserError(
                    where,
                    f"space.{path}",
                    f"search.include_default is on but train.{path} = {flat[path]!r} is outside it",
                    f"widen the space or change train.{path}",
                )


def transfer_train(sweep: SweepConfig, where: str = "sweep") -> TrainConfig:
    """``train:`` at the transfer fidelity (``search.transfer.overrides`` applied)."""
    assert sweep.search.transfer is not None
    return apply(sweep.train, sweep.search.transfer.overrides, where)


def check_transfer(sweep: SweepConfig, where: str) -> None:
    """``search.transfer`` follows a confirm phase, re-runs no more configs than it confirmed,
    and overrides valid train-config fields that the space does not set, to new values."""
    t, c = sweep.search.transfer, sweep.search.confirm
    if t is None:
        return
    if c is None:
        raise UserError(
            where,
            "search.transfer",
            "needs a confirm phase (it re-runs the best confirmed configs)",
            "add search.confirm: {top: K, seeds: N}",
        )
    if t.top > c.top:
        raise UserError(
            where,
            "search.transfer.top",
            f"is {t.top} but the confirm phase confirms only {c.top} searched configs",
            f"set it to at most search.confirm.top ({c.top}), or raise that",
        )
    flat = flatten(sweep.train.model_dump(mode="json"))
    for path in t.overrides:
        field = f"search.transfer.overrides.{path}"
        if not is_train_field(path):
            raise UserError(
                where,
                field,
                "is not a field of the train config",
                "use a dotted path such as data.samples_per_epoch, epochs, model.arch",
            )
        if path == "seed":
            raise UserError(
                where,
                field,
                "cannot be overridden: the transfer phase runs its own new seeds",
                "remove it (train.seed + confirm's seeds + 1, ... are its seeds)",
            )
        if path in sweep.space:
            kind = "searched" if sweep.space[path].searched else "fixed by space:"
            raise UserError(
                where,
                field,
                f"is {kind}: the transfer phase re-runs the confirmed configs' own values there",
                "remove it from search.transfer.overrides (or from space:)",
            )
    try:
        high = transfer_train(sweep, where)
    except UserError as err:
        raise UserError(
            where,
            f"search.transfer.overrides.{err.field}",
            err.problem,
            err.fix,
        ) from None
    if all(flatten(high.model_dump(mode="json")).get(p) == flat[p] for p in t.overrides):
        raise UserError(
            where,
            "search.transfer.overrides",
            "changes nothing: every value equals train:'s",
            "set at least one path to the larger fidelity's value (e.g. epochs, "
            "data.samples_per_epoch)",
        )


# ---------------------------------------------------------------- loading


def load_train(path: str | Path, check_paths: bool = True) -> TrainConfig:
    """Load a train config file (also accepts a sweep file, taking its ``train:``)."""
    path = Path(path)
    data = _read_yaml(path)
    prefix = ""
    if "train" in data and isinstance(data["train"], dict) and "space" in data:
        data, prefix = data["train"], "train."
    cfg = validate_train(data, str(path), prefix)
    if check_paths:
        _check_paths(str(path), cfg, prefix, Path.cwd())
    return cfg


def load_sweep(path: str | Path, check_paths: bool = True) -> SweepConfig:
    """Load a sweep file and check every space path and range against the train config."""
    path = Path(path)
    data = _read_yaml(path)
    where = str(path)
    try:
        sweep = SweepConfig.model_validate(data)
    except ValidationError as err:
        raise _user_error(where, err, SweepConfig, "") from None
    check_space(sweep, where)
    check_transfer(sweep, where)
    if check_paths:
        _check_paths(where, sweep.train, "train.", Path.cwd())
        if sweep.search.transfer is not None:
            # only an overridden data path can fail here: train:'s own passed above
            high = transfer_train(sweep, where)
            _check_paths(where, high, "search.transfer.overrides.", Path.cwd())
    return sweep


def dump_train(cfg: TrainConfig) -> str:
    """A train config as YAML text, every field written out."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
