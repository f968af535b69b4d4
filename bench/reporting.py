"""Glue between the results store, the grid declarations and :mod:`reports.tables`."""

from __future__ import annotations

from pathlib import Path

from bench.config import get_profile
from bench.errors import BenchError
from bench.grids import GRIDS, GridSpec, get_grid
from bench.registry import all_models
from bench.results import ResultStore, store_path
from bench.stats import TableStats, table_stats
from bench.train.collapse import COLLAPSE_RULE
from models.paper.reference import delta_reference, published_deltas
from reports.tables import DeltaRow, TableRow, render, render_deltas


def render_table(table: str, *, store: str | Path | None = None, profile: str | None = None, fmt: str = "md",
                 ci: bool = False) -> str:
    """Render ``table`` from the store alone (rows of the chosen profile) beside the paper's figures;
    ``ci`` adds the bootstrap intervals and paired tests from the stored predictions (:mod:`bench.stats`)."""
    grid = get_grid(table)
    path = store_path(str(store) if store else None)
    if not path.is_file():
        raise BenchError(f"results store {path} does not exist; run `python -m bench grid {grid.name}` first "
                         "(or pass --store)")
    with ResultStore(path) as results:
        if profile is None:
            latest = results.latest()
            profile = latest.profile if latest else "small"
        rows = prefer_tuned(results.rows(profile=profile))
    prof = get_profile(profile)
    registry = all_models()
    trials = tuned_trials([r for r in rows if r.model in {name for name, _ in grid.rows}])
    table_rows = [TableRow(name, label, name in registry, TUNED_MARK if name in trials else "",
                           beyond_paper=name in registry and registry[name].beyond_paper)
                  for name, label in grid.rows]
    cohorts = sorted({r.cohort for r in rows})
    header = [f"profile: {prof.name}" + (" (model widths narrowed and fewer epochs than the paper; not comparable "
                                         "in absolute value)" if prof.narrowed else ""),
              f"results store: {path}; cohorts: {', '.join(cohorts) if cohorts else 'none run yet'}",
              f"seeds per cell: {', '.join(map(str, grid.seeds))} (linear probes: one run)"]
    if any(r.config.get("cohort_kind") == "synthetic" for r in rows):
        header.append("data: embedded SYNTHETIC TCGA-like cohort — numbers show the harness works and rank methods on "
                      "planted signal; they are not TCGA results")
    random_init = sorted({r.model for r in rows if r.model.startswith(("gigapath", "titan", "modaltune"))
                          and not (r.config.get("options") or {}).get("weights")})
    if random_init:
        header.append(f"slide encoders RANDOMLY INITIALISED (no --weights checkpoint) in: {', '.join(random_init)}")
    not_registered = [label for name, label in grid.rows if name not in registry]
    if not_registered:
        header.append(f"not yet implemented here (—): {', '.join(not_registered)}")
    stored = {r.model for r in rows}
    header.extend(f"{label} (—): {need.reason}" for name, label in grid.rows
                  if (need := grid.local_text_model(name)) is not None and name not in stored)
    deltas = delta_rows(grid)
    if deltas:
        header.append(f"the paper publishes {delta_reference(grid.name)}'s Overall only; the other rows as changes "
                      "relative to a reference row, in its text (the last table: ours beside those)")
    shown = [r for r in rows if r.model in {name for name, _ in grid.rows}]
    header.extend(evaluation_lines(shown))
    if trials:
        labels = dict(grid.rows)
        header.append(f"{TUNED_MARK} tuned with Optuna on validation data only (the best of N trials per site and "
                      f"task, `python -m bench tune`): " + "; ".join(
                          f"{labels[m]}: {'/'.join(map(str, sorted(n)))} trial{'' if n == {1} else 's'}" for m, n in trials.items()))
    stats = table_intervals(path, grid, shown) if ci else None
    text = render(table_rows, grid.sites, rows, table_key=grid.name, title=grid.title, header_lines=header, fmt=fmt,
                  tasks=grid.sections or grid.tasks, overall=grid.overall, collapse_rule=COLLAPSE_RULE, ci=stats)
    return text + render_deltas(deltas, grid.sites, rows, fmt=fmt) if deltas else text


def table_intervals(path: Path, grid: GridSpec, rows: list) -> TableStats:
    """The bootstrap intervals and paired tests of ``grid``'s ``rows`` from their stored predictions."""
    with ResultStore(path) as results:
        return table_stats(rows, lambda r: results.prediction_set(r.run_id, r.site, r.task),
                           [name for name, _ in grid.rows], grid.sites, tasks=grid.tasks, overall=grid.overall)


TUNED_MARK = "‡"


def _tuned_trials(row) -> int | None:
    """The trial count of the study a stored row's run was tuned with (None: not tuned)."""
    value = (row.config.get("options") or {}).get("tuned_trials")
    return int(value) if value is not None else None


def prefer_tuned(rows: list) -> list:
    """Where a (model, site, task, seed) cell has tuned runs (``--params best``), its rows are those
    of the run tuned with the most trials (the latest of equals); cells never tuned keep every row."""
    best: dict[tuple, tuple[int, float]] = {}
    for row in rows:
        n = _tuned_trials(row)
        if n is not None:
            key = (row.model, row.site, row.task, row.seed)
            best[key] = max(best.get(key, (n, row.finished_at)), (n, row.finished_at))
    return [row for row in rows if (row.model, row.site, row.task, row.seed) not in best
            or (_tuned_trials(row), row.finished_at) == best[(row.model, row.site, row.task, row.seed)]]


def tuned_trials(rows: list) -> dict[str, set[int]]:
    """Model -> the trial counts its tuned rows were tuned with (only models with tuned rows)."""
    out: dict[str, set[int]] = {}
    for row in rows:
        n = _tuned_trials(row)
        if n is not None:
            out.setdefault(row.model, set()).add(n)
    return out


def delta_rows(grid: GridSpec) -> list[DeltaRow]:
    """The rows of ``grid`` the paper reports as relative changes (Table 8's ablations), each with the
    row it is compared with: the one its text names, else the table's reference row (ModalTune). A
    reference row outside ``grid`` (ABMIL (cat), Prov-Gigapath (Tuned)) is found by its label in the
    other tables, so its runs there are reused."""
    default = delta_reference(grid.name)
    if default is None:
        return []
    published = published_deltas(grid.name)
    names = {label: name for g in [grid, *GRIDS.values()] for name, label in reversed(g.rows)}
    out = []
    for name, label in grid.rows:
        if label == default:
            continue
        reference, changes = published.get(label, (default, {}))
        out.append(DeltaRow(name, label, names[reference], reference, changes))
    return out


def _setting_line(what: str, values: dict[str, set[str]], describe: dict[str, str]) -> str:
    """``what: value (meaning)`` when every model used one value, else the value of each model."""
    used = sorted(set().union(*values.values()))
    if len(used) == 1:
        return f"{what}: {used[0]}{describe.get(used[0], '')}"
    per_value = {v: sorted(m for m, vs in values.items() if v in vs) for v in used}
    return f"{what}: " + "; ".join(f"{v}{describe.get(v, '')} in {', '.join(ms)}" for v, ms in per_value.items())


def evaluation_lines(rows: list) -> list[str]:
    """The header lines naming the evaluation settings the table's runs used: the linear probes'
    preprocessing (every linear-probe row) and the text encoder ModalTune rows distilled."""
    from models.modaltune.projection import DEFAULT_TEXT_ENCODER

    probe: dict[str, set[str]] = {}
    text: dict[str, set[str]] = {}
    for row in rows:
        resolved = row.config.get("resolved_model") or {}
        options = resolved.get("run_options") or {}
        if "probe" in options:
            probe.setdefault(row.model, set()).add(str(options["probe"]))
        if row.regime == "text_distill":
            config = resolved.get("config") or {}
            encoder = config.get("text_encoder", (resolved.get("overrides") or {}).get("text_encoder", DEFAULT_TEXT_ENCODER))
            text.setdefault(row.model, set()).add(str(encoder))
    lines = []
    if probe:
        lines.append(_setting_line("linear-probe features (LP, transfer and ModalTune rows)", probe, PROBE_MEANING))
    if text:
        lines.append(_setting_line("ModalTune text targets embedded by", text, TEXT_MEANING))
    return lines


PROBE_MEANING = {"raw": " (as the ModalTune release: the embeddings as they are)",
                 "standardized": " (z-scored with the training patients' mean and std)"}
TEXT_MEANING = {"bow": " (offline stand-in for CONCH: TF-IDF + seeded Gaussian projection)",
                "conch": " (CONCH's text encoder, as the paper)"}
