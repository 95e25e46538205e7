"""Zero-shot accuracy of an ensemble of a sweep's top-K trials (SMOCLIP's ensembling).

Members: the latest sweep's completed search trials, ranked by the sweep's
``search.metric`` and ``search.mode`` (:func:`smotune.tracking.ranked_trials`),
each from its latest checkpoint (the run's ``checkpoint`` tag: the final epoch,
since a completed trial ran them all and Train keeps one checkpoint). Every
member scores the eval set its train config names, with its own classifier
(open_clip's ``build_zero_shot_classifier`` over its own text tower) and the
engine's own scoring (:func:`smotune.evaluate.scored_batches`), so a member's
top-1 is the ``zeroshot_top1`` its trial logged. The ensemble's scores are the
mean over members of ``softmax(100 * normalize(image) @ W)``, the probabilities
open_clip and clip_benchmark take from those logits. (SMOCLIP's
``zero_shot_eval_e`` averages two models' logits instead; probabilities keep a
member with larger logits from outvoting the others.)

Everything a user can get wrong (tracking URI, experiment, ``--top``, a
checkpoint or the eval set that is not there) is checked before any model loads.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from smotune import tracking
from smotune.checkpoints import CONFIG_FILE, MODEL_FILE
from smotune.config import TrainConfig, is_remote, validate_train
from smotune.data import objstore, zeroshot
from smotune.errors import UserError

SCALE = 100.0  # the logit scale of smotune's, open_clip's and clip_benchmark's zero-shot


@dataclass
class Member:
    """One trial of the ensemble: where it is, its logged objective, and what it scored here."""

    rank: int
    trial: tracking.RankedTrial
    cfg: TrainConfig
    top1: float = float("nan")
    top5: float = float("nan")


@dataclass
class Ensemble:
    """The members and the ensemble's accuracy on ``samples`` images of the eval set."""

    experiment: str
    ranking: tracking.Ranking
    members: list[Member]
    evalset: str
    top1: float = float("nan")
    top5: float = float("nan")
    samples: int = 0
    probs: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # [N, C] mean
    labels: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))


def _read(url: str) -> bytes:
    if is_remote(url):
        buf = io.BytesIO()
        objstore.copy_to(url, buf)
        return buf.getvalue()
    return Path(url).read_bytes()


def _checkpoint_file(trial: tracking.RankedTrial, name: str) -> str:
    """The URL of ``name`` in the trial's checkpoint, checked to exist."""
    url = f"{trial.checkpoint.rstrip('/')}/{name}"
    where = f"trial {trial.trial_id} (MLflow run {trial.run_id})"
    try:
        if is_remote(url):
            from pyarrow import fs

            filesystem, path = fs.FileSystem.from_uri(url)
            found = filesystem.get_file_info(path).type == fs.FileType.File
        else:
            found = Path(url).is_file()
    except (OSError, ValueError) as err:
        raise UserError(
            where, "checkpoint", f"cannot read {url} ({err})", "check the storage credentials"
        ) from None
    if not found:
        raise UserError(
            where,
            "checkpoint",
            f"{url} is missing",
            "restore the sweep's storage.path, or pass a smaller --top to leave this trial out",
        )
    return url


def members_of(experiment: str, top: int, uri: str) -> tuple[tracking.Ranking, list[Member]]:
    """The top ``top`` trials of the latest sweep of ``experiment``, their checkpoints checked."""
    ranking = tracking.ranked_trials(uri, experiment)
    usable = [t for t in ranking.trials if t.checkpoint]
    if top > len(usable):
        untagged = len(ranking.trials) - len(usable)
        raise UserError(
            "--top",
            "",
            f"{top} is more than the {len(usable)} completed search trials with a checkpoint "
            f"in the latest sweep of {experiment!r}"
            + (f" ({untagged} more completed without one)" if untagged else ""),
            f"pass --top {len(usable)} or less" if usable else "run the sweep to the end first",
        )
    members = []
    for rank, trial in enumerate(usable[:top], 1):
        _checkpoint_file(trial, MODEL_FILE)
        where = f"trial {trial.trial_id} checkpoint {CONFIG_FILE}"
        data = yaml.safe_load(_read(_checkpoint_file(trial, CONFIG_FILE)))
        if not isinstance(data, dict):
            raise UserError(where, "", "is not a YAML mapping", "restore the checkpoint")
        members.append(Member(rank, trial, validate_train(data, where)))
    return ranking, members


def _eval_key(cfg: TrainConfig) -> tuple:
    return (cfg.data.zeroshot, cfg.data.zeroshot_split, cfg.eval.max_samples)


def _check_members(members: list[Member], cuda: bool) -> None:
    """One eval set for all members, and a precision this machine can run."""
    first = members[0]
    for m in members[1:]:
        if _eval_key(m.cfg) != _eval_key(first.cfg):
            raise UserError(
                f"trial {m.trial.trial_id}",
                "data.zeroshot",
                f"evaluates on {_eval_key(m.cfg)}, trial {first.trial.trial_id} on "
                f"{_eval_key(first.cfg)} (data.zeroshot, data.zeroshot_split, eval.max_samples)",
                "ensemble trials that share one eval set (a smaller --top)",
            )
        if m.cfg.precision == "fp16" and not cuda:
            raise UserError(
                f"trial {m.trial.trial_id}",
                "precision",
                "fp16 needs a GPU and this machine has none",
                "run smotune ensemble on a GPU machine",
            )
    zeroshot.load(first.cfg.data.zeroshot, first.cfg.data.zeroshot_split)  # the layout


def _load_model(arch: str, url: str) -> torch.nn.Module:
    """The checkpoint at ``url`` loaded as open_clip loads one (``pretrained=`` a file)."""
    import open_clip

    from smotune import model  # noqa: F401  (registers smotune's archs with open_clip)

    if not is_remote(url):
        return open_clip.create_model(arch, pretrained=url)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / MODEL_FILE
        with local.open("wb") as out:  # streamed: a ViT-B-32 checkpoint is ~600 MB
            objstore.copy_to(url, out)
        return open_clip.create_model(arch, pretrained=str(local))


def _member_probs(member: Member, cuda: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The member's class probabilities [N, C] and the labels [N]; sets its top-1/top-5."""
    from smotune import model as model_mod
    from smotune.evaluate import hits, no_images, scored_batches
    from smotune.runtime import choose_runtime

    cfg = member.cfg
    runtime = choose_runtime(1 if cuda else 0, cfg.precision, cuda)
    model = _load_model(cfg.model.arch, f"{member.trial.checkpoint.rstrip('/')}/{MODEL_FILE}")
    evalset = zeroshot.load(
        cfg.data.zeroshot,
        cfg.data.zeroshot_split,
        model_mod.transforms(model, train=False),
        cfg.eval.max_samples,
    )
    device = torch.device(runtime.device_type)
    model.to(device)
    tokenizer = model_mod.tokenizer(cfg.model.arch)
    probs, labels, top1, top5 = [], [], 0, 0
    for logits, batch_labels in scored_batches(
        model, tokenizer, evalset, device, cfg.eval.batch_size, runtime.autocast_dtype
    ):
        one, five = hits(logits, batch_labels)
        top1, top5 = top1 + one, top5 + five
        probs.append(logits.softmax(dim=1).cpu())
        labels.append(batch_labels.cpu())
    if not labels:
        raise no_images(evalset)
    member_labels = torch.cat(labels)
    member.top1, member.top5 = top1 / len(member_labels), top5 / len(member_labels)
    return torch.cat(probs), member_labels


def run_ensemble(
    experiment: str,
    top: int,
    uri: str,
    progress: Callable[[str], None] | None = None,
) -> Ensemble:
    """The ensemble of the top ``top`` trials of ``experiment`` at ``uri``, members scored.

    ``uri`` must have been checked (:func:`smotune.tracking.check_tracking`).
    ``progress`` gets a line per member scored.
    """
    if top < 1:
        raise UserError("--top", "", f"is {top}", "pass --top 1 or more")
    ranking, members = members_of(experiment, top, uri)
    cuda = torch.cuda.is_available()
    _check_members(members, cuda)
    total: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    for m in members:
        probs, member_labels = _member_probs(m, cuda)
        if labels is not None and not torch.equal(labels, member_labels):
            raise RuntimeError(f"trial {m.trial.trial_id} read the eval set in another order")
        total, labels = (probs if total is None else total + probs), member_labels
        if progress:
            progress(f"member {m.rank}/{top}: trial {m.trial.trial_id} top1 {m.top1:.4f}")
    assert total is not None and labels is not None
    mean = total / len(members)
    from smotune.evaluate import hits

    top1, top5 = hits(mean, labels)
    return Ensemble(
        experiment=experiment,
        ranking=ranking,
        members=members,
        evalset=members[0].cfg.data.zeroshot,
        top1=top1 / len(labels),
        top5=top5 / len(labels),
        samples=len(labels),
        probs=mean,
        labels=labels,
    )


def table(result: Ensemble) -> str:
    """The members (logged objective, top-1, top-5 here) and the ensemble, one line each."""
    metric = result.ranking.metric
    head = (
        f"ensemble of the top {len(result.members)} completed trials of {result.experiment!r} "
        f"by {metric} ({result.ranking.mode}), {result.samples} images of {result.evalset}"
    )
    rows = [("rank", "trial", "run", f"{metric} (logged)", "top1", "top5")]
    for m in result.members:
        rows.append(
            (
                str(m.rank),
                m.trial.trial_id,
                m.trial.run_id,
                f"{m.trial.value:.4f}",
                f"{m.top1:.4f}",
                f"{m.top5:.4f}",
            )
        )
    rows.append(
        ("-", "ensemble", "mean of probabilities", "-", f"{result.top1:.4f}", f"{result.top5:.4f}")
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join([head, *lines])


def ensemble(experiment: str, top: int, tracking_uri: str | None = None) -> str:
    """``smotune ensemble``: score the top-``top`` ensemble, log it on the sweep's parent run
    (``ensemble_top1``, ``ensemble_top5``, ``ensemble_k``) and return the table."""
    uri, where = tracking.choose_uri(tracking_uri)
    tracking.check_tracking(uri, where=where, existing=True)
    result = run_ensemble(experiment, top, uri, progress=lambda line: print(line, flush=True))
    tracking.log_ensemble(
        uri,
        result.ranking.parent_id,
        result.top1,
        result.top5,
        [m.trial.trial_id for m in result.members],
    )
    names = f"{tracking.ENSEMBLE_TOP1}, {tracking.ENSEMBLE_TOP5}, {tracking.ENSEMBLE_K}"
    return f"{table(result)}\nlogged on the sweep's run {result.ranking.parent_id}: {names}"
