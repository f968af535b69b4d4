"""Render a paper table from the results store and the published figures, side by side.

Each cell is ours ``mean ± std`` over seeds beside the paper's published value; "—" where we have
not run it, "n/a" where the paper publishes none, "NaN" where a run's metric was not computable
(e.g. a test split without comparable survival pairs). "Overall" is the mean over the table's sites of
the per-site means (shown only when every site is present), as in the paper. A row some of whose runs
ended collapsed (their stored ``collapsed`` metric is 1; the rule is the caller's ``collapse_rule``)
carries the mark † and a note under the table says how many of its runs did. A row whose runs stored
their untrained model's test metric (``init_<metric>``: the text-distillation rows) and do not end above
it on average carries ‡ on that task, with the mean gain and the runs not above under the table.

With ``ci`` (a :class:`bench.stats.TableStats`, ``bench table … --ci``) the table is followed by its
bootstrap intervals and paired tests (:func:`render_ci`); the CSV gains their columns instead.
Without it the output is exactly the table above.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tabulate import tabulate

from models.paper.reference import published

TASK_METRIC = {"subtype": ("test_balanced_accuracy", "Cancer subtype prediction (balanced accuracy)"),
               "survival": ("test_c_index", "Survival prediction (C-index)")}
#: A table section beyond the tasks: ``name -> (the runs' task, the metric, the heading)`` (Table 7's
#: further rows, measured by the text probes' survival runs).
SECTIONS = {"duration_bins": ("survival", "test_bins_balanced_accuracy", "Duration bins (balanced accuracy)"),
            "survival_nostage": ("survival", "test_nostage_c_index", "Survival prediction w/o stage (C-index)")}
DASH, NA = "—", "n/a"


def section(name: str) -> tuple[str, str, str]:
    """``(task, metric, heading)`` of a section: a task of :data:`TASK_METRIC`, or one of :data:`SECTIONS`."""
    if name in TASK_METRIC:
        return (name, *TASK_METRIC[name])
    return SECTIONS[name]
COLLAPSED_MARK = "†"
#: The mark of a row that does not end above its own initialisation on a task (:func:`versus_init`).
NOT_ABOVE_INIT_MARK = "‡"
NOT_ABOVE_INIT_RULE = ("its test metric is on average no higher than that of the same model untrained, probed the "
                       "same way (a random frozen encoder's features already carry part of the planted signal)")


@dataclass(frozen=True)
class TableRow:
    """One row to render: registry name, paper label, whether the model is registered, a mark after its
    label (e.g. the tuned rows'; explained by the caller's header lines) and whether the paper does not
    report it (``beyond_paper``: rendered after the paper's rows, under :data:`BEYOND_HEADING`)."""

    name: str
    label: str
    registered: bool
    mark: str = ""
    beyond_paper: bool = False


#: The heading of a table's block of rows the paper does not report.
BEYOND_HEADING = "Beyond the paper (not in the paper; our configurations)"


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float | None
    n: int


def _fmt(stat: Stat | None, empty: str) -> str:
    if stat is None or stat.mean is None:
        return empty
    if math.isnan(stat.mean):  # run, but the metric was not computable (e.g. no comparable pairs)
        return "NaN"
    if stat.std is None:
        return f"{stat.mean:.3f}"
    return f"{stat.mean:.3f} ± {stat.std:.3f}"


def aggregate(results: Iterable[Any], task: str) -> dict[tuple[str, str], Stat]:
    """``(model, site) -> Stat`` over seeds of the task's primary test metric (or a :func:`section`'s).

    ``results`` are store rows (``bench.results.ResultRow``); std is the sample std (ddof=1, as the
    paper's "mean ± std over three seeds"), None for a single run.
    """
    run_task, metric, _ = section(task)
    values: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for row in results:
        if row.task == run_task and metric in row.metrics:
            values[(row.model, row.site)][row.seed] = float(row.metrics[metric])
    out = {}
    for key, by_seed in values.items():
        v = np.array([by_seed[s] for s in sorted(by_seed)], dtype=float)
        out[key] = Stat(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else None, len(v))
    return out


def collapsed_runs(results: Iterable[Any], model: str, sites: Sequence[str]) -> tuple[int, int]:
    """``(collapsed, total)``: distinct runs of ``model`` with a row at one of ``sites`` that carries the
    ``collapsed`` flag (text-distillation runs), and how many of them are flagged (stored metric 1.0)."""
    runs: dict[str, bool] = {}
    for row in results:
        if row.model == model and row.site in sites and "collapsed" in row.metrics:
            runs[row.run_id] = runs.get(row.run_id, False) or row.metrics["collapsed"] == 1.0
    return sum(runs.values()), len(runs)


@dataclass(frozen=True)
class VersusInit:
    """A row's test metric against its own untrained model's, probed the same way (runs that stored
    ``init_<metric>``: the text-distillation rows): mean difference and runs not above."""

    mean_gain: float
    not_above: int
    runs: int

    @property
    def marked(self) -> bool:
        """True when the row does not end above its initialisation on average."""
        return self.mean_gain <= 0


def versus_init(results: Iterable[Any], model: str, sites: Sequence[str], task: str) -> VersusInit | None:
    """The :class:`VersusInit` of ``model``'s runs at ``sites`` for ``task`` (a section), None when none
    of its rows stored the untrained model's metric."""
    run_task, metric, _ = section(task)
    gains = [float(row.metrics[metric]) - float(row.metrics[f"init_{metric}"]) for row in results
             if row.model == model and row.site in sites and row.task == run_task
             and f"init_{metric}" in row.metrics and metric in row.metrics]
    gains = [g for g in gains if math.isfinite(g)]
    if not gains:
        return None
    return VersusInit(float(np.mean(gains)), sum(g <= 0 for g in gains), len(gains))


def _paper(table_key: str, task: str, label: str, site: str) -> Stat | None:
    value = published(table_key, task, label, site)
    return None if value is None else Stat(value[0], value[1], 0)


def table_cells(rows: Sequence[TableRow], sites: Sequence[str], results: list[Any], table_key: str,
                tasks: Sequence[str] = ("subtype", "survival"), overall: bool = True) -> list[dict[str, Any]]:
    """Long-format cells: one dict per (task, row, site|Overall) with ours and the paper's values."""
    cells = []
    for task in tasks:
        ours = aggregate(results, task)
        for row in rows:
            site_means = []
            for site in list(sites) + (["Overall"] if overall else []):
                if site == "Overall":
                    stat = Stat(float(np.mean(site_means)), None, 0) if len(site_means) == len(sites) else None
                else:
                    stat = ours.get((row.name, site))
                    if stat is not None:
                        site_means.append(stat.mean)
                cells.append({"task": task, "model": row.name, "label": row.label, "site": site,
                              "ours": stat, "paper": _paper(table_key, task, row.label, site)})
    return cells


def render(rows: Sequence[TableRow], sites: Sequence[str], results: list[Any], *, table_key: str, title: str,
           header_lines: Sequence[str] = (), fmt: str = "md", tasks: Sequence[str] = ("subtype", "survival"),
           overall: bool = True, collapse_rule: str = "", ci: Any = None) -> str:
    """The table as Markdown (``md``), LaTeX (``latex``) or long-format ``csv``; rows with collapsed runs
    are marked :data:`COLLAPSED_MARK` and explained under the table with ``collapse_rule``. ``ci`` (a
    :class:`bench.stats.TableStats`) appends the intervals and tests (:func:`render_ci`; CSV: columns)."""
    cells = table_cells(rows, sites, results, table_key, tasks, overall)
    collapsed = {row.name: collapsed_runs(results, row.name, sites) for row in rows}
    if fmt == "csv":
        return _csv(cells, collapsed, ci)
    columns = list(sites) + (["Overall"] if overall else [])
    tablefmt = {"md": "github", "latex": "latex_booktabs"}[fmt]
    parts = []
    if fmt == "md":
        parts.append(f"## {title}\n")
        parts.extend(f"> {line}" for line in header_lines)
        parts.append("")
        parts.append("Each cell: ours (mean ± std over seeds) / paper. — = not run here; n/a = no published value; "
                     "NaN = run, metric not computable.\n")
    else:
        parts.append(f"% {title}")
        parts.extend(f"% {line}" for line in header_lines)
    for task in tasks:
        by_key = {(c["model"], c["site"]): c for c in cells if c["task"] == task}
        vs_init = {row.name: versus_init(results, row.name, sites, task) for row in rows}
        body = []
        for i, row in enumerate(rows):
            if row.beyond_paper and (i == 0 or not rows[i - 1].beyond_paper):
                body.append([f"*{BEYOND_HEADING}*" if fmt == "md" else BEYOND_HEADING] + [""] * len(columns))
            init_mark = f" {NOT_ABOVE_INIT_MARK}" if vs_init[row.name] and vs_init[row.name].marked else ""
            line = [row.label + (f" {row.mark}" if row.mark else "") + (f" {COLLAPSED_MARK}" if collapsed[row.name][0] else "")
                    + init_mark]
            for site in columns:
                c = by_key[(row.name, site)]
                line.append(f"{_fmt(c['ours'], DASH)} / {_fmt(c['paper'], NA)}")
            body.append(line)
        if fmt == "md":
            parts.append(f"### {section(task)[2]}\n")
        else:
            parts.append(f"% {section(task)[2]}")
        parts.append(tabulate(body, headers=["Model"] + columns, tablefmt=tablefmt, disable_numparse=True))
        parts.append("")
        below = [f"{row.label}: {v.mean_gain:+.3f}, {v.not_above} of {v.runs} runs not above" for row in rows
                 if (v := vs_init[row.name]) is not None and v.marked]
        if below:
            note = f"{NOT_ABOVE_INIT_MARK} not above its own initialisation ({'; '.join(below)}): {NOT_ABOVE_INIT_RULE}"
            parts.extend([note if fmt == "md" else f"% {note}", ""])
    notes = [f"{row.label}: {collapsed[row.name][0]} of {collapsed[row.name][1]} runs" for row in rows
             if collapsed[row.name][0]]
    if notes:
        note = f"{COLLAPSED_MARK} ended collapsed ({'; '.join(notes)}): {collapse_rule}"
        parts.append(note if fmt == "md" else f"% {note}")
        parts.append("")
    if ci is not None:
        parts.append(render_ci(ci, rows, sites, fmt=fmt, tasks=tasks, overall=overall))
    return "\n".join(parts)


CI_COLUMNS = ["ci_low", "ci_high", "ci_patients", "row_diff_vs_reference", "row_p_value", "row_p_holm",
              "row_differs", "reference"]


def _csv(cells: list[dict[str, Any]], collapsed: dict[str, tuple[int, int]], ci: Any = None) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["task", "model", "label", "site", "ours_mean", "ours_std", "ours_n", "paper_mean", "paper_std",
                     "collapsed_runs"] + (CI_COLUMNS if ci is not None else []))
    for c in cells:
        ours, paper = c["ours"], c["paper"]
        done, total = collapsed.get(c["model"], (0, 0))
        writer.writerow([c["task"], c["model"], c["label"], c["site"],
                         "" if ours is None else f"{ours.mean:.6f}",
                         "" if ours is None or ours.std is None else f"{ours.std:.6f}",
                         "" if ours is None else ours.n,
                         "" if paper is None else f"{paper.mean:.3f}",
                         "" if paper is None or paper.std is None else f"{paper.std:.3f}",
                         f"{done}/{total}" if total else ""] + (_ci_csv(ci, c) if ci is not None else []))
    return buf.getvalue()


def _ci_csv(ci: Any, cell: dict[str, Any]) -> list[str]:
    """The :data:`CI_COLUMNS` of one long-format cell: its interval, and its row's test (on every cell of the row)."""
    interval = ci.cells.get((cell["task"], cell["model"], cell["site"]))
    test = ci.tests.get((cell["task"], cell["model"]))
    reference = ci.reference.get(cell["task"], "")
    return [f"{interval.low:.6f}" if interval else "", f"{interval.high:.6f}" if interval else "",
            str(interval.n_patients) if interval else "",
            f"{test.difference:.6f}" if test else "", f"{test.p_value:.6f}" if test else "",
            f"{test.p_holm:.6f}" if test else "", str(int(test.differs)) if test else "", reference]


DIFFERS_MARK = "*"
NO_PREDICTIONS = "no predictions"
OVERALL_COLUMN = "Overall"


def _fmt_interval(interval: Any) -> str:
    """``mean [low, high] sd std`` (sd: the std over seeds, shown only for several seeds)."""
    if math.isnan(interval.mean):
        return "NaN"
    bounds = "[n/a]" if math.isnan(interval.low) else f"[{interval.low:.3f}, {interval.high:.3f}]"
    spread = f" sd {interval.seed_std:.3f}" if interval.seed_std is not None else ""
    return f"{interval.mean:.3f} {bounds}{spread}"


def _fmt_test(test: Any, is_reference: bool, has_cells: bool, sites: Sequence[str]) -> str:
    """The row's comparison with the reference: ``Δ, p = … (Holm …)``, followed by the sites it rests on
    when they are not all of ``sites``; "n/a" for a row with intervals but no site where both its
    metric and the reference's are computable."""
    if is_reference:
        return "reference"
    if test is None:
        return NA if has_cells else DASH
    on = f" on {', '.join(test.sites)}" if len(test.sites) < len(sites) else ""
    if math.isnan(test.p_value):
        return f"{test.difference:+.3f}, p n/a{on}"
    return f"{test.difference:+.3f}, p = {test.p_value:.3g} (Holm {test.p_holm:.3g}){on}"


def render_ci(ci: Any, rows: Sequence[TableRow], sites: Sequence[str], *, fmt: str = "md",
              tasks: Sequence[str] = ("subtype", "survival"), overall: bool = True) -> str:
    """The bootstrap section of a table (``ci``: :class:`bench.stats.TableStats`): per task it analysed, each cell's
    mean over seeds, 95 % interval and seed spread, each row's difference from the reference row with its
    p-value and corrected p-value, :data:`DIFFERS_MARK` on rows that differ; the method, level and
    correction stated under the tables, and the cells whose rows were stored without predictions."""
    labels = {row.name: row.label for row in rows}
    columns = list(sites) + ([OVERALL_COLUMN] if overall else [])
    missing = {(t, m, s) for t, m, s in ci.no_predictions}
    tablefmt = {"md": "github", "latex": "latex_booktabs"}[fmt]
    prefix = "> " if fmt == "md" else "% "
    parts = [f"## {100 * ci.level:.0f} % confidence intervals and paired tests (bootstrap over test patients)\n"
             if fmt == "md" else f"% {100 * ci.level:.0f} % confidence intervals and paired tests"]
    for task in [t for t in tasks if t in ci.tasks]:
        reference = ci.reference.get(task)
        body = []
        for row in rows:
            test = ci.tests.get((task, row.name))
            mark = f" {DIFFERS_MARK}" if test is not None and test.differs else ""
            line = [row.label + mark]
            for site in columns:
                interval = ci.cells.get((task, row.name, site))
                line.append(_fmt_interval(interval) if interval else NO_PREDICTIONS if (task, row.name, site) in missing
                            else DASH)
            has_cells = any((task, row.name, site) in ci.cells for site in sites)
            line.append(_fmt_test(test, row.name == reference, has_cells, sites))
            body.append(line)
        heading = f"{TASK_METRIC[task][1]}: mean over seeds [{100 * ci.level:.0f} % CI] sd (std over seeds)"
        parts.append(f"### {heading}\n" if fmt == "md" else f"% {heading}")
        parts.append(tabulate(body, headers=["Model"] + columns + ["vs reference: Δ, p"], tablefmt=tablefmt,
                              disable_numparse=True))
        parts.append("")
    reference_labels = {t: labels.get(m, m) for t, m in ci.reference.items()}
    parts.extend(prefix + line for line in ci.describe(reference_labels))
    if missing:
        listed = "; ".join(f"{labels.get(m, m)} {s} {t}" for t, m, s in sorted(missing))
        parts.append(f"{prefix}{NO_PREDICTIONS}: {listed} — stored before per-patient predictions were kept "
                     "(results store schema 2); rerun these runs with --force to get their intervals")
    parts.append("")
    return "\n".join(parts)


NOT_PUBLISHED = "not published"
DELTA_NOTE = ("The paper reports these rows as changes of the Overall figure relative to the reference row "
              "(Δ = row / reference - 1), not as points: its \"+4.6 %\" of ModalTune over Prov-Gigapath (Tuned) "
              "is 0.954 / 0.912 - 1 (the difference is 4.2 points) and its Pan-Cancer \"-2.8 %\" / \"-3.0 %\" are "
              "0.927 / 0.954 - 1 and 0.727 / 0.750 - 1. Ours are computed the same way from our Overall means. "
              "— = a row (or its reference) not run on every site; not published = the paper gives no figure.")


@dataclass(frozen=True)
class DeltaRow:
    """A row rendered as its change relative to ``reference`` (registry names), beside the paper's
    reported changes ``paper`` (task -> relative change; a task absent is not published)."""

    name: str
    label: str
    reference: str
    reference_label: str
    paper: dict[str, float]


def overall_mean(ours: dict[tuple[str, str], Stat], model: str, sites: Sequence[str]) -> float | None:
    """The mean over ``sites`` of ``model``'s per-site means (the table's Overall), None unless every site ran."""
    means = [ours[(model, s)].mean for s in sites if (model, s) in ours]
    return float(np.mean(means)) if len(means) == len(sites) and means else None


def relative_changes(deltas: Sequence[DeltaRow], sites: Sequence[str], results: list[Any],
                     tasks: Sequence[str] = ("subtype", "survival")) -> list[dict[str, Any]]:
    """One dict per (task, delta row): ours ``row / reference - 1`` on the Overall means (None where
    either is missing or the reference is 0) beside the paper's reported change (None: not published)."""
    cells = []
    for task in tasks:
        ours = aggregate(results, task)
        for d in deltas:
            row, ref = overall_mean(ours, d.name, sites), overall_mean(ours, d.reference, sites)
            change = row / ref - 1.0 if row is not None and ref else None
            cells.append({"task": task, "model": d.name, "label": d.label, "reference": d.reference,
                          "reference_label": d.reference_label, "ours": change, "paper": d.paper.get(task)})
    return cells


def _fmt_change(value: float | None, empty: str) -> str:
    if value is None:
        return empty
    if math.isnan(value):
        return "NaN"
    return f"{100.0 * value:+.1f} %"


def render_deltas(deltas: Sequence[DeltaRow], sites: Sequence[str], results: list[Any], *, fmt: str = "md",
                  tasks: Sequence[str] = ("subtype", "survival")) -> str:
    """Each delta row's relative change vs its reference, ours beside the paper's, with the note
    saying what the paper's percentages are; ``csv`` gives long-format rows (site ``delta_vs_<ref>``)
    in the columns of :func:`render`'s CSV, without its header."""
    cells = relative_changes(deltas, sites, results, tasks)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        for c in cells:
            writer.writerow([c["task"], c["model"], c["label"], f"delta_vs_{c['reference']}",
                             "" if c["ours"] is None else f"{c['ours']:.6f}", "", "",
                             "" if c["paper"] is None else f"{c['paper']:.3f}", ""])
        return buf.getvalue()
    by_key = {(c["task"], c["model"]): c for c in cells}
    body = [[d.label, d.reference_label] + [f"{_fmt_change(by_key[(t, d.name)]['ours'], DASH)} / "
                                            f"{_fmt_change(by_key[(t, d.name)]['paper'], NOT_PUBLISHED)}"
                                            for t in tasks] for d in deltas]
    headers = ["Row", "relative to"] + [f"{t}: ours / paper" for t in tasks]
    title = "Change vs the reference row (Overall, relative: row / reference - 1)"
    if fmt == "md":
        return "\n".join([f"\n### {title}\n", tabulate(body, headers=headers, tablefmt="github", disable_numparse=True),
                          "", f"> {DELTA_NOTE}", ""])
    return "\n".join([f"% {title}", tabulate(body, headers=headers, tablefmt="latex_booktabs", disable_numparse=True),
                      f"% {DELTA_NOTE}", ""])
