"""``make report`` / ``python -m bench report``: one static page, ``runs/report/index.html``, with every
table the store can render, every figure, the cohort's summary, the profile and the encoders used —
from the results store and the runs' directories alone (nothing is trained; figure inputs are
cached, :mod:`bench.figures`). The same figures and tables can be logged to W&B (offline by default).

The page and its ``figures/`` folder are written into a private directory next to ``--out`` and
renamed into place when complete, so an interrupted report leaves the previous one as it was.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.figures import FigureContext, FigureResult, draw, load_context

log = logging.getLogger(__name__)

DEFAULT_REPORT_DIR = Path("runs") / "report"
FIGURES_DIR = "figures"
PAGE = "index.html"
#: Figures of the report, in page order. Attention and pathway attributions (the costly one: one
#: Integrated Gradients pass per patient and task) are drawn at the first of Table 2's sites, the others at all.
REPORT_FIGURES = ("km", "tsne", "attention", "pathways", "curves")
FIRST_SITE_ONLY = ("attention", "pathways")
SECTION_TITLES = {"km": "Kaplan–Meier curves (Fig. 6)", "tsne": "t-SNE of embeddings (Fig. 5)",
                  "attention": "Attention (Fig. 3c, d)", "pathways": "Pathway attributions (Fig. 3e, f)",
                  "curves": "Learning curves"}


@dataclass
class ReportSummary:
    """What a report holds: its page, the tables and figures drawn, what could not be drawn and why."""

    page: Path
    tables: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)
    wandb_dir: Path | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"page": str(self.page), "tables": self.tables, "figures": self.figures, "missing": self.missing,
                "wandb_dir": str(self.wandb_dir) if self.wandb_dir else None, "seconds": round(self.seconds, 1)}


def stored_tables(ctx: FigureContext) -> list[str]:
    """The tables (grid names) with at least one stored row of the context's profile."""
    from bench.grids import GRIDS

    models = {r.model for r in ctx.rows}
    return [name for name, grid in GRIDS.items() if models & {m for m, _ in grid.rows}]


def render_tables(ctx: FigureContext, names: list[str]) -> dict[str, dict[str, str]]:
    """``name -> {"md": …, "csv": …}``: each table rendered from the store as ``bench table --ci`` renders it
    (bootstrap intervals and paired tests from the stored predictions)."""
    from bench.reporting import render_table

    return {name: {fmt: render_table(name, store=ctx.store, profile=ctx.profile, fmt=fmt, ci=True)
                   for fmt in ("md", "csv")} for name in names}


def cohort_section(ctx: FigureContext) -> str:
    """Per cohort the runs used: patients per split, events, classes, RNA / WSI coverage per site."""
    from reports.html import missing_html, rows_table

    parts = []
    for path in sorted({r.cohort for r in ctx.rows}):
        rows = [r for r in ctx.rows if r.cohort == path]
        try:
            stats = ctx.cohort(rows[-1]).stats()
        except BenchError as err:
            parts.append(missing_html(f"cohort {path}", str(err)))
            continue
        kind = rows[-1].config.get("cohort_kind", "")
        parts.append(f"<h3>{path} ({kind}; fingerprint {stats['fingerprint']})</h3>")
        parts.append(rows_table(
            ["site", "train", "val", "test", "events", "censored", "classes (label: patients)", "RNA", "WSI"],
            [[site, s["train"], s["val"], s["test"], s["events"], s["censored"],
              " ".join(f"{k}:{v}" for k, v in s["classes"].items()), s["has_rna"], s["has_wsi"]]
             for site, s in stats["sites"].items()]))
    return "\n".join(parts) or "<p>no cohort</p>"


def profile_section(ctx: FigureContext) -> str:
    """The profile's settings, flattened (``distill.*`` for the text-distillation schedule)."""
    from bench.config import get_profile
    from reports.html import key_value_table

    values = get_profile(ctx.profile).model_dump()
    flat = {k: v for k, v in values.items() if k != "distill"}
    flat.update({f"distill.{k}": v for k, v in values["distill"].items()})
    return key_value_table(flat)


def encoder_rows(ctx: FigureContext) -> list[list[str]]:
    """One line per model holding a slide or text encoder: the encoder and its weights ("random init"
    when the run read no checkpoint)."""
    from bench.reporting import TEXT_MEANING

    lines: dict[tuple[str, str], set[str]] = {}
    for row in ctx.rows:
        options = row.config.get("options") or {}
        if row.model.startswith(("gigapath", "titan", "modaltune")):
            encoder = "TITAN" if "titan" in row.model else "Prov-GigaPath"
            lines.setdefault((row.model, f"slide encoder: {encoder}"), set()).add(
                f"weights {options['weights']}" if options.get("weights") else "random init")
        if row.regime == "text_distill":
            config = (row.config.get("resolved_model") or {}).get("config") or {}
            name = str(config.get("text_encoder", "bow"))
            weights = options.get("text_weights")
            lines.setdefault((row.model, f"text encoder: {name}{TEXT_MEANING.get(name, '')}"), set()).add(
                f"weights {weights}" if weights else ("no weights (built offline)" if name == "bow"
                                                      else "weights not recorded"))
    return [[model, what, "; ".join(sorted(weights))] for (model, what), weights in sorted(lines.items())]


def draw_figures(ctx: FigureContext, figures_dir: Path) -> tuple[dict[str, list[FigureResult]], dict[str, str]]:
    """Every report figure drawn into ``figures_dir``; a figure whose inputs are missing is reported with
    its reason instead of stopping the report."""
    from bench.figures import table2_sites

    drawn, missing = {}, {}
    for name in REPORT_FIGURES:
        started = time.perf_counter()
        sites = table2_sites(ctx, None)[:1] if name in FIRST_SITE_ONLY else None
        try:
            drawn[name] = draw(name, ctx, figures_dir, sites=sites)
        except BenchError as err:
            missing[name] = str(err)
            log.warning("report: figure %s not drawn: %s", name, err)
        log.info("report: figure %s in %.1f s", name, time.perf_counter() - started)
    return drawn, missing


def page_html(ctx: FigureContext, tables: dict[str, dict[str, str]], drawn: dict[str, list[FigureResult]],
              missing: dict[str, str]) -> str:
    """The report page (relative image paths under ``figures/``)."""
    from bench.grids import GRIDS
    from reports.html import Section, figure_html, markdown_table_html, missing_html, render_page, rows_table

    sections = [Section("tables", "Tables", "\n".join(
        f'<div id="table-{name}">{markdown_table_html(text["md"])}</div>' for name, text in tables.items())
        or "<p>no table has stored runs</p>")]
    for name in REPORT_FIGURES:
        if name in drawn:
            body = "\n".join(figure_html(f"{FIGURES_DIR}/{result.paths[0].name}", result.caption, result.notes)
                             for result in drawn[name])
        else:
            body = missing_html(SECTION_TITLES[name], missing.get(name, "not drawn"))
        sections.append(Section(f"figure-{name}", SECTION_TITLES[name], body))
    sections.append(Section("cohort", "Cohort", cohort_section(ctx)))
    sections.append(Section("profile", f"Profile: {ctx.profile}", profile_section(ctx)))
    sections.append(Section("encoders", "Slide and text encoders",
                            rows_table(["model", "encoder", "weights"], encoder_rows(ctx)) if encoder_rows(ctx)
                            else "<p>no run holds a slide or text encoder</p>"))
    intro = [f"results store: {ctx.store}; profile {ctx.profile}; {len(ctx.rows)} stored rows; runs directory: "
             f"{ctx.runs_dir}",
             f"tables: {', '.join(GRIDS[t].title.split(':')[0] for t in tables) or 'none'}; figures drawn from stored "
             "results and run artifacts only (nothing retrained); PDF versions beside each PNG in figures/"]
    return render_page("modaltune-bench report", intro, sections)


def log_to_wandb(ctx: FigureContext, stage: Path, tables: dict[str, dict[str, str]],
                 drawn: dict[str, list[FigureResult]], mode: str) -> Path:
    """Log every figure (``wandb.Image``) and table (``wandb.Table`` of its CSV) to one W&B run under
    ``stage/wandb`` (``mode``: offline or online); returns the run's directory."""
    import io

    import pandas as pd
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "modaltune-bench"), name=f"report-{ctx.profile}",
                     dir=str(stage), mode=mode, job_type="report",
                     config={"profile": ctx.profile, "store": str(ctx.store), "rows": len(ctx.rows)})
    try:
        images = {f"figures/{result.name}": wandb.Image(str(result.paths[0]), caption=result.caption)
                  for results in drawn.values() for result in results}
        tables_logged = {f"tables/{name}": wandb.Table(dataframe=pd.read_csv(io.StringIO(text["csv"]),
                                                                             keep_default_na=False).astype(str))
                         for name, text in tables.items()}
        run.log({**images, **tables_logged})
        run_dir = Path(run.dir).parent
    finally:
        run.finish()
    return run_dir


def build_report(out: str | Path = DEFAULT_REPORT_DIR, *, store: str | Path | None = None, profile: str | None = None,
                 runs_dir: str | Path | None = None, weights: str | None = None, wandb: str = "offline",
                 seed: int = 0) -> ReportSummary:
    """Write the report into ``out`` (see the module docstring); ``wandb``: offline, online or disabled."""
    started = time.perf_counter()
    ctx = load_context(store, profile, runs_dir, weights, seed)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BenchError(f"{out} is a file; pass a directory as --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        names = stored_tables(ctx)
        tables = render_tables(ctx, names)
        drawn, missing = draw_figures(ctx, stage / FIGURES_DIR)
        summary = ReportSummary(page=out / PAGE, tables=names, missing=missing,
                                figures=[r.name for results in drawn.values() for r in results])
        (stage / PAGE).write_text(page_html(ctx, tables, drawn, missing), encoding="utf-8")
        if wandb != "disabled":
            summary.wandb_dir = out / log_to_wandb(ctx, stage, tables, drawn, wandb).relative_to(stage)
        os.chmod(stage, 0o755)
        _replace_dir(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage)
    summary.seconds = time.perf_counter() - started
    return summary


def _replace_dir(new: Path, target: Path) -> None:
    """Move the complete directory ``new`` onto ``target`` (an earlier report is removed only after)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
