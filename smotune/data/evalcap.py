"""The ``eval.max_samples`` cap of a zero-shot set, spread evenly over its classes.

Sets are often written class by class (ImageNet's val in folder order), where the
first ``max_samples`` samples would hold only the first classes. Every class keeps
``max_samples // C`` samples or one more, evenly spaced within the class; for a
webdataset set the labels are read first from every shard's tar headers and ``.cls``
members, seeking past the images.
"""

from __future__ import annotations

import logging
from pathlib import Path

from smotune.errors import UserError

log = logging.getLogger("smotune.data.zeroshot")


def even_over_classes(labels: list[int | None], n: int) -> list[int]:
    """The indices of ``n`` of ``labels`` spread evenly over the classes, in index order.

    Each class gets ``n // C`` or one more (a class with fewer gets all it has, the
    others share the rest; extra ones go to the lowest class ids), evenly spaced within
    the class. ``None`` labels are never chosen; with ``n`` under ``C`` only the first
    ``n`` classes get one.
    """
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        if label is not None:
            by_class.setdefault(label, []).append(i)
    quota = dict.fromkeys(sorted(by_class), 0)
    left = n
    while left > 0:
        open_classes = [c for c in quota if quota[c] < len(by_class[c])]
        if not open_classes:
            break
        share = max(1, left // len(open_classes))
        for c in open_classes:
            take = min(share, len(by_class[c]) - quota[c], left)
            quota[c] += take
            left -= take
            if left == 0:
                break
    chosen = [by_class[c][j * len(by_class[c]) // q] for c, q in quota.items() for j in range(q)]
    return sorted(chosen)


def wds_labels(shards: list[Path]) -> list[int | None]:
    """The ``cls`` of every raw sample of the shards, in the order webdataset reads them.

    Members are grouped into samples by webdataset's own ``group_by_keys`` (metadata
    members ``__*__`` left out, as its tar reader does); only ``.cls`` members are read,
    the images are sought past.
    """
    import re
    import tarfile

    from webdataset.tariterators import group_by_keys

    meta = re.compile(r"__[^/]*__($|/)")

    def members():
        for shard in shards:
            try:
                with tarfile.open(shard) as tar:
                    for info in tar:
                        if not info.isreg() or meta.match(info.name):
                            continue
                        data = b""
                        if info.name.lower().endswith(".cls"):
                            data = tar.extractfile(info).read()
                        yield {"fname": info.name, "data": data, "__url__": str(shard)}
            except (OSError, tarfile.TarError) as err:
                raise UserError(
                    str(shard),
                    "data.zeroshot",
                    f"cannot read its tar headers to cap eval.max_samples evenly over the "
                    f"classes ({err})",
                    "repair or replace the shard, or remove eval.max_samples",
                ) from None
            yield {}

    labels: list[int | None] = []
    for sample in group_by_keys(members()):
        try:
            labels.append(int(sample["cls"]))
        except (KeyError, ValueError):
            labels.append(None)
    return labels


def warn_if_classes_left_out(root: Path, classes: int, kept: list[int | None]) -> None:
    present = {label for label in kept if label is not None}
    if len(present) < classes:
        log.warning(
            "%s: eval.max_samples keeps %d samples of %d classes (%d classes have none)",
            root,
            len(kept),
            len(present),
            classes - len(present),
        )
