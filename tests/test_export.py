"""Export of the best trial from a real MLflow sqlite store written by the sweep callback."""

from __future__ import annotations

import contextlib
import importlib.metadata
import shlex
import shutil
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from packaging.requirements import Requirement
from ray import tune
from ray.tune.experiment import Trial

from smotune import tracking
from smotune.config import SweepConfig, load_train
from smotune.errors import UserError
from smotune.export import best_config, export_best, open_clip_train_command

SWEEP_YAML = """\
name: {name}
train:
  model: {{arch: tiny-vit, text_dropout: 0.1}}
  data:
    train: "{train}"
    zeroshot: {zeroshot}
    rewrite_prob: 0.5
    samples_per_epoch: 512
  optim: {{lr: 2.0e-3, grad_clip: 1.0, warmup_steps: 20}}
  epochs: 3
  precision: fp16
  workers: {{num: 2, cpus: 0, gpus: 1}}
space:
  loss.label_smoothing: {{uniform: [0.0, 0.3]}}
  optim.weight_decay: {{loguniform: [0.01, 1.0]}}
tracking: {{uri: "{uri}"}}
"""


TRAIN = "data/synth/train-{0000..0003}.tar"
ZEROSHOT = "data/synth/zeroshot"


def log_sweep(
    uri: str,
    name: str,
    trials: list[tuple[str, float, float, int]],
    train: str = TRAIN,
    zeroshot: str = ZEROSHOT,
) -> SweepConfig:
    """Log one sweep through the callback; ``trials``: (id, smoothing, weight decay, epochs run).

    zeroshot_top1 at epoch e is smoothing + 0.01 e, so the highest smoothing scores best.
    The callback runs in the current directory, as in the sweep's driver.
    """
    text = SWEEP_YAML.format(name=name, uri=uri, train=train, zeroshot=zeroshot)
    sweep = SweepConfig.model_validate(yaml.safe_load(text))
    tune.register_trainable("smotune_export_trainable", lambda config: None)
    callback = tracking.MlflowSweepCallback(sweep, text)
    callback.setup()
    done: list[Trial] = []
    for trial_id, smoothing, wd, epochs in trials:
        config = {"loss.label_smoothing": smoothing, "optim.weight_decay": wd}
        trial = Trial("smotune_export_trainable", config=config, trial_id=trial_id)
        done.append(trial)
        callback.on_trial_start(0, done, trial)
        for epoch in range(1, epochs + 1):
            result = {"epoch": epoch, "zeroshot_top1": smoothing + 0.01 * epoch, "train_loss": 1.0}
            callback.on_trial_result(0, done, trial, result)
        callback.on_trial_complete(0, done, trial)
    callback.on_experiment_end(done)
    return sweep


@pytest.fixture(scope="module")
def store(migrated_db, tmp_path_factory) -> str:
    """A sqlite store with one sweep: b0000002 is the best completed trial; c0000003 scores
    higher but was stopped after epoch 1. The sweep ran in ``sweep_dir`` (its data paths are
    relative to it); ``xs3`` is a sweep over object-store data."""
    root = tmp_path_factory.mktemp("export-store")
    shutil.copy(migrated_db, root / "mlflow.db")
    uri = f"sqlite:///{root}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    client.create_experiment("xs", artifact_location=str(root / "artifacts"))
    client.create_experiment("xs3", artifact_location=str(root / "artifacts3"))
    trials = [("a0000001", 0.05, 0.1, 3), ("b0000002", 0.2, 0.3, 3), ("c0000003", 0.29, 0.05, 1)]
    sweep_dir = root / "sweep-dir"
    (sweep_dir / ZEROSHOT).mkdir(parents=True)
    for i in range(4):
        (sweep_dir / f"data/synth/train-{i:04d}.tar").write_bytes(b"")
    with contextlib.chdir(sweep_dir):
        log_sweep(uri, "xs", trials)
        log_sweep(uri, "xs3", trials, "s3://bucket/cc3m/train-{0000..0100}.tar", "gs://b/zs")
    return uri


def sweep_dir(uri: str) -> Path:
    """Where the store fixture's sweeps ran."""
    return Path(uri.removeprefix("sqlite:///")).parent / "sweep-dir"


def best_run(uri: str):
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("xs")
    (run,) = client.search_runs([exp.experiment_id], "tags.best = 'true'")
    return run


def test_yaml_equals_best_run_params(store, tmp_path):
    out = tmp_path / "best.yaml"
    text = export_best("xs", tracking_uri=store, out=str(out))
    run = best_run(store)
    assert run.data.tags["trial_id"] == "b0000002"
    cfg = load_train(out, check_paths=False)
    assert tracking.train_params(cfg) == run.data.params
    assert cfg.loss.label_smoothing == 0.2 and cfg.optim.weight_decay == 0.3
    assert text.splitlines()[0].startswith(f"wrote {out}: trial b0000002")
    assert "zeroshot_top1 0.23" in text
    assert text.splitlines()[-1] == f"run it: smotune train {out}"


def test_best_yaml_runs_from_any_directory(store, tmp_path, monkeypatch):
    """The exported config reads the data the sweep read, wherever smotune train runs:
    local paths absolute (from where the sweep ran), object-store URIs as written."""
    out = tmp_path / "best.yaml"
    text = export_best("xs", tracking_uri=store, out=str(out))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_train(out)  # what `smotune train best.yaml` does first: data paths checked
    root = sweep_dir(store)
    assert cfg.data.train == f"{root}/data/synth/train-{{0000..0003}}.tar"
    assert cfg.data.zeroshot == f"{root}/data/synth/zeroshot"
    assert "relative" not in out.read_text() and "relative" not in text
    assert tracking.train_params(cfg) == best_run(store).data.params

    export_best("xs3", tracking_uri=store, out=str(out))
    remote = load_train(out)
    assert remote.data.train == "s3://bucket/cc3m/train-{0000..0100}.tar"
    assert remote.data.zeroshot == "gs://b/zs"


def test_relative_paths_say_where_to_run(store, tmp_path, monkeypatch):
    """A config with relative data paths read from elsewhere names the fix that works (the
    directory they are relative to), and an export of one says where to run it."""
    record, _ = tracking.best_trial_run(store, "xs")
    old = yaml.safe_load(record.train_yaml)
    old["data"].update(train=TRAIN, zeroshot=ZEROSHOT)  # as a sweep logged them before
    out = tmp_path / "old.yaml"
    out.write_text(yaml.safe_dump(old))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as err:
        load_train(out)
    line = str(err.value)
    assert "data.train: shard data/synth/train-0000.tar does not exist (relative to " in line
    assert (
        "fix: run from the directory the path is relative to (for an exported best.yaml: "
        "where its sweep ran) or write it absolute" in line
    )
    monkeypatch.chdir(sweep_dir(store))
    assert load_train(out).data.train == TRAIN

    params = dict(record.params, **{"data.train": TRAIN, "data.zeroshot": ZEROSHOT})
    logged = tracking.TrialRecord(
        record.run_id, record.trial_id, record.status, params, record.metrics, yaml.safe_dump(old)
    )
    monkeypatch.setattr(tracking, "best_trial_run", lambda uri, experiment: (logged, {}))
    text = export_best("xs", tracking_uri=store, out=str(out))
    where = "run it from the directory the sweep ran in"
    assert where in text and where in out.read_text().replace("\n# ", " ")


def test_overrides(store, tmp_path):
    out = tmp_path / "full.yaml"
    text = export_best("xs", tracking_uri=store, out=str(out), epochs=30, workers=4)
    cfg = load_train(out, check_paths=False)
    assert cfg.epochs == 30 and cfg.workers.num == 4
    assert cfg.loss.label_smoothing == 0.2 and cfg.optim.lr == 2.0e-3
    assert "epochs 3 -> 30" in text
    assert "global batch 256 -> 512" in text


def test_tracking_uri_from_environment(store, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    export_best("xs", out=str(tmp_path / "best.yaml"))
    assert load_train(tmp_path / "best.yaml", check_paths=False).loss.label_smoothing == 0.2


def test_cmd(store, tmp_path, monkeypatch):
    """The line runs from here (this venv's ray, the token, the storage by absolute path); in
    a folder that git-ignores best.yaml it makes Ray ship it (test_cluster submits it)."""
    monkeypatch.chdir(tmp_path)
    ray = shlex.quote(str(Path(sys.executable).with_name("ray")))
    tail = (
        f"{ray} job submit --address http://10.1.2.3:8265 --working-dir . -- smotune train "
        f"best.yaml --storage {tmp_path / 'runs'}"
    )
    text = export_best("xs", tracking_uri=store, fmt="cmd", address="http://10.1.2.3:8265")
    lines = text.splitlines()
    assert lines[-1] == f"RAY_AUTH_MODE=token {tail}"
    assert all(line.startswith("# ") for line in lines[:-1])
    assert load_train(tmp_path / "best.yaml", check_paths=False).loss.label_smoothing == 0.2
    # a folder with a .gitignore: Ray would leave best.yaml out without the switch
    (tmp_path / ".gitignore").write_text("best.yaml\n")
    lines = export_best("xs", tracking_uri=store, fmt="cmd", address="http://10.1.2.3:8265")
    lines = lines.splitlines()
    assert lines[-1] == f"RAY_AUTH_MODE=token RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1 {tail}"
    assert any("no .rayignore here" in line for line in lines)
    (tmp_path / ".rayignore").write_text(".venv/\n")
    lines = export_best("xs", tracking_uri=store, fmt="cmd", address="http://10.1.2.3:8265")
    assert not any("no .rayignore here" in line for line in lines.splitlines())


def test_open_clip_train(store, tmp_path):
    text = export_best(
        "xs", tracking_uri=store, out=str(tmp_path / "b.yaml"), fmt="open_clip_train"
    )
    commands = [line for line in text.splitlines() if not line.startswith("#")]
    assert len(commands) == 1
    args = shlex.split(commands[0])
    assert args[:3] == ["python", "-m", "open_clip_train.main"]
    flags = {a: b for a, b in zip(args[3:], [*args[4:], ""], strict=True) if a.startswith("--")}
    switches = [a for a, b in flags.items() if b.startswith("--")]
    assert switches == ["--gather-with-grad"]
    assert flags["--model"] == "tiny-vit"
    assert float(flags["--lr"]) == 2.0e-3 and float(flags["--wd"]) == 0.3
    assert flags["--beta1"] == "0.9" and flags["--beta2"] == "0.98" and flags["--eps"] == "1e-06"
    assert flags["--warmup"] == "20" and flags["--epochs"] == "3" and flags["--batch-size"] == "128"
    assert flags["--precision"] == "amp"
    assert flags["--grad-clip-norm"] == "1.0"
    assert flags["--train-data"] == f"{sweep_dir(store)}/data/synth/train-{{0000..0003}}.tar"
    assert flags["--dataset-type"] == "webdataset"
    assert flags["--train-num-samples"] == "1024"
    assert flags["--seed"] == "0" and flags["--lr-scheduler"] == "cosine"
    assert "--imagenet-val" not in args
    comments = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    for setting in (
        "loss.label_smoothing = 0.2",
        "model.text_dropout = 0.1",
        "optim.min_lr = 1e-05",
        "data.rewrite = prob, data.rewrite_prob = 0.5",
    ):
        assert f"# no open_clip_train flag for {setting}" in comments
    assert f"no --imagenet-val: data.zeroshot {sweep_dir(store)}/data/synth/zeroshot" in comments
    assert "torchrun --nproc_per_node 2" in comments
    assert "smotune/model_configs/tiny-vit.json" in comments


def test_open_clip_train_imagenet_folder_and_precision(store, tmp_path):
    val = tmp_path / "imagenet" / "val"
    for i in range(1000):
        (val / f"n{i:08d}").mkdir(parents=True)
    cfg = best_config(tracking.best_trial_run(store, "xs")[0])
    data = cfg.data.model_copy(
        update={"zeroshot": str(tmp_path / "imagenet"), "zeroshot_split": "val"}
    )
    cfg = cfg.model_copy(update={"data": data})
    args = command_args(open_clip_train_command(cfg))
    assert args[args.index("--imagenet-val") + 1] == str(val)
    no_clip = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"grad_clip": None})})
    assert "--grad-clip-norm" not in open_clip_train_command(no_clip)


def command_args(text: str) -> list[str]:
    """The one line of an open_clip_train export that is not a comment, split."""
    (command,) = [line for line in text.splitlines() if not line.startswith("#")]
    return shlex.split(command)


@pytest.mark.parametrize(
    "gpus, precision, expected",
    [
        (1, "auto", "amp_bf16"),
        (1, "bf16", "amp_bf16"),
        (1, "fp16", "amp"),
        (1, "fp32", "fp32"),
        (0, "auto", "fp32"),
        (0, "bf16", "amp_bf16"),
        (0, "fp32", "fp32"),
    ],
)
def test_open_clip_train_precision_follows_the_config(store, gpus, precision, expected):
    """smotune's ``precision: auto`` is bf16 autocast on GPUs and fp32 on CPU; so is the export."""
    cfg = best_config(tracking.best_trial_run(store, "xs")[0])
    workers = cfg.workers.model_copy(update={"gpus": gpus})
    cfg = cfg.model_copy(update={"precision": precision, "workers": workers})
    text = open_clip_train_command(cfg)
    args = command_args(text)
    assert args[args.index("--precision") + 1] == expected
    if precision == "auto":
        assert f"# precision auto -> {expected}" in text


def test_open_clip_train_on_a_cpu_config_with_fp16_is_refused(store):
    cfg = best_config(tracking.best_trial_run(store, "xs")[0])
    cfg = cfg.model_copy(
        update={"precision": "fp16", "workers": cfg.workers.model_copy(update={"gpus": 0})}
    )
    with pytest.raises(UserError, match="precision: fp16 needs GPUs"):
        open_clip_train_command(cfg)


def test_open_clip_train_names_the_webdataset_it_runs_with(store):
    """The comment names webdataset 0.2.86; the installed open_clip_torch's ``training`` extra
    agrees (it allows that release and not 1.x, which open_clip_train 3.3.0 fails on)."""
    text = open_clip_train_command(best_config(tracking.best_trial_run(store, "xs")[0]))
    comment = text.splitlines()[0]
    assert comment.startswith("# open_clip_train 3.3.0 runs with webdataset==0.2.86")
    assert "pip install 'open_clip_torch[training]==3.3.0' 'webdataset==0.2.86'" in comment
    assert "KeyError: 'fname'" in comment
    requires = [Requirement(r) for r in importlib.metadata.requires("open_clip_torch")]
    (pin,) = [
        r
        for r in requires
        if r.name == "webdataset" and r.marker and r.marker.evaluate({"extra": "training"})
    ]
    assert pin.specifier.contains("0.2.86") and not pin.specifier.contains("1.0.2"), pin
    assert importlib.metadata.version("open_clip_torch") == "3.3.0", (
        "another open_clip_torch: run its open_clip_train on webdataset 1.x again "
        "(README, export.OPEN_CLIP_TRAIN_WEBDATASET) and update the comment"
    )


def test_latest_sweep_is_used(sqlite_uri, tmp_path):
    uri = sqlite_uri
    mlflow.MlflowClient(uri).create_experiment("xs", artifact_location=str(tmp_path / "a"))
    log_sweep(uri, "xs", [("old00001", 0.29, 0.1, 3)])
    log_sweep(uri, "xs", [("new00001", 0.1, 0.1, 3), ("new00002", 0.15, 0.1, 3)])
    assert tracking.best_trial_run(uri, "xs")[0].trial_id == "new00002"


def test_no_completed_trial(sqlite_uri, tmp_path):
    uri = sqlite_uri
    mlflow.MlflowClient(uri).create_experiment("xs", artifact_location=str(tmp_path / "a"))
    log_sweep(uri, "xs", [("s0000001", 0.2, 0.1, 1)])
    with pytest.raises(UserError, match="has no completed trial"):
        export_best("xs", tracking_uri=uri, out=str(tmp_path / "best.yaml"))
    assert not (tmp_path / "best.yaml").exists()


def test_unknown_experiment_and_missing_store(store, tmp_path):
    with pytest.raises(UserError, match="no experiment named 'nope'"):
        export_best("nope", tracking_uri=store, out=str(tmp_path / "best.yaml"))
    missing = tmp_path / "none" / "mlflow.db"
    with pytest.raises(UserError, match="no MLflow database at"):
        export_best("xs", tracking_uri=f"sqlite:///{missing}", out=str(tmp_path / "best.yaml"))
    assert not missing.parent.exists()
    with pytest.raises(UserError, match="unknown format"):
        export_best("xs", tracking_uri=store, fmt="json")


def test_params_must_match_train_yaml(store):
    record, _ = tracking.best_trial_run(store, "xs")
    changed = dict(record.params, **{"loss.label_smoothing": "0.25"})
    tampered = tracking.TrialRecord(
        record.run_id, record.trial_id, record.status, changed, record.metrics, record.train_yaml
    )
    with pytest.raises(
        UserError, match="loss.label_smoothing: is 0.2 in train.yaml but 0.25 in the run's params"
    ):
        best_config(tampered)
    assert best_config(record).loss.label_smoothing == 0.2


def test_cli_best(store, tmp_path, capsys):
    from smotune.cli import main

    out = tmp_path / "cli.yaml"
    assert main(["best", "--experiment", "xs", "--tracking-uri", store, "--out", str(out)]) == 0
    assert load_train(out, check_paths=False).loss.label_smoothing == 0.2
    assert main(["best", "--experiment", "nope", "--tracking-uri", store]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no experiment named 'nope'" in err
