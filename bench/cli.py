"""The one command line of the benchmark: ``python -m bench <command>``.

Conventions (README "Command line"): list options are comma-separated; site and model names are
case-insensitive; ``--json`` prints exactly one JSON object on stdout (logs and progress go to
stderr); exit 0 on success, 1 when a check or validation failed, 2 on bad usage or bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from bench.errors import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, BenchError
from models.names import PROFILES as PROFILE_NAMES
from bench.logs import quiet_libraries

log = logging.getLogger("bench")


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _bounded_int(text: str, minimum: int) -> int:
    """``text`` as an integer of at least ``minimum`` (0: seeds; 1: counts and sizes), else a usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < minimum:
        kind = "a non-negative" if minimum == 0 else "a positive"
        raise argparse.ArgumentTypeError(f"must be {kind} integer, got {value}")
    return value


def _seed(text: str) -> int:
    """A seed: an integer >= 0."""
    return _bounded_int(text, 0)


def _positive(text: str) -> int:
    """A count or size (steps, patches, dim, layers, jobs): an integer >= 1."""
    return _bounded_int(text, 1)


def _int_list(text: str, minimum: int) -> list[int]:
    """Comma-separated integers of at least ``minimum``; at least one."""
    items = _csv_list(text)
    if not items:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    try:
        return [_bounded_int(t, minimum) for t in items]
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{err} (in {text!r})") from None


def _seed_list(text: str) -> list[int]:
    """``--seeds``: comma-separated seeds (integers >= 0)."""
    return _int_list(text, 0)


def _positive_list(text: str) -> list[int]:
    """Comma-separated sizes (``--tokens``): integers >= 1."""
    return _int_list(text, 1)


def _tolerance(text: str) -> float:
    """A finite, non-negative float (0 = metrics must match exactly)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _input_file(text: str) -> str:
    """An existing file (checkpoints, tokenizers, CSVs): checked before any command does work."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; expected a file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return text


def _input_dir(text: str) -> str:
    """An existing directory (the release's split files, a feature tree)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; expected a directory")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"no such directory: {text}")
    return text


def _creatable(path: Path, text: str) -> None:
    """Refuse an output path whose nearest existing ancestor is not a writable directory."""
    ancestor = next(p for p in path.absolute().parents if p.exists())
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot create {text}: {ancestor} is not a writable directory")


def _output_file(text: str) -> str:
    """A file to (over)write: not a directory, and creatable."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; expected a file path")
    _creatable(path, text)
    return text


def _output_dir(text: str) -> str:
    """A directory to create (or replace, where the command allows it): not an existing file, and creatable."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; expected a directory")
    _creatable(path, text)
    return text


def _text_encoder(text: str) -> str:
    """``--text-encoder``: ``bow``, ``conch`` or ``hf:DIR`` with DIR an existing local model directory."""
    if text in ("bow", "conch"):
        return text
    if text.startswith("hf:") and len(text) > 3:
        _input_dir(text[3:])
        return text
    raise argparse.ArgumentTypeError(f"expected bow, conch or hf:DIR (a local transformers model directory), got {text!r}")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _clean(obj: Any) -> Any:
    """Replace NaN by None so that ``--json`` output is strict JSON."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def _emit(obj: Any) -> None:
    sys.stdout.write(json.dumps(_clean(obj), default=_json_default, indent=2) + "\n")


def _add_store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", help="results store (default: $BENCH_STORE, else runs/results.sqlite)")


def _add_evaluation(p: argparse.ArgumentParser) -> None:
    """The per-run evaluation settings of ``run`` and ``grid``: the text a ModalTune model distils and the
    linear probes' preprocessing (each part of the run id)."""
    from models.run_options import PROBE_PREPROCESSING

    p.add_argument("--text-encoder", type=_text_encoder,
                   help="text_distill models (ModalTune): the text embeddings distilled: bow (offline default), "
                        "conch or hf:DIR; embedded into the cohort's text cache on first use")
    p.add_argument("--text-weights", type=_input_file,
                   help="with --text-encoder conch: the local CONCH checkpoint (its hash enters the run id)")
    p.add_argument("--probe", choices=PROBE_PREPROCESSING,
                   help="linear-probe feature preprocessing of the LP, transfer and ModalTune rows: raw (default, "
                        "as the release) or standardized (z-scored on the training patients)")


def _evaluation(args: argparse.Namespace) -> dict[str, Any]:
    """The ``RunRequest`` fields of ``--text-encoder`` / ``--text-weights`` / ``--probe``: the text encoder
    reaches the model as its ``text_encoder`` override, the probe as the ``probe`` run option."""
    from models.text.factory import encoder_cache_name

    out: dict[str, Any] = {"text_spec": args.text_encoder, "text_weights": args.text_weights, "overrides": {},
                           "run_options": {}}
    if args.text_encoder is not None:
        out["overrides"]["text_encoder"] = encoder_cache_name(args.text_encoder)
    if args.probe is not None:
        out["run_options"]["probe"] = args.probe
    return out


def _add_tuned(p: argparse.ArgumentParser) -> None:
    """``--params`` (``best``: the tuned values of ``bench tune``'s study), ``--tune-seed`` and ``--storage``."""
    p.add_argument("--params", default="default", choices=["default", "best"],
                   help="best: train with the best trial of the run's Optuna study (python -m bench tune); its "
                        "values enter the run id (default: the profile's settings)")
    p.add_argument("--tune-seed", type=_seed, default=0, help="with --params best: the seed the study was tuned with")
    p.add_argument("--storage", help="Optuna storage URL (default: $BENCH_OPTUNA_STORAGE, else optuna.sqlite beside "
                                     "the results store)")


def _tuned(args: argparse.Namespace) -> dict[str, Any]:
    """The ``RunRequest`` fields of ``--params`` / ``--tune-seed`` / ``--storage``."""
    if args.params != "best":
        return {}
    return {"params": "best", "tune_seed": args.tune_seed, "tune_storage": args.storage}


def _add_executor(p: argparse.ArgumentParser) -> None:
    """``--executor`` and the SLURM settings of its jobs (README "Running on a cluster")."""
    p.add_argument("--executor", choices=["local", "slurm"],
                   help="submit one job per run through submitit: local subprocesses, or SLURM (default: this process "
                        "and its --jobs workers)")
    p.add_argument("--slurm-partition", help="SLURM partition of the jobs")
    p.add_argument("--slurm-gpus", type=_seed, help="GPUs per job")
    p.add_argument("--slurm-time", help="time limit per job: minutes, hours:minutes:seconds or days-hours[:minutes]")
    p.add_argument("--slurm-mem", help="memory per job, e.g. 32G")
    p.add_argument("--slurm-config", type=_input_file,
                   help="YAML of SLURM settings: partition, gpus, time, mem, cpus_per_task, account, qos, constraint, "
                        "setup (shell lines), additional (other #SBATCH options); the flags above override it")


def _slurm(args: argparse.Namespace) -> Any:
    """The jobs' :class:`~bench.executors.SlurmSettings` (None unless ``--executor slurm``); SLURM
    options without it are refused rather than ignored."""
    from bench.executors import check_executor, load_slurm_settings

    flags = {"partition": args.slurm_partition, "gpus": args.slurm_gpus, "time": args.slurm_time,
             "mem": args.slurm_mem}
    given = [f"--slurm-{k}" for k, v in flags.items() if v is not None] + (["--slurm-config"] if args.slurm_config else [])
    if args.executor != "slurm":
        if given:
            raise BenchError(f"{', '.join(given)} set the SLURM jobs of --executor slurm; add it, or drop them")
        return None
    settings = load_slurm_settings(args.slurm_config, **flags)
    check_executor("slurm")
    return settings


# ---------------------------------------------------------------------------------------------- data
def cmd_data_synth(args: argparse.Namespace) -> int:
    from bench.data.synth import generate_cohort

    try:
        path = generate_cohort(args.out, scale=args.scale, seed=args.seed)
    except FileExistsError as err:  # --out is a non-empty directory that is not a cohort
        raise BenchError(f"{err}; choose a new or empty --out directory") from err
    if args.json:
        from bench.data.cohort import Cohort

        _emit(Cohort.load(path).stats())
    else:
        print(f"wrote synthetic {args.scale} cohort (seed {args.seed}) to {path}")
    return 0


def cmd_data_import(args: argparse.Namespace) -> int:
    from bench.data.importers.modaltune import import_modaltune

    report = import_modaltune(args.splits, args.out, sites=_csv_list(args.sites) if args.sites else None,
                              features_root=args.features_root, rna_csvs=args.rna or (), pathways_csv=args.pathways,
                              families_csv=args.families, all_patients=args.all_patients,
                              rna_duplicates=args.rna_duplicates, clinical_csv=args.clinical)
    if args.json:
        _emit(report.to_dict())
    else:
        print(report.summary())
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from bench.data.cohort import Cohort

    stats = Cohort.load(args.cohort).stats()
    if args.json:
        _emit(stats)
    else:
        from tabulate import tabulate

        rows = [[site, s["train"], s["val"], s["test"], s["events"], s["censored"],
                 " ".join(f"{k}:{v}" for k, v in s["classes"].items()), s["has_rna"], s["has_wsi"],
                 ", ".join(f"{x:g}" for x in s["bin_upper_months"])] for site, s in stats["sites"].items()]
        print(tabulate(rows, headers=["site", "train", "val", "test", "events", "censored", "classes", "rna", "wsi",
                                      "bin edges (months)"]))
    return 0


def cmd_data_validate(args: argparse.Namespace) -> int:
    from bench.data.cohort import Cohort

    cohort = Cohort.load(args.cohort)
    refreshed = None
    if args.refresh_fingerprint:
        problems = cohort.validate(check_fingerprint=False)
        if not problems:
            refreshed = cohort.refresh_fingerprint()
    else:
        problems = cohort.validate()
    if args.json:
        _emit({"cohort": args.cohort, "ok": not problems, "problems": problems,
               "fingerprint": cohort.manifest.get("fingerprint"),
               "fingerprint_refreshed": refreshed is not None})
    elif problems:
        print(f"{args.cohort}: {len(problems)} problems", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        if args.refresh_fingerprint:
            print("fingerprint not refreshed: fix these problems first", file=sys.stderr)
    elif refreshed:
        print(f"{args.cohort}: ok; fingerprint {refreshed[0] or '(none)'} -> {refreshed[1]} stored in cohort.json")
    else:
        print(f"{args.cohort}: ok")
    return EXIT_CHECK_FAILED if problems else 0


# ---------------------------------------------------------------------------------------------- models
def cmd_models(args: argparse.Namespace) -> int:
    from bench.config import get_profile
    from bench.registry import all_models, params_paper
    from bench.runner import model_context, synthetic_context
    from models.base import count_parameters
    from models.registry import canonical

    prof = get_profile(args.profile)
    if args.cohort:
        from bench.data.cohort import Cohort

        ctx = model_context(Cohort.load(args.cohort), 4, prof.name)
    else:
        ctx = synthetic_context(prof.scale, 4, prof.name)
    listing = []
    for entry in all_models().values():
        counts = params_paper(entry)
        listing.append({"name": entry.name, "label": entry.label, "modalities": list(entry.modalities),
                        "tasks": list(entry.tasks), "regime": entry.regime, "family": entry.family,
                        "params_paper": counts["all"], "trainable_params_paper": counts["trainable"],
                        "params_profile": count_parameters(entry.build(ctx)), "profile": prof.name,
                        "base": entry.base, "overrides": canonical(dict(entry.overrides)),
                        "run_options": canonical(dict(entry.run_options)),
                        "beyond_paper": entry.beyond_paper, "description": entry.description,
                        "search_space": [p.describe() for p in entry.tuning_space()]})
    if args.json:
        _emit({"profile": prof.name, "models": listing})
    else:
        from tabulate import tabulate

        cols = ["name", "label", "modalities", "tasks", "regime", "params_paper", "params_profile", "variant of",
                "tuned by bench tune"]
        print(f"params_profile: profile {prof.name} on {'cohort ' + args.cohort if args.cohort else 'the embedded synthetic cohort'}")
        print(tabulate([[_cell(m, c) for c in cols] for m in listing], headers=cols))
    return 0


def _cell(model: dict[str, Any], column: str) -> str:
    """One cell of the ``models`` listing: lists comma-joined, counts with separators, a variant as
    ``base (key=value, …)`` (``beyond the paper`` marked)."""
    if column == "tuned by bench tune":
        return ",".join(p["name"] for p in model["search_space"])
    if column == "variant of":
        if not model["base"]:
            return ""
        overrides = ", ".join(f"{k}={v}" for k, v in {**model["overrides"], **model["run_options"]}.items())
        return f"{model['base']} ({overrides})" + (" [beyond the paper]" if model["beyond_paper"] else "")
    value = model[column]
    if isinstance(value, list):
        return ",".join(value)
    return f"{value:,}" if isinstance(value, int) else str(value)


# ---------------------------------------------------------------------------------------------- run, grid, table
def cmd_run(args: argparse.Namespace) -> int:
    """One run (``--task`` given), or one per task the model supports; every argument is checked before
    any of them starts. ``--json``: the run's object with ``--task``, else ``{model, site, seed,
    profile, tasks, runs: [run objects]}``."""
    from dataclasses import replace

    from bench.runner import RunRequest, execute, resolve_tasks

    req = RunRequest(model=args.model, site=args.site, task=args.task, seed=args.seed, profile=args.profile,
                     cohort=args.cohort, store=args.store, force=args.force, wandb=args.wandb, weights=args.weights,
                     progress=not args.json and sys.stderr.isatty(), **_evaluation(args), **_tuned(args))
    tasks = resolve_tasks(req)
    results = [execute(replace(req, task=task)) for task in tasks]
    if args.json:
        _emit(results[0] if args.task else
              {"model": results[0]["model"], "site": results[0]["site"], "seed": args.seed,
               "profile": results[0]["profile"], "tasks": tasks, "runs": results})
        return 0
    for result in results:
        shown = {k: round(v, 4) for k, v in result["metrics"].items() if k.startswith("test_") and isinstance(v, float)}
        print(f"{result['status']}: {result['model']} {result['site']} {result['task']} seed {result['seed']} "
              f"({result['profile']}) run {result['run_id']}: {shown}")
    return 0


def cmd_grid(args: argparse.Namespace) -> int:
    from bench.grids import get_grid, run_grid
    from bench.registry import resolve_models

    grid = get_grid(args.table)
    slurm = _slurm(args)
    summary = run_grid(grid, profile=args.profile, cohort_dir=args.cohort, store=args.store,
                       models=resolve_models(args.models) if args.models else None,
                       sites=_csv_list(args.sites) if args.sites else None, seeds=args.seeds, jobs=args.jobs,
                       wandb=args.wandb, progress=not args.json, evaluation=_evaluation(args),
                       tuning=_tuned(args) or None, executor=args.executor, slurm=slurm)
    if args.json:
        _emit(summary)
    else:
        print(f"{summary['grid']} ({summary['profile']}): {summary['runs']} runs, {summary['ran']} ran, "
              f"{summary['cached']} already stored, {len(summary['failed'])} failed; store {summary['store']}")
    for row in summary["skipped"]:
        print(f"{row['model']}: {row['reason']}", file=sys.stderr)
    if summary["failed"]:
        print(f"{len(summary['failed'])} runs failed (the others are stored; rerun the grid to retry only these):",
              file=sys.stderr)
        for f in summary["failed"]:
            print(f"  - run {f['run_id']} ({f['model']} {f['site']} {f['task']} seed {f['seed']}): {f['error']}",
                  file=sys.stderr)
    return EXIT_BAD_INPUT if summary["failed"] else 0


def cmd_tune(args: argparse.Namespace) -> int:
    """Optuna studies on validation data: one per task of ``--model``/``--site``, or one per tunable
    (row, site, task) of ``--grid`` at ``--seed``; ``--json``: the study's summary, or
    ``{storage, studies, skipped}``. Exit 2 if a worker failed (the studies keep what it completed)."""
    from bench.tuning import prepare_study, run_studies, storage_url

    slurm = _slurm(args)
    requests, skipped = _tune_requests(args)
    url = storage_url(args.storage, args.store)
    specs = [prepare_study(req, args.trials, url) for req in requests]
    summaries = run_studies(specs, workers=args.workers, executor=args.executor, settings=slurm, limit=args.jobs,
                            store=args.store)
    failed = [w for s in summaries for w in s.get("failed_workers", [])]
    if args.json:
        _emit(summaries[0] if len(summaries) == 1 and not args.grid else
              {"storage": url, "studies": summaries, "skipped": skipped})
    else:
        for s in summaries:
            best = s.get("best")
            shown = "no complete trial"
            if best:
                params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
                shown = f"best trial {best['trial']} (validation {best['value']:.4f}, of {best['of_trials']}): {params}"
            print(f"{s['model']} {s['site']} {s['task']} ({s['profile']}, seed {s['seed']}): {s['complete']} complete, "
                  f"{s['pruned']} pruned, {s['fail']} failed; {shown}; study {s['study']}")
        if skipped:
            print(f"nothing to tune (frozen encoders' linear probes): {', '.join(skipped)}")
        print(f"storage {url}; use the results with: python -m bench run|grid ... --params best")
    for reason in failed:
        print(f"  - a tuning worker failed: {reason}", file=sys.stderr)
    return EXIT_BAD_INPUT if failed else 0


def _tune_requests(args: argparse.Namespace) -> tuple[list[Any], list[str]]:
    """The base requests of ``tune`` (one per study) and the grid rows skipped as having nothing to tune."""
    from dataclasses import replace

    from bench.runner import RunRequest, resolve_tasks

    common = dict(profile=args.profile, seed=args.seed, cohort=args.cohort, store=args.store, wandb=args.wandb,
                  weights=args.weights, **_evaluation(args))
    if args.grid:
        if args.model or args.site or args.task:
            raise BenchError("--grid tunes every row of a table: drop --model/--site/--task (or drop --grid)")
        return _grid_tune_requests(args, common)
    if not args.model or not args.site:
        raise BenchError("tune needs --model and --site (and --task), or --grid TABLE")
    req = RunRequest(model=args.model, site=args.site, task=args.task, **common)
    return [replace(req, task=task) for task in resolve_tasks(req, results_store=False)], []


def _grid_tune_requests(args: argparse.Namespace, common: dict[str, Any]) -> tuple[list[Any], list[str]]:
    """One request per (row, site, task) of ``--grid`` at ``--seed`` whose model has a search space."""
    from bench.config import get_profile
    from bench.grids import cell_evaluation, get_grid, grid_cells
    from bench.registry import all_models, resolve_models
    from bench.runner import RunRequest, ensure_cohort

    grid = get_grid(args.grid)
    cohort = ensure_cohort(args.cohort, get_profile(args.profile).scale)
    sites = [cohort.resolve_site(s) for s in (_csv_list(args.sites) if args.sites else
                                              [s for s in grid.sites if s in cohort.sites])]
    cells = grid_cells(grid, models=resolve_models(args.models) if args.models else None, sites=sites,
                       seeds=[args.seed])
    if common.pop("weights"):
        raise BenchError("--weights is one model's checkpoint: tune that model with --model (grids take none)")
    registry = all_models()
    evaluation = {k: common.pop(k) for k in ("text_spec", "text_weights", "overrides", "run_options")}
    requests, skipped = [], []
    for c in cells:
        entry = registry[c.model]
        if not entry.tuning_space():
            skipped.append(f"{c.model} {c.site} {c.task}")
            continue
        requests.append(RunRequest(model=c.model, site=c.site, task=c.task, **{**common, "seed": args.seed,
                                   "cohort": str(cohort.root)}, **cell_evaluation(entry.regime, evaluation)))
    return requests, skipped


def cmd_table(args: argparse.Namespace) -> int:
    from bench.reporting import render_table

    text = render_table(args.table, store=args.store, profile=args.profile, fmt=args.format, ci=args.ci)
    if args.out:
        from bench.data.format import atomic_path

        with atomic_path(args.out) as tmp:
            tmp.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from bench.runner import embed_cohort

    result = embed_cohort(args.model, cohort_dir=args.cohort, profile=args.profile, weights=args.weights,
                          seed=args.seed, sites=_csv_list(args.sites) if args.sites else None)
    if args.json:
        _emit(result)
    else:
        print(f"cached {sum(result['patients'].values())} {result['model']} embeddings "
              f"({result['embed_dim']}-d) in {result['cache']}")
    return 0


def cmd_text_prompts(args: argparse.Namespace) -> int:
    from bench.text_cache import case_prompts

    prompts = case_prompts(args.cohort, args.case)
    if args.json:
        _emit(prompts)
    else:
        for task, text in prompts.items():
            print(f"{task}: {text}")
    return 0


def cmd_text_embed(args: argparse.Namespace) -> int:
    from bench.text_cache import write_text_cache

    if args.encoder != "conch" and (args.text_weights or args.text_tokenizer):
        raise BenchError(f"--text-weights / --text-tokenizer are read by --encoder conch only, not {args.encoder!r}; "
                         "add --encoder conch or drop them")
    path = write_text_cache(args.cohort, args.encoder, weights=args.text_weights, tokenizer=args.text_tokenizer,
                            seed=args.seed, with_staging=not args.without_stage)
    if args.json:
        _emit({"cohort": args.cohort, "encoder": args.encoder, "cache": str(path)})
    else:
        print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------------------------------- figures, report
#: Options that only some figures read (``bench figure``), and the figures that read them.
FIGURE_OPTIONS = {"model": ("attention", "pathways", "curves"), "case": ("attention",),
                  "patients": ("pathways",), "steps": ("pathways",)}


def cmd_figure(args: argparse.Namespace) -> int:
    from bench.figures import draw, load_context
    from bench.registry import get_model

    options = {}
    for option, figures in FIGURE_OPTIONS.items():
        value = getattr(args, option)
        if value is None:
            continue
        if args.name not in figures:
            raise BenchError(f"--{option} applies to the {' / '.join(figures)} figure(s), not {args.name}")
        options[option] = get_model(value).name if option == "model" else value
    ctx = load_context(args.store, args.profile, args.runs_dir, args.weights, args.seed)
    results = draw(args.name, ctx, args.out, sites=_csv_list(args.site) if args.site else None, **options)
    if args.json:
        _emit({"figure": args.name, "profile": ctx.profile,
               "figures": [{"name": r.name, "files": r.paths, "caption": r.caption, "notes": r.notes} for r in results]})
    else:
        for result in results:
            print(f"wrote {', '.join(str(p) for p in result.paths)}")
            for note in result.notes:
                print(f"  note: {note}", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from bench.report import build_report

    summary = build_report(args.out, store=args.store, profile=args.profile, runs_dir=args.runs_dir,
                           weights=args.weights, wandb=args.wandb, seed=args.seed)
    if args.json:
        _emit(summary.to_dict())
    else:
        print(f"wrote {summary.page} ({len(summary.tables)} tables, {len(summary.figures)} figures, "
              f"{summary.seconds:.0f} s)")
        for name, reason in summary.missing.items():
            print(f"  not drawn: {name}: {reason}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------- drift, perf
def cmd_drift(args: argparse.Namespace) -> int:
    from bench import drift

    expected = args.expected or drift.DEFAULT_EXPECTED
    if args.action == "record":
        observed = drift.record(expected, cohort_dir=args.cohort)
        if args.json:
            _emit({"recorded": str(expected), **observed})
        else:
            print(f"recorded {len(observed['metrics'])} runs to {expected}")
        return 0
    problems, observed = drift.check(expected, tolerance=args.tolerance, cohort_dir=args.cohort)
    if args.json:
        _emit({"ok": not problems, "problems": problems, "observed": observed})
    elif problems:
        print(f"drift check FAILED against {expected}:", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
    else:
        print(f"drift check ok: {len(observed['metrics'])} runs match {expected}")
    return EXIT_CHECK_FAILED if problems else 0


def cmd_perf(args: argparse.Namespace) -> int:
    from bench import perf

    result = perf.run(args.what, args)
    if args.json:
        _emit(result)
    else:
        print(json.dumps(_clean(result), indent=2))
    return 0


# ---------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="create, import, inspect and validate cohorts")
    dsub = data.add_subparsers(dest="data_command", required=True)
    p = dsub.add_parser("synth", help="generate the synthetic TCGA-like cohort")
    p.add_argument("--out", required=True, type=_output_dir)
    p.add_argument("--scale", default="tiny", choices=PROFILE_NAMES)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_data_synth)
    p = dsub.add_parser("import", help="import real data into a cohort")
    isub = p.add_subparsers(dest="source", required=True)
    q = isub.add_parser("modaltune", help="the ModalTune release's split JSONs (+ SurvPath RNA/pathway CSVs)")
    q.add_argument("--splits", required=True, type=_input_dir, help="dataset/json_splits directory of the release")
    q.add_argument("--out", required=True, type=_output_dir)
    q.add_argument("--sites", help="comma-separated sites (default: all found)")
    q.add_argument("--features-root", type=_input_dir, help="directory searched (recursively) for <slide_id>.h5/.pt")
    q.add_argument("--rna", action="append", type=_input_file, help="rna_clean.csv (repeatable, e.g. one per site)")
    q.add_argument("--pathways", type=_input_file, help="combine_comps.csv (gene x pathway)")
    q.add_argument("--families", type=_input_file, help="MCAT signatures.csv, or a gene,family CSV")
    q.add_argument("--all-patients", action="store_true", help="keep patients with gene_availability != 1 too")
    q.add_argument("--clinical", type=_input_file,
                   help="CSV keyed by TCGA barcode (case_submitter_id) with any of treatment_type, er_status, "
                        "pr_status, her2_status (read by ModalTune w/ Clinical at BRCA)")
    q.add_argument("--rna-duplicates", default="error", choices=["error", "mean", "first"],
                   help="a patient on several rows of one --rna file: refuse (default, lists them all), average the "
                        "rows per gene, or keep the first row; the patients are named in the report and cohort.json")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_data_import)
    p = dsub.add_parser("stats", help="patient counts per site and split")
    p.add_argument("cohort")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_data_stats)
    p = dsub.add_parser("validate", help="check everything a run relies on (exit 1 if anything is wrong)")
    p.add_argument("cohort")
    p.add_argument("--refresh-fingerprint", action="store_true",
                   help="after an intended edit of the cohort's files: if everything else validates, store the "
                        "recomputed content fingerprint in cohort.json")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_data_validate)

    text = sub.add_parser("text", help="ModalTune's text prompts and cached text embeddings")
    tsub = text.add_subparsers(dest="text_command", required=True)
    p = tsub.add_parser("prompts", help="the four prompts (general, diagnosis, stage, survival) of one patient")
    p.add_argument("--cohort", required=True)
    p.add_argument("--case", required=True, help="TCGA barcode (patients.csv case_id)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_text_prompts)
    p = tsub.add_parser("embed", help="embed every patient's prompts and cache them in text/<encoder>.pt")
    p.add_argument("--cohort", required=True)
    p.add_argument("--encoder", default="bow", help="bow (offline default), conch, or hf:DIR")
    p.add_argument("--text-weights", type=_input_file, help="conch: local checkpoint of CONCH")
    p.add_argument("--text-tokenizer", type=_input_file, help="conch: tokenizer.json (default: next to the weights)")
    p.add_argument("--seed", type=_seed, default=0, help="bow: seed of the Gaussian projection")
    p.add_argument("--without-stage", action="store_true",
                   help="embed the prompts without their staging sentences into text/<encoder>-nostage.pt (Table 7)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_text_embed)

    p = sub.add_parser("models", help="list registered models with parameter counts")
    p.add_argument("--json", action="store_true")
    p.add_argument("--profile", default="small", choices=PROFILE_NAMES,
                   help="profile of params_profile (default small)")
    p.add_argument("--cohort", help="cohort sizing params_profile (default: the profile's embedded synthetic cohort)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("run", help="train and evaluate one model on one site and task")
    p.add_argument("--model", required=True)
    p.add_argument("--site", required=True)
    p.add_argument("--task", choices=["subtype", "survival", "multitask"],
                   help="default: every task the model supports, one run each")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--cohort", help="cohort directory (default: the embedded synthetic cohort of the profile)")
    p.add_argument("--profile", default="small", choices=PROFILE_NAMES)
    _add_store(p)
    p.add_argument("--force", action="store_true", help="rerun even if the result is stored")
    p.add_argument("--weights", help="local checkpoint of a foundation model (Prov-GigaPath, TITAN); default random init")
    _add_evaluation(p)
    _add_tuned(p)
    p.add_argument("--wandb", default="offline", choices=["online", "offline", "disabled"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("embed", help="cache a frozen slide encoder's patient embeddings (for the LP rows)")
    p.add_argument("--model", required=True, help="gigapath or titan (or their *_lp names)")
    p.add_argument("--cohort")
    p.add_argument("--profile", default="small", choices=PROFILE_NAMES)
    p.add_argument("--weights", help="local checkpoint (default: random initialisation)")
    p.add_argument("--seed", type=_seed, default=0, help="initialisation seed when no weights are given")
    p.add_argument("--sites")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("grid", help="run the missing runs of a table's grid")
    p.add_argument("table")
    p.add_argument("--profile", default="small", choices=PROFILE_NAMES)
    p.add_argument("--cohort")
    p.add_argument("--seeds", type=_seed_list)
    p.add_argument("--sites")
    p.add_argument("--models")
    p.add_argument("--jobs", type=_positive, help="parallel runs (default: the profile's; with --executor slurm: "
                                                     "every run is submitted at once unless given)")
    _add_store(p)
    _add_evaluation(p)
    _add_tuned(p)
    _add_executor(p)
    p.add_argument("--wandb", default="offline", choices=["online", "offline", "disabled"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_grid)

    p = sub.add_parser("tune", help="Optuna search of a model's hyper-parameters, on validation data only")
    p.add_argument("--model")
    p.add_argument("--site")
    p.add_argument("--task", choices=["subtype", "survival", "multitask"],
                   help="default: every task the model supports, one study each")
    p.add_argument("--grid", help="instead of --model/--site: every tunable row, site and task of a table's grid")
    p.add_argument("--models", help="with --grid: only these rows")
    p.add_argument("--sites", help="with --grid: only these sites")
    p.add_argument("--trials", type=_positive, required=True,
                   help="complete trials per study in total (a resumed study runs only the missing ones)")
    p.add_argument("--seed", type=_seed, default=0, help="the trials' training seed (part of the study)")
    p.add_argument("--cohort")
    p.add_argument("--profile", default="small", choices=PROFILE_NAMES)
    _add_store(p)
    p.add_argument("--storage", help="Optuna storage URL: sqlite:///PATH, journal://PATH or a database URL (default: "
                                     "$BENCH_OPTUNA_STORAGE, else optuna.sqlite beside the results store)")
    p.add_argument("--weights", help="local checkpoint of a foundation model (Prov-GigaPath, TITAN)")
    _add_evaluation(p)
    _add_executor(p)
    p.add_argument("--workers", type=_positive, default=1,
                   help="with --executor: worker jobs per study, each running trials against the storage")
    p.add_argument("--jobs", type=_positive, help="with --executor: worker jobs out at once (default: all)")
    p.add_argument("--wandb", default="disabled", choices=["online", "offline", "disabled"],
                   help="W&B logging of each trial (default disabled; CSV logs are always written)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("table", help="render a table from the results store beside the paper's figures")
    p.add_argument("table")
    p.add_argument("--format", default="md", choices=["md", "latex", "csv"])
    p.add_argument("--out", type=_output_file)
    p.add_argument("--profile", choices=PROFILE_NAMES, help="default: the profile of the latest run")
    p.add_argument("--ci", action="store_true",
                   help="add 95%% bootstrap intervals and paired tests vs the reference row (from stored predictions)")
    _add_store(p)
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("figure", help="draw one of the paper's figures (PNG and PDF) from stored results")
    p.add_argument("name", choices=["km", "tsne", "attention", "pathways", "curves"])
    p.add_argument("--site", help="comma-separated sites (default: Table 2's sites with stored runs; attention: the first)")
    p.add_argument("--out", type=_output_dir, default="runs/figures", help="output directory (default runs/figures)")
    p.add_argument("--profile", choices=PROFILE_NAMES, help="default: the profile of the latest run")
    _add_store(p)
    p.add_argument("--runs-dir", type=_input_dir, help="where the runs logged (default runs)")
    p.add_argument("--model", help="attention / pathways / curves: the model drawn (default modaltune)")
    p.add_argument("--case", help="attention: the test patient (default: the first single-slide test patient)")
    p.add_argument("--patients", type=_positive, help="pathways: test patients attributed per site and task (default 6)")
    p.add_argument("--steps", type=_positive, help="pathways: Integrated Gradients steps (default 16)")
    p.add_argument("--seed", type=_seed, default=0, help="t-SNE seed")
    p.add_argument("--weights", type=_input_file, help="the slide-encoder checkpoint the runs were trained with, if any")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_figure)

    p = sub.add_parser("report", help="one static HTML page with every table and figure (runs/report/index.html)")
    p.add_argument("--out", type=_output_dir, default="runs/report", help="report directory (default runs/report)")
    p.add_argument("--profile", choices=PROFILE_NAMES, help="default: the profile of the latest run")
    _add_store(p)
    p.add_argument("--runs-dir", type=_input_dir, help="where the runs logged (default runs)")
    p.add_argument("--weights", type=_input_file, help="the slide-encoder checkpoint the runs were trained with, if any")
    p.add_argument("--wandb", default="offline", choices=["online", "offline", "disabled"],
                   help="also log the figures and tables to W&B (default offline, under the report directory)")
    p.add_argument("--seed", type=_seed, default=0, help="t-SNE seed")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("drift", help="record or check the drift grid's metrics")
    p.add_argument("action", choices=["record", "check"])
    p.add_argument("--expected", help="recorded metrics (default tests/drift/expected.json)")
    p.add_argument("--tolerance", type=_tolerance)
    p.add_argument("--cohort", help="tiny cohort to use (default: the embedded one)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_drift)

    p = sub.add_parser("perf", help="performance benchmarks")
    p.add_argument("what", choices=["harness", "models", "gigapath", "titan", "modaltune", "runs"])
    p.add_argument("--tokens", type=_positive_list, help="gigapath/titan: bag sizes (default gigapath 1024,4096,16384; titan 1000,2500,5000,10000)")
    p.add_argument("--layers", type=_positive, help="gigapath/titan: encoder layers at the paper width")
    p.add_argument("--steps", type=_positive, default=200, help="harness: training steps")
    p.add_argument("--patches", type=_positive, help="patches per bag (harness 512, models 4096)")
    p.add_argument("--models", help="models: which models (default: the Table 2 comparison models)")
    p.add_argument("--dim", type=_positive, default=1536)
    p.add_argument("--store", help="runs: the results store to read (default: $BENCH_STORE, else runs/results.sqlite)")
    p.add_argument("--profile", help="runs: only this profile's runs")
    p.add_argument("--table", help="runs: only the rows of this table (e.g. table2)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_perf)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    try:
        return args.func(args)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
