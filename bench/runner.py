"""One experiment, end to end: resolve and validate the configuration, skip it if stored, train,
evaluate and store — the only path by which a result reaches the results store.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.config import Profile, RunConfig, get_profile
from bench.data.cohort import Cohort
from bench.errors import BenchError, unknown_name
from bench.data.sites import ALL_SITES, IN_DOMAIN_SITES, OOD_SITES
from bench.registry import get_model
from bench.results import ResultRow, ResultStore, check_store
from models.base import ModelContext
from models.registry import ModelEntry

log = logging.getLogger(__name__)
DEFAULT_RUNS_DIR = Path("runs")
PANCANCER = "PANCANCER"
TRANSFER_SOURCE = "BRCA"  # Table 3: the in-domain site whose tuned models are deployed out of distribution


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


def default_cohort_dir(scale: str) -> Path:
    """Where the embedded synthetic cohort of a scale lives (``$BENCH_COHORTS`` or ``cohorts/``)."""
    return Path(os.environ.get("BENCH_COHORTS", "cohorts")) / f"synthetic-{scale}"


def ensure_cohort(path: str | Path | None, scale: str) -> Cohort:
    """Load ``path``, or the embedded synthetic cohort of ``scale`` (generated on first use)."""
    if path is not None:
        return Cohort.load(path)
    target = default_cohort_dir(scale)
    if not (target / "cohort.json").is_file():
        from bench.data.synth import generate_cohort

        log.info("generating the embedded synthetic %s cohort in %s", scale, target)
        generate_cohort(target, scale=scale, seed=0)
    return Cohort.load(target)


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


def run_config(model: str, site: str, task: str, seed: int, profile: Profile, cohort: Cohort,
               weights: str | None = None) -> RunConfig:
    """The resolved configuration of one run; its hash is the run id."""
    return RunConfig(model=model, site=site, task=task, seed=seed, profile=profile,
                     cohort_fingerprint=cohort.fingerprint, regime=get_model(model).regime,
                     options={"weights": weights} if weights else {})


def synthetic_context(scale: str, n_outputs: int, profile: str) -> ModelContext:
    """The context a model gets on the embedded synthetic cohort of ``scale``, without generating it."""
    from bench.data.synth import SCALES, gene_structure

    spec = SCALES[scale]
    genes = gene_structure(spec)
    families = tuple(tuple(int(i) for i in np.flatnonzero(genes.families == k)) for k in range(6))
    return ModelContext(n_outputs=n_outputs, feature_dim=spec.feature_dim, n_genes=spec.n_genes,
                        pathways=torch.from_numpy(genes.membership.astype(bool)), families=families, profile=profile)


def result_keys(entry: ModelEntry, cohort: Cohort, site: str, task: str) -> list[tuple[str, str]]:
    """The ``(site, task)`` rows a run stores: one, both tasks (multitask), every in-domain site
    (pan-cancer), plus the out-of-distribution sites a run deploys to (Table 3)."""
    tasks = ("subtype", "survival") if task == "multitask" else (task,)
    sites = [] if entry.regime == "transfer" else training_sites(entry, cohort, site)
    return [(s, t) for s in sites + deploy_sites(entry, cohort, site) for t in tasks]


def deploy_sites(entry: ModelEntry, cohort: Cohort, site: str) -> list[str]:
    """Out-of-distribution sites (Table 3) a run is deployed to after training, as in the paper: the
    BRCA-trained ModalTune, the pan-cancer ModalTune and the BRCA-tuned transfer rows."""
    if entry.regime == "transfer" or (entry.regime == "text_distill" and (entry.pancancer or site == TRANSFER_SOURCE)):
        return [s for s in OOD_SITES if s in cohort.sites]
    return []


def training_sites(entry: ModelEntry, cohort: Cohort, site: str) -> list[str]:
    """Sites one run trains on: the in-domain sites of the cohort for a pan-cancer model, else ``site``."""
    if not entry.pancancer:
        return [site]
    sites = [s for s in IN_DOMAIN_SITES if s in cohort.sites]
    if not sites:
        raise BenchError(f"model {entry.name} trains on the in-domain sites ({', '.join(IN_DOMAIN_SITES)}); "
                         f"cohort {cohort.root} has none of them")
    return sites


def resolve_tasks(req: RunRequest, cohort: Cohort | None = None) -> list[str]:
    """Check every argument of ``req`` without writing anything, and return the task of each run it
    stands for: ``req.task``, else every task the model supports (one run each; a multitask model
    such as ModalTune is one run storing both tasks).

    Sites are checked against ``cohort``, else the ``--cohort`` directory, else the embedded synthetic
    cohort's sites (all six), so that a bad request never generates a cohort, creates a store or a
    run directory first.
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
    check_site(entry, req.site, cohort.sites if cohort is not None else list(ALL_SITES),
               f"cohort {cohort.root}" if cohort is not None else "the embedded synthetic cohort")
    check_weights(req.weights)
    check_store(_store(req))
    return tasks


def check_site(entry: ModelEntry, site: str, available: list[str], where: str) -> str:
    """The canonical site a run of ``entry`` on ``site`` trains on (``PANCANCER`` for a pan-cancer model),
    given the sites ``available`` in the cohort (``where`` names it in errors)."""
    if entry.pancancer:
        if site.upper() != PANCANCER and site.upper() not in available:
            raise unknown_name("site", site, [s.lower() for s in available] + [PANCANCER.lower()])
        if not any(s in available for s in IN_DOMAIN_SITES):
            raise BenchError(f"model {entry.name} trains on the in-domain sites ({', '.join(IN_DOMAIN_SITES)}); "
                             f"{where} has none of them")
        return PANCANCER
    canonical = next((s for s in available if s.lower() == site.lower()), None)
    if canonical is None:
        raise unknown_name("site", site, [s.lower() for s in available])
    if entry.regime == "transfer" and canonical != TRANSFER_SOURCE:
        raise BenchError(f"model {entry.name} is tuned on {TRANSFER_SOURCE} and deployed to the out-of-distribution "
                         f"sites (Table 3); run it with --site {TRANSFER_SOURCE.lower()}")
    if entry.regime == "transfer" and not any(s in available for s in OOD_SITES):
        raise BenchError(f"model {entry.name} is deployed to {', '.join(OOD_SITES)}; {where} has none")
    if entry.regime == "text_distill" and canonical in OOD_SITES:
        raise BenchError(f"{entry.label} on {canonical} is the {TRANSFER_SOURCE}-trained (or pan-cancer) model deployed "
                         f"out of distribution (Table 3): run --site {TRANSFER_SOURCE.lower()} (or the pan-cancer model)")
    return canonical


def execute(req: RunRequest, cohort: Cohort | None = None) -> dict[str, Any]:
    """Run one experiment (or return its stored result) and return the ``run --json`` object.

    ``req`` is validated by :func:`resolve_tasks` before anything is written; it must stand for one
    run (a task given, or a model with one task).
    """
    if cohort is None and req.cohort is not None:
        cohort = Cohort.load(req.cohort)
    tasks = resolve_tasks(req, cohort)
    entry = get_model(req.model)
    if len(tasks) != 1:
        raise BenchError(f"model {entry.name} supports tasks {', '.join(tasks)}; choose one with --task")
    task = tasks[0]
    profile = get_profile(req.profile)
    cohort = cohort or ensure_cohort(None, profile.scale)
    site = check_site(entry, req.site, cohort.sites, f"cohort {cohort.root}")
    weights = weights_option(req.weights)
    config = run_config(entry.name, site, task, req.seed, profile, cohort, weights)
    run_id = config.run_id()
    keys = result_keys(entry, cohort, site, task)
    with ResultStore(_store(req)) as store:
        if not req.force and store.has(run_id, keys):
            return _report(store.get(run_id), status="cached")

    import lightning as L

    from bench.data.dataset import prepare_site
    from bench.train.loggers import close_loggers, make_loggers
    from bench.train.supervised import configure_determinism

    started = time.perf_counter()
    if profile.threads:
        torch.set_num_threads(profile.threads)
    configure_determinism()
    run_dir = Path(req.runs_dir) / entry.name / f"{site}-{task}-seed{req.seed}-{run_id}"
    if run_dir.exists():  # logs of an earlier attempt of this run (--force, or one killed before it stored)
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    loggers = make_loggers(run_dir, run_id, config.model_dump(mode="json"), req.wandb)

    if entry.regime == "text_distill":
        from bench.train.distill import train_distill
        from models.text.projector import TextProjector

        text = ensure_text_cache(cohort, profile.distill.text_encoder)
        datas = {s: prepare_site(cohort, s, "multitask", entry.modalities, entry.name, profile.max_patches_train,
                                 text=text) for s in training_sites(entry, cohort, site)}
        L.seed_everything(req.seed, workers=True, verbose=False)
        model = build_model(entry, model_context(cohort, 4, profile.name, weights=req.weights))
        projector = TextProjector(in_dim=text.dim, out_dim=model.embed_dim, seed=req.seed)
        deploy = {s: prepare_site(cohort, s, "multitask", entry.modalities, entry.name, text=text)
                  for s in deploy_sites(entry, cohort, site)}
        outcome = train_distill(model, projector, datas, profile.distill, run_dir=run_dir, loggers=loggers,
                                progress=req.progress, deploy=deploy)
        datas.update(deploy)
        results = [(s, t, {**outcome.metrics[s][t], "best_epoch": outcome.best_epoch}, datas[s]) for s, t in keys]
    elif entry.regime == "transfer":
        from bench.train.distill import deploy_and_probe
        from bench.train.supervised import train_supervised

        source_task = entry.source_task
        data = prepare_site(cohort, site, source_task, entry.modalities, entry.name, profile.max_patches_train)
        L.seed_everything(req.seed, workers=True, verbose=False)
        n_outputs = data.n_classes if source_task == "subtype" else 4
        model = build_model(entry, model_context(cohort, n_outputs, profile.name, weights=req.weights))
        outcome = train_supervised(model, data, profile, run_dir=run_dir, loggers=loggers, progress=req.progress)
        deploy = {s: prepare_site(cohort, s, "multitask", entry.modalities, entry.name)
                  for s in deploy_sites(entry, cohort, site)}
        probed = deploy_and_probe(model, deploy)
        results = [(s, t, {**probed[s][t], "best_epoch": outcome.best_epoch}, deploy[s]) for s, t in keys]
    else:
        data = prepare_site(cohort, site, task, entry.modalities, entry.name, profile.max_patches_train)
        n_outputs = data.n_classes if task == "subtype" else 4
        L.seed_everything(req.seed, workers=True, verbose=False)
        model = build_model(entry, model_context(cohort, n_outputs, profile.name, weights=req.weights))
        if entry.regime == "supervised":
            from bench.train.supervised import train_supervised

            outcome = train_supervised(model, data, profile, run_dir=run_dir, loggers=loggers, progress=req.progress)
            metrics = {**outcome.metrics, "best_epoch": outcome.best_epoch}
        else:
            from bench.train.probe import embedding_cache_path, run_linear_probe

            cache = embedding_cache_path(cohort.root, probe_key(entry.name, profile.name, cohort, req.seed, weights))
            if req.force:  # --force recomputes everything, the cached embeddings included
                cache.unlink(missing_ok=True)
            metrics = run_linear_probe(model, data, cache)
        results = [(site, task, metrics, data)]
    seconds = time.perf_counter() - started
    for logger in loggers:
        for s, t, metrics, _ in results:
            logger.log_metrics({f"{s}/{t}/{k}": v for k, v in metrics.items()})
    close_loggers(loggers)
    stored_config = {**config.model_dump(mode="json"), "cohort_kind": cohort.kind}
    rows = [ResultRow(run_id=run_id, task=t, model=entry.name, site=s, seed=req.seed, profile=profile.name,
                      cohort=str(cohort.root), cohort_fingerprint=cohort.fingerprint, regime=entry.regime,
                      metrics=metrics, config=stored_config, n_train=len(data.splits["train"]),
                      n_val=len(data.splits["val"]), n_test=len(data.splits["test"]), n_excluded=data.n_excluded,
                      seconds=seconds) for s, t, metrics, data in results]
    with ResultStore(_store(req)) as store:
        store.write(rows)
    return _report(rows, status="ran")


def build_model(entry: ModelEntry, ctx: ModelContext) -> torch.nn.Module:
    """Build ``entry`` for ``ctx``; a model that cannot read this cohort (a ValueError of its builder,
    e.g. TITAN on 1,536-d features) is a bad-input error naming the model."""
    try:
        return entry.build(ctx)
    except (ValueError, FileNotFoundError, KeyError) as err:
        raise BenchError(f"model {entry.name}: {err}") from err


def ensure_text_cache(cohort: Cohort, encoder: str):
    """The cohort's cached text embeddings of ``encoder``; the offline ``bow`` cache is built on first use."""
    from bench.text_cache import cache_path, load_text_cache, write_text_cache

    if not cache_path(cohort.root, encoder).is_file():
        if encoder != "bow":
            raise BenchError(f"cohort {cohort.root} has no cached '{encoder}' text embeddings; create them with "
                             f"`python -m bench text embed --cohort {cohort.root} --encoder {encoder} --text-weights PATH`")
        write_text_cache(cohort, encoder)
    return load_text_cache(cohort, encoder)


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
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return f"{path.name}:{digest.hexdigest()[:16]}"


def _store(req: RunRequest) -> Path:
    from bench.results import store_path

    return store_path(str(req.store) if req.store else None)


def _report(rows: list[ResultRow], status: str) -> dict[str, Any]:
    """The ``run --json`` object; a multitask run merges both tasks' metrics, a pan-cancer run nests them by site."""
    first = rows[0]
    by_site: dict[str, dict[str, Any]] = {}
    for row in rows:
        by_site.setdefault(row.site, {}).update(row.metrics)
    sites = sorted(by_site)
    return {
        "run_id": first.run_id, "status": status, "model": first.model,
        "site": sites[0] if len(sites) == 1 else PANCANCER, "task": first.config.get("task", first.task),
        "seed": first.seed, "profile": first.profile,
        "metrics": by_site[sites[0]] if len(sites) == 1 else {"sites": by_site},
        "n_train": sum(r.n_train for r in rows if r.task == first.task),
        "n_val": sum(r.n_val for r in rows if r.task == first.task),
        "n_test": sum(r.n_test for r in rows if r.task == first.task),
        "n_excluded": sum(r.n_excluded for r in rows if r.task == first.task), "seconds": round(first.seconds, 3),
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
    encoder = build_model(entry, model_context(cohort, 4, prof.name, weights=weights))
    counts = {}
    for site in chosen:
        data = prepare_site(cohort, site, "survival", entry.modalities, entry.name)
        x = cached_embeddings(encoder, data.splits, path)
        counts[site] = sum(len(v) for v in x.values())
    return {"model": entry.name, "profile": prof.name, "cohort": str(cohort.root), "cache": str(path),
            "patients": counts, "embed_dim": int(encoder.embed_dim)}
