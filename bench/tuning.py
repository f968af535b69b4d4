"""Hyper-parameter search with Optuna (``python -m bench tune``), on validation data only.

One study per (model, site, task, profile, seed, cohort): its name holds them and a hash of what
else defines the search (the model's search space, the code version, the request's overrides, run
options, text encoder and checkpoints), so ``run --params best`` finds it again from the same
request (:func:`study_name`). Studies persist in an Optuna storage: by default the SQLite file
``optuna.sqlite`` beside the results store, else ``--storage URL`` or ``$BENCH_OPTUNA_STORAGE``
(``sqlite:///PATH``, any SQLAlchemy URL such as ``postgresql://…``, or ``journal://PATH`` for
Optuna's journal file, the safe choice on a network file system).

A trial trains the model exactly as a run does, with the trial's values (:mod:`models.search`) as
training settings and model overrides, on a view of the cohort without its test patients: the
validation patients stand in for the test split (:func:`validation_view`), so no test patient's
features are ever opened and the regimes' code runs unchanged. The objective is the mean of the
primary validation metrics (balanced accuracy, C-index) of the rows the run trains; unpromising
trials are pruned from the training loop (:mod:`bench.train.pruning`, a median pruner).

``--trials N`` means N complete trials in total: a killed search resumes (the complete trials are
kept; the killed trial is marked failed), and several workers (``--executor``, ``--workers``) run
trials of one study against one storage until it has N. ``--params best`` uses the best of the
study's first N complete trials (N: the budget the last ``tune`` asked for), so every row gets the
same budget even if parallel workers completed a few more.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from bench.data.cohort import Cohort
from bench.errors import BenchError

if TYPE_CHECKING:
    from bench.config import Profile
    from bench.runner import RunRequest
    from models.registry import ModelEntry

log = logging.getLogger(__name__)

STORAGE_FILE = "optuna.sqlite"
STORAGE_ENV = "BENCH_OPTUNA_STORAGE"
JOURNAL = "journal://"
HEARTBEAT_S = 60  # RDB storages: a running trial's heartbeat; a trial silent for twice this is failed
MAX_FAILURES = 5  # consecutive failed trials that stop a worker
PRUNER_STARTUP_TRIALS = 5
PRUNER_WARMUP_EPOCHS = 2
#: The optimisation settings a trial may replace, per regime (the profile's, or its ``distill`` settings).
TRAINING_FIELDS = {
    "supervised": ("lr", "weight_decay", "epochs", "warmup_epochs", "batch_size", "alpha_surv", "max_patches_train"),
    "transfer": ("lr", "weight_decay", "epochs", "warmup_epochs", "batch_size", "alpha_surv", "max_patches_train"),
    "text_distill": ("lr", "weight_decay", "epochs", "warmup_epochs", "warmup_factor", "batch_size"),
    "linear_probe": (),
}


# ---------------------------------------------------------------------------------------------- storage
def storage_url(cli_value: str | None = None, store: str | Path | None = None) -> str:
    """``--storage``, else ``$BENCH_OPTUNA_STORAGE``, else ``sqlite:///<results store's dir>/optuna.sqlite``."""
    from bench.results import store_path

    if cli_value or os.environ.get(STORAGE_ENV):
        return str(cli_value or os.environ[STORAGE_ENV])
    path = store_path(str(store) if store else None).absolute().parent / STORAGE_FILE
    return f"sqlite:///{path}"


def quiet_optuna() -> None:
    """Optuna's INFO lines and its experimental-feature warnings (heartbeats, the constant liar) off stderr."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def open_storage(url: str) -> Any:
    """The Optuna storage of ``url``; a URL that is not one, or a file that cannot be created, is a
    :class:`BenchError` naming it."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    quiet_optuna()

    fix = "pass --storage sqlite:///PATH, journal://PATH or a database URL (or set BENCH_OPTUNA_STORAGE)"
    if url.startswith(JOURNAL):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len(JOURNAL):])
        _creatable(path, url, fix)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise BenchError(f"Optuna storage {url!r} is not a URL; {fix}")
    engine: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        _creatable(Path(url[len("sqlite:///"):]), url, fix)
        engine = {"connect_args": {"timeout": 60}}  # several workers on one file wait for each other
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S)
    except (SQLAlchemyError, ValueError, ImportError) as err:
        raise BenchError(f"Optuna storage {url}: {' '.join(str(err).split())[:300]}; {fix}") from err


def storage_exists(url: str) -> bool:
    """False for a SQLite or journal file that does not exist (reading it must not create it); True
    for any other URL (a database server answers for itself)."""
    for prefix in ("sqlite:///", JOURNAL):
        if url.startswith(prefix):
            return Path(url[len(prefix):]).is_file()
    return True


def _creatable(path: Path, url: str, fix: str) -> None:
    """Create ``path``'s directory; refuse a directory at ``path`` or one that cannot be created."""
    if path.is_dir():
        raise BenchError(f"Optuna storage {url}: {path} is a directory; {fix}")
    try:
        path.absolute().parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BenchError(f"Optuna storage {url}: cannot create {path.parent} ({err.strerror}); {fix}") from err


# ---------------------------------------------------------------------------------------------- studies
def study_name(req: RunRequest, entry: ModelEntry, site: str, task: str, cohort: Cohort) -> str:
    """The study of a request: ``<model>.<site>.<task>.<profile>.seed<K>.<cohort fingerprint>.<key>``,
    ``key`` hashing the search space, the code version and the request's overrides, run options, text
    encoder and checkpoints (``req.seed`` for tune, ``req.tune_seed`` for ``--params best``)."""
    from bench.config import CODE_VERSION, get_profile
    from bench.runner import text_source, weights_option
    from models.registry import canonical

    source = text_source(req)
    key = {"space": [p.describe() for p in entry.tuning_space()], "code": CODE_VERSION,
           "overrides": canonical(dict(req.overrides)), "run_options": canonical(dict(req.run_options)),
           "training": canonical(dict(req.training)), "text": req.text_spec,
           "text_weights": source.weights_tag if source is not None else None, "weights": weights_option(req.weights)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    return f"{entry.name}.{site}.{task}.{get_profile(req.profile).name}.seed{req.seed}.{cohort.fingerprint}.{digest}"


def best_trial(study: Any) -> tuple[Any, int]:
    """``(best trial, trials counted)``: the best of the study's first N complete trials, N the budget
    the last ``tune`` asked for (ties: the earlier trial)."""
    from optuna.trial import TrialState

    complete = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                      key=lambda t: (t.datetime_complete, t.number))
    budget = int(study.user_attrs.get("trials", len(complete)))
    counted = complete[:budget]
    if not counted:
        raise BenchError(f"study {study.study_name} has no complete trial yet")
    if len(counted) < budget:
        log.warning("study %s has %d of its %d trials complete; using the best of those", study.study_name,
                    len(counted), budget)
    return max(counted, key=lambda t: (t.value, -t.number)), len(counted)


def best_request(req: RunRequest, entry: ModelEntry, site: str, task: str, cohort: Cohort) -> RunRequest:
    """``req`` with its study's best values (``--params best``): model values join the overrides,
    training values the training settings, and ``tuning`` names the study and its trial count."""
    import optuna

    from models.search import split_values

    if not entry.tuning_space():
        raise BenchError(f"--params best: model {entry.name} ({entry.regime} regime) has nothing to tune (a frozen "
                         "encoder's linear probes, or a transfer row); drop --params best")
    tuned = replace(req, seed=req.tune_seed)
    name = study_name(tuned, entry, site, task, cohort)
    url = storage_url(req.tune_storage, req.store)
    command = (f"python -m bench tune --model {entry.name} --site {site.lower()} --task {task} --profile {req.profile} "
               f"--seed {req.tune_seed} --trials N" + (f" --cohort {req.cohort}" if req.cohort else "")
               + (f" --storage {req.tune_storage}" if req.tune_storage else ""))
    try:
        if not storage_exists(url):
            raise KeyError(name)
        study = optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError:
        same = " with this run's --text-encoder/--text-weights/--probe/--weights" if (
            req.overrides or req.run_options or req.text_spec or req.weights) else ""
        raise BenchError(f"--params best: no tuning study {name} in {url}; create it with `{command}`{same}") from None
    try:
        best, counted = best_trial(study)
    except BenchError as err:
        raise BenchError(f"--params best: {err} in {url}; finish it with `{command}`") from None
    try:
        train, model = split_values(entry.tuning_space(), best.params)
    except ValueError as err:
        raise BenchError(f"--params best: study {name}: {err}") from err
    return replace(req, params=None, overrides={**req.overrides, **model}, training={**req.training, **train},
                   tuning={"study": name, "trials": counted, "trial": best.number})


# ---------------------------------------------------------------------------------------------- trials
def tuned_profile(profile: Profile, entry: ModelEntry, training: dict[str, Any]) -> Profile:
    """``profile`` with the regime's optimisation settings replaced by ``training`` (for ``text_distill``
    its ``distill`` settings), validated; unchanged for an empty ``training``."""
    from pydantic import ValidationError

    from bench.config import DistillSettings, Profile

    if not training:
        return profile
    allowed = TRAINING_FIELDS.get(entry.regime, ())
    unknown = sorted(set(training) - set(allowed))
    if unknown:
        raise BenchError(f"model {entry.name} ({entry.regime} regime): no training setting {', '.join(unknown)}; "
                         f"it has {', '.join(allowed) or 'none'}")
    try:
        if entry.regime == "text_distill":
            distill = DistillSettings.model_validate({**profile.distill.model_dump(), **training})
            return profile.model_copy(update={"distill": distill})
        return Profile.model_validate({**profile.model_dump(), **training})
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise BenchError(f"model {entry.name}: bad training settings {training}: {problems}") from err


def training_settings(profile: Profile, regime: str) -> Any:
    """The settings object a regime trains with (the profile, or its ``distill`` settings)."""
    return profile.distill if regime == "text_distill" else profile


def suggest(trial: Any, space: tuple, settings: Any) -> dict[str, Any]:
    """The trial's value of every parameter of ``space`` (relative ranges scaled by ``settings``)."""
    values: dict[str, Any] = {}
    for p in space:
        if p.kind == "choice":
            values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
            continue
        low, high = p.bounds(getattr(settings, p.name, None) if p.relative else None)
        if p.kind == "int":
            values[p.name] = trial.suggest_int(p.name, int(low), int(high), log=p.log)
        else:
            values[p.name] = trial.suggest_float(p.name, float(low), float(high), log=p.log)
    return values


class ValidationView(Cohort):
    """A cohort whose sites' patients are selected without the test split, the validation patients
    standing in as the test split (:func:`validation_view`); the patient table itself stays whole."""

    def site_patients(self, site: str) -> pd.DataFrame:
        """The site's training and validation patients, then its validation patients again as ``test``."""
        rows = super().site_patients(site)
        kept = rows[rows["split"] != "test"]
        return pd.concat([kept, kept[kept["split"] == "val"].assign(split="test")], ignore_index=True)


def validation_view(cohort: Cohort) -> Cohort:
    """The cohort a trial sees: every step of a trial (a regime's "test" metrics included, which are
    then validation metrics) reads only training and validation patients, since every regime selects
    a site's patients through :meth:`Cohort.site_patients`. The patient table is left whole, so what
    is checked against it (the text prompts' cache) still matches."""
    return ValidationView(root=cohort.root, manifest=cohort.manifest, patients=cohort.patients,
                          problems=list(cohort.problems))


def objective_value(evaluations: list, sites: list[str]) -> float:
    """The mean primary validation metric of the rows of ``sites`` (NaN: the trial fails)."""
    import math

    from bench.metrics import PRIMARY

    values = [ev.metrics.get(f"val_{PRIMARY[ev.task]}") for ev in evaluations if ev.site in sites]
    if not values or any(v is None for v in values):
        raise BenchError(f"a trial measured no validation metric for sites {', '.join(sites) or 'none'}")
    return float(sum(values) / len(values)) if all(math.isfinite(v) for v in values) else float("nan")


def worker_tag() -> str:
    """``host:pid`` of this worker (recorded on every trial it starts)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Objective:
    """One trial: the run of ``base`` with the trial's values, on the validation view of the cohort."""

    def __init__(self, spec: dict[str, Any]):
        from bench.registry import get_model
        from bench.runner import RunRequest

        self.spec = spec
        self.base = RunRequest(**spec["request"])
        self.entry = get_model(self.base.model)
        self.view = validation_view(Cohort.load(self.base.cohort))
        self.last_number: int | None = None

    def __call__(self, trial: Any) -> float:
        import torch

        from bench.config import get_profile
        from bench.regimes import RunEnv, regime_for
        from bench.runner import attempt_dir, plan_run
        from bench.train.loggers import close_loggers, make_loggers
        from bench.train.pruning import pruning_callback
        from bench.train.supervised import configure_determinism
        from models.search import split_values

        self.last_number = trial.number
        trial.set_user_attr("worker", worker_tag())
        space = self.entry.tuning_space()
        profile = tuned_profile(get_profile(self.base.profile), self.entry, self.base.training)
        values = suggest(trial, space, training_settings(profile, self.entry.regime))
        train, model = split_values(space, values)
        req = replace(self.base, overrides={**self.base.overrides, **model}, training={**self.base.training, **train})
        plan = plan_run(req, self.view, results_store=False)
        regime = regime_for(plan.entry)
        if plan.profile.threads:
            torch.set_num_threads(plan.profile.threads)
        configure_determinism()
        run_dir = attempt_dir(Path(req.runs_dir) / "tune" / self.spec["study"] / f"trial-{trial.number}")
        loggers = make_loggers(run_dir, f"{self.spec['study']}.trial{trial.number}",
                               {"study": self.spec["study"], "trial": trial.number, "params": values}, req.wandb,
                               name=f"{self.spec['study']}.trial{trial.number}")
        try:
            evaluations = regime.run(plan, RunEnv(run_dir=run_dir, loggers=loggers,
                                                  callbacks=[pruning_callback(trial, plan.entry.regime)]))
        finally:
            close_loggers(loggers)
        sites = regime.training_sites(plan)
        trial.set_user_attr("val_metrics", {f"{ev.site}/{ev.task}/{k}": v for ev in evaluations if ev.site in sites
                                            for k, v in ev.metrics.items() if k.startswith("val_")})
        return objective_value(evaluations, sites)


def fail_dead_trials(study: Any) -> list[int]:
    """Mark failed the running trials whose worker process on this host is gone (a killed search);
    on other hosts an RDB storage's heartbeat does it. Returns their numbers."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    from bench.executors import process_running

    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
        if host != socket.gethostname() or not pid.isdigit() or process_running(int(pid)):
            continue
        try:
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)  # what optuna's own stale check calls
        except UpdateFinishedTrialError:
            continue
        log.warning("study %s: trial %d was left running by process %s, which is gone; marked failed",
                    study.study_name, t.number, pid)
        failed.append(t.number)
    return failed


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One worker of a study (in this process, or a job): run trials until the study has
    ``spec["trials"]`` complete ones in total; returns the numbers of the trials it ran."""
    import optuna
    from optuna.trial import TrialState

    from bench.logs import quiet_libraries

    quiet_libraries()
    storage = open_storage(spec["storage"])
    pruner = optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=PRUNER_WARMUP_EPOCHS)
    study = optuna.load_study(study_name=spec["study"], storage=storage, pruner=pruner)
    objective = Objective(spec)
    ran: list[int] = []
    failures = 0
    while True:
        fail_dead_trials(study)
        complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if complete >= spec["trials"]:
            break
        seed = int(hashlib.sha256(f"{spec['study']}:{spec.get('worker', 0)}:{len(study.trials)}".encode())
                   .hexdigest()[:8], 16)
        study.sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
        objective.last_number = None
        try:
            study.optimize(objective, n_trials=1)
        except BenchError:
            raise
        except Exception as err:  # noqa: BLE001 - a failed trial is recorded as FAIL; only a run of them stops
            log.warning("study %s: trial %s failed: %s", spec["study"], objective.last_number, err)
        if objective.last_number is not None:
            ran.append(objective.last_number)
        state = study.trials[objective.last_number].state if objective.last_number is not None else TrialState.FAIL
        failures = failures + 1 if state == TrialState.FAIL else 0
        if failures >= MAX_FAILURES:
            raise BenchError(f"study {spec['study']}: {failures} trials in a row failed (the last: trial "
                             f"{objective.last_number}); see the log above and runs/tune/{spec['study']}/")
    return {"worker": worker_tag(), "ran": ran}


# ---------------------------------------------------------------------------------------------- tune
def prepare_study(req: RunRequest, trials: int, storage: str) -> dict[str, Any]:
    """Validate one tuning request (one task), create (or load) its study with its budget, and return
    the worker spec: the base request (cohort resolved), the study, the storage and the budget."""
    import optuna

    from bench.config import get_profile
    from bench.regimes import regime_for
    from bench.runner import ensure_cohort, ensure_text_cache, plan_run, resolve_tasks

    tasks = resolve_tasks(req, results_store=False)
    if len(tasks) != 1:
        raise BenchError(f"model {req.model} supports tasks {', '.join(tasks)}; choose one with --task")
    cohort = ensure_cohort(req.cohort, get_profile(req.profile).scale)
    req = replace(req, task=tasks[0], cohort=str(cohort.root), params=None, tuning={})
    plan = plan_run(req, cohort, results_store=False)
    req = replace(req, site=plan.site)
    space = plan.entry.tuning_space()
    if not space:
        raise BenchError(f"model {plan.entry.name} ({plan.entry.regime} regime) has nothing to tune: a frozen "
                         "encoder's linear probes have no training hyper-parameters, and a transfer row has no "
                         "validation metric of its own (it is measured only where it is deployed)")
    if plan.entry.regime == "text_distill":  # built from every patient, once, before any trial sees a view
        from bench.regimes.text_distill import text_encoder

        ensure_text_cache(cohort, text_encoder(plan), plan.text_source)
    name = study_name(req, plan.entry, plan.site, plan.task, cohort)
    study = optuna.create_study(storage=open_storage(storage), study_name=name, direction="maximize",
                                load_if_exists=True)
    study.set_user_attr("trials", int(trials))
    for key, value in {"model": plan.entry.name, "site": plan.site, "task": plan.task, "profile": plan.profile.name,
                       "seed": plan.seed, "cohort": cohort.fingerprint,
                       "space": [p.text() for p in space], "regime": regime_for(plan.entry).name}.items():
        study.set_user_attr(key, value)
    return {"request": asdict(req), "study": name, "storage": storage, "trials": int(trials)}


def summarize(spec: dict[str, Any]) -> dict[str, Any]:
    """A study's state: counts by trial state and the best trial (the one ``--params best`` takes)."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=spec["study"], storage=open_storage(spec["storage"]))
    counts = {state.name.lower(): len(study.get_trials(deepcopy=False, states=(state,)))
              for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}
    req = spec["request"]
    out = {"study": spec["study"], "storage": spec["storage"], "model": req["model"], "site": req["site"],
           "task": req["task"], "profile": req["profile"], "seed": req["seed"], "trials": spec["trials"], **counts}
    if counts["complete"]:
        best, counted = best_trial(study)
        out["best"] = {"trial": best.number, "value": best.value, "params": best.params, "of_trials": counted,
                       "val_metrics": best.user_attrs.get("val_metrics", {})}
    return out


def run_studies(specs: list[dict[str, Any]], *, workers: int = 1, executor: str | None = None,
                settings: Any = None, limit: int | None = None, store: str | Path | None = None) -> list[dict[str, Any]]:
    """Run ``workers`` workers per study: in this process (one worker, studies one after another) or
    as jobs (``executor``; at most ``limit`` at once); returns each study's summary, with
    ``failed_workers`` listing the workers that failed."""
    from bench.executors import jobs_root, run_jobs
    from bench.results import store_path

    if executor is None:
        if workers != 1:
            raise BenchError("--workers runs several workers as jobs: add --executor local (or slurm)")
        for spec in specs:
            run_worker(spec)
        return [summarize(spec) for spec in specs]
    calls = [(f"{spec['study']}.worker{w}", run_worker, {**spec, "worker": w}) for spec in specs for w in range(workers)]
    root = jobs_root(store_path(str(store) if store else None)) / "tune"
    outcomes = run_jobs(calls, executor, settings, root, limit=limit)
    summaries = []
    for k, spec in enumerate(specs):
        mine = outcomes[k * workers:(k + 1) * workers]
        summary = summarize(spec)
        summary["workers"] = [value for ok, value in mine if ok]
        summary["failed_workers"] = [value for ok, value in mine if not ok]
        summaries.append(summary)
    return summaries
