"""What a text-distillation run (ModalTune) leaves beside its logs for the figures: its best epoch's
trained weights and every patient's general-task embedding.

Written once per attempt into the attempt's directory (``runs/<model>/<site>-<task>-seed<N>-<run id>/
attempt-*/``), each file atomically (temporary file, then rename):

``model.pt``
    the trainable parameters and the buffers of the best epoch's model (the frozen slide encoder is
    not copied: it is rebuilt from the run's seed, or from its ``--weights`` checkpoint, and checked
    against ``frozen_digest``), the text width the model was built for, the run id and model name.
``embeddings.npz``
    ``case_ids``, ``sites``, ``splits`` and ``embeddings [n, E]``: the general-task embedding of every
    patient of the training sites, exactly as the linear probes read them.

Figures read them back (:func:`latest_artifact`) so that no figure ever retrains a model; nothing here
changes what a run computes or stores.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.data.format import atomic_path
from bench.errors import BenchError

CHECKPOINT = "model.pt"
EMBEDDINGS = "embeddings.npz"
METRICS_CSV = Path("csv") / "metrics.csv"
CHECKPOINT_FORMAT = 1


def frozen_digest(model: torch.nn.Module) -> str:
    """sha256[:16] of the model's frozen parameters (names, shapes and values), in name order: identifies
    the slide encoder a checkpoint was trained on top of."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        if not param.requires_grad:
            digest.update(name.encode())
            digest.update(str(tuple(param.shape)).encode())
            digest.update(param.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def trained_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state without its frozen parameters: trainable parameters and every buffer."""
    frozen = {name for name, param in model.named_parameters() if not param.requires_grad}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k not in frozen}


def save_checkpoint(run_dir: Path, model: torch.nn.Module, *, run_id: str, model_name: str, text_dim: int) -> Path:
    """Write ``model.pt`` (see the module docstring) into ``run_dir``; returns its path."""
    record = {"format": CHECKPOINT_FORMAT, "run_id": run_id, "model": model_name, "text_dim": int(text_dim),
              "frozen_digest": frozen_digest(model), "state": trained_state(model)}
    path = Path(run_dir) / CHECKPOINT
    with atomic_path(path) as tmp:
        torch.save(record, tmp)
    return path


def save_embeddings(run_dir: Path, embeddings: dict[str, dict[str, np.ndarray]],
                    case_ids: dict[str, dict[str, list[str]]]) -> Path:
    """Write ``embeddings.npz``: ``embeddings[site][split] [n, E]`` with the matching ``case_ids``."""
    cases, sites, splits, rows = [], [], [], []
    for site, by_split in embeddings.items():
        for split, x in by_split.items():
            ids = case_ids[site][split]
            if len(ids) != len(x):
                raise ValueError(f"{site} {split}: {len(x)} embeddings for {len(ids)} patients")
            cases += ids
            sites += [site] * len(ids)
            splits += [split] * len(ids)
            rows.append(np.asarray(x, dtype=np.float32))
    path = Path(run_dir) / EMBEDDINGS
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, case_ids=np.array(cases, dtype=str), sites=np.array(sites, dtype=str),
                     splits=np.array(splits, dtype=str),
                     embeddings=np.concatenate(rows) if rows else np.zeros((0, 0), np.float32))
    return path


def attempt_dirs(runs_dir: Path, model: str, run_id: str) -> list[Path]:
    """Every attempt directory of run ``run_id`` of ``model`` under ``runs_dir``, newest first (attempt
    names start with their UTC time)."""
    found = [p for p in Path(runs_dir).glob(f"{model}/*-{run_id}/attempt-*") if p.is_dir()]
    return sorted(found, key=lambda p: p.name, reverse=True)


def latest_artifact(runs_dir: Path, model: str, run_id: str, name: str | Path) -> Path | None:
    """``name`` in the newest attempt of the run that has it (an attempt that failed before writing it
    is skipped), or None."""
    for attempt in attempt_dirs(runs_dir, model, run_id):
        if (attempt / name).is_file():
            return attempt / name
    return None


def require_artifact(runs_dir: Path, model: str, run_id: str, name: str | Path, what: str) -> Path:
    """:func:`latest_artifact`, or a :class:`BenchError` that says where it was looked for and how to get it."""
    path = latest_artifact(runs_dir, model, run_id, name)
    if path is None:
        raise BenchError(f"no {what} ({name}) of run {run_id} ({model}) under {Path(runs_dir) / model}/*-{run_id}/"
                         f"attempt-*/; pass the --runs-dir the run logged to, or rerun it with --force "
                         "(runs stored before figures existed saved none)")
    return path


def load_checkpoint_record(path: Path) -> dict[str, Any]:
    """The record :func:`save_checkpoint` wrote at ``path``; a file of another kind is a named error."""
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a foreign or truncated file
        raise BenchError(f"{path} is not a readable run checkpoint ({type(err).__name__}); rerun the run with "
                         "--force to write it again") from err
    if not isinstance(record, dict) or record.get("format") != CHECKPOINT_FORMAT or "state" not in record:
        raise BenchError(f"{path} is not a run checkpoint of format {CHECKPOINT_FORMAT}; rerun the run with --force")
    return record


def restore(model: torch.nn.Module, record: dict[str, Any], path: Path) -> torch.nn.Module:
    """Load a checkpoint ``record`` into a freshly built ``model`` (its frozen encoder rebuilt as the run
    built it); refuse it when the frozen parameters differ from the ones the run was trained on."""
    digest = frozen_digest(model)
    if digest != record["frozen_digest"]:
        raise BenchError(f"{path}: the rebuilt slide encoder differs from the one run {record['run_id']} was trained "
                         f"on (frozen digest {digest} != {record['frozen_digest']}); if the run used --weights, "
                         "pass the same --weights file")
    missing, unexpected = model.load_state_dict(record["state"], strict=False)
    frozen = {name for name, param in model.named_parameters() if not param.requires_grad}
    missing = [k for k in missing if k not in frozen]
    if missing or unexpected:
        raise BenchError(f"{path} does not fit model {record['model']}: missing {missing[:5]}, unexpected "
                         f"{list(unexpected)[:5]}; rerun the run with --force")
    return model.eval()


def load_embeddings(path: Path) -> dict[str, np.ndarray]:
    """``embeddings.npz`` as arrays: ``case_ids``, ``sites``, ``splits`` (str) and ``embeddings``."""
    with np.load(path, allow_pickle=False) as stored:
        return {key: stored[key] for key in ("case_ids", "sites", "splits", "embeddings")}
