"""A cohort's ModalTune text prompts and their cached embeddings (``text/<encoder>.pt``).

:func:`cohort_prompts` builds every patient's four texts (:func:`models.text.prompts.build_prompts`)
from ``patients.csv`` and the manifest's bin edges; :func:`write_text_cache` embeds them with one
encoder (``bow``, ``conch``, ``hf:DIR``) and saves, atomically::

    {"format": 1, "encoder": name, "label": what it is, "dim": E, "tasks": [general, diagnosis,
     stage, survival], "prompts_sha256": hash of every patient's texts, "embeddings": {case_id: [4, E]},
     "weights": "<file name>:<sha256[:16]>" of the encoder's checkpoint, or None, "staging": bool}

A cache named ``<encoder>-nostage`` (:func:`without_stage_name`, ``"staging": false``) holds the same
encoder's embeddings of the texts without their staging sentences (Table 7's "Survival prediction w/o
stage"); a fitted encoder (``bow``) is fitted on the full texts for both, so the two share one space.

:func:`load_text_cache` reads it back, refuses a cache whose prompts no longer match the cohort
(re-run ``text embed``), and also accepts the release's own files (a plain ``{case: [4, E]}`` dict,
keyed by TCGA barcode or by GDC uuid through the imported ``case_uuid`` column).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.data import format as fmt
from bench.data.cohort import Cohort
from bench.errors import BenchError
from models.text import TextEncoder, build_text_encoder
from models.text.prompts import TEXT_TASKS, PromptError, build_prompts

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
#: The suffix of a cache of the texts without staging sentences (``text/<encoder>-nostage.pt``).
WITHOUT_STAGE = "-nostage"


def without_stage_name(encoder_name: str) -> str:
    """The cache name of ``encoder_name``'s embeddings of the texts without staging sentences."""
    return encoder_name + WITHOUT_STAGE


def _cohort(cohort: Cohort | str | Path) -> Cohort:
    return cohort if isinstance(cohort, Cohort) else Cohort.load(cohort)


def cohort_prompts(cohort: Cohort | str | Path, with_staging: bool = True) -> dict[str, dict[str, str]]:
    """``{case_id: {"general", "diagnosis", "stage", "survival"}}`` for every patient, in file order
    (``with_staging=False``: without the staging sentences, :func:`models.text.prompts.build_prompts`).

    A value the templates cannot express is a :class:`BenchError` naming the patient and field.
    """
    cohort = _cohort(cohort)
    prompts: dict[str, dict[str, str]] = {}
    problems = []
    for row in cohort.patients.to_dict("records"):
        try:
            prompts[row["case_id"]] = build_prompts(row, cohort.site_meta(row["site"]), with_staging)
        except PromptError as err:
            problems.append(f"{cohort.root / fmt.PATIENTS}: patient {row['case_id']}: {err}")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise BenchError("cannot write text prompts:\n  " + "\n  ".join(problems[:5]) + more)
    return prompts


def case_prompts(cohort: Cohort | str | Path, case_id: str) -> dict[str, str]:
    """One patient's four texts (the ``text prompts --case`` answer); an unknown case id is an error."""
    cohort = _cohort(cohort)
    rows = cohort.patients[cohort.patients["case_id"] == case_id]
    if rows.empty:
        examples = ", ".join(cohort.patients["case_id"].head(3))
        raise BenchError(f"patient {case_id!r} is not in {cohort.root / fmt.PATIENTS}; case ids are TCGA "
                         f"patient barcodes such as {examples}")
    row = rows.iloc[0].to_dict()
    try:
        return build_prompts(row, cohort.site_meta(row["site"]))
    except PromptError as err:
        raise BenchError(f"{cohort.root / fmt.PATIENTS}: patient {case_id}: {err}") from err


def prompts_digest(prompts: dict[str, dict[str, str]]) -> str:
    """SHA-256 of every patient's texts (case order and task order fixed), to detect a stale cache."""
    canonical = json.dumps([[case, [prompts[case][t] for t in TEXT_TASKS]] for case in sorted(prompts)])
    return hashlib.sha256(canonical.encode()).hexdigest()


def cache_path(cohort_root: str | Path, encoder_name: str) -> Path:
    """``<cohort>/text/<encoder_name>.pt``."""
    return Path(cohort_root) / fmt.TEXT_DIR / f"{encoder_name}.pt"


@dataclass(frozen=True)
class TextSource:
    """Where a run's text embeddings come from when the cohort has no cache of them yet (``run
    --text-encoder SPEC [--text-weights PATH]``): the encoder ``spec`` (``bow``, ``conch``, ``hf:DIR``),
    its local checkpoint and that checkpoint's ``name:sha256[:16]`` tag (part of the run id)."""

    spec: str
    weights: str | None = None
    weights_tag: str | None = None

    @property
    def name(self) -> str:
        """The cache name (``text/<name>.pt``) and ModalTune ``text_encoder`` setting of ``spec``."""
        from models.text.factory import encoder_cache_name

        return encoder_cache_name(self.spec)

    @property
    def buildable(self) -> bool:
        """True when this source can embed a cohort by itself (``conch`` needs its checkpoint)."""
        return self.spec != "conch" or self.weights is not None


def embed_cohort(cohort: Cohort | str | Path, encoder: TextEncoder, with_staging: bool = True) -> dict[str, Any]:
    """Fit ``encoder`` on the cohort's texts (``bow`` only) and embed them, or with ``with_staging=False``
    the texts without staging sentences (the fit still on the full texts): the cache record."""
    cohort = _cohort(cohort)
    prompts = cohort_prompts(cohort)
    cases = list(prompts)
    encoder.fit([prompts[c][t] for c in cases for t in TEXT_TASKS])
    if not with_staging:
        prompts = cohort_prompts(cohort, with_staging=False)
    embeddings = encoder.encode_prompt_sets([prompts[c] for c in cases])
    return {
        "format": CACHE_FORMAT,
        "encoder": encoder.name,
        "label": encoder.label,
        "dim": int(encoder.dim),
        "tasks": list(TEXT_TASKS),
        "prompts_sha256": prompts_digest(prompts),
        "embeddings": {case: embeddings[i].clone() for i, case in enumerate(cases)},
        "staging": with_staging,
    }


def write_text_cache(cohort: Cohort | str | Path, spec: str, *, weights: str | Path | None = None,
                     tokenizer: str | Path | None = None, seed: int = 0, device: str | torch.device = "cpu",
                     weights_tag: str | None = None, with_staging: bool = True) -> Path:
    """Embed the cohort with encoder ``spec`` and write ``text/<encoder>.pt`` atomically; returns its path
    (``with_staging=False``: the texts without staging sentences, into ``text/<encoder>-nostage.pt``).

    ``weights_tag`` (``name:sha256[:16]`` of ``weights``) is recorded, so that a run asking for other
    weights can tell that the cache is not theirs."""
    cohort = _cohort(cohort)
    try:
        encoder = build_text_encoder(spec, weights=weights, tokenizer=tokenizer, seed=seed, device=device)
    except (ValueError, FileNotFoundError, ImportError) as err:
        raise BenchError(str(err)) from err
    record = {**embed_cohort(cohort, encoder, with_staging), "weights": weights_tag}
    path = cache_path(cohort.root, encoder.name if with_staging else without_stage_name(encoder.name))
    fmt.write_atomic(path, lambda tmp: torch.save(record, tmp))
    log.info("wrote %s: %d patients x %d texts x %d dims (%s)", path, len(record["embeddings"]),
             len(TEXT_TASKS), record["dim"], record["label"])
    return path


@dataclass(frozen=True)
class TextCache:
    """Embeddings ``{case_id: float32 [4, dim]}`` of one encoder, with what produced them."""

    encoder: str
    label: str
    dim: int
    embeddings: dict[str, torch.Tensor]
    weights: str | None = None

    def matrix(self, case_ids: list[str]) -> torch.Tensor:
        """``float32 [len(case_ids), 4, dim]`` in the given order; a missing case is an error."""
        missing = [c for c in case_ids if c not in self.embeddings]
        if missing:
            raise BenchError(f"text embeddings '{self.encoder}' lack {len(missing)} patients (e.g. {missing[0]}); "
                             f"re-run `python -m bench text embed --encoder {self.encoder}`")
        if not case_ids:
            return torch.zeros(0, len(TEXT_TASKS), self.dim)
        return torch.stack([self.embeddings[c] for c in case_ids]).float()


def embed_command(cohort_root: str | Path, encoder_name: str) -> str:
    """The ``text embed`` command that writes the cache ``encoder_name`` (``--without-stage`` for a
    ``-nostage`` cache)."""
    flag = " --without-stage" if encoder_name.endswith(WITHOUT_STAGE) else ""
    base = encoder_name.removesuffix(WITHOUT_STAGE)
    return f"python -m bench text embed --cohort {cohort_root} --encoder {base}{flag}"


def load_text_cache(cohort: Cohort | str | Path, encoder_name: str, *, check_prompts: bool = True) -> TextCache:
    """Read ``text/<encoder_name>.pt``; with ``check_prompts``, refuse it if the cohort's texts changed."""
    cohort = _cohort(cohort)
    path = cache_path(cohort.root, encoder_name)
    if not path.is_file():
        raise BenchError(f"{path} is missing; embed the cohort's prompts first with "
                         f"`{embed_command(cohort.root, encoder_name)}`")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for a broken or foreign file
        raise BenchError(f"{path}: unreadable text embeddings ({err}); re-run `text embed`") from err
    if isinstance(record, dict) and "embeddings" in record:
        staged = bool(record.get("staging", True))
        if check_prompts and record.get("prompts_sha256") != prompts_digest(cohort_prompts(cohort, staged)):
            raise BenchError(f"{path} was embedded from other prompts than this cohort's patients.csv now gives; "
                             f"re-run `{embed_command(cohort.root, encoder_name)}`")
        embeddings = dict(record["embeddings"])
        cache = TextCache(str(record["encoder"]), str(record["label"]), int(record["dim"]), embeddings,
                          record.get("weights"))
    else:
        cache = _release_cache(cohort, path, record, encoder_name)
    bad = [c for c, e in cache.embeddings.items() if tuple(e.shape) != (len(TEXT_TASKS), cache.dim)]
    if bad:
        raise BenchError(f"{path}: patient {bad[0]} has embeddings of shape {tuple(cache.embeddings[bad[0]].shape)}, "
                         f"expected [{len(TEXT_TASKS)}, {cache.dim}]")
    return cache


def _release_cache(cohort: Cohort, path: Path, record: Any, encoder_name: str) -> TextCache:
    """A release ``*_textembeddings_*.pt`` (``{case: [4, E]}``), re-keyed to this cohort's case ids."""
    if not isinstance(record, dict) or not record or not all(isinstance(v, torch.Tensor) for v in record.values()):
        raise BenchError(f"{path}: neither a bench text cache nor a release {{case: [4, E]}} dict")
    patients = cohort.patients
    ids = dict(zip(patients["case_id"], patients["case_id"]))
    if "case_uuid" in patients.columns:
        ids.update(zip(patients["case_uuid"].astype(str), patients["case_id"]))
    embeddings = {ids[k]: v.float() for k, v in record.items() if k in ids}
    if not embeddings:
        raise BenchError(f"{path}: none of its {len(record)} keys is a case_id (or case_uuid) of this cohort")
    dim = int(next(iter(embeddings.values())).shape[-1])
    return TextCache(encoder_name, f"{encoder_name} (release file {path.name})", dim, embeddings)
