"""smotune ensemble without Ray: real tiny open_clip models checkpointed as the engine saves
them, a sweep logged to a real MLflow sqlite store by smotune's own Tune callback."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import open_clip
import pytest
import torch
import torch.nn.functional as F
import yaml
from ray import tune
from ray.tune.experiment import Trial

from smotune import checkpoints, cli, ensemble, tracking
from smotune import model as model_mod
from smotune.config import ModelConfig, SweepConfig, TrainConfig, dump_train
from smotune.data import synth, zeroshot
from smotune.evaluate import zero_shot

EPOCHS = 2
SEEDS = (11, 12, 13)  # the completed trials' models


def _sweep(name: str, uri: str, storage: Path, zs: Path) -> tuple[SweepConfig, str]:
    text = yaml.safe_dump(
        {
            "name": name,
            "train": {
                "model": {"arch": "tiny-vit"},
                "data": {"train": str(storage / "none-{0000..0001}.tar"), "zeroshot": str(zs)},
                "epochs": EPOCHS,
                "eval": {"batch_size": 32},
            },
            "space": {"loss.label_smoothing": {"uniform": [0.0, 0.3]}},
            "tracking": {"uri": uri},
            "storage": {"path": str(storage)},
        }
    )
    return SweepConfig.model_validate(yaml.safe_load(text)), text


def _checkpoint(root: Path, cfg: TrainConfig, seed: int) -> tuple[Path, dict]:
    """A fresh tiny model saved as the engine saves one (``model.pt`` by
    ``model.save_checkpoint``, ``train.yaml`` by ``dump_train``), and its zero-shot metrics
    computed by the engine's own evaluation with the engine's arguments."""
    model = model_mod.create(cfg.model, seed=seed)
    evalset = zeroshot.load(
        cfg.data.zeroshot, cfg.data.zeroshot_split, model_mod.transforms(model, train=False)
    )
    metrics = zero_shot(
        model, model_mod.tokenizer(cfg.model.arch), evalset, "cpu", cfg.eval.batch_size
    )
    path = root / f"checkpoint-{seed}"
    path.mkdir()
    model_mod.save_checkpoint(model, path / checkpoints.MODEL_FILE)
    (path / checkpoints.CONFIG_FILE).write_text(dump_train(cfg))
    return path, metrics


def _log(
    sweep: SweepConfig, text: str, trials: list[tuple[str, Path | None, int, dict]], **kw
) -> tracking.MlflowSweepCallback:
    """Log trials through smotune's Tune callback: (id, checkpoint, epochs run, final metrics).

    Epoch e < last logs ``zeroshot_top1`` = final - 0.01; the last epoch logs the final
    metrics with the checkpoint as Ray Train reports it (``checkpoint_path``)."""
    tune.register_trainable("smotune_ensemble_trainable", lambda config: None)
    callback = tracking.MlflowSweepCallback(sweep, text, **kw)
    callback.setup()
    done: list[Trial] = []
    for i, (trial_id, ckpt, epochs, final) in enumerate(trials):
        trial = Trial(
            "smotune_ensemble_trainable",
            config={"loss.label_smoothing": 0.01 * i},
            trial_id=trial_id,
        )
        done.append(trial)
        callback.on_trial_start(0, done, trial)
        for epoch in range(1, epochs + 1):
            result = {"epoch": epoch, "train_loss": 1.0, **final}
            if epoch < epochs:
                result["zeroshot_top1"] = final["zeroshot_top1"] - 0.01
            if ckpt is not None:
                result[tracking.RESULT_CHECKPOINT] = str(ckpt)
            callback.on_trial_result(0, done, trial, result)
        callback.on_trial_complete(0, done, trial)
    callback.on_experiment_end(done)
    return callback


@pytest.fixture(scope="module")
def store(migrated_db, tmp_path_factory) -> dict:
    """Sweep ``ens``: three completed trials (fresh models, their real zero-shot numbers as
    their final ``zeroshot_top1``), an early-stopped trial and a confirm run that outscore them
    (both with checkpoints). Sweep ``ens-missing``: the second of two trials lost its checkpoint.
    """
    root = tmp_path_factory.mktemp("ensemble-store")
    data = synth.generate(root / "synth", train_samples=8, shards=1, eval_per_class=2, seed=0)
    shutil.copy(migrated_db, root / "mlflow.db")
    uri = f"sqlite:///{root}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    for name in ("ens", "ens-missing"):
        client.create_experiment(name, artifact_location=str(root / "artifacts" / name))

    sweep, text = _sweep("ens", uri, root / "runs", data.eval_dir)
    completed = {}
    for seed in SEEDS:
        completed[f"t{seed}"] = _checkpoint(root, sweep.train, seed)
    high = {"zeroshot_top1": 0.99, "zeroshot_top5": 1.0}
    first_ckpt = completed[f"t{SEEDS[0]}"][0]
    trials = [(tid, ckpt, EPOCHS, metrics) for tid, (ckpt, metrics) in completed.items()]
    search = _log(sweep, text, [*trials, ("stopped1", first_ckpt, 1, high)])
    _log(
        sweep,
        text,
        [("confirm1", first_ckpt, EPOCHS, high)],
        phase=tracking.PHASE_CONFIRM,
        parent_run_id=search.parent_run_id,
        confirm_labels=lambda config: "baseline",
    )

    missing, missing_text = _sweep("ens-missing", uri, root / "runs-missing", data.eval_dir)
    good, good_metrics = completed[f"t{SEEDS[0]}"]
    lost = {**good_metrics, "zeroshot_top1": good_metrics["zeroshot_top1"] - 0.5}
    _log(
        missing,
        missing_text,
        [("good1", good, EPOCHS, good_metrics), ("lost1", root / "gone", EPOCHS, lost)],
    )
    return {"uri": uri, "completed": completed, "parent": search.parent_run_id}


def _logged(uri: str, run_id: str) -> dict[str, float]:
    return mlflow.MlflowClient(uri).get_run(run_id).data.metrics


def test_members_are_the_top_completed_search_trials_and_score_as_they_logged(store):
    result = ensemble.run_ensemble("ens", len(SEEDS), store["uri"])
    by_value = sorted(
        enumerate(store["completed"].items()),
        key=lambda item: (-item[1][1][1]["zeroshot_top1"], item[0]),  # ties: the earlier trial
    )
    assert [m.trial.trial_id for m in result.members] == [tid for _, (tid, _) in by_value]
    for m in result.members:
        logged = _logged(store["uri"], m.trial.run_id)  # the final epoch's values
        assert m.top1 == logged["zeroshot_top1"], m.trial.trial_id
        assert m.top5 == logged["zeroshot_top5"], m.trial.trial_id
    assert result.samples == 2 * len(synth.CLASSES)


def test_one_member_is_its_own_ensemble(store):
    result = ensemble.run_ensemble("ens", 1, store["uri"])
    (member,) = result.members
    assert (result.top1, result.top5) == (member.top1, member.top5)
    assert result.probs.sum(dim=1) == pytest.approx(torch.ones(result.samples), abs=1e-5)


def _open_clip_probs(ckpt: Path, evalset_root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A checkpoint's class probabilities computed directly with open_clip."""
    model, _, preprocess = open_clip.create_model_and_transforms(
        "tiny-vit", pretrained=str(ckpt / checkpoints.MODEL_FILE)
    )
    model.eval()
    evalset = zeroshot.load(evalset_root, "test", preprocess)
    templates = [lambda c, t=t: t.format(c=c) for t in evalset.templates]
    with torch.no_grad():
        weights = open_clip.build_zero_shot_classifier(
            model, open_clip.get_tokenizer("tiny-vit"), evalset.classnames, templates
        )
        batches = list(evalset.loader(64))
        images = torch.cat([b[0] for b in batches])
        labels = torch.cat([b[1] for b in batches])
        features = F.normalize(model.encode_image(images), dim=-1)
    return (100.0 * features @ weights).softmax(dim=-1), labels


def test_the_mean_of_the_members_probabilities_as_open_clip_computes_them(store):
    result = ensemble.run_ensemble("ens", len(SEEDS), store["uri"])
    direct = [
        _open_clip_probs(store["completed"][m.trial.trial_id][0], Path(result.evalset))
        for m in result.members
    ]
    labels = direct[0][1]
    mean = torch.stack([p for p, _ in direct]).mean(dim=0)
    assert torch.equal(result.labels, labels)
    assert torch.allclose(result.probs, mean, atol=1e-5)
    top5 = (mean.topk(5, dim=1).indices == labels[:, None]).any(dim=1)
    assert result.top1 == int((mean.argmax(dim=1) == labels).sum()) / len(labels)
    assert result.top5 == int(top5.sum()) / len(labels)
    # the data tells the two rules apart: averaging logits would rank some images differently
    logit_mean = torch.stack([p.log() for p, _ in direct]).mean(dim=0)
    assert (logit_mean.argmax(dim=1) != mean.argmax(dim=1)).any()


def test_logged_on_the_sweeps_parent_run(store, capsys):
    assert cli.main(["ensemble", "--experiment", "ens", "--top", "2"] + _uri(store)) == 0
    out = capsys.readouterr().out
    parent = mlflow.MlflowClient(store["uri"]).get_run(store["parent"])
    result = ensemble.run_ensemble("ens", 2, store["uri"])
    assert parent.data.metrics["ensemble_top1"] == result.top1
    assert parent.data.metrics["ensemble_top5"] == result.top5
    assert parent.data.metrics["ensemble_k"] == 2
    members = [m.trial.trial_id for m in result.members]
    assert parent.data.tags["ensemble_members"] == ",".join(members)
    rows = {ln.split()[1]: ln.split() for ln in out.splitlines() if ln[:1].isdigit()}
    assert list(rows) == members
    for m in result.members:
        assert rows[m.trial.trial_id][-2:] == [f"{m.top1:.4f}", f"{m.top5:.4f}"]
    (ens_row,) = [ln.split() for ln in out.splitlines() if ln.split()[:2] == ["-", "ensemble"]]
    assert ens_row[-2:] == [f"{result.top1:.4f}", f"{result.top5:.4f}"]


def _uri(store: dict) -> list[str]:
    return ["--tracking-uri", store["uri"]]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--experiment", "nope", "--top", "1"], "no experiment named 'nope'"),
        (["--experiment", "ens", "--top", "4"], "pass --top 3 or less"),
        (["--experiment", "ens", "--top", "0"], "pass --top 1 or more"),
        (["--experiment", "ens-missing", "--top", "2"], "model.pt is missing"),
    ],
)
def test_user_mistakes_are_one_line_before_any_scoring(store, capsys, argv, expected):
    assert cli.main(["ensemble", *argv, *_uri(store)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no member was scored
    (line,) = captured.err.splitlines()
    assert line.startswith("smotune: ") and expected in line and "fix: " in line


def test_unreachable_tracking_server(capsys):
    uri = "http://127.0.0.1:9"
    assert cli.main(["ensemble", "--experiment", "ens", "--top", "1", "--tracking-uri", uri]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "cannot reach the MLflow server at http://127.0.0.1:9" in line and "fix: " in line


def test_a_checkpoint_on_s3_is_read_as_the_engine_wrote_it(s3_env, tmp_path):
    """Checkpoints under an s3:// storage.path (moto_server): the config's bytes and the
    model's weights come back as saved (the model streamed to a temporary file)."""
    s3_env.bucket("ens")
    model = model_mod.create(ModelConfig(arch="tiny-vit"), seed=0)
    model_mod.save_checkpoint(model, tmp_path / checkpoints.MODEL_FILE)
    (tmp_path / checkpoints.CONFIG_FILE).write_text("epochs: 1\n")
    url = {
        name: s3_env.upload(tmp_path / name, f"s3://ens/trial/{name}")
        for name in (checkpoints.MODEL_FILE, checkpoints.CONFIG_FILE)
    }
    assert ensemble._read(url[checkpoints.CONFIG_FILE]) == b"epochs: 1\n"
    loaded = ensemble._load_model("tiny-vit", url[checkpoints.MODEL_FILE])
    theirs = loaded.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())
