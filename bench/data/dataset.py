"""Per-patient samples (the data/model contract: batch keys in :mod:`models.base`) and their batching.

:func:`prepare_site` selects a site's patients for one task and one model's modalities, and
returns a :class:`PatientDataset` per split. A sample is a dict (see :mod:`models.base`): features
``[N, D]`` and coords ``[N, 2]`` (WSI models), rna ``[G]`` (RNA models), clinical, label,
survival_bin, event, survival_months, case_id, site. ``clinical`` is, for a model that reads the
``clinical`` modality, the encoded vector of :mod:`bench.data.clinical` (age standardised on the
run's training patients, categories one-hot, missing indicators; ``[44]``), else the raw ordinals
``[5]`` of :meth:`Cohort.clinical_matrix`. :func:`collate` pads bags to the longest of
the batch and adds ``mask [B, N]``.

Who is excluded, and why (counted in ``n_excluded``): rare-set patients (label -1) for the subtype
task; patients without RNA for models that read RNA; patients without WSI features for models that
read WSI.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from bench.data.clinical import encode_clinical
from bench.data.cohort import Cohort
from bench.data.features import BagStore
from bench.errors import BenchError

if TYPE_CHECKING:
    from bench.text_cache import TextCache

log = logging.getLogger(__name__)


class PatientDataset(Dataset):
    """Samples of a list of patients; bags are sampled to ``max_patches`` when ``train`` is set."""

    def __init__(self, rows: pd.DataFrame, *, bags: BagStore | None, rna: np.ndarray | None,
                 clinical: np.ndarray, text: torch.Tensor | None = None, max_patches: int | None = None,
                 train: bool = False):
        self.rows = rows.reset_index(drop=True)
        self.bags = bags
        self.rna = rna
        self.text = text
        self.clinical = clinical
        self.max_patches = max_patches
        self.train = train
        self.labels = self.rows["label"].to_numpy()
        self.bins = self.rows["survival_bin"].to_numpy()
        self.events = self.rows["event"].to_numpy()
        self.months = self.rows["survival_months"].to_numpy(dtype=np.float32)
        self.case_ids = self.rows["case_id"].tolist()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        sample = {
            "label": int(self.labels[i]),
            "survival_bin": int(self.bins[i]),
            "event": int(self.events[i]),
            "survival_months": float(self.months[i]),
            "clinical": torch.from_numpy(self.clinical[i]),
            "case_id": self.case_ids[i],
            "site": self.rows.at[i, "site"],
        }
        if self.bags is not None:
            feats, coords = self.bags.bag(self.case_ids[i])
            if self.train and self.max_patches and len(feats) > self.max_patches:
                keep = torch.randperm(len(feats))[: self.max_patches].sort().values.numpy()
                feats, coords = feats[keep], coords[keep]
            sample["features"] = torch.from_numpy(np.array(feats))
            sample["coords"] = torch.from_numpy(np.array(coords))
        if self.rna is not None:
            sample["rna"] = torch.from_numpy(self.rna[i])
        if self.text is not None:
            sample["text"] = self.text[i]
        return sample


def collate(samples: list[dict]) -> dict:
    """Stack samples into a batch; pad bags to the longest one and add ``mask`` (True = real patch)."""
    batch: dict = {
        "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),
        "survival_bin": torch.tensor([s["survival_bin"] for s in samples], dtype=torch.long),
        "event": torch.tensor([s["event"] for s in samples], dtype=torch.long),
        "survival_months": torch.tensor([s["survival_months"] for s in samples], dtype=torch.float32),
        "clinical": torch.stack([s["clinical"] for s in samples]),
        "case_id": [s["case_id"] for s in samples],
        "site": [s["site"] for s in samples],
    }
    for key in ("rna", "text"):
        if key in samples[0]:
            batch[key] = torch.stack([s[key] for s in samples])
    if "features" in samples[0]:
        lengths = [len(s["features"]) for s in samples]
        n_max, dim = max(lengths), samples[0]["features"].shape[1]
        feats = torch.zeros(len(samples), n_max, dim)
        coords = torch.zeros(len(samples), n_max, 2)
        mask = torch.zeros(len(samples), n_max, dtype=torch.bool)
        for b, (s, n) in enumerate(zip(samples, lengths)):
            feats[b, :n] = s["features"]
            coords[b, :n] = s["coords"]
            mask[b, :n] = True
        batch.update(features=feats, coords=coords, mask=mask)
    return batch


@dataclass
class SiteData:
    """The datasets of one (site, task, modalities) selection and what was left out."""

    site: str
    task: str
    n_classes: int
    splits: dict[str, PatientDataset]
    excluded: dict[str, int] = field(default_factory=dict)
    train_survival: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def n_excluded(self) -> int:
        return sum(self.excluded.values())


def standardise_rna(rna: pd.DataFrame, train_cases: pd.Series) -> pd.DataFrame:
    """Z-score every gene with the mean and std of the run's *training* patients (no test leakage).

    Imported expression is stored as the source has it (SurvPath's ``rna_clean.csv`` values); the
    references normalise at training time (SurvPath: min-max on the training split; ModalTune: a
    standard scaler), so the harness does it here, per run, for every model alike. Genes constant
    over the training patients keep unit scale.
    """
    train = rna.loc[train_cases.to_numpy()].to_numpy(dtype=np.float64)
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std[std < 1e-6] = 1.0
    values = (rna.to_numpy(dtype=np.float64) - mean) / std
    return pd.DataFrame(values.astype(np.float32), index=rna.index, columns=rna.columns)


def prepare_site(cohort: Cohort, site: str, task: str, modalities: tuple[str, ...], model: str,
                 max_patches_train: int | None = None, text: TextCache | None = None) -> SiteData:
    """Select and load the patients of ``site`` usable by a model reading ``modalities`` for ``task``.

    ``task`` ``multitask`` keeps the rare set (ModalTune trains on it through its text prompts);
    ``text`` adds each patient's cached text embeddings ``[4, E]``.
    """
    site = cohort.resolve_site(site)
    rows = cohort.site_patients(site)
    excluded: dict[str, int] = {}
    keep = np.ones(len(rows), dtype=bool)
    if task == "subtype":
        rare = rows["label"].to_numpy() == -1
        excluded["rare_set"] = int(rare.sum())
        keep &= ~rare
    if "rna" in modalities:
        if not cohort.genes:
            raise BenchError(f"model {model} reads RNA but cohort {cohort.root} has no expression data "
                             "(imported without --rna); re-import with --rna CSV or choose a WSI-only model")
        no_rna = (rows["has_rna"].to_numpy() == 0) & keep
        excluded["no_rna"] = int(no_rna.sum())
        keep &= ~no_rna
    if "wsi" in modalities:
        cohort.require_wsi(model)
        no_wsi = (rows["has_wsi"].to_numpy() == 0) & keep
        excluded["no_wsi"] = int(no_wsi.sum())
        keep &= ~no_wsi
    rows = rows[keep]
    for split in ("train", "val", "test"):
        if not (rows["split"] == split).any():
            raise BenchError(f"site {site}: no usable {split} patients for model {model} and task {task} "
                             f"(excluded: {excluded}); check the cohort's splits and modalities")

    bags = None
    if "wsi" in modalities:
        bag_list = [(r.case_id, [s for s in str(r.slide_ids).split(";") if s]) for r in rows.itertuples()]
        bags = BagStore(cohort.root, cohort.fingerprint, bag_list, int(cohort.feature_dim))
    rna_all = cohort.rna if "rna" in modalities else None
    if "clinical" in modalities:
        clinical = encode_clinical(rows, site, (rows["split"] == "train").to_numpy(), cohort.root)
    else:
        clinical = cohort.clinical_matrix(rows)

    if rna_all is not None:
        rna_all = standardise_rna(rna_all, rows.loc[rows["split"] == "train", "case_id"])
    splits = {}
    for split in ("train", "val", "test"):
        sel = (rows["split"] == split).to_numpy()
        part = rows[sel]
        rna = rna_all.loc[part["case_id"]].to_numpy(dtype=np.float32) if rna_all is not None else None
        splits[split] = PatientDataset(part, bags=bags, rna=rna, clinical=clinical[sel],
                                       text=text.matrix(part["case_id"].tolist()) if text is not None else None,
                                       max_patches=max_patches_train, train=split == "train")
    train = splits["train"]
    return SiteData(site=site, task=task, n_classes=cohort.n_classes(site), splits=splits, excluded=excluded,
                    train_survival=(train.events.astype(bool), train.months.astype(float)))
