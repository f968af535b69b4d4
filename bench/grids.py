"""Tables as run grids: one declaration per paper table, and the resumable grid runner.

A grid is (rows = registry names in the paper's order with the paper's labels, columns = sites,
tasks, seeds). Running a grid runs only the (model, site, task, seed) cells whose result is not in
the store; every run writes its row only when complete, so a killed grid simply resumes.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config import get_profile
from bench.data.sites import IN_DOMAIN_SITES, OOD_SITES
from bench.errors import BenchError, unknown_name
from bench.registry import all_models
from bench.results import ResultStore, check_store, store_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GridSpec:
    """A paper table: ``rows`` are ``(registry name, paper label)`` in the paper's order.

    ``sources`` maps a row to the site its run trains on when that differs from the table's columns
    (Table 3: models tuned on BRCA, or pan-cancer, and deployed out of distribution).
    """

    name: str
    title: str
    rows: tuple[tuple[str, str], ...]
    sites: tuple[str, ...]
    tasks: tuple[str, ...] = ("subtype", "survival")
    seeds: tuple[int, ...] = (0, 1, 2)
    overall: bool = True
    sources: tuple[tuple[str, str], ...] = ()


TABLE2 = GridSpec(
    name="table2",
    title="Table 2: cancer subtype prediction (balanced accuracy) and survival prediction (C-index)",
    rows=(
        ("gigapath_lp", "Prov-Gigapath LP"), ("abmil", "ABMIL"), ("transmil", "TransMIL"),
        ("gigapath_tuned", "Prov-Gigapath (Tuned)"), ("mlp", "MLP"), ("snn", "SNN"), ("smlp", "S-MLP"),
        ("genemixer", "Gene Mixer"), ("mcat", "MCAT"), ("survpath", "SurvPath"), ("abmil_cat", "ABMIL (cat)"),
        ("abmil_kp", "ABMIL (KP)"), ("transmil_cat", "TransMIL (cat)"), ("transmil_kp", "TransMIL (KP)"),
        ("gigapath_cat", "Prov-Gigapath (cat)"), ("gigapath_kp", "Prov-Gigapath (KP)"),
        ("modaltune", "ModalTune (Ours)"), ("modaltune_pancancer", "ModalTune Pan-Cancer (Ours)"),
    ),
    sites=IN_DOMAIN_SITES,
)

TABLE9 = GridSpec(
    name="table9",
    title="Table 9: TITAN as the slide encoder — subtype (balanced accuracy) and survival (C-index)",
    rows=(("titan_lp", "TITAN LP"), ("titan_tuned", "TITAN (Tuned)"), ("titan_cat", "TITAN (cat)"),
          ("titan_kp", "TITAN (KP)"), ("modaltune_titan", "ModalTune TITAN")),
    sites=IN_DOMAIN_SITES,
)

TABLE3 = GridSpec(
    name="table3",
    title="Table 3: out-of-distribution sites — subtype (balanced accuracy) and survival (C-index)",
    rows=(("gigapath_cat", "Prov-Gigapath Sup. (cat)"), ("gigapath_lp", "Prov-Gigapath LP"),
          ("gigapath_cat_cls", "Prov-Gigapath Cls. (cat)"), ("gigapath_cat_surv", "Prov-Gigapath Surv. (cat)"),
          ("modaltune", "ModalTune"), ("modaltune_pancancer", "ModalTune Pan-Cancer")),
    sites=OOD_SITES,
    overall=False,
    sources=(("gigapath_cat_cls", "BRCA"), ("gigapath_cat_surv", "BRCA"), ("modaltune", "BRCA"),
             ("modaltune_pancancer", "PANCANCER")),
)

GRIDS: dict[str, GridSpec] = {g.name: g for g in (TABLE2, TABLE3, TABLE9)}


def get_grid(name: str) -> GridSpec:
    key = name.lower()
    if key not in GRIDS:
        raise unknown_name("table", name, list(GRIDS))
    return GRIDS[key]


@dataclass(frozen=True)
class Cell:
    """One run of a grid."""

    model: str
    site: str
    task: str
    seed: int


def grid_cells(grid: GridSpec, *, models: list[str] | None = None, sites: list[str] | None = None,
               seeds: list[int] | None = None) -> list[Cell]:
    """The runs of ``grid`` for the registered models (optionally restricted)."""
    registry = all_models()
    names = [name for name, _ in grid.rows if name in registry]
    if models is not None:
        declared = {name for name, _ in grid.rows}
        for m in models:
            if m not in declared:
                raise BenchError(f"model {m} is not a row of {grid.name}; rows: {', '.join(sorted(declared))}")
        names = [n for n in names if n in models]
    cells = []
    for name in names:
        entry = registry[name]
        run_seeds = (0,) if entry.regime == "linear_probe" else tuple(seeds if seeds is not None else grid.seeds)
        tasks = ("multitask",) if entry.tasks == ("multitask",) else tuple(t for t in grid.tasks if t in entry.tasks)
        source = dict(grid.sources).get(name)
        for site in ([source] if source else ["PANCANCER"] if entry.pancancer else (sites or grid.sites)):
            for task in tasks:
                for seed in run_seeds:
                    cells.append(Cell(name, site, task, seed))
    return cells


def _run_cell(args: dict[str, Any]) -> dict[str, Any]:
    """Worker: run one cell in this process (a spawned worker starts without the CLI's logging set-up)."""
    from bench.logs import quiet_libraries
    from bench.runner import RunRequest, execute

    quiet_libraries()
    return execute(RunRequest(**args))


def run_grid(grid: GridSpec, *, profile: str, cohort_dir: str | Path | None, store: str | Path | None,
             models: list[str] | None = None, sites: list[str] | None = None, seeds: list[int] | None = None,
             jobs: int | None = None, wandb: str = "offline", progress: bool = True) -> dict[str, Any]:
    """Run the missing cells of ``grid``; returns counts and the failures (cell, message)."""
    from tqdm.auto import tqdm

    from bench.registry import get_model
    from bench.runner import ensure_cohort, result_keys, run_config

    prof = get_profile(profile)
    path = store_path(str(store) if store else None)
    check_store(path)  # before the embedded cohort is generated
    cohort = ensure_cohort(cohort_dir, prof.scale)
    sites = [cohort.resolve_site(s) for s in (sites or [s for s in grid.sites if s in cohort.sites])]
    sources = {site for _, site in grid.sources if site != "PANCANCER"}
    missing_sources = sorted(sources - set(cohort.sites))
    if missing_sources:
        raise BenchError(f"{grid.name} deploys models tuned on {', '.join(missing_sources)}, which cohort "
                         f"{cohort.root} lacks")
    cells = grid_cells(grid, models=models, sites=sites, seeds=seeds)
    with ResultStore(path) as results:
        missing = [c for c in cells
                   if not results.has(run_config(c.model, c.site, c.task, c.seed, prof, cohort).run_id(),
                                      result_keys(get_model(c.model), cohort, c.site, c.task))]
    log.info("%s: %d runs, %d already stored, %d to run", grid.name, len(cells), len(cells) - len(missing), len(missing))
    base = dict(profile=prof.name, cohort=str(cohort.root), store=str(path), wandb=wandb)
    requests = [dict(base, model=c.model, site=c.site, task=c.task, seed=c.seed) for c in missing]
    failures: list[dict[str, str]] = []
    jobs = jobs or prof.grid_jobs
    bar = tqdm(total=len(requests), desc=f"{grid.name} ({prof.name})", unit="run", disable=not progress)
    if jobs <= 1 or len(requests) <= 1:
        for req in requests:
            _collect(lambda: _run_cell(req), req, failures)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_run_cell, req): req for req in requests}
            for future in as_completed(futures):
                _collect(future.result, futures[future], failures)
                bar.update()
    bar.close()
    return {"grid": grid.name, "profile": prof.name, "cohort": str(cohort.root), "store": str(path),
            "runs": len(cells), "ran": len(requests) - len(failures), "cached": len(cells) - len(missing),
            "failed": failures}


def _collect(call, req: dict[str, Any], failures: list[dict[str, str]]) -> None:
    try:
        call()
    except BenchError as err:
        failures.append({"model": req["model"], "site": req["site"], "task": req["task"], "seed": req["seed"],
                         "error": str(err)})
        log.error("%s %s %s seed %s failed: %s", req["model"], req["site"], req["task"], req["seed"], err)

