"""One experiment, end to end: resolve and validate the configuration, skip it if stored, train,
evaluate and store — the only path by which a result reaches the results store.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.config import RunConfig, get_profile
from bench.data.cohort import Cohort
from bench.errors import BenchError
from bench.regimes import PANCANCER, Regime, RunEnv, RunPlan, regime_for
from bench.regimes.base import build_entry
from bench.registry import get_model
from bench.results import Lease, ResultRow, ResultStore, check_store
from models.base import ModelContext
from models.paper.sites import ALL_SITES
from models.registry import ModelEntry

log = logging.getLogger(__name__)
DEFAULT_RUNS_DIR = Path("runs")
CLAIM_POLL_S = 2.0  # how often a run waiting for another process's claim looks again


@dataclass
class RunRequest:
    """What a user asks for; :func:`execute` resolves it against the registry and the cohort."""

    model: str
    site: str
    task: str | None = None
    seed: int = 0
    profile: str = "small"
    cohort: str | Path | None = None
    store: str | Path | None = None
    force: bool = False
    wandb: str = "offline"
    weights: str | Path | None = None
    progress: bool = False
    runs_dir: Path = DEFAULT_RUNS_DIR
    wait: bool = True  # run claimed by another live process: wait for its result (else return status "claimed")
    overrides: dict[str, Any] = field(default_factory=dict)  # model overrides on top of the registered ones
    run_options: dict[str, Any] = field(default_factory=dict)  # models.run_options on top of the registered ones
    text_spec: str | None = None  # --text-encoder: where missing text embeddings come from (bow, conch, hf:DIR)
    text_weights: str | Path | None = None  # --text-weights: the text encoder's local checkpoint (conch)
    training: dict[str, Any] = field(default_factory=dict)  # the regime's optimisation settings replaced (lr, ...)
    params: str | None = None  # --params best: the tuned parameters of the run's Optuna study (bench.tuning)
    tune_seed: int = 0  # --tune-seed: the seed the study was tuned with
    tune_storage: str | None = None  # --storage: Optuna storage URL (default: optuna.sqlite beside the store)
    tuning: dict[str, Any] = field(default_factory=dict)  # where tuned values came from: {"study", "trials"}


def default_cohort_dir(scale: str) -> Path:
    """Where the embedded synthetic cohort of a scale lives (``$BENCH_COHORTS`` or ``cohorts/``)."""
    return Path(os.environ.get("BENCH_COHORTS", "cohorts")) / f"synthetic-{scale}"


def ensure_cohort(path: str | Path | None, scale: str) -> Cohort:
    """Load ``path``, or the embedded synthetic cohort of ``scale`` (generated on first use)."""
    if path is not None:
        return Cohort.load(path)
    target = default_cohort_dir(scale)
    if not (target / "cohort.json").is_file():
        _generate_embedded(target, scale)
    return Cohort.load(target)


def _generate_embedded(target: Path, scale: str) -> None:
    """Generate the embedded cohort into a private sibling directory and publish it as ``target``.

    Two processes may generate it at once (two grids started together): publishing does not replace
    a cohort here (:func:`bench.data.publish.install` with ``replace=False``), so the first to finish
    publishes it and the other discards its copy and uses the published one; a reader never sees a
    half-written or replaced cohort. A ``target`` that is not a cohort is refused before generating.
    """
    from bench.data.publish import install, refuse_foreign
    from bench.data.synth import generate_cohort

    refuse_foreign(target)
    log.info("generating the embedded synthetic %s cohort in %s", scale, target)
    private = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        generate_cohort(private, scale=scale, seed=0)
        install(private, target, replace=False)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def model_context(cohort: Cohort, n_outputs: int, profile: str, weights: str | Path | None = None) -> ModelContext:
    """Size a model for ``cohort``: feature dim, genes, pathway membership, MCAT families; ``extra["weights"]``
    is the local checkpoint a foundation-model builder loads (None = random initialisation)."""
    pathways = cohort.pathways
    return ModelContext(
        n_outputs=n_outputs,
        feature_dim=int(cohort.feature_dim or 0),
        n_genes=len(cohort.genes),
        pathways=torch.from_numpy(pathways) if pathways is not None else None,
        families=cohort.families,
        profile=profile,
        extra={"patch_size_px": int(cohort.manifest.get("patch_size_px", 256)),
               **({"weights": str(weights)} if weights else {})},
    )


def run_config(plan: RunPlan) -> RunConfig:
    """The resolved configuration of one run; its hash is the run id. It holds the model's resolved
    configuration (base, overrides, where the family has one its full configuration, and the run
    options its regime reads), so a changed variant never reuses an old result; the options hold the
    tags of the local checkpoints it reads (``--weights``, ``--text-weights``)."""
    ctx = model_context(plan.cohort, 4, plan.profile.name)
    options = {"weights": plan.weights_tag} if plan.weights_tag else {}
    if plan.text_source is not None and plan.text_source.weights_tag:
        options["text_weights"] = plan.text_source.weights_tag
    if plan.tuning:
        options["tuned_study"] = str(plan.tuning["study"])
        options["tuned_trials"] = int(plan.tuning["trials"])
    return RunConfig(model=plan.entry.name, site=plan.site, task=plan.task, seed=plan.seed, profile=plan.profile,
                     cohort_fingerprint=plan.cohort.fingerprint, regime=plan.entry.regime,
                     resolved_model=resolve_model(plan.entry, ctx, plan.overrides, plan.run_options),
                     options=options)


def resolve_model(entry: ModelEntry, ctx: ModelContext, overrides: dict[str, Any],
                  run_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """``entry.resolve`` with a bad override or run option as a bad-input error naming the model."""
    try:
        return entry.resolve(ctx, overrides, run_options)
    except (ValueError, TypeError) as err:
        raise BenchError(f"model {entry.name}: {err}") from err


def synthetic_context(scale: str, n_outputs: int, profile: str) -> ModelContext:
    """The context a model gets on the embedded synthetic cohort of ``scale``, without generating it."""
    from bench.data.synth_counts import SCALES
    from bench.data.synth_omics import gene_structure

    spec = SCALES[scale]
    genes = gene_structure(spec)
    families = tuple(tuple(int(i) for i in np.flatnonzero(genes.families == k)) for k in range(6))
    return ModelContext(n_outputs=n_outputs, feature_dim=spec.feature_dim, n_genes=spec.n_genes,
                        pathways=torch.from_numpy(genes.membership.astype(bool)), families=families, profile=profile)


def resolve_tasks(req: RunRequest, cohort: Cohort | None = None, *, results_store: bool = True) -> list[str]:
    """Check every argument of ``req`` without writing anything, and return the task of each run it
    stands for: ``req.task``, else every task the model supports (one run each; a multitask model
    such as ModalTune is one run storing both tasks).

    Sites are checked by the model's regime against ``cohort``, else the ``--cohort`` directory, else
    the embedded synthetic cohort's sites (all six), so that a bad request never generates a cohort,
    creates a store or a run directory first. ``results_store=False``: the results store is not
    looked at (a cluster job, or a tuning trial, never touches it).
    """
    entry = get_model(req.model)
    get_profile(req.profile)
    if isinstance(req.seed, bool) or not isinstance(req.seed, int) or req.seed < 0:
        raise BenchError(f"--seed must be a non-negative integer, got {req.seed!r}")
    if req.task is None:
        tasks = list(entry.tasks)
    elif req.task in entry.tasks:
        tasks = [req.task]
    else:
        raise BenchError(f"model {entry.name} does not support task {req.task!r}; it supports "
                         f"{', '.join(entry.tasks)} (or omit --task to run each)")
    if cohort is None and req.cohort is not None:
        cohort = Cohort.load(req.cohort)
    regime_for(entry).validate(entry, req.site, cohort.sites if cohort is not None else list(ALL_SITES),
                               f"cohort {cohort.root}" if cohort is not None else "the embedded synthetic cohort")
    check_weights(req.weights)
    check_text_request(req, entry)
    try:
        entry.merged_run_options(req.run_options)
    except ValueError as err:
        raise BenchError(f"model {entry.name}: {err}") from err
    if req.params not in (None, "best"):
        raise BenchError(f"--params must be 'best' (the tuned parameters of `python -m bench tune`), got {req.params!r}")
    if results_store:
        check_store(_store(req))
    return tasks


def check_text_request(req: RunRequest, entry: ModelEntry) -> None:
    """Refuse text-encoder settings a run cannot use: on a model that distils no text, an unknown
    ``--text-encoder``, ``--text-weights`` without ``--text-encoder conch``, or a checkpoint that is
    not a file."""
    from models.text.factory import encoder_cache_name

    if req.text_spec is None and req.text_weights is None:
        return
    if entry.regime != "text_distill":
        raise BenchError(f"--text-encoder / --text-weights choose the text a ModalTune (text_distill) model distils; "
                         f"model {entry.name} is a {entry.regime} model and takes no text encoder")
    if req.text_weights is not None and req.text_spec != "conch":
        raise BenchError(f"--text-weights is read by --text-encoder conch only, not {req.text_spec or 'the default'!r}; "
                         "add --text-encoder conch or drop --text-weights")
    try:
        encoder_cache_name(req.text_spec)
    except ValueError as err:
        raise BenchError(f"--text-encoder: {err}") from err
    if req.text_spec.startswith("hf:") and not Path(req.text_spec[3:]).is_dir():
        raise BenchError(f"--text-encoder {req.text_spec}: {req.text_spec[3:]} is not a local model directory")
    if req.text_weights is not None and not Path(req.text_weights).is_file():
        raise BenchError(f"--text-weights {req.text_weights} is not a file; pass a local CONCH checkpoint")


def text_source(req: RunRequest) -> Any:
    """The :class:`~bench.text_cache.TextSource` of a checked ``req`` (None without ``--text-encoder``),
    its checkpoint's tag computed (it enters the run id)."""
    from bench.text_cache import TextSource

    if req.text_spec is None:
        return None
    weights = str(req.text_weights) if req.text_weights is not None else None
    return TextSource(req.text_spec, weights, file_tag(weights) if weights else None)


def plan_run(req: RunRequest, cohort: Cohort | None = None, *, results_store: bool = True) -> RunPlan:
    """Validate ``req`` (:func:`resolve_tasks`, before the embedded cohort is generated, so a bad
    request writes nothing) and resolve it into the :class:`RunPlan` of one run.

    ``req.params == "best"`` takes the best trial of the run's Optuna study (:mod:`bench.tuning`):
    its model values join the overrides, its training values replace the profile's (both enter the
    run id, with the study and its trial count). ``results_store``: see :func:`resolve_tasks`."""
    from bench.tuning import best_request, tuned_profile

    if cohort is None and req.cohort is not None:
        cohort = Cohort.load(req.cohort)
    tasks = resolve_tasks(req, cohort, results_store=results_store)
    entry = get_model(req.model)
    if len(tasks) != 1:
        raise BenchError(f"model {entry.name} supports tasks {', '.join(tasks)}; choose one with --task")
    profile = get_profile(req.profile)
    cohort = cohort or ensure_cohort(None, profile.scale)
    site = regime_for(entry).validate(entry, req.site, cohort.sites, f"cohort {cohort.root}")
    if req.params == "best":
        req = best_request(req, entry, site, tasks[0], cohort)
    return RunPlan(entry=entry, cohort=cohort, site=site, task=tasks[0], seed=req.seed,
                   profile=tuned_profile(profile, entry, req.training), weights=req.weights,
                   weights_tag=weights_option(req.weights), overrides=dict(req.overrides),
                   run_options=dict(req.run_options), text_source=text_source(req), training=dict(req.training),
                   tuning=dict(req.tuning))


def execute(req: RunRequest, cohort: Cohort | None = None) -> dict[str, Any]:
    """Run one experiment (or return its stored result) and return the ``run --json`` object."""
    plan = plan_run(req, cohort)
    regime = regime_for(plan.entry)
    config = run_config(plan)
    run_id = config.run_id()
    keys = regime.result_keys(plan)
    with ResultStore(_store(req)) as store:
        if not req.force and store.has(run_id, keys):
            return _report(store.get(run_id), status="cached")
    lease = claim_run(req, run_id, keys)
    if not isinstance(lease, Lease):
        return lease
    try:
        return _train(req, plan, regime, config)
    finally:
        lease.release()


def _train(req: RunRequest, plan: RunPlan, regime: Regime, config: RunConfig) -> dict[str, Any]:
    """Train and evaluate one claimed run in a directory of its own, then store its rows."""
    return store_rows(req, train_rows(req, plan, regime, config))


@dataclass(frozen=True)
class TrainedRun:
    """One trained run, not yet stored: its result rows and the test patients' predictions of each
    ``(run_id, site, task)`` row (what a cluster job returns to the driver, which alone writes the store)."""

    rows: list[ResultRow]
    predictions: dict[tuple[str, str, str], Any]


def store_rows(req: RunRequest, trained: TrainedRun) -> dict[str, Any]:
    """Write one run's rows and predictions to ``req``'s results store in one transaction; the ``run --json`` object."""
    with ResultStore(_store(req)) as store:
        store.write(trained.rows, trained.predictions)
    return _report(trained.rows, status="ran")


def train_rows(req: RunRequest, plan: RunPlan, regime: Regime, config: RunConfig) -> TrainedRun:
    """Train and evaluate one run in a directory of its own and return its result rows and predictions,
    unstored (the caller stores them: :func:`_train`, or a grid's driver for a cluster job)."""
    from bench.train.loggers import close_loggers, make_loggers
    from bench.train.supervised import configure_determinism

    started = time.perf_counter()
    if plan.profile.threads:
        torch.set_num_threads(plan.profile.threads)
    configure_determinism()
    run_id = config.run_id()
    run_dir = attempt_dir(Path(req.runs_dir) / plan.entry.name / f"{plan.site}-{plan.task}-seed{plan.seed}-{run_id}")
    loggers = make_loggers(run_dir, run_id, config.model_dump(mode="json"), req.wandb, name=run_dir.parent.name)
    evaluations = regime.run(plan, RunEnv(run_dir=run_dir, loggers=loggers, progress=req.progress, force=req.force))
    seconds = time.perf_counter() - started
    for logger in loggers:
        for ev in evaluations:
            logger.log_metrics({f"{ev.site}/{ev.task}/{k}": v for k, v in ev.metrics.items() if v is not None})
    close_loggers(loggers)
    stored_config = {**config.model_dump(mode="json"), "cohort_kind": plan.cohort.kind}
    rows = [ResultRow(run_id=run_id, task=ev.task, model=plan.entry.name, site=ev.site, seed=plan.seed,
                      profile=plan.profile.name, cohort=str(plan.cohort.root), cohort_fingerprint=plan.cohort.fingerprint,
                      regime=plan.entry.regime, metrics=ev.metrics, config=stored_config,
                      n_train=len(ev.data.splits["train"]), n_val=len(ev.data.splits["val"]),
                      n_test=len(ev.data.splits["test"]), n_excluded=ev.data.n_excluded, seconds=seconds)
            for ev in evaluations]
    predictions = {(run_id, ev.site, ev.task): ev.predictions for ev in evaluations if ev.predictions is not None}
    return TrainedRun(rows=rows, predictions=predictions)


def claim_run(req: RunRequest, run_id: str, keys: list[tuple[str, str]]) -> Lease | dict[str, Any]:
    """Claim ``run_id`` before training it: the :class:`Lease`, or the result to return instead.

    Another live process training it: with ``req.wait`` wait for it (logged once), then serve the
    rows it stored (or claim the run if it failed); without, return status ``claimed`` at once, so
    that a grid moves on and comes back later. Rows stored by the time the claim is ours are served
    as cached (unless ``--force``), so no run is trained twice.
    """
    path = _store(req)
    announced = False
    while True:
        with ResultStore(path) as store:
            lease = store.try_claim(run_id)
            if lease is not None:
                if req.force or not store.has(run_id, keys):
                    return lease
                lease.release()
                return _report(store.get(run_id), status="cached")
            holder = store.holder(run_id)
        if holder is None:  # released between our attempt and the look-up: try again
            continue
        if not req.wait:
            return {"run_id": run_id, "status": "claimed", "claimed_by": holder.owner}
        if not announced:
            log.info("run %s (%s %s seed %s) is being trained by %s; waiting for it to finish", run_id, req.model,
                     req.site, req.seed, holder.owner)
            announced = True
        time.sleep(CLAIM_POLL_S)


def attempt_dir(run_dir: Path) -> Path:
    """A new directory for one attempt of a run under ``run_dir``: ``attempt-<UTC time>-<pid>-<random>``.

    Attempts never share a directory, and none deletes another's, so logs of a killed or forced
    attempt stay beside the new one and two processes can never write into the same files.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = run_dir / f"attempt-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    path.mkdir(parents=True)
    return path


def ensure_text_cache(cohort: Cohort, encoder: str, source: Any = None):
    """The cohort's cached text embeddings of ``encoder``, built on first use where that needs nothing
    more: the offline ``bow`` encoder always (its ``bow-nostage`` cache too), else the run's ``source``
    (``--text-encoder hf:DIR``, or ``conch`` with ``--text-weights``). With ``--text-weights``, a cache
    embedded with other (or unrecorded) weights is refused rather than used under the wrong run id."""
    from bench.text_cache import cache_path, load_text_cache, without_stage_name, write_text_cache

    source = source if source is not None and source.name == encoder else None
    path = cache_path(cohort.root, encoder)
    if not path.is_file():
        if encoder in ("bow", without_stage_name("bow")):
            write_text_cache(cohort, "bow", with_staging=encoder == "bow")
        elif source is not None and source.buildable:
            write_text_cache(cohort, source.spec, weights=source.weights, weights_tag=source.weights_tag)
        else:
            raise BenchError(f"cohort {cohort.root} has no cached '{encoder}' text embeddings; create them with "
                             f"`python -m bench text embed --cohort {cohort.root} --encoder {encoder} --text-weights PATH` "
                             "(or pass --text-weights PATH to run)")
    cache = load_text_cache(cohort, encoder)
    if source is not None and source.weights_tag and cache.weights != source.weights_tag:
        raise BenchError(f"{path} was embedded with {cache.weights or 'unrecorded weights'}, not --text-weights "
                         f"{source.weights_tag}; re-embed with `python -m bench text embed --cohort {cohort.root} "
                         f"--encoder {encoder} --text-weights PATH`, or drop --text-weights to use the cached embeddings")
    return cache


def probe_key(model: str, profile: str, cohort: Cohort, seed: int, weights: str | None) -> dict[str, Any]:
    """What a frozen encoder's embeddings depend on (the seed matters only for random initialisation)."""
    return {"model": model, "profile": profile, "cohort": cohort.fingerprint, "weights": weights,
            "seed": None if weights else seed}


def check_weights(path: str | Path | None) -> None:
    """Refuse a ``--weights`` path that is missing, a directory, or not a readable checkpoint (its
    tensors are not read: the model's loader checks that they fit)."""
    if path is None:
        return
    from models.checkpoint import check_checkpoint

    if not Path(path).exists():
        raise BenchError(f"weights file {path} does not exist; pass a local checkpoint (nothing is downloaded)")
    try:
        check_checkpoint(path, "checkpoint (--weights)")
    except (FileNotFoundError, ValueError) as err:
        raise BenchError(str(err)) from err


def weights_option(path: str | Path | None) -> str | None:
    """``name:sha256[:16]`` of a local weights file (part of the run id), or None for random init."""
    if path is None:
        return None
    check_weights(path)
    return file_tag(path)


def file_tag(path: str | Path) -> str:
    """``name:sha256[:16]`` of a local file (a checkpoint's identity in run ids and caches); hashed once
    per process for an unchanged file (a grid plans many runs reading one checkpoint)."""
    stat = Path(path).stat()
    return _file_tag(str(Path(path).resolve()), Path(path).name, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=16)
def _file_tag(resolved: str, name: str, mtime_ns: int, size: int) -> str:
    path = Path(resolved)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return f"{name}:{digest.hexdigest()[:16]}"


def _store(req: RunRequest) -> Path:
    from bench.results import store_path

    return store_path(str(req.store) if req.store else None)


def _report(rows: list[ResultRow], status: str) -> dict[str, Any]:
    """The ``run --json`` object; a multitask run merges both tasks' metrics, a pan-cancer run nests them by site.

    A run trained on one site that also stores out-of-distribution rows (a ModalTune BRCA run deployed to
    COADREAD/BLCA) reports its own site's metrics, and the deployed sites' under ``deployed``."""
    first = rows[0]
    by_site: dict[str, dict[str, Any]] = {}
    for row in rows:
        by_site.setdefault(row.site, {}).update(row.metrics)
    site = str(first.config.get("site", first.site)).upper()
    own = site if site in by_site else (next(iter(by_site)) if len(by_site) == 1 else None)
    if own is None:
        metrics: dict[str, Any] = {"sites": by_site}
    else:
        deployed = {name: values for name, values in by_site.items() if name != own}
        metrics = {**by_site[own], **({"deployed": deployed} if deployed else {})}
    counted = [r for r in rows if r.task == first.task and (own is None or r.site == own)]
    return {
        "run_id": first.run_id, "status": status, "model": first.model,
        "site": own or PANCANCER, "task": first.config.get("task", first.task),
        "seed": first.seed, "profile": first.profile,
        "metrics": metrics,
        "n_train": sum(r.n_train for r in counted),
        "n_val": sum(r.n_val for r in counted),
        "n_test": sum(r.n_test for r in counted),
        "n_excluded": sum(r.n_excluded for r in counted), "seconds": round(first.seconds, 3),
    }


def embed_cohort(model: str, *, cohort_dir: str | Path | None, profile: str, weights: str | Path | None = None,
                 seed: int = 0, sites: list[str] | None = None) -> dict[str, Any]:
    """Compute and cache a frozen encoder's embeddings of every patient with WSI (``python -m bench embed``).

    ``model`` is an encoder family (``gigapath``, ``titan``) or its ``*_lp`` registry name; the linear
    probes of that configuration then read the cache instead of running the encoder again.
    """
    import lightning as L

    from bench.data.dataset import prepare_site
    from bench.train.probe import cached_embeddings, embedding_cache_path

    name = model.lower() if model.lower().endswith("_lp") else f"{model.lower()}_lp"
    entry = get_model(name)
    if entry.regime != "linear_probe":
        raise BenchError(f"model {entry.name} is not a frozen encoder (regime {entry.regime}); embed takes gigapath or titan")
    prof = get_profile(profile)
    if seed < 0:
        raise BenchError(f"--seed must be a non-negative integer, got {seed}")
    check_weights(weights)  # before the embedded cohort is generated
    cohort = ensure_cohort(cohort_dir, prof.scale)
    chosen = [cohort.resolve_site(site) for site in sites or cohort.sites]
    if prof.threads:
        torch.set_num_threads(prof.threads)
    tag = weights_option(weights)
    path = embedding_cache_path(cohort.root, probe_key(entry.name, prof.name, cohort, seed, tag))
    L.seed_everything(seed, workers=True, verbose=False)
    encoder = build_entry(entry, model_context(cohort, 4, prof.name, weights=weights))
    counts = {}
    for site in chosen:
        data = prepare_site(cohort, site, "survival", entry.modalities, entry.name)
        x = cached_embeddings(encoder, data.splits, path)
        counts[site] = sum(len(v) for v in x.values())
    return {"model": entry.name, "profile": prof.name, "cohort": str(cohort.root), "cache": str(path),
            "patients": counts, "embed_dim": int(encoder.embed_dim)}
