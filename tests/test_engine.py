"""The worker loop's parts: device/backend choice, decay groups, schedule, one step (fp32, bf16)."""

from __future__ import annotations

import ast
import importlib.util
import tempfile
from pathlib import Path

import open_clip
import pytest
import torch

from smotune import checkpoints, engine, optim, ranks, runtime
from smotune import loss as loss_mod
from smotune import model as model_mod
from smotune.config import LossConfig, ModelConfig, TrainConfig
from smotune.errors import UserError


def _cfg(**optim) -> TrainConfig:
    return TrainConfig(data={"train": "x.tar", "zeroshot": "zs"}, optim=optim, epochs=2)


@pytest.mark.parametrize(
    ("gpus", "precision", "cuda", "expected"),
    [
        (0, "auto", False, ("cpu", "gloo", None, False)),
        (0, "auto", True, ("cpu", "gloo", None, False)),
        (0, "fp32", False, ("cpu", "gloo", None, False)),
        (0, "bf16", False, ("cpu", "gloo", torch.bfloat16, False)),
        (1, "auto", True, ("cuda", "nccl", torch.bfloat16, False)),
        (0.5, "fp32", True, ("cuda", "nccl", None, False)),
        (1, "fp16", True, ("cuda", "nccl", torch.float16, True)),
    ],
)
def test_choose_runtime(gpus, precision, cuda, expected):
    rt = runtime.choose_runtime(gpus, precision, cuda)
    assert (rt.device_type, rt.backend, rt.autocast_dtype, rt.grad_scaler) == expected


def test_runtime_mistakes_are_user_errors():
    with pytest.raises(UserError, match="workers.gpus"):
        runtime.choose_runtime(1, "auto", cuda_available=False)
    with pytest.raises(UserError, match="precision"):
        runtime.choose_runtime(0, "fp16", cuda_available=False)


def _open_clip_train_exclude():
    """open_clip_train's own no-decay rule, compiled from its ``main.py`` (not imported:
    importing it pulls in its training application's optional loggers)."""
    package = importlib.util.find_spec("open_clip_train")
    main = Path(package.submodule_search_locations[0]) / "main.py"
    found = [
        node.value
        for node in ast.walk(ast.parse(main.read_text(), str(main)))
        if isinstance(node, ast.Assign)
        and [getattr(t, "id", None) for t in node.targets] == ["exclude"]
        and isinstance(node.value, ast.Lambda)
    ]
    assert len(found) == 1, f"{main}: expected one `exclude = lambda ...`, found {len(found)}"
    return eval(compile(ast.Expression(found[0]), str(main), "eval"), {})


def _split(model, groups) -> tuple[set[str], set[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay, decay = groups
    return {names[id(p)] for p in no_decay["params"]}, {names[id(p)] for p in decay["params"]}


@pytest.mark.parametrize("arch", ["RN50", "ViT-B-32"])
def test_weight_decay_split_is_open_clip_trains(arch):
    """Per named parameter, we decay exactly what open_clip_train's ``exclude`` lambda decays."""
    exclude = _open_clip_train_exclude()
    model = open_clip.create_model(arch, pretrained=None)  # random init: nothing downloaded
    groups = optim.param_groups(model, 0.2)
    assert [g["weight_decay"] for g in groups] == [0.0, 0.2]
    kept, decayed = _split(model, groups)
    params = dict(model.named_parameters())
    theirs_kept = {n for n, p in params.items() if exclude(n, p) and p.requires_grad}
    theirs_decayed = {n for n, p in params.items() if not exclude(n, p) and p.requires_grad}
    assert decayed == theirs_decayed, decayed ^ theirs_decayed
    assert kept == theirs_kept, kept ^ theirs_kept
    assert kept | decayed == set(params) and not kept & decayed
    # the parameters where a name list of our own once went wrong are decayed, as upstream
    pos = "positional_embedding" if arch == "ViT-B-32" else "visual.attnpool.positional_embedding"
    assert pos in decayed


def test_weight_decay_on_smotunes_own_arch():
    m = model_mod.create(ModelConfig(), seed=0)
    kept, decayed = _split(m, optim.param_groups(m, 0.5))
    for name in (
        "token_embedding.weight",
        "positional_embedding",
        "visual.positional_embedding",
        "transformer.resblocks.0.mlp.c_fc.weight",
        "visual.conv1.weight",
    ):
        assert name in decayed, name
    for name in (
        "logit_scale",
        "visual.class_embedding",
        "ln_final.weight",
        "transformer.resblocks.0.ln_1.bias",
        "transformer.resblocks.0.mlp.c_fc.bias",
    ):
        assert name in kept, name
    assert len(decayed) + len(kept) == len(list(m.parameters()))


def test_lr_warmup_then_cosine_to_floor():
    cfg = _cfg(lr=1e-3, min_lr=1e-5, warmup_steps=10)
    total = 110
    lrs = [optim.lr_at(s, cfg, total) for s in range(total)]
    assert lrs[0] == pytest.approx(1e-4)
    assert lrs[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10], strict=False))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[60] == pytest.approx((1e-3 + 1e-5) / 2)
    assert optim.lr_at(total, cfg, total) == pytest.approx(1e-5)
    assert optim.lr_at(10 * total, cfg, total) == pytest.approx(1e-5)


@pytest.fixture
def one_thread():
    """One torch thread, as a worker with ``workers.cpus: 1`` sets (two on two busy cores are
    tens of times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_one_step_on_cpu_lowers_the_loss(precision, one_thread):
    torch.manual_seed(0)
    m = model_mod.create(ModelConfig(text_dropout=0.1), seed=0)
    tok = model_mod.tokenizer("tiny-vit")
    images = torch.randn(16, 3, 32, 32)
    texts = tok([f"caption {i}" for i in range(16)])
    rt = runtime.choose_runtime(0, precision, cuda_available=False)
    criterion = loss_mod.build(LossConfig(label_smoothing=0.1), 0, 1)
    opt = torch.optim.AdamW(optim.param_groups(m, 0.1), lr=1e-3)
    parts = engine.StepParts(m, criterion, opt, None, rt, grad_clip=1.0)
    losses = [engine.train_step(parts, images, texts, 1e-3) for _ in range(8)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_steps_per_epoch_reads_the_shards_the_loader_reads(tmp_path):
    """A glob in data.train is counted like the loader expands it (not as a literal path)."""
    from smotune.data import synth

    synth.generate(tmp_path, train_samples=300, shards=3, eval_per_class=1, seed=0)
    for spec in (f"{tmp_path}/train-{{0000..0002}}.tar", f"{tmp_path}/train-*.tar"):
        cfg = TrainConfig(
            data={"train": spec, "zeroshot": str(tmp_path / "zeroshot")}, optim={"batch_size": 16}
        )
        # rank 0 reads shards 0 and 2 (200 samples), rank 1 shard 1 (100): the smaller rules
        assert engine.steps_per_epoch(cfg, world_size=2) == 100 // 16


def test_a_damaged_shard_shortens_no_epoch_that_sizes_json_can_fill(tmp_path):
    """Rank 1's shards damaged (64 KiB of garbage mid-shard; one cut to half): with sizes.json
    the epoch keeps the healthy rank's steps; without, it is shortened and says by how much."""
    import json
    import random

    from smotune.data import synth

    synth.generate(tmp_path, train_samples=400, shards=4, eval_per_class=1, seed=0)
    written = json.loads((tmp_path / "sizes.json").read_text())
    (tmp_path / "sizes.json").unlink()  # first without it, as shards from elsewhere may come
    garbage, cut = tmp_path / "train-0001.tar", tmp_path / "train-0003.tar"
    with open(garbage, "r+b") as f:
        f.seek(garbage.stat().st_size // 2)
        f.write(random.Random(0).randbytes(65536))
    with open(cut, "r+b") as f:
        f.truncate(cut.stat().st_size // 2)
    cfg = TrainConfig(
        data={"train": f"{tmp_path}/train-*.tar", "zeroshot": str(tmp_path / "zeroshot")},
        optim={"batch_size": 16},
    )
    healthy = 200 // 16  # rank 0: shards 0 and 2, 100 samples each
    steps, note = engine.epoch_plan(cfg, world_size=2)
    assert steps < healthy
    assert f"Every epoch is {steps} steps per rank, {healthy - steps} fewer" in note
    assert str(garbage) in note and "invalid tar header" in note
    assert str(cut) in note and "truncated inside" in note

    assert written == {f"train-{i:04d}.tar": 100 for i in range(4)}
    (tmp_path / "sizes.json").write_text(json.dumps(written))
    steps, note = engine.epoch_plan(cfg, world_size=2)
    assert steps == healthy and engine.steps_per_epoch(cfg, world_size=2) == healthy
    assert f"Epochs are not shortened ({healthy} steps per rank)" in note
    assert str(garbage) in note and str(cut) in note


def _one_worker(tmp_path, **optim) -> engine.Worker:
    """A one-worker run over 2 synth shards of 16 samples (no Ray: rank 0 of 1, on the CPU)."""
    from smotune.data import synth

    if not (tmp_path / "sizes.json").exists():
        synth.generate(tmp_path, train_samples=32, shards=2, eval_per_class=1, seed=0)
    cfg = TrainConfig(
        data={
            "train": f"{tmp_path}/train-*.tar",
            "zeroshot": str(tmp_path / "zeroshot"),
            "loader_workers": 0,
            "shuffle_buffer": 0,
        },
        optim={"batch_size": 8, "warmup_steps": 2, **optim},
        epochs=2,
        eval={"max_samples": 16},
    )
    rt = runtime.choose_runtime(0, "fp32", cuda_available=False)
    return engine.build_worker(cfg, 0, 1, rt, torch.device("cpu"))


def test_an_epoch_reports_its_steps_mean_loss_and_the_runs_skipped_samples(
    tmp_path, monkeypatch, one_thread
):
    """train_loss is the mean of the epoch's step losses; data_skipped counts the whole run:
    the samples a damaged shard lost (sizes.json says how many) plus what a checkpoint carried."""
    w = _one_worker(tmp_path)
    shard = tmp_path / "train-0001.tar"
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    losses = []
    step = engine.train_step
    monkeypatch.setattr(engine, "train_step", lambda *a: losses.append(step(*a)) or losses[-1])

    plan = engine.plan_epochs(w)
    assert (plan.steps, plan.total_steps) == (32 // 8, 2 * 32 // 8)
    first = engine.train_epoch(w, plan, epoch=1)
    assert first["step"] == w.step == plan.steps == len(losses)
    assert first["train_loss"] == pytest.approx(sum(losses) / len(losses))
    lost = w.skipped.reasons["lost_in_damage"]
    assert lost > 0 and first["data_skipped"] == w.skipped.count == lost
    # the damaged shard in one line, what the consoles print and MLflow keeps
    assert first["data_damaged_shards"] == 1
    (line,) = first["data_damage"].splitlines()
    size = shard.stat().st_size
    assert line.startswith(f"{shard}: ends at byte {size} of {size}: truncated inside "), line
    assert line.endswith(f"; {lost} of the 16 samples sizes.json lists lost"), line

    with tempfile.TemporaryDirectory() as tmp:  # a worker group restarted from that checkpoint
        checkpoints.save(Path(tmp), w.parts, first, w.cfg, w.damage)
        again = _one_worker(tmp_path)
        from ray.train import Checkpoint

        assert engine.resume(again, Checkpoint.from_directory(tmp)) == first  # reported again
    assert (again.epoch, again.step, again.skipped_before, again.restarts) == (1, 4, lost, 1)
    assert again.damage == w.damage  # the shards named so far come back with the checkpoint
    second = engine.train_epoch(again, plan, epoch=2)
    assert second["step"] == 2 * plan.steps and second["restarts"] == 1
    assert second["data_skipped"] == lost + again.skipped.count > lost
    assert second["data_damage"] == first["data_damage"]  # met again: still one line


def _checkpoint(tmp: Path, w: engine.Worker, metrics) -> tuple[Path, int]:
    tmp.mkdir()
    checkpoints.save(tmp, w.parts, metrics, w.cfg)
    return tmp, sum(f.stat().st_size for f in tmp.iterdir())


def test_a_resumed_run_is_the_uninterrupted_run_and_only_its_last_checkpoint_is_small(
    tmp_path, one_thread
):
    """Resumed from epoch 1's checkpoint (model + AdamW state), epoch 2 gives the very
    parameters and loss of the run that went on; the last epoch's checkpoint leaves the
    optimizer out (nothing resumes training from it) and a restart from it reports the end."""
    from ray.train import Checkpoint

    w = _one_worker(tmp_path)
    plan = engine.plan_epochs(w)
    first = engine.train_epoch(w, plan, epoch=1)
    mid, mid_bytes = _checkpoint(tmp_path / "epoch1", w, first)
    second = engine.train_epoch(w, plan, epoch=2)
    last, last_bytes = _checkpoint(tmp_path / "epoch2", w, second)

    again = _one_worker(tmp_path)
    assert engine.resume(again, Checkpoint.from_directory(str(mid))) == first
    resumed = engine.train_epoch(again, plan, epoch=2)
    assert resumed["train_loss"] == second["train_loss"]
    ours, theirs = w.module.state_dict(), again.module.state_dict()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name

    assert torch.load(mid / checkpoints.STATE_FILE, weights_only=True)["optimizer"]["state"]
    assert torch.load(last / checkpoints.STATE_FILE, weights_only=True)["optimizer"] is None
    model_bytes = (last / checkpoints.MODEL_FILE).stat().st_size
    assert last_bytes < 1.1 * model_bytes and mid_bytes > 2.9 * model_bytes  # AdamW: 2 moments
    ended = _one_worker(tmp_path)
    assert engine.resume(ended, Checkpoint.from_directory(str(last))) == second
    assert (ended.epoch, ended.step, ended.restarts) == (2, second["step"], 0)


def test_a_non_finite_loss_stops_the_epoch_at_once(tmp_path, one_thread):
    w = _one_worker(tmp_path, lr=1e4, warmup_steps=0)
    plan = engine.plan_epochs(w)
    with pytest.raises(FloatingPointError, match=r"^loss is (nan|inf) at epoch 1, step \d+$"):
        engine.train_epoch(w, plan, epoch=1)
    assert w.step < plan.steps and w.epoch == 0


def _rank(rank: int, init: str, out) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    out.put((rank, ranks.all_reduce([rank + 1.0, 8.0, 5.0 * rank], torch.device("cpu"), 2)))
    dist.destroy_process_group()


def test_the_epoch_metrics_are_summed_over_the_ranks(tmp_path):
    """Two gloo ranks (forked processes, no Ray): each gets the sums of loss, samples, skips."""
    import multiprocessing

    fork = multiprocessing.get_context("fork")  # the children import nothing again
    out = fork.Queue()
    init = f"file://{tmp_path}/rendezvous"
    ranks = [fork.Process(target=_rank, args=(r, init, out)) for r in (0, 1)]
    for p in ranks:
        p.start()
    got = dict(out.get(timeout=120) for _ in ranks)
    for p in ranks:
        p.join(timeout=60)
    assert [p.exitcode for p in ranks] == [0, 0]
    assert got == {0: [3.0, 16.0, 5.0], 1: [3.0, 16.0, 5.0]}
