"""The cluster sweep files: they load with remote data, search real train-config fields,
hold the seeds' settings, build their open_clip models, and state the GPU-hours that
cluster/budget.py computes for them."""

from __future__ import annotations

import functools
import importlib.util
import math
import re
from pathlib import Path

import optuna
import pytest

from smotune import config, model, space
from smotune.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
SPACES = ROOT / "search_spaces"
CC3M_PAIRS, CC12M_PAIRS = 2_905_954, 10_968_539
FILES = {  # name -> (arch, shards, pairs in the data set)
    "smoclip-cc3m-vitb32": ("ViT-B-32", 576, CC3M_PAIRS),
    "smoclip-cc12m-rn50": ("RN50", 2176, CC12M_PAIRS),
    "rocket-cc3m": ("RN50", 576, CC3M_PAIRS),
}


def _load(name: str) -> config.SweepConfig:
    return config.load_sweep(SPACES / f"{name}.yaml", check_paths=False)


def _budget_module():
    spec = importlib.util.spec_from_file_location("budget", ROOT / "cluster" / "budget.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", FILES)
def test_loads_with_remote_data_and_cluster_storage(name):
    sweep = _load(name)
    arch, shards, pairs = FILES[name]
    t = sweep.train
    assert sweep.name == name and sweep.experiment == name
    assert t.model.arch == arch
    urls = config.expand_shards(t.data.train)
    assert len(urls) == shards and all(u.startswith("s3://") for u in urls)
    assert len(set(urls)) == shards
    # remote shards are not counted: one epoch is the whole data set, split over the workers
    assert t.data.samples_per_epoch == pairs // t.workers.num
    # zero-shot on ImageNet val folders from the volume every node mounts at /data
    assert t.data.zeroshot.startswith("/data/") and t.data.zeroshot_split == "val"
    assert t.eval.max_samples and t.workers.gpus == 1
    # storage and tracking every node (or the head's driver) reaches
    assert sweep.storage.path.startswith("s3://")
    assert sweep.tracking.uri.startswith("http://")
    assert sweep.schedule.asha is not None and sweep.search.include_default
    for path in sweep.space:
        assert config.is_train_field(path), path
    assert set(space.optuna_space(sweep)) == set(sweep.space)


@pytest.mark.parametrize("name", FILES)
def test_local_check_names_the_missing_eval_set(name):
    """check_paths=True (what `smotune sweep` does on the cluster's head) needs /data mounted."""
    if Path("/data/imagenet/val").is_dir():
        pytest.skip("this machine has /data/imagenet/val")
    with pytest.raises(UserError) as err:
        config.load_sweep(SPACES / f"{name}.yaml")
    assert "train.data.zeroshot" in str(err.value) and "/data/imagenet" in str(err.value)


def test_rocket_file_is_the_clip_rocket_recipe():
    t = _load("rocket-cc3m").train
    assert t.model.arch == "RN50"
    assert t.loss.label_smoothing == 0.1
    assert t.optim.weight_decay == 0.5
    assert t.model.text_dropout == 0.2
    assert t.optim.lr == 3e-3
    assert (t.optim.beta1, t.optim.beta2, t.optim.eps) == (0.9, 0.98, 1e-8)
    assert t.optim.min_lr == 1e-5  # cosine to 1e-5
    assert t.epochs == 32
    assert t.global_batch_size == 4096
    assert t.optim.batch_size == 4096 // t.workers.num
    # one warm-up epoch: the optimizer steps of one epoch
    assert t.optim.warmup_steps == t.data.samples_per_epoch // t.optim.batch_size


def test_rocket_space_surrounds_the_recipe():
    sweep = _load("rocket-cc3m")
    flat = config.flatten(sweep.train.model_dump(mode="json"))
    for path, dist in space.optuna_space(sweep).items():
        assert isinstance(dist, optuna.distributions.FloatDistribution), path
        assert dist.low < flat[path] < dist.high, path


@pytest.mark.parametrize("name", ["smoclip-cc3m-vitb32", "smoclip-cc12m-rn50"])
def test_smoclip_files_hold_smoclips_setting(name):
    t = _load(name).train
    # SMOCLIP: open_clip_train on 4 GPUs x --batch-size 320, label smoothing 0.1
    assert (t.workers.num, t.optim.batch_size, t.loss.label_smoothing) == (4, 320, 0.1)
    # open_clip_train's defaults: lr 5e-4, wd 0.2, cosine to 0; betas/eps by tower kind
    assert (t.optim.lr, t.optim.weight_decay, t.optim.min_lr) == (5e-4, 0.2, 0.0)
    vit = t.model.arch.startswith("ViT")
    assert (t.optim.beta2, t.optim.eps) == ((0.98, 1e-6) if vit else (0.999, 1e-8))


def test_every_arch_builds_with_the_largest_text_dropout():
    largest: dict[str, float] = {}
    for name in FILES:
        sweep = _load(name)
        dist = space.optuna_space(sweep).get("model.text_dropout")
        high = dist.high if isinstance(dist, optuna.distributions.FloatDistribution) else 0.0
        arch = sweep.train.model.arch
        largest[arch] = max(largest.get(arch, 0.0), high, sweep.train.model.text_dropout)
    for arch, p in largest.items():
        net = model.create(config.ModelConfig(arch=arch, text_dropout=min(p, 0.99)))
        dropouts = [m for m in net.modules() if type(m).__name__ == "Dropout" and m.p > 0]
        assert len(dropouts) == 2 * len(model.text_blocks(net)), arch


@pytest.mark.parametrize("name", FILES)
def test_gpu_hour_comments_are_what_budget_computes(name, capsys):
    """The comment is what the command it names prints (the measured overhead included)."""
    text = (SPACES / f"{name}.yaml").read_text()
    command = re.search(r"python cluster/budget.py (\S+) --per-gpu (\d+)\n", text)
    assert command and command.group(1) == f"search_spaces/{name}.yaml"
    assert _budget_module().main([str(ROOT / command.group(1)), "--per-gpu", command.group(2)]) == 0
    comment = [line[len("#   ") :] for line in text.splitlines() if line.startswith("#   ")]
    assert comment == capsys.readouterr().out.splitlines()


@functools.cache
def _params(arch: str) -> int:
    return _budget_module().count_params(arch)


def test_budget_charges_every_trial_its_fixed_cost_and_checkpoints():
    """ViT-B-32 on CC3M: each trial run (search, confirm and transfer) pays the measured fixed
    cost on its GPUs, each epoch the time to write a checkpoint of the measured bytes per
    parameter; the transfer runs are full runs at their own fidelity (30 epochs, not 10)."""
    budget = _budget_module()
    sweep = _load("smoclip-cc3m-vitb32")
    t, confirm, transfer = sweep.train, sweep.search.confirm, sweep.search.transfer
    high = config.transfer_train(sweep)
    assert (t.epochs, high.epochs) == (10, 30)
    measured = budget.measured_overhead()
    assert measured.fixed_s > 0 and 11.9 < measured.bytes_per_param < 12.5  # 4 B x 3
    assert 3.9 < measured.last_bytes_per_param < 4.5  # the model alone
    params = _params("ViT-B-32")
    assert 150e6 < params < 152e6

    def total(overhead, write_mb_s=100.0):
        return budget.estimate(sweep, 800.0, 30.0, overhead, params, write_mb_s)

    confirms = (confirm.top + 1) * confirm.seeds
    transfers = (transfer.top + 1) * transfer.seeds
    runs = sweep.search.samples + confirms + transfers
    gpus = t.workers.num * t.workers.gpus
    no_fixed = budget.Overhead(0.0, measured.bytes_per_param, measured.last_bytes_per_param)
    fixed = total(measured)["total_gpu_h"] - total(no_fixed)["total_gpu_h"]
    assert fixed == pytest.approx(runs * measured.fixed_s * gpus / 3600)

    est = total(measured)
    ckpt = params * measured.bytes_per_param
    writing = est["total_gpu_h"] - total(measured, write_mb_s=math.inf)["total_gpu_h"]
    assert writing == pytest.approx(est["trial_epochs"] * ckpt / 100e6 * gpus / 3600)
    assert est["trial_epochs"] > confirms * t.epochs + transfers * high.epochs
    last = params * measured.last_bytes_per_param
    kept = sweep.search.samples * ckpt + (confirms + transfers) * last
    assert est["kept_bytes"] == pytest.approx(kept)
    assert est["written_bytes"] > (confirms * t.epochs + transfers * high.epochs) * last
    # the transfer phase alone: its runs x (30 epochs + the fixed cost) on their GPUs
    without = sweep.model_copy(
        update={"search": sweep.search.model_copy(update={"transfer": None})}
    )
    alone = (
        est["total_gpu_h"]
        - budget.estimate(without, 800.0, 30.0, measured, params, 100.0)["total_gpu_h"]
    )
    epoch_s = t.data.samples_per_epoch * t.workers.num / (800.0 * gpus) + 30.0 + ckpt / 100e6
    assert alone == pytest.approx(
        transfers * (high.epochs * epoch_s + measured.fixed_s) * gpus / 3600
    )


def test_budget_arithmetic_on_a_small_sweep():
    budget = _budget_module()
    assert budget.asha_rungs(10, 1, 3) == [1, 3, 9]
    assert budget.asha_rungs(32, 1, 3) == [1, 3, 9, 27]
    # one trial at a time with nothing to compare against runs to the end
    assert budget.simulate_asha(1, 1, 10, 1, 3, runs=5) == 10
    mean = budget.simulate_asha(24, 4, 10, 1, 3, runs=200)
    assert 2.37 < mean < 10  # above synchronous halving's 1 + 2/3 + 6/9 + 1/27 epochs


def test_budget_refuses_a_sweep_it_cannot_count():
    budget = _budget_module()
    cpu = config.SweepConfig.model_validate(
        {
            "name": "cpu",
            "train": {"data": {"train": "s3://b/x.tar", "zeroshot": "/z", "samples_per_epoch": 8}},
            "space": {"loss.label_smoothing": {"uniform": [0.0, 0.3]}},
        }
    )
    with pytest.raises(UserError, match="workers.gpus"):
        budget.budget(cpu, 100.0, 0.0, budget.Overhead(0.0, 12.0, 4.0), 1, 100.0)
