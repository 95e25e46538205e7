"""The config models: a train config, a sweep file and its parts (pydantic), smotune's metric
names and the kinds of a ``space:`` entry; the constants the rest of the config checks read."""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

MODEL_CONFIG_DIR = Path(__file__).parent.parent / "model_configs"  # smotune's own open_clip archs
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
