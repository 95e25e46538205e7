"""space: -> Optuna distributions; samples applied to a train config and validated."""

from __future__ import annotations

import optuna
import pytest

from smotune import config, space
from smotune.errors import UserError


def _sweep(space_entries: dict) -> config.SweepConfig:
    return config.SweepConfig.model_validate(
        {
            "name": "t",
            "train": {"data": {"train": "s3://b/x-{0..3}.tar", "zeroshot": "s3://b/zs"}},
            "space": space_entries,
        }
    )


def test_each_kind_maps_to_optuna():
    sweep = _sweep(
        {
            "loss.label_smoothing": {"uniform": [0.0, 0.3]},
            "optim.weight_decay": {"loguniform": [0.01, 1.0]},
            "optim.warmup_steps": {"int": [10, 100]},
            "model.arch": {"choice": ["tiny-vit", "small-vit"]},
            "seed": {"fixed": 7},
        }
    )
    dists = space.optuna_space(sweep)
    assert dists["loss.label_smoothing"] == optuna.distributions.FloatDistribution(0.0, 0.3)
    assert dists["optim.weight_decay"].log is True
    assert isinstance(dists["optim.warmup_steps"], optuna.distributions.IntDistribution)
    assert dists["model.arch"].choices == ("tiny-vit", "small-vit")
    assert "seed" not in dists
    assert space.fixed_values(sweep) == {"seed": 7}


def test_samples_round_trip_into_train_configs():
    sweep = _sweep(
        {
            "loss.label_smoothing": {"uniform": [0.0, 0.3]},
            "optim.weight_decay": {"loguniform": [0.01, 1.0]},
            "model.text_dropout": {"uniform": [0.0, 0.3]},
            "optim.batch_size": {"choice": [64, 128]},
        }
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        trial = study.ask(space.optuna_space(sweep))
        cfg = space.trial_config(sweep, trial.params)
        flat = config.flatten(cfg.model_dump(mode="json"))
        for path, value in trial.params.items():
            assert flat[path] == value
        assert 0.0 <= cfg.loss.label_smoothing <= 0.3
        assert 0.01 <= cfg.optim.weight_decay <= 1.0
        # untouched fields keep the base config's values
        assert cfg.optim.lr == sweep.train.optim.lr
        seen.add(round(cfg.loss.label_smoothing, 6))
        study.tell(trial, 0.0)
    assert len(seen) == 20


def test_apply_validates():
    sweep = _sweep({})
    with pytest.raises(UserError, match="less than 1"):
        config.apply(sweep.train, {"loss.label_smoothing": 1.2})
    with pytest.raises(UserError, match="not a field"):
        config.apply(sweep.train, {"loss.nope": 1})
    with pytest.raises(UserError, match="not a field"):
        config.apply(sweep.train, {"loss": 0.1})  # a section, not a leaf
    assert config.apply(sweep.train, {"epochs": 3}).epochs == 3


def test_choice_values_are_checked_at_load():
    with pytest.raises(UserError, match="space.precision"):
        sweep = _sweep({"precision": {"choice": ["fp32", "int4"]}})
        config.check_space(sweep, "f.yaml")


def test_default_point_is_the_train_configs_values():
    sweep = _sweep(
        {
            "loss.label_smoothing": {"uniform": [0.0, 0.3]},
            "optim.weight_decay": {"loguniform": [0.01, 1.0]},
            "seed": {"fixed": 3},
        }
    )
    assert space.default_point(sweep) == {"loss.label_smoothing": 0.0, "optim.weight_decay": 0.1}
    sweep.search.include_default = True
    config.check_space(sweep, "f.yaml")
    sweep.space["optim.weight_decay"] = config.Distribution(loguniform=(0.2, 1.0))
    with pytest.raises(UserError, match="include_default"):
        config.check_space(sweep, "f.yaml")
