"""``smotune report``: a sweep's plots and one HTML page about it, rebuilt from MLflow alone.

Reads the latest sweep of an experiment (through :mod:`smotune.tracking.history`),
draws its plots (:mod:`smotune.plots`) into ``<out>/plots/`` and writes
``<out>/index.html``: the sweep's objective and space, the verdict (as the sweep
printed it), the summary table, the confirm table, the transfer phase (each
config's mean at both fidelities, tau, rho, decision accuracy, the discordant
pairs and the verdict there, as the sweep printed them), the rung check's lines
(as the sweep printed them) and the plots. The page
needs nothing outside ``<out>`` (no network): copy the folder anywhere.
"""

from __future__ import annotations

import html
import math
import time
from pathlib import Path
from typing import Any

from smotune import confirm, plots, rungs
from smotune.config import Distribution
from smotune.errors import UserError, redact

PAGE = "index.html"
PLOTS = "plots"

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 84em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; font-size: 0.92em; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.verdict { font-size: 1.1em; padding: 0.6em 1em; background: #eef6f5;
  border-left: 4px solid #2a9d8f; }
figure { margin: 2em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
.muted { color: #666; }
.wide { overflow-x: auto; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _num(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}"


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _head(name: str) -> str:
    """A column's name, free to break after each dot: dotted train paths make wide columns."""
    return _esc(name).replace(".", ".<wbr>")


def _table(head: list[str], rows: list[list[str]], numeric: set[int]) -> str:
    # a table still too wide for the page scrolls by itself; the page never scrolls sideways
    header = "".join(f"<th>{_head(h)}</th>" for h in head)
    out = ["<div class='wide'><table>", f"<tr>{header}</tr>"]
    for row in rows:
        cells = "".join(
            f"<td class='num'>{_esc(c)}</td>" if i in numeric else f"<td>{_esc(c)}</td>"
            for i, c in enumerate(row)
        )
        out.append(f"<tr>{cells}</tr>")
    out.append("</table></div>")
    return "\n".join(out)


def summary_table(data: plots.SweepData) -> str:
    """One row per search trial: its number in the plots, its searched values, epochs run,
    final metric, status and why it ended so (a failure's error, the rung ASHA stopped it at)."""
    paths = list(data.space)
    head = ["#", "trial", *paths, "epochs", data.metric, "status", "reason"]
    rows = [
        [
            plots.number(i),
            t.label,
            *(_cell(t.params.get(p, "-")) for p in paths),
            f"{t.epochs_run}/{data.epochs}",
            _num(t.value),
            t.status + (" (best)" if t.label == data.best_trial else ""),
            t.reason,
        ]
        for i, t in enumerate(data.trials)
    ]
    numeric = {0, *range(2, len(paths) + 4)}
    return _table(head, rows, numeric)


def confirm_verdict(data: plots.SweepData) -> confirm.Verdict | None:
    """The verdict recomputed from the confirm runs (the plot's), each group with its
    searched values and its score at the search seed when it has one."""
    found = plots.confirm_verdict(data)
    if found is None:
        return None
    by_label = {t.label: t for t in data.trials}
    for group in found.groups:
        group.params = next(s.params for s in data.seeds if s.group == group.label)
        trial = by_label.get(group.label)
        if trial is None:  # the baseline: the search trial that ran its values, if one did
            trial = next((t for t in data.trials if t.params == group.params), None)
        if trial is not None and trial.status == "completed":
            group.search_value = trial.value
    return found


def verdict_text(data: plots.SweepData, found: confirm.Verdict | None) -> str:
    """The verdict as the sweep printed it (recomputed from the confirm runs; the parent's tag
    when the two differ, e.g. runs deleted since)."""
    if data.verdict is None:
        best = f"; the best search trial is {data.best_trial}" if data.best_trial else ""
        return (
            "no verdict: the sweep has no finished confirm phase (search.confirm), so its best "
            f"is one run at one seed{best}"
        )
    if found is not None and found.verdict == data.verdict:
        return found.words(data.metric)
    words = confirm.VERDICT_WORDS.get(data.verdict, "")
    return f"verdict: {data.verdict}" + (f" ({words})" if words else "")


def confirm_table(data: plots.SweepData, found: confirm.Verdict) -> str:
    paths = list(data.space)
    by_label = {c.group.label: c for c in found.comparisons}
    head = ["config", *paths, "seeds", f"mean {data.metric}", "std", "search seed"]
    head += ["gain [interval]", "p (needed)", "race"]
    rows = []
    for g in found.groups:
        c = by_label.get(g.label)
        judged = c is not None and c.pairs >= 2
        rows.append(
            [
                g.label,
                *(_cell(g.params.get(p, "-")) for p in paths),
                str(g.n),
                _num(g.mean),
                _num(g.std),
                _num(g.search_value),
                c.interval() if judged else "-",
                f"{c.p:.3g} ({c.p_needed:.3g})" if judged else "-",
                confirm.race_state(c, found) if c is not None else "baseline",
            ]
        )
    return _table(head, rows, set(range(1, len(paths) + 7)))


def transfer_section(data: plots.SweepData) -> list[str]:
    """The transfer phase (recomputed from its runs, as the sweep printed it): a row per
    transferred config at both fidelities, then the lines (none without transfer runs)."""
    found = plots.transfer_of(data)
    if found is None:
        return []
    sign = data.sign
    place = {}
    for k in (0, 1):
        order = sorted(found.ranked, key=lambda both: -sign * both[k].mean)
        place[k] = {both[0].label: str(i + 1) for i, both in enumerate(order)}
    by_label = {c.group.label: c for c in found.verdict.comparisons}
    paths = list(data.space)
    head = ["config", *paths, "search fidelity", "place", "transfer fidelity", "place"]
    head += ["gain over baseline there [interval]"]
    rows = []
    for lo, hi in zip(found.low, found.high, strict=True):
        c = by_label.get(hi.label)
        rows.append(
            [
                hi.label,
                *(_cell(hi.params.get(p, "-")) for p in paths),
                _spread(lo),
                place[0].get(lo.label, "-"),
                _spread(hi),
                place[1].get(hi.label, "-"),
                "baseline" if c is None else c.interval() if c.pairs >= 2 else "-",
            ]
        )
    items = "".join(f"<li>{_esc(line)}</li>" for line in found.lines(data.metric))
    method = found.verdict.design.method if found.verdict.design is not None else ""
    return [
        f"<h2>Transfer to a larger fidelity ({_esc(found.fidelity)})</h2>",
        "<p class='muted'>The baseline and the best confirmed configs re-ran at the transfer "
        "fidelity over new shared seeds. Does their order at the search fidelity (confirmed "
        "means) hold there? Kendall's tau and Spearman's rho of the two fidelities' means, "
        "decision accuracy (the share of config pairs whose order holds), and each flipped "
        "pair's paired 90% interval at the transfer fidelity: one holding 0 is within the "
        f"seed noise. Verdict there: {_esc(method)}. best.yaml is the config chosen at the "
        "transfer fidelity.</p>",
        _table(head, rows, set(range(1, len(paths) + 6))),
        f"<ul class='transfer'>{items}</ul>",
    ]


def _spread(g: confirm.Group) -> str:
    if not g.n:
        return "-"
    return f"{g.mean:.4f}" + (f" ± {g.std:.4f}" if g.n >= 2 else "") + f" ({g.n} seeds)"


def rung_section(data: plots.SweepData) -> list[str]:
    """The rung check's lines, as the sweep printed them at its end (none without ASHA)."""
    said = rungs.sweep_lines(data)
    if not said:
        return []
    items = "".join(f"<li>{_esc(line)}</li>" for line in said)
    return [
        "<h2>Rung check</h2>",
        "<p class='muted'>At each of ASHA's rungs, the order of the runs that ran every epoch "
        "(completed search trials and confirm runs, each seed its own run) against their order "
        "at the last epoch: Kendall's tau, the concordant pairs and a one-sided p against "
        "chance. The search trials here passed the rungs, so among them the check sees the "
        "survivors; the confirm runs passed none.</p>",
        f"<ul class='rungs'>{items}</ul>",
    ]


def page(data: plots.SweepData, rendered: plots.Rendered, uri: str, experiment: str) -> str:
    """The report's HTML: plots referenced as ``plots/<file>``."""
    found = confirm_verdict(data) if data.seeds else None
    statuses = [t.status for t in data.trials]
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
    space = "; ".join(
        f"{p} {Distribution.model_validate(e).words()}" for p, e in data.space.items()
    )
    asha = (
        f"ASHA grace {data.asha[0]}, reduction {data.asha[1]:g}" if data.asha else "no early stop"
    )
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_esc(data.name)}: sweep report</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{_esc(data.name)}: sweep report</h1>",
        "<p class='muted'>"
        f"experiment <b>{_esc(experiment)}</b>, parent run {_esc(data.run_name)} "
        f"({_esc(data.run_id)}) in MLflow {_esc(redact(uri))}; drawn "
        f"{_esc(time.strftime('%Y-%m-%d %H:%M'))}</p>",
        f"<p>objective: {_esc(data.mode)} <b>{_esc(data.metric)}</b> over {data.epochs} epochs; "
        f"{_esc(asha)}; searched: {_esc(space or 'nothing')}</p>",
        "<h2>Verdict</h2>",
        f"<p class='verdict'>{_esc(verdict_text(data, found))}</p>",
        f"<h2>Search trials ({len(data.trials)}: {_esc(counts or 'none')})</h2>",
        summary_table(data),
    ]
    if found is not None:
        method = found.design.method if found.design is not None else ""
        parts += [
            f"<h2>Confirmed over new seeds ({_esc(data.metric)})</h2>",
            "<p class='muted'>Every config ran the same new seeds; each rival is judged on its "
            "per-seed differences from the baseline. Only the new seeds count: the search "
            f"seed's score of a winner is biased upwards by the selection. Method: "
            f"{_esc(method)}.</p>",
            confirm_table(data, found),
        ]
    parts += transfer_section(data)
    parts += rung_section(data)
    parts.append("<h2>Plots</h2>")
    for name in rendered.files:
        title = plots.TITLES.get(name, name)
        if name.endswith(".png"):
            parts.append(
                f"<figure><img src='{PLOTS}/{_esc(name)}' alt='{_esc(title)}'>"
                f"<figcaption>{_esc(title)}</figcaption></figure>"
            )
        else:
            parts.append(f"<p><a href='{PLOTS}/{_esc(name)}'>{_esc(title)}</a> (interactive)</p>")
    if rendered.skipped:
        items = "".join(
            f"<li>{_esc(plots.TITLES.get(n, n))}: {_esc(why)}</li>"
            for n, why in rendered.skipped.items()
        )
        parts.append(f"<p class='muted'>Not drawn:</p><ul class='muted'>{items}</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(experiment: str, tracking_uri: str | None = None, out: str | None = None) -> str:
    """Write ``<out>/index.html`` and ``<out>/plots/`` for the latest sweep of ``experiment``;
    return the line saying so. ``out`` defaults to ``<experiment>-report``."""
    from smotune.tracking import choose_uri
    from smotune.tracking.history import read_sweep

    uri, where = choose_uri(tracking_uri)
    data = read_sweep(uri, experiment, where)
    folder = Path(out or f"{experiment}-report")
    try:
        (folder / PLOTS).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(
            str(folder), "", f"cannot create ({err.strerror})", "choose another --out"
        ) from None
    rendered = plots.render(data, folder / PLOTS)
    index = folder / PAGE
    index.write_text(page(data, rendered, uri, experiment), encoding="utf-8")
    left = f"; not drawn: {', '.join(rendered.skipped)}" if rendered.skipped else ""
    moved = f"{len(data.transfers)} transfer runs, " if data.transfers else ""
    return (
        f"wrote {index}: {len(data.trials)} search trials, {len(data.seeds)} confirm runs, {moved}"
        f"{len(rendered.files)} plots in {folder / PLOTS}{left}"
    )
