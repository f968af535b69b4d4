"""Tables as run grids: one declaration per paper table, and the resumable grid runner.

A grid is (rows = registry names in the paper's order with the paper's labels, columns = sites,
tasks, seeds). Running a grid runs only the (model, site, task, seed) cells whose result is not in
the store; every run writes its row only when complete, so a killed grid simply resumes.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablations.modaltune import MEDLLAMA_ENV, MEDLLAMA_MODEL_ID
from bench.config import get_profile
from bench.regimes import source_site
from models.paper.sites import IN_DOMAIN_SITES, OOD_SITES
from bench.errors import BenchError, unknown_name
from bench.registry import all_models
from models.registry import ModelEntry
from bench.results import ResultStore, check_store, store_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalTextModel:
    """What a row needs that the repository cannot hold: the local ``hf:DIR`` model directory whose text
    embeddings it distils, named by the environment variable ``env`` (Table 8's MedLlama row). A grid
    runs the row with ``--text-encoder hf:DIR`` (its cache name as the model's ``text_encoder``); without
    the variable the row is skipped and reported as not run, never run on other text."""

    env: str
    needs: str

    @property
    def reason(self) -> str:
        """Why the row is not run without the directory."""
        return f"not run: needs {self.needs} (set {self.env}=DIR)"

    def directory(self) -> Path | None:
        """The directory ``env`` names, None when unset; one that is not a directory is a BenchError."""
        value = os.environ.get(self.env, "").strip()
        if not value:
            return None
        if not Path(value).is_dir():
            raise BenchError(f"{self.env}={value} is not a local model directory; point it at {self.needs} "
                             "(config.json, the weights and the tokenizer files), or unset it to skip the row")
        return Path(value)

    def evaluation(self, directory: Path) -> dict[str, Any]:
        """The row's text settings (``RunRequest`` fields) for the model in ``directory``."""
        from models.text.hf import hf_cache_name

        return {"text_spec": f"hf:{directory}", "overrides": {"text_encoder": hf_cache_name(directory)}}


@dataclass(frozen=True)
class GridSpec:
    """A paper table: ``rows`` are ``(registry name, paper label)`` in the paper's order.

    A row whose model reaches an out-of-distribution column by deployment (Tables 3 and 11: tuned on
    BRCA, or pan-cancer) runs once at its source site (:func:`bench.regimes.source_site`).
    """

    name: str
    title: str
    rows: tuple[tuple[str, str], ...]
    sites: tuple[str, ...]
    tasks: tuple[str, ...] = ("subtype", "survival")
    seeds: tuple[int, ...] = (0, 1, 2)
    overall: bool = True
    #: Linear probes run once (a frozen encoder's probes do not depend on the seed), unless the seed
    #: draws part of what is probed (Table 7's random projector: mean ± std over the seeds, as the paper).
    probe_every_seed: bool = False
    #: Rows that distil a local model's text (``(registry name, LocalTextModel)``): run only when it is given.
    local_text: tuple[tuple[str, LocalTextModel], ...] = ()
    #: The rendered sections (:data:`reports.tables.SECTIONS`), when they are not the tasks.
    sections: tuple[str, ...] = ()

    def local_text_model(self, name: str) -> LocalTextModel | None:
        """The local text model row ``name`` needs, None for a row that needs none."""
        return dict(self.local_text).get(name)

    def skipped(self) -> dict[str, str]:
        """``{row name: reason}`` of the rows this grid cannot run here (their local model is not given)."""
        return {name: need.reason for name, need in self.local_text if need.directory() is None}


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

TABLE8 = GridSpec(
    name="table8",
    title="Table 8: ModalTune ablations — subtype (balanced accuracy) and survival (C-index)",
    rows=(("modaltune_single_modal", "Single Modal"), ("modaltune_no_text", "No Text Embedding"),
          ("modaltune_single_task", "Single Task Prompt"), ("abmil_cat_text", "ABMIL (cat) w/ text emb."),
          ("modaltune_lora", "ModalTune w/ LoRA"), ("modaltune_medllama", "ModalTune w/ MedLlama v3.1"),
          ("modaltune_no_projector", "No Projector"),
          ("modaltune_trainable_projector", "Trainable Projector"),
          ("modaltune_model_side_projector", "Model-side Projector"), ("modaltune", "ModalTune"),
          # beyond the paper (registered with beyond_paper=True): rendered last, in a block of their own
          ("modaltune_centered", "ModalTune, centred targets [beyond the paper]"),
          ("modaltune_t007", "ModalTune, temperature 0.07 [beyond the paper]"),
          ("modaltune_std_probe", "ModalTune, standardised probe [beyond the paper]"),
          ("modaltune_centered_std", "ModalTune, centred targets + standardised probe [beyond the paper]"),
          ("modaltune_centered_narrow", "ModalTune, centred targets, 64-d output [beyond the paper]")),
    sites=IN_DOMAIN_SITES,
    local_text=(("modaltune_medllama",
                 LocalTextModel(MEDLLAMA_ENV, f"a local MedLlama directory ({MEDLLAMA_MODEL_ID})")),),
)

TABLE3 = GridSpec(
    name="table3",
    title="Table 3: out-of-distribution sites — subtype (balanced accuracy) and survival (C-index)",
    rows=(("gigapath_cat", "Prov-Gigapath Sup. (cat)"), ("gigapath_lp", "Prov-Gigapath LP"),
          ("gigapath_cat_cls", "Prov-Gigapath Cls. (cat)"), ("gigapath_cat_surv", "Prov-Gigapath Surv. (cat)"),
          ("modaltune", "ModalTune"), ("modaltune_pancancer", "ModalTune Pan-Cancer")),
    sites=OOD_SITES,
    overall=False,
)

TABLE7 = GridSpec(
    name="table7",
    title="Table 7: linear probes of the general text embedding, as it is and after the random projection",
    rows=(("text_probe", "Text Embedding"), ("text_probe_projected", "Text Embedding after random projection")),
    sites=IN_DOMAIN_SITES,
    probe_every_seed=True,
    sections=("subtype", "duration_bins", "survival_nostage", "survival"),
)

TABLE10 = GridSpec(
    name="table10",
    title="Table 10: clinical data — subtype (balanced accuracy) and survival (C-index)",
    rows=(("modaltune", "ModalTune"), ("modaltune_clinical", "ModalTune w/ Clinical")),
    sites=IN_DOMAIN_SITES,
)

TABLE11 = GridSpec(
    name="table11",
    title="Table 11: TITAN out of distribution — subtype (balanced accuracy) and survival (C-index)",
    rows=(("titan_lp", "TITAN LP"), ("titan_cat", "TITAN Sup. (cat)"), ("titan_cat_cls", "TITAN Cls. (cat)"),
          ("titan_cat_surv", "TITAN Surv. (cat)"), ("modaltune_titan", "ModalTune TITAN")),
    sites=OOD_SITES,
    overall=False,
)

GRIDS: dict[str, GridSpec] = {g.name: g for g in (TABLE2, TABLE3, TABLE7, TABLE8, TABLE9, TABLE10, TABLE11)}


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
    """The runs of ``grid`` for the registered models (optionally restricted), without the rows it cannot
    run here (:meth:`GridSpec.skipped`)."""
    registry = all_models()
    skipped = grid.skipped()
    names = [name for name, _ in grid.rows if name in registry and name not in skipped]
    if models is not None:
        declared = {name for name, _ in grid.rows}
        for m in models:
            if m not in declared:
                raise BenchError(f"model {m} is not a row of {grid.name}; rows: {', '.join(sorted(declared))}")
        names = [n for n in names if n in models]
    cells = []
    for name in names:
        entry = registry[name]
        one_run = entry.regime == "linear_probe" and not grid.probe_every_seed
        run_seeds = (0,) if one_run else tuple(seeds if seeds is not None else grid.seeds)
        tasks = ("multitask",) if entry.tasks == ("multitask",) else tuple(t for t in grid.tasks if t in entry.tasks)
        for site in dict.fromkeys(source_site(entry, target) for target in (sites or grid.sites)):
            for task in tasks:
                for seed in run_seeds:
                    cells.append(Cell(name, site, task, seed))
    return cells


Worker = Callable[[dict[str, Any]], dict[str, Any]]  # runs one request (RunRequest fields) and returns its result


def _run_cell(args: dict[str, Any]) -> dict[str, Any]:
    """Worker: run one cell in this process (a spawned worker starts without the CLI's logging set-up)."""
    from bench.logs import quiet_libraries
    from bench.runner import RunRequest, execute

    quiet_libraries()
    return execute(RunRequest(**args))


def cell_evaluation(regime: str, evaluation: dict[str, Any] | None) -> dict[str, Any]:
    """The part of a grid's evaluation settings (``RunRequest`` fields ``text_spec``, ``text_weights``,
    ``overrides``, ``run_options`` from ``grid --text-encoder/--text-weights/--probe``) that a row of
    ``regime`` reads: the text settings for text_distill rows, each run option where the regime reads it."""
    from models.run_options import regime_options

    evaluation = evaluation or {}
    out: dict[str, Any] = {}
    if regime == "text_distill":
        out.update({k: evaluation[k] for k in ("text_spec", "text_weights", "overrides") if evaluation.get(k)})
    options = {k: v for k, v in (evaluation.get("run_options") or {}).items() if k in regime_options(regime)}
    if options:
        out["run_options"] = options
    return out


def row_evaluation(grid: GridSpec, name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` (:func:`cell_evaluation`) of row ``name``, its local text model's applied on top: its
    ``hf:DIR`` replaces any ``--text-encoder`` (and drops ``--text-weights``, read by CONCH only)."""
    need = grid.local_text_model(name)
    directory = need.directory() if need is not None else None
    if directory is None:
        return settings
    own = need.evaluation(directory)
    out = {k: v for k, v in settings.items() if k != "text_weights"}
    return {**out, "text_spec": own["text_spec"], "overrides": {**settings.get("overrides", {}), **own["overrides"]}}


def run_grid(grid: GridSpec, *, profile: str, cohort_dir: str | Path | None, store: str | Path | None,
             models: list[str] | None = None, sites: list[str] | None = None, seeds: list[int] | None = None,
             jobs: int | None = None, wandb: str = "offline", progress: bool = True,
             evaluation: dict[str, Any] | None = None, tuning: dict[str, Any] | None = None,
             executor: str | None = None, slurm: Any = None) -> dict[str, Any]:
    """Run the missing cells of ``grid``; returns counts and the failures (run id, cell, one-line reason).

    ``evaluation``: the evaluation settings of every row that reads them (:func:`cell_evaluation`).
    ``tuning``: ``{"params": "best", "tune_seed": K, "tune_storage": URL}`` runs every row that has a
    search space with its study's best values (:func:`bench.tuning.best_request`; rows with nothing
    to tune run as they are). ``executor``: ``local`` or ``slurm`` submits one job per missing run
    (:mod:`bench.executors`; ``slurm``: its :class:`~bench.executors.SlurmSettings`); only this
    process writes the store. ``jobs``: runs at once (jobs out at once; default: the profile's, or
    every run for SLURM).

    A cell another process is training (a second grid on the same store) is skipped at first and
    waited for at the end, so each run is trained once and every row stored once. A failing cell,
    even a crashed worker process, never stops the grid: the other cells run, and it is reported.
    """
    from tqdm.auto import tqdm

    from bench.regimes import regime_for
    from bench.runner import RunRequest, ensure_cohort, plan_run, run_config

    prof = get_profile(profile)
    path = store_path(str(store) if store else None)
    check_store(path)  # before the embedded cohort is generated
    cohort = ensure_cohort(cohort_dir, prof.scale)
    sites = [cohort.resolve_site(s) for s in (sites or [s for s in grid.sites if s in cohort.sites])]
    cells = grid_cells(grid, models=models, sites=sites, seeds=seeds)
    registry = all_models()
    settings = [{**row_evaluation(grid, c.model, cell_evaluation(registry[c.model].regime, evaluation)),
                 **(tuning if tuning and registry[c.model].tuning_space() else {})} for c in cells]
    plans = [plan_run(RunRequest(model=c.model, site=c.site, task=c.task, seed=c.seed, profile=prof.name,
                                 store=str(path), **extra), cohort) for c, extra in zip(cells, settings)]
    settings = [planned_settings(extra, plan) for extra, plan in zip(settings, plans)]
    run_ids = [run_config(plan).run_id() for plan in plans]
    with ResultStore(path) as results:
        missing = [(c, run_id, extra) for c, plan, run_id, extra in zip(cells, plans, run_ids, settings)
                   if not results.has(run_id, regime_for(plan.entry).result_keys(plan))]
    missing = longest_first(missing, registry)
    log.info("%s: %d runs, %d already stored, %d to run", grid.name, len(cells), len(cells) - len(missing), len(missing))
    base = dict(profile=prof.name, cohort=str(cohort.root), store=str(path), wandb=wandb)
    requests = [dict(base, model=c.model, site=c.site, task=c.task, seed=c.seed, wait=False, **extra)
                for c, _, extra in missing]
    bar = tqdm(total=len(requests), desc=f"{grid.name} ({prof.name})", unit="run", disable=not progress)
    if executor is not None:
        from bench.executors import GridJobs, run_grid_jobs

        job_grid = GridJobs(requests, [run_id for _, run_id, _ in missing], _missing_keys(plans, run_ids, missing),
                            path, executor, slurm, jobs or (prof.grid_jobs if executor == "local" else None))
        outcomes, errors = run_grid_jobs(job_grid, bar)
        bar.close()
        return _summary(grid, prof.name, cohort, path, cells, missing, requests, outcomes, errors, models)
    jobs = jobs or prof.grid_jobs
    outcomes, errors = _run_requests(requests, jobs, bar)
    deferred = [i for i, r in outcomes.items() if r.get("status") == "claimed"]
    if deferred:
        log.info("%s: %d runs are being trained by another process; waiting for them", grid.name, len(deferred))
        bar.n -= len(deferred)  # not done yet: counted again when they are
        bar.refresh()
        again, again_errors = _run_requests([dict(requests[i], wait=True) for i in deferred], jobs, bar)
        outcomes.update({deferred[j]: r for j, r in again.items()})
        errors.update({deferred[j]: e for j, e in again_errors.items()})
    bar.close()
    return _summary(grid, prof.name, cohort, path, cells, missing, requests, outcomes, errors, models)


def planned_settings(extra: dict[str, Any], plan: Any) -> dict[str, Any]:
    """A cell's request settings with ``--params best`` resolved by its plan into the values themselves
    (overrides, training settings, the study), so a worker or a job never reads the Optuna storage."""
    if extra.get("params") is None:
        return extra
    out = {k: v for k, v in extra.items() if k not in ("params", "tune_seed", "tune_storage")}
    return {**out, "overrides": dict(plan.overrides), "training": dict(plan.training), "tuning": dict(plan.tuning)}


def _missing_keys(plans: list[Any], run_ids: list[str], missing: list[tuple]) -> list[list[tuple[str, str]]]:
    """The result keys of each missing run, in ``missing``'s order."""
    from bench.regimes import regime_for

    by_id = {run_id: regime_for(plan.entry).result_keys(plan) for plan, run_id in zip(plans, run_ids)}
    return [by_id[run_id] for _, run_id, _ in missing]


def _summary(grid: GridSpec, profile: str, cohort: Any, path: Path, cells: list[Cell], missing: list[tuple],
             requests: list[dict[str, Any]], outcomes: dict[int, dict[str, Any]],
             errors: dict[int, str], models: list[str] | None) -> dict[str, Any]:
    """The grid's summary (``grid --json``): counts, each failure, and the requested rows this machine
    cannot run (:meth:`GridSpec.skipped`)."""
    failures = [_failure(requests[i], missing[i][1], errors[i]) for i in sorted(errors)]
    statuses = [r.get("status") for r in outcomes.values()]
    skipped = [{"model": name, "reason": reason} for name, reason in grid.skipped().items()
               if models is None or name in models]
    for row in skipped:
        log.warning("%s: %s %s", grid.name, row["model"], row["reason"])
    return {"grid": grid.name, "profile": profile, "cohort": str(cohort.root), "store": str(path),
            "runs": len(cells), "ran": statuses.count("ran"),
            "cached": len(cells) - len(missing) + statuses.count("cached"), "failed": failures, "skipped": skipped}


def cost_rank(entry: ModelEntry) -> int:
    """A coarse rank of how long a run of ``entry`` takes (higher: longer), for scheduling only: a
    pan-cancer distillation, then a per-site one, then models holding a slide encoder or TransMIL,
    then the rest (seconds each on the ``small`` profile)."""
    if entry.regime == "text_distill":
        return 3 if entry.pancancer else 2
    return 1 if entry.family == "slide_encoders" or "transmil" in entry.name else 0


def longest_first(missing: list[tuple[Any, str, dict[str, Any]]], registry: dict[str, ModelEntry]) -> list:
    """``missing`` (cells with their run ids and settings) reordered longest first (stable within a rank):
    with a pool of workers, a long run started last would leave the other workers idle at the end. The
    order changes no result: every run is seeded and trained on its own."""
    return sorted(missing, key=lambda item: -cost_rank(registry[item[0].model]))


def _run_requests(requests: list[dict[str, Any]], jobs: int, bar: Any,
                  worker: Worker | None = None) -> tuple[dict[int, dict[str, Any]], dict[int, str]]:
    """Run each request with ``worker``, in this process (``jobs`` <= 1) or in a pool of ``jobs``
    spawned processes; returns (results, one-line errors), both keyed by request index.

    A worker that dies (killed, out of memory, a crash in native code) breaks the whole pool, and
    the pool cannot say whose run killed it: the runs it left unfinished are retried one at a time
    in a fresh single-worker pool, so the culprit alone fails (a retry of a run that had already
    stored its rows returns them as cached). ``worker`` defaults to :func:`_run_cell`.
    """
    worker = worker or _run_cell
    results: dict[int, dict[str, Any]] = {}
    errors: dict[int, str] = {}
    if jobs <= 1 or len(requests) <= 1:
        for i, req in enumerate(requests):
            _collect(lambda: worker(req), i, req, results, errors)
            bar.update()
        return results, errors
    broken: list[int] = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(worker, req): i for i, req in enumerate(requests)}
        for future in as_completed(futures):
            i = futures[future]
            if isinstance(future.exception(), BrokenProcessPool):
                broken.append(i)
                continue
            _collect(future.result, i, requests[i], results, errors)
            bar.update()
    if broken:
        log.warning("a grid worker process died; retrying its %d unfinished runs one at a time", len(broken))
        _run_isolated(requests, sorted(broken), worker, results, errors, bar)
    return results, errors


def _run_isolated(requests: list[dict[str, Any]], indices: list[int], worker: Worker,
                  results: dict[int, dict[str, Any]], errors: dict[int, str], bar: Any) -> None:
    """Run ``requests[i]`` for each index, one at a time in a single-worker pool replaced whenever
    its process dies, so that a death is charged to the one run that caused it."""
    pool: ProcessPoolExecutor | None = None
    try:
        for i in indices:
            pool = pool or ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"))
            future = pool.submit(worker, requests[i])
            if isinstance(future.exception(), BrokenProcessPool):
                errors[i] = "its worker process died (killed, out of memory, or a crash in native code)"
                _log_failure(requests[i], errors[i])
                pool.shutdown()
                pool = None
            else:
                _collect(future.result, i, requests[i], results, errors)
            bar.update()
    finally:
        if pool is not None:
            pool.shutdown()


def _collect(call: Callable[[], dict[str, Any]], i: int, req: dict[str, Any], results: dict[int, dict[str, Any]],
             errors: dict[int, str]) -> None:
    """Store ``call()``'s result under ``i``, or its exception as a one-line reason: any Exception is
    a failed run, never the end of the grid (KeyboardInterrupt still stops it)."""
    try:
        results[i] = call()
    except Exception as err:  # noqa: BLE001 - a grid reports a failed run and goes on
        errors[i] = _one_line(err)
        _log_failure(req, errors[i])
        if not isinstance(err, BenchError):
            log.debug("traceback of the failed run", exc_info=err)


def _one_line(err: BaseException) -> str:
    """An exception as one line: a BenchError's message (its lines joined), else ``Type: message``."""
    text = " ".join(str(err).split())
    if isinstance(err, BenchError):
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _log_failure(req: dict[str, Any], reason: str) -> None:
    log.error("%s %s %s seed %s failed: %s", req["model"], req["site"], req["task"], req["seed"], reason)


def _failure(req: dict[str, Any], run_id: str, reason: str) -> dict[str, Any]:
    """A failed run as the grid reports it (``grid --json``'s ``failed`` list)."""
    return {"run_id": run_id, "model": req["model"], "site": req["site"], "task": req["task"], "seed": req["seed"],
            "error": reason}
