"""The paper's figures from the results store and what runs left beside their logs — never by
retraining: glue between the store, the run directories (:mod:`bench.artifacts`), the cohort and the
drawing functions of :mod:`reports.figures`.

``python -m bench figure NAME`` draws one figure (PNG and PDF); ``make report`` draws them all.
Which runs a figure uses: rows of the chosen profile (default: the profile of the latest stored
row); per (model, site) the lowest seed stored (its latest row, as the tables count it). Inputs that
cost forward passes (Integrated Gradients, t-SNE coordinates) are cached under
``<runs dir>/figure-cache/``, keyed by the run and the figure's settings, so a second call costs
only the drawing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench.errors import BenchError
from bench.results import ResultRow, ResultStore, store_path

log = logging.getLogger(__name__)

DEFAULT_RUNS_DIR = Path("runs")
DEFAULT_OUT = DEFAULT_RUNS_DIR / "figures"
CACHE_NAME = "figure-cache"
MODALTUNE, PANCANCER_MODEL, GIGAPATH_CAT = "modaltune", "modaltune_pancancer", "gigapath_cat"
#: Integrated Gradients defaults: test patients per site and task, quadrature steps.
IG_PATIENTS, IG_STEPS = 6, 16


@dataclass
class FigureContext:
    """Where a figure reads from: the store's rows of one profile, the runs directory (checkpoints,
    embeddings, metrics CSVs), the figure cache, and the slide-encoder checkpoint the runs used."""

    store: Path
    profile: str
    rows: list[ResultRow]
    runs_dir: Path = DEFAULT_RUNS_DIR
    weights: str | None = None
    seed: int = 0
    _cohorts: dict[str, Any] = field(default_factory=dict)

    @property
    def cache_dir(self) -> Path:
        return self.runs_dir / CACHE_NAME

    def cohort(self, row: ResultRow):
        """The cohort ``row`` was run on, checked against the fingerprint the run recorded."""
        from bench.data.cohort import Cohort

        if row.cohort not in self._cohorts:
            if not Path(row.cohort).is_dir():
                raise BenchError(f"cohort {row.cohort} of run {row.run_id} ({row.model}) is missing; figures read the "
                                 "patients and features the run used (run from the directory `make table2` ran in)")
            cohort = Cohort.load(row.cohort)
            if cohort.fingerprint != row.cohort_fingerprint:
                raise BenchError(f"cohort {row.cohort} changed since run {row.run_id} (fingerprint "
                                 f"{cohort.fingerprint} != {row.cohort_fingerprint}); rerun the grid on it first")
            self._cohorts[row.cohort] = cohort
        return self._cohorts[row.cohort]


@dataclass(frozen=True)
class FigureResult:
    """A drawn figure: its files (PNG first), a caption for the report, and notes on what is missing."""

    name: str
    paths: list[Path]
    caption: str
    notes: list[str] = field(default_factory=list)


def load_context(store: str | Path | None = None, profile: str | None = None, runs_dir: str | Path | None = None,
                 weights: str | None = None, seed: int = 0) -> FigureContext:
    """The rows of ``profile`` (default: the latest stored row's) in the store at ``store`` (default
    ``$BENCH_STORE``, else ``runs/results.sqlite``); where a cell has tuned runs, those, as the tables count."""
    from bench.reporting import prefer_tuned

    path = store_path(str(store) if store else None)
    if not path.is_file():
        raise BenchError(f"results store {path} does not exist; run a grid first (e.g. `make table2`) or pass --store")
    with ResultStore(path) as results:
        if profile is None:
            latest = results.latest()
            profile = latest.profile if latest else "small"
        rows = prefer_tuned(results.rows(profile=profile))
    use_profile_threads(profile)
    return FigureContext(store=path, profile=profile, rows=rows, runs_dir=Path(runs_dir or DEFAULT_RUNS_DIR),
                         weights=weights, seed=seed)


def use_profile_threads(profile: str) -> None:
    """Torch's intra-op threads as the profile's runs use them (one for tiny and small): the figures' forward
    and backward passes are small, and two threads waiting on each other on a busy CPU cost ~20x the work."""
    from bench.config import get_profile

    threads = get_profile(profile).threads
    if threads:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------- run selection
def runs_of(ctx: FigureContext, model: str, site: str | None = None, task: str | None = None) -> list[ResultRow]:
    """The latest row per (site, task, seed) of ``model`` (optionally one site / task), seeds ascending."""
    latest: dict[tuple[str, str, int], ResultRow] = {}
    for row in ctx.rows:  # ordered by finish time: a later row of the same cell replaces an earlier one
        if row.model == model and (site is None or row.site == site) and (task is None or row.task == task):
            latest[(row.site, row.task, row.seed)] = row
    return sorted(latest.values(), key=lambda r: (r.seed, r.site, r.task))


def first_run(ctx: FigureContext, model: str, site: str, task: str | None = None) -> ResultRow | None:
    """The lowest-seed run of ``model`` at ``site`` (None if none is stored)."""
    rows = runs_of(ctx, model, site, task)
    return rows[0] if rows else None


def table2_sites(ctx: FigureContext, sites: Sequence[str] | None) -> list[str]:
    """``sites`` (upper-cased), else Table 2's sites that have stored rows."""
    from bench.grids import TABLE2

    if sites:
        return [s.upper() for s in sites]
    stored = {r.site for r in ctx.rows}
    return [s for s in TABLE2.sites if s in stored]


def require_rows(ctx: FigureContext, model: str, what: str) -> None:
    """A named error when ``model`` has no stored row in the context's profile."""
    if not runs_of(ctx, model):
        raise BenchError(f"the {what} needs runs of {model}; none is stored for profile {ctx.profile} in {ctx.store} "
                         f"(run `python -m bench grid table2 --profile {ctx.profile}` or `make table2`)")


# ------------------------------------------------------------------------------------------- caching
def cache_key(*parts: Any) -> str:
    """A file-name-safe key: sha256[:20] of the JSON of ``parts``."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cached_arrays(ctx: FigureContext, key: str, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``compute()``'s arrays, read from ``<cache>/<key>.npz`` when present, else computed and written
    atomically."""
    from bench.data.format import atomic_path

    path = ctx.cache_dir / f"{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as stored:
            return {k: stored[k] for k in stored.files}
    arrays = compute()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return arrays


# ------------------------------------------------------------------------------------------- models
def rebuild_model(ctx: FigureContext, row: ResultRow) -> torch.nn.Module:
    """The trained model of a text-distillation run, rebuilt as the run built it (seed, profile,
    overrides) and loaded with its best epoch's checkpoint; eval mode."""
    import lightning as L

    from bench.artifacts import CHECKPOINT, load_checkpoint_record, require_artifact, restore
    from bench.config import get_profile
    from bench.regimes.base import RunPlan
    from bench.regimes.text_distill import build_for_text
    from bench.registry import get_model

    if row.regime != "text_distill":
        raise BenchError(f"model {row.model} is a {row.regime} model; this figure reads a ModalTune (text_distill) run")
    path = require_artifact(ctx.runs_dir, row.model, row.run_id, CHECKPOINT, "checkpoint")
    record = load_checkpoint_record(path)
    if (row.config.get("options") or {}).get("weights") and not ctx.weights:
        raise BenchError(f"run {row.run_id} ({row.model}) was trained on the slide-encoder checkpoint "
                         f"{row.config['options']['weights']}; pass it again with --weights")
    resolved = row.config.get("resolved_model") or {}
    plan = RunPlan(entry=get_model(row.model), cohort=ctx.cohort(row), site=row.config.get("site", row.site),
                   task=row.config.get("task", "multitask"), seed=row.seed, profile=get_profile(row.profile),
                   weights=ctx.weights, overrides=dict(resolved.get("overrides") or {}))
    L.seed_everything(row.seed, workers=True, verbose=False)  # the frozen encoder as the run drew it
    model = build_for_text(plan, int(record["text_dim"]))
    return restore(model, record, path)


def site_data(ctx: FigureContext, row: ResultRow, site: str):
    """The patients of ``site`` as the run saw them (multitask selection, RNA z-scored on its training
    patients, whole bags)."""
    from bench.data.dataset import prepare_site
    from bench.registry import get_model

    entry = get_model(row.model)
    return prepare_site(ctx.cohort(row), site, "multitask", entry.modalities, entry.name)


def one_patient(dataset, case: str) -> dict:
    """The collated batch of patient ``case`` of ``dataset``."""
    from bench.data.dataset import collate

    if case not in dataset.case_ids:
        raise BenchError(f"patient {case} is not among the {len(dataset)} patients of this split; "
                         f"e.g. {', '.join(dataset.case_ids[:3])}")
    return collate([dataset[dataset.case_ids.index(case)]])


def label_of(ctx: FigureContext, model: str) -> str:
    """The paper's row label of ``model`` (Table 2's, else the registry's)."""
    from bench.grids import GRIDS
    from bench.registry import get_model

    for grid in GRIDS.values():
        for name, label in grid.rows:
            if name == model:
                return label
    return get_model(model).label


# ------------------------------------------------------------------------------------------- Kaplan–Meier
def km_rows(ctx: FigureContext, sites: Sequence[str]) -> list[tuple[str, str]]:
    """``(model, what)`` rows of the KM figure: ModalTune, the best image-only, genomics-only and
    multimodal rows of Table 2 (by Overall test C-index over ``sites``), and Prov-Gigapath (cat)."""
    from bench.grids import TABLE2
    from bench.registry import all_models

    registry = all_models()
    groups = {"image-only": {"wsi"}, "genomics-only": {"rna"}, "multimodal": {"wsi", "rna"}}
    shown = {MODALTUNE, PANCANCER_MODEL, GIGAPATH_CAT}
    out = [(MODALTUNE, "ModalTune")]
    for group, modalities in groups.items():
        candidates = [name for name, _ in TABLE2.rows if name in registry and name not in shown
                      and registry[name].regime != "text_distill" and set(registry[name].modalities) == modalities]
        scored = [(overall_c_index(ctx, name, sites), name) for name in candidates]
        scored = [(score, name) for score, name in scored if score is not None]
        if scored:
            out.append((max(scored, key=lambda item: (item[0], item[1]))[1], f"best {group}"))
    out.append((GIGAPATH_CAT, "Prov-Gigapath (cat)"))
    return out


def overall_c_index(ctx: FigureContext, model: str, sites: Sequence[str]) -> float | None:
    """Mean over ``sites`` of ``model``'s mean test C-index over seeds; None unless every site ran."""
    means = []
    for site in sites:
        values = [r.metrics.get("test_c_index", np.nan) for r in runs_of(ctx, model, site, "survival")]
        values = [v for v in values if v is not None and np.isfinite(v)]
        if not values:
            return None
        means.append(float(np.mean(values)))
    return float(np.mean(means)) if means else None


def stored_predictions(ctx: FigureContext, row: ResultRow) -> pd.DataFrame | None:
    """The per-patient test predictions of ``row`` from the store (None when it holds none: a row stored
    before the store kept them)."""
    with ResultStore(ctx.store) as results:
        frame = results.predictions(row.run_id, row.site, row.task)
    return frame if len(frame) else None


def figure_km(ctx: FigureContext, out_dir: Path, sites: Sequence[str] | None = None, **_: Any) -> FigureResult:
    """Kaplan–Meier curves of high / low predicted risk per site (rows: models; columns: sites)."""
    from reports.figures.common import save_figure
    from reports.figures.km import SPLIT_RULE, KMPanel, km_grid

    sites = table2_sites(ctx, sites)
    require_rows(ctx, MODALTUNE, "Kaplan–Meier figure")
    panels, notes, chosen = [], [], []
    for model, what in km_rows(ctx, sites):
        label = label_of(ctx, model)
        chosen.append(f"{label} ({what})" if what.startswith("best") else label)
        for site in sites:
            row = first_run(ctx, model, site, "survival")
            shown = f"{label} ({what})" if what.startswith("best") else label
            title = f"{shown} · {site}" + (f" · seed {row.seed}" if row else "")
            if row is None:
                panels.append(KMPanel(title, None, "not run"))
                continue
            frame = stored_predictions(ctx, row)
            if frame is None:
                notes.append(f"{label} at {site}: run {row.run_id} stored no per-patient predictions")
            panels.append(KMPanel(title, frame, "no stored predictions (rerun with --force)"))
    if all(p.predictions is None for p in panels):
        raise BenchError("no stored per-patient test predictions for the Kaplan–Meier figure; runs stored before "
                         "predictions were kept must be rerun (`python -m bench grid table2 ...` after removing them, "
                         "or `run ... --force`)")
    fig, _ = km_grid(panels, n_cols=len(sites),
                     title=f"Kaplan–Meier curves of predicted risk (profile {ctx.profile})")
    paths = save_figure(fig, out_dir, "km")
    caption = (f"Kaplan–Meier curves (paper Fig. 6) per site for {', '.join(chosen)}; one seed per panel (the "
               f"lowest stored). Best rows by Overall test C-index over {', '.join(sites)}. {SPLIT_RULE}.")
    return FigureResult("km", paths, caption, notes)


# ------------------------------------------------------------------------------------------- t-SNE
def _run_embeddings(ctx: FigureContext, row: ResultRow, split: str) -> pd.DataFrame:
    """``case_id``, ``site`` and ``embedding`` of the ``split`` patients a distillation run saved."""
    from bench.artifacts import EMBEDDINGS, load_embeddings, require_artifact

    stored = load_embeddings(require_artifact(ctx.runs_dir, row.model, row.run_id, EMBEDDINGS, "embeddings"))
    keep = stored["splits"] == split
    return pd.DataFrame({"case_id": stored["case_ids"][keep], "site": stored["sites"][keep],
                         "embedding": list(stored["embeddings"][keep])})


def _site_rows(frame: pd.DataFrame, site: str) -> pd.DataFrame:
    return frame[frame["site"] == site]


def _diagnoses(ctx: FigureContext, row: ResultRow, case_ids: Sequence[str]) -> list[str]:
    patients = ctx.cohort(row).patients
    diagnosis = dict(zip(patients["case_id"].astype(str), patients["primary_diagnosis"]))
    return [str(diagnosis[c]) for c in case_ids]


def figure_tsne(ctx: FigureContext, out_dir: Path, sites: Sequence[str] | None = None, **_: Any) -> FigureResult:
    """t-SNE of the test patients' embeddings: ModalTune (one model per site), ModalTune Pan-Cancer and
    the text embeddings the runs distilled, coloured by site and by diagnosis."""
    from bench.runner import ensure_text_cache
    from reports.figures.common import save_figure
    from reports.figures.tsne import EmbeddingSet, tsne_coords, tsne_figure

    sites = table2_sites(ctx, sites)
    require_rows(ctx, MODALTUNE, "t-SNE figure")
    sets, notes = [], []
    per_site = [first_run(ctx, MODALTUNE, site) for site in sites]
    frames = [_site_rows(_run_embeddings(ctx, row, "test"), site) for row, site in zip(per_site, sites) if row]
    missing = [site for row, site in zip(per_site, sites) if row is None]
    if not frames:
        raise BenchError(f"no ModalTune run at {', '.join(sites)} for profile {ctx.profile}; run them first")
    if missing:
        notes.append(f"ModalTune not run at {', '.join(missing)}")
    reference = next(r for r in per_site if r is not None)
    sets.append(("ModalTune", pd.concat(frames, ignore_index=True), "one model per site"))
    pan = runs_of(ctx, PANCANCER_MODEL)
    if pan:
        frame = _run_embeddings(ctx, pan[0], "test")
        sets.append(("ModalTune Pan-Cancer", frame[frame["site"].isin(sites)].reset_index(drop=True),
                     f"one model, seed {pan[0].seed}"))
    else:
        notes.append("ModalTune Pan-Cancer not run")
    encoder = ((reference.config.get("resolved_model") or {}).get("config") or {}).get("text_encoder", "bow")
    cases = sets[0][1]["case_id"].tolist()
    text = ensure_text_cache(ctx.cohort(reference), str(encoder)).matrix(cases)[:, 0].numpy()  # the general row
    sets.append((f"text embeddings ({encoder})", pd.DataFrame({"case_id": cases, "site": sets[0][1]["site"],
                                                              "embedding": list(text)}), "general prompt"))
    embedding_sets = []
    for title, frame, note in sets:
        x = np.stack(frame["embedding"].to_numpy()).astype(np.float32)
        embedding_sets.append(EmbeddingSet(title, x, frame["site"].tolist(),
                                           _diagnoses(ctx, reference, frame["case_id"].tolist()), note))
    coords = [cached_arrays(ctx, cache_key("tsne", hashlib.sha256(s.embeddings.tobytes()).hexdigest(), ctx.seed),
                            lambda s=s: {"coords": tsne_coords(s.embeddings, ctx.seed)})["coords"]
              for s in embedding_sets]
    fig, _ = tsne_figure(embedding_sets, seed=ctx.seed, coords=coords)
    paths = save_figure(fig, out_dir, "tsne")
    caption = (f"t-SNE (paper Fig. 5) of the test patients' general-task embeddings at {', '.join(sites)}: "
               "ModalTune (lowest stored seed; a separate model per site, so its sites also differ by model), "
               f"ModalTune Pan-Cancer and the {encoder} text embeddings of the general prompt; seed {ctx.seed}.")
    return FigureResult("tsne", paths, caption, notes)


# ------------------------------------------------------------------------------------------- attention
def slides_of(cohort) -> dict[str, list[str]]:
    """Every patient's slide ids, in bag order."""
    patients = cohort.patients
    return {str(c): [s for s in str(ids).split(";") if s] for c, ids in zip(patients["case_id"], patients["slide_ids"])}


def first_slide_tiles(cohort, case: str, slides: list[str]) -> int | None:
    """Tiles of the first slide of a multi-slide patient (its bag starts with them); None for one slide."""
    from bench.data.features import _slide_len, slide_path

    if len(slides) <= 1:
        return None
    return _slide_len(slide_path(Path(cohort.root), case, slides[0]), case)


def figure_attention(ctx: FigureContext, out_dir: Path, sites: Sequence[str] | None = None, model: str = MODALTUNE,
                     case: str | None = None, **_: Any) -> FigureResult:
    """Image–image, image–transcriptomics and image–task-prompt attention of one test patient at one
    site (default: the first of Table 2's sites; patient: the first single-slide test patient)."""
    from reports.figures.attention import attention_figure, attention_maps
    from reports.figures.common import save_figure

    candidates = table2_sites(ctx, sites)
    if not candidates:
        raise BenchError(f"no Table 2 site has stored runs for profile {ctx.profile}; pass --site")
    site = candidates[0]
    row = first_run(ctx, model, site)
    if row is None:
        raise BenchError(f"no run of {model} at {site} is stored for profile {ctx.profile}; run it first")
    data = site_data(ctx, row, site).splits["test"]
    cohort = ctx.cohort(row)
    slides = slides_of(cohort)
    if case is None:
        case = next((c for c in data.case_ids if len(slides[c]) == 1), data.case_ids[0])
    batch = one_patient(data, case)
    tiles = first_slide_tiles(cohort, case, slides[case])
    notes = []
    if tiles is not None:
        notes.append(f"patient {case} has several slides; the maps show the tiles of the first ({tiles})")
    trained = rebuild_model(ctx, row)
    try:
        maps = [attention_maps(trained, batch, task) for task in range(trained.n_tasks)]
    except ValueError as err:
        raise BenchError(f"model {model}: {err}") from err
    if tiles is not None:
        maps = [type(m)(m.task, m.coords[:tiles], m.image_image[:tiles], m.image_transcriptomics[:tiles],
                        None if m.image_task is None else m.image_task[:tiles]) for m in maps]
    label = label_of(ctx, model)
    fig = attention_figure(maps, f"{label} · {site} · test patient {case} · seed {row.seed}")
    stem = f"attention-{model}-{site}"
    paths = save_figure(fig, out_dir, stem)
    caption = (f"Attention of {label} (paper Fig. 3c, d) for test patient {case} at {site} (seed {row.seed}), one "
               "row per task prompt: the last encoder layer's CLS-to-tile attention, and the last interaction "
               "block's extractor attention of the pathway tokens and of the task prompt over the tiles; each panel "
               "scaled to its maximum.")
    return FigureResult(stem, paths, caption, notes)


# ------------------------------------------------------------------------------------------- pathways
def probe_weights(ctx: FigureContext, row: ResultRow, data, embeddings: pd.DataFrame) -> dict[str, Any]:
    """The run's linear probes refit on its saved training embeddings (the run's preprocessing), as
    weights on the raw embedding: ``subtype`` ``[C, E]`` (row ``c``: the logit of class ``c``) and
    ``survival`` ``[E]`` (the Cox log partial hazard)."""
    import warnings

    from lifelines import CoxPHFitter
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    from bench.train.probe import COX_PENALIZER, LOGREG

    options = (row.config.get("resolved_model") or {}).get("run_options") or {}
    train = data.splits["train"]
    by_case = dict(zip(embeddings["case_id"], embeddings["embedding"]))
    x = np.stack([by_case[c] for c in train.case_ids]).astype(np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    scale = 1.0 / std if options.get("probe") == "standardized" else np.ones_like(std)
    xs = (x - mean) * scale if options.get("probe") == "standardized" else x
    keep = train.labels >= 0
    clf = LogisticRegression(**LOGREG)
    if data.n_classes > 2:
        clf = OneVsRestClassifier(clf).fit(xs[keep], train.labels[keep])
        coef = np.stack([est.coef_[0] for est in clf.estimators_])
        classes = clf.classes_
    else:
        clf.fit(xs[keep], train.labels[keep])
        coef = np.stack([-clf.coef_[0], clf.coef_[0]])  # binary: class 1's log-odds, and its negative for class 0
        classes = np.array([0, 1])
    subtype = np.zeros((data.n_classes, x.shape[1]))
    subtype[classes] = coef * scale
    frame = pd.DataFrame(xs, columns=[f"e{i}" for i in range(xs.shape[1])])
    frame["time"], frame["event"] = train.months.astype(float), train.events.astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cph = CoxPHFitter(penalizer=COX_PENALIZER).fit(frame, duration_col="time", event_col="event")
    return {"subtype": subtype, "survival": cph.params_.to_numpy() * scale}


def pathway_scores(ctx: FigureContext, row: ResultRow, site: str, patients: int, steps: int) -> dict[str, np.ndarray]:
    """Per task, the pathway attributions ``[patients, P]`` of the first ``patients`` test patients
    (subtype: those with a subtype label), and captum's relative convergence deltas; cached."""
    from reports.figures.pathways import integrated_gradients, pathway_attributions

    def compute() -> dict[str, np.ndarray]:
        data = site_data(ctx, row, site)
        trained = rebuild_model(ctx, row)
        heads = probe_weights(ctx, row, data, _run_embeddings(ctx, row, "train"))
        test = data.splits["test"]
        membership = ctx.cohort(row).pathways
        out = {}
        for task in ("subtype", "survival"):
            cases = [c for c, y in zip(test.case_ids, test.labels) if task == "survival" or y >= 0][:patients]
            scores, deltas = [], []
            for case in cases:
                batch = one_patient(test, case)
                weight = heads["subtype"][int(batch["label"][0])] if task == "subtype" else heads["survival"]
                result = integrated_gradients(trained, batch, torch.as_tensor(weight, dtype=torch.float32), steps)
                scores.append(pathway_attributions(result.genes, membership))
                change = abs(result.at_input - result.at_baseline)
                deltas.append(abs(result.delta) / change if change > 0 else 0.0)
            out[f"{task}_scores"] = np.stack(scores) if scores else np.zeros((0, membership.shape[1]))
            out[f"{task}_deltas"] = np.asarray(deltas, dtype=np.float64)
        return out

    from bench.artifacts import CHECKPOINT, require_artifact

    attempt = require_artifact(ctx.runs_dir, row.model, row.run_id, CHECKPOINT, "checkpoint").parent.name
    return cached_arrays(ctx, cache_key("pathways", row.run_id, attempt, site, patients, steps), compute)


def figure_pathways(ctx: FigureContext, out_dir: Path, sites: Sequence[str] | None = None, model: str = MODALTUNE,
                    patients: int = IG_PATIENTS, steps: int = IG_STEPS, **_: Any) -> FigureResult:
    """Top pathways by Integrated Gradients per site and task (paper Fig. 3e, f)."""
    from reports.figures.common import save_figure
    from reports.figures.pathways import PathwayPanel, pathway_figure, top_pathways

    sites = table2_sites(ctx, sites)
    require_rows(ctx, model, "pathway figure")
    panels, notes, worst = [], [], 0.0
    for site in sites:
        row = first_run(ctx, model, site)
        if row is None:
            notes.append(f"{model} not run at {site}")
            continue
        names = pd.read_csv(Path(ctx.cohort(row).root) / "pathways.csv", nrows=0).columns[1:].tolist()
        scores = pathway_scores(ctx, row, site, patients, steps)
        for task in ("subtype", "survival"):
            task_scores = scores[f"{task}_scores"]
            if len(task_scores) == 0:
                notes.append(f"{site} {task}: no test patient to attribute")
                continue
            worst = max(worst, float(np.max(scores[f"{task}_deltas"], initial=0.0)))
            what = "own-class logit" if task == "subtype" else "Cox log partial hazard"
            panels.append(PathwayPanel(f"{site} · {task} ({what}) · seed {row.seed}",
                                       top_pathways(task_scores, names), f"{len(task_scores)} test patients"))
    if not panels:
        raise BenchError(f"no pathway attributions: {'; '.join(notes) or 'no site'}")
    label = label_of(ctx, model)
    fig = pathway_figure(panels, n_cols=2, title=f"{label}: top pathways by Integrated Gradients")
    stem = f"pathways-{model}"
    paths = save_figure(fig, out_dir, stem)
    caption = (f"Pathway attributions of {label} (paper Fig. 3e, f): captum Integrated Gradients ({steps} steps, "
               "baseline = the training patients' mean expression) of the run's linear probe on the general "
               "embedding, with respect to the gene inputs, summed per pathway; top pathways by mean absolute "
               f"attribution over the first {patients} test patients per site and task (lowest stored seed). "
               f"Largest convergence delta: {100 * worst:.1f} % of the read-out's change.")
    return FigureResult(stem, paths, caption, notes)


# ------------------------------------------------------------------------------------------- learning curves
def figure_curves(ctx: FigureContext, out_dir: Path, sites: Sequence[str] | None = None, model: str = MODALTUNE,
                  **_: Any) -> list[FigureResult]:
    """One learning-curve figure per site: every stored seed of ``model`` (its newest attempt's metrics CSV)."""
    from bench.artifacts import METRICS_CSV, latest_artifact
    from bench.train.collapse import MAX_FLOOR_RATIO, MIN_CENTERED_COSINE
    from reports.figures.common import save_figure
    from reports.figures.curves import curves_figure, read_curves

    require_rows(ctx, model, "learning-curve figure")
    label = label_of(ctx, model)
    results = []
    for site in table2_sites(ctx, sites) if model != PANCANCER_MODEL else ["PANCANCER"]:
        runs: dict[str, pd.DataFrame] = {}
        notes = []
        rows = {r.run_id: r for r in (runs_of(ctx, model) if site == "PANCANCER" else runs_of(ctx, model, site))}
        for row in sorted(rows.values(), key=lambda r: r.seed):
            path = latest_artifact(ctx.runs_dir, row.model, row.run_id, METRICS_CSV)
            if path is None:
                notes.append(f"seed {row.seed}: no metrics CSV under {ctx.runs_dir}")
                continue
            task = row.config.get("task", row.task)
            try:
                runs[f"seed {row.seed}" if task == "multitask" else f"{task}, seed {row.seed}"] = read_curves(path)
            except ValueError as err:
                notes.append(str(err))
        if not runs:
            continue
        fig = curves_figure(runs, f"{label} · {site}: learning curves (profile {ctx.profile})",
                            thresholds={"diag_centered_cosine": MIN_CENTERED_COSINE,
                                        "diag_kl_floor_ratio": MAX_FLOOR_RATIO})
        stem = f"curves-{model}-{site}"
        caption = (f"Learning curves of {label} at {site}, one line per seed (and task, for a model trained per "
                   "task): training loss, the validation metric the best epoch is selected by and, for text "
                   "distillation, the collapse diagnostics on the validation patients (dashed: the collapse rule's "
                   "limits); epoch 0 is before training.")
        results.append(FigureResult(stem, save_figure(fig, out_dir, stem), caption, notes))
    if not results:
        raise BenchError(f"no metrics CSV of any {model} run under {ctx.runs_dir}; pass the --runs-dir the runs "
                         "logged to")
    return results


FIGURES: dict[str, Callable[..., FigureResult | list[FigureResult]]] = {
    "km": figure_km, "tsne": figure_tsne, "attention": figure_attention, "pathways": figure_pathways,
    "curves": figure_curves,
}


def draw(name: str, ctx: FigureContext, out_dir: str | Path = DEFAULT_OUT, **options: Any) -> list[FigureResult]:
    """Draw figure ``name`` (one of :data:`FIGURES`) into ``out_dir``; the results (one per file stem)."""
    from bench.errors import unknown_name

    if name not in FIGURES:
        raise unknown_name("figure", name, list(FIGURES))
    result = FIGURES[name](ctx, Path(out_dir), **options)
    return result if isinstance(result, list) else [result]
