"""Reading and checking a cohort directory (format in :mod:`bench.data.format`).

:meth:`Cohort.load` checks the structure a run relies on — manifest, patient table, RNA, pathways,
gene families — and raises :class:`~bench.errors.CohortError` listing *every* problem found, each
naming its file, patient and field and what to do. Feature files are checked when they are read
(:mod:`bench.data.features`) and all at once by :meth:`Cohort.validate`.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.data import format as fmt
from bench.data.clinical import check_clinical_columns
from bench.data.fingerprint import KEY as FINGERPRINT_KEY
from bench.data.fingerprint import content_fingerprint, stamp_fingerprint, stored_fingerprint
from bench.errors import BenchError, CohortError, unknown_name
from models.clinical import CLINICAL_COLUMNS

log = logging.getLogger(__name__)

CLINICAL_FIELDS = ("age", "stage", "t", "n", "m")
_ROMAN = {"IV": 4, "III": 3, "II": 2, "I": 1}


def _ordinal(value: Any, prefix: str) -> float:
    """AJCC string to an ordinal: 'Stage IIIA' -> 3, 'T2b' -> 2, 'N0' -> 0, 'M1' -> 1; missing/X -> -1."""
    if not isinstance(value, str) or not value.strip():
        return -1.0
    text = value.strip().upper()
    if prefix == "STAGE":
        match = re.search(r"STAGE\s+(IV|III|II|I)", text)
        return float(_ROMAN[match.group(1)]) if match else -1.0
    match = re.match(rf"{prefix}(\d)", text)
    return float(match.group(1)) if match else -1.0


def clinical_vector(row: pd.Series) -> np.ndarray:
    """Numeric clinical covariates ``float32 [5]``: age (years / 100), stage, T, N, M ordinals (-1 = missing)."""
    age = pd.to_numeric(row.get("age"), errors="coerce")
    return np.array(
        [
            -1.0 if pd.isna(age) else float(age) / 100.0,
            _ordinal(row.get("stage"), "STAGE"),
            _ordinal(row.get("t"), "T"),
            _ordinal(row.get("n"), "N"),
            _ordinal(row.get("m"), "M"),
        ],
        dtype=np.float32,
    )


@dataclass
class Cohort:
    """A loaded, structurally checked cohort. ``patients`` is indexed 0..P-1 in file order."""

    root: Path
    manifest: dict[str, Any]
    patients: pd.DataFrame
    problems: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, root: str | Path) -> Cohort:
        """Load ``root`` and check its structure; raise ``CohortError`` listing every problem."""
        root = Path(root)
        manifest_path = root / fmt.MANIFEST
        if not root.is_dir():
            raise CohortError(f"{root} is not a directory; create a cohort with `python -m bench data synth --out {root}` "
                              "or `python -m bench data import modaltune ... --out DIR`")
        if not manifest_path.is_file():
            raise CohortError(f"{root} is not a cohort: {fmt.MANIFEST} is missing; create one with "
                              f"`python -m bench data synth --out DIR` or `python -m bench data import modaltune ...`")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise CohortError(f"{manifest_path}: unreadable manifest ({err}); regenerate or re-import the cohort") from err
        problems = _check_manifest(manifest, manifest_path)
        if problems:
            raise CohortError(problems, str(root))
        patients_path = root / fmt.PATIENTS
        if not patients_path.is_file():
            raise CohortError(f"{patients_path} is missing; the cohort is incomplete — regenerate or re-import it")
        try:
            patients = pd.read_csv(patients_path, dtype={c: str for c in ("case_id", "site", "split", "primary_diagnosis",
                                                                          "stage", "t", "n", "m", "slide_ids",
                                                                          *CLINICAL_COLUMNS)},
                                   keep_default_na=False, na_values={"survival_months": [""], "age": [""]})
        except (OSError, pd.errors.ParserError, UnicodeDecodeError) as err:
            raise CohortError(f"{patients_path}: unreadable CSV ({err})") from err
        cohort = cls(root=root, manifest=manifest, patients=patients)
        problems = cohort._check_patients()
        if problems:
            raise CohortError(problems, str(root))
        return cohort

    def _check_patients(self) -> list[str]:
        path = self.root / fmt.PATIENTS
        df = self.patients
        missing = [c for c in fmt.PATIENT_COLUMNS if c not in df.columns]
        if missing:
            return [f"{path}: missing columns {missing}; expected {list(fmt.PATIENT_COLUMNS)}"]
        problems: list[str] = []
        dup = df["case_id"][df["case_id"].duplicated(keep=False)]
        for case in sorted(set(dup)):
            splits = sorted(set(df.loc[df["case_id"] == case, "split"]))
            if len(splits) > 1:
                problems.append(f"{path}: patient {case} is in two splits ({', '.join(splits)}); "
                                "a patient belongs to exactly one of train/val/test — fix the split files")
            else:
                problems.append(f"{path}: duplicate case_id {case}; each patient must appear once "
                                "(merge its slides into one row, ';'-joined slide_ids)")
        sites = self.manifest["sites"]
        numeric = {c: pd.to_numeric(df[c], errors="coerce") for c in ("label", "event", "survival_bin", "has_rna", "has_wsi")}
        months = pd.to_numeric(df["survival_months"], errors="coerce")
        for i, row in df.iterrows():
            case = row["case_id"] or f"row {i + 2}"
            where = f"{path}: patient {case}"
            site = row["site"]
            if site not in sites:
                problems.append(f"{where}: site {site!r} is not declared in {fmt.MANIFEST} "
                                f"(declared: {', '.join(sorted(sites))})")
            if row["split"] not in fmt.SPLITS:
                problems.append(f"{where}: split {row['split']!r} must be one of {', '.join(fmt.SPLITS)}")
            label = numeric["label"][i]
            if site in sites:
                n_classes = len(sites[site]["classes"])
                if pd.isna(label) or label != int(label) or not (label == fmt.RARE_LABEL or 0 <= label < n_classes):
                    problems.append(f"{where}: label {row['label']!r} is outside site {site}'s classes "
                                    f"(0..{n_classes - 1}, or -1 for the rare set)")
            m = months[i]
            if pd.isna(m) or not math.isfinite(m):
                problems.append(f"{where}: survival_months is missing or not a number; every patient needs a "
                                "follow-up time (drop the patient or fill it from the clinical source)")
            elif m < 0:
                problems.append(f"{where}: survival_months {m} is negative")
            event = numeric["event"][i]
            if pd.isna(event):
                problems.append(f"{where}: event is missing; code 1 = died, 0 = censored")
            elif event not in (0, 1):
                problems.append(f"{where}: event {row['event']!r} is outside {{0, 1}}; code 1 = died, 0 = censored")
            sbin = numeric["survival_bin"][i]
            if pd.isna(sbin) or sbin not in range(fmt.N_SURVIVAL_BINS):
                problems.append(f"{where}: survival_bin {row['survival_bin']!r} must be 0..3")
            for flag in ("has_rna", "has_wsi"):
                if numeric[flag][i] not in (0, 1):
                    problems.append(f"{where}: {flag} {row[flag]!r} must be 0 or 1")
            if numeric["has_wsi"][i] == 1 and not str(row["slide_ids"]).strip():
                problems.append(f"{where}: has_wsi = 1 but slide_ids is empty; list its slides or set has_wsi = 0")
        problems.extend(check_clinical_columns(df, path))
        if not problems:
            for col in ("label", "event", "survival_bin", "has_rna", "has_wsi"):
                df[col] = numeric[col].astype(int)
            df["survival_months"] = months.astype(float)
        return problems

    # ------------------------------------------------------------------ facts
    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.root.name))

    @property
    def kind(self) -> str:
        """``synthetic`` or ``imported`` (the manifest's provenance)."""
        return str((self.manifest.get("provenance") or {}).get("kind", "unknown"))

    @property
    def sites(self) -> list[str]:
        return sorted(self.manifest["sites"])

    @property
    def feature_dim(self) -> int | None:
        return self.manifest.get("feature_dim")

    @property
    def genes(self) -> list[str]:
        return list(self.manifest["genes"])

    def resolve_site(self, site: str) -> str:
        """Canonical site name of this cohort (case-insensitive); unknown -> error listing valid ones."""
        for s in self.sites:
            if s.lower() == site.lower():
                return s
        raise unknown_name("site", site, [s.lower() for s in self.sites])

    def site_meta(self, site: str) -> dict[str, Any]:
        return self.manifest["sites"][self.resolve_site(site)]

    def n_classes(self, site: str) -> int:
        return len(self.site_meta(site)["classes"])

    def site_patients(self, site: str) -> pd.DataFrame:
        site = self.resolve_site(site)
        return self.patients[self.patients["site"] == site]

    @cached_property
    def fingerprint(self) -> str:
        """The content fingerprint (16 hex chars) stored in ``cohort.json`` when the cohort was written.

        :func:`bench.data.fingerprint.content_fingerprint` defines it (a hash of the decoded tables,
        RNA values and feature arrays, independent of library versions). A cohort written before
        fingerprints were stored gets it computed now, which reads every feature file.
        """
        stored = stored_fingerprint(self.manifest)
        if stored is not None:
            return stored
        log.warning("%s has no valid stored content fingerprint (an older cohort format); computing it, which "
                    "reads every feature file. Store it once with `python -m bench data validate %s "
                    "--refresh-fingerprint`, or regenerate / re-import the cohort", self.root / fmt.MANIFEST, self.root)
        return content_fingerprint(self.root)

    def fingerprint_problem(self) -> str | None:
        """Recompute the content fingerprint; the problem if it differs from the stored one, else None.

        A cohort that stores none (an older format) is not a problem: a hint to store it is logged.
        """
        path = self.root / fmt.MANIFEST
        try:
            computed = content_fingerprint(self.root)
        except BenchError as err:
            return f"content fingerprint not computable: {err}"
        stored = self.manifest.get(FINGERPRINT_KEY)
        if stored is None:
            log.warning("%s stores no content fingerprint (an older cohort format); store %s with "
                        "`python -m bench data validate %s --refresh-fingerprint`", path, computed, self.root)
            return None
        if stored != computed:
            return (f"{path}: stored fingerprint {stored!r} does not match the cohort's content ({computed}): "
                    "its files changed after it was written. Regenerate or re-import the cohort; if the change was "
                    f"intended, store the new fingerprint with `python -m bench data validate {self.root} "
                    "--refresh-fingerprint`")
        return None

    def refresh_fingerprint(self) -> tuple[str | None, str]:
        """Recompute the content fingerprint and store it in ``cohort.json`` atomically: ``(old, new)``."""
        old = self.manifest.get(FINGERPRINT_KEY)
        new = stamp_fingerprint(self.root)
        self.manifest[FINGERPRINT_KEY] = new
        self.__dict__.pop("fingerprint", None)  # drop the cached property's old value
        return (old if isinstance(old, str) else None), new

    # ------------------------------------------------------------------ RNA, pathways, families
    @cached_property
    def rna(self) -> pd.DataFrame:
        """Expression ``float32 [patients with RNA, G]`` indexed by case_id, columns = cohort genes."""
        path = self.root / fmt.RNA
        genes = self.genes
        if not path.is_file():
            if int(self.patients["has_rna"].sum()) > 0:
                raise CohortError(f"{path} is missing but {int(self.patients['has_rna'].sum())} patients have has_rna = 1; "
                                  "re-import with --rna, or set has_rna = 0")
            return pd.DataFrame(columns=genes, dtype=np.float32)
        try:
            df = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several unrelated types for a broken file
            raise CohortError(f"{path}: unreadable parquet ({err}); re-import the RNA") from err
        if "case_id" not in df.columns:
            raise CohortError(f"{path}: no 'case_id' column; the first column must hold the patients' case ids")
        df = df.set_index("case_id")
        if list(df.columns) != genes:
            extra = [g for g in df.columns if g not in set(genes)]
            lacking = [g for g in genes if g not in set(df.columns)]
            detail = []
            if lacking:
                detail.append(f"{len(lacking)} cohort genes missing (e.g. {', '.join(map(str, lacking[:3]))})")
            if extra:
                detail.append(f"{len(extra)} genes not in the cohort (e.g. {', '.join(map(str, extra[:3]))})")
            if not detail:
                detail.append("same genes in a different order")
            raise CohortError(f"{path}: RNA gene list does not match the cohort's gene list in {fmt.MANIFEST} "
                              f"({'; '.join(detail)}); re-import so both come from the same pathway file")
        problems = []
        for gene in df.columns:
            if not pd.api.types.is_numeric_dtype(df[gene]):
                bad = pd.to_numeric(df[gene], errors="coerce").isna() & df[gene].notna()
                case = df.index[bad.to_numpy()][0] if bad.any() else "?"
                problems.append(f"{path}: non-numeric RNA value {df.loc[case, gene]!r} for patient {case}, gene {gene}; "
                                "expression must be numbers (fix the source CSV and re-import)")
        if problems:
            raise CohortError(problems[:20])
        values = df.to_numpy(dtype=np.float32)
        if not np.isfinite(values).all():
            r, c = np.argwhere(~np.isfinite(values))[0]
            raise CohortError(f"{path}: NaN/Inf RNA value for patient {df.index[r]}, gene {df.columns[c]}; "
                              "nothing is imputed — fill or drop it in the source and re-import")
        lacking = [c for c in self.patients.loc[self.patients["has_rna"] == 1, "case_id"] if c not in df.index]
        if lacking:
            raise CohortError(f"{path}: {len(lacking)} patients with has_rna = 1 have no row (e.g. {lacking[0]}); "
                              "set has_rna = 0 for them or add their expression")
        return pd.DataFrame(values, index=df.index, columns=df.columns)

    @cached_property
    def pathways(self) -> np.ndarray | None:
        """Gene x pathway membership ``bool [G, P]`` in cohort gene order (None if the file is absent)."""
        path = self.root / fmt.PATHWAYS
        if not path.is_file():
            return None
        df = pd.read_csv(path)
        if df.columns[0] != "gene":
            raise CohortError(f"{path}: first column must be 'gene' (combine_comps.csv layout), found {df.columns[0]!r}")
        df = df.set_index("gene")
        missing = [g for g in self.genes if g not in df.index]
        if missing:
            raise CohortError(f"{path}: {len(missing)} cohort genes have no pathway row (e.g. {missing[0]})")
        values = df.loc[self.genes].to_numpy()
        if not np.isin(values, (0, 1)).all():
            raise CohortError(f"{path}: membership values must be 0 or 1")
        return values.astype(bool)

    @cached_property
    def families(self) -> tuple[tuple[int, ...], ...] | None:
        """Gene indices of each of the 6 MCAT families (None if the cohort has no families)."""
        path = self.root / fmt.FAMILIES
        if not path.is_file():
            return None
        df = pd.read_csv(path)
        if list(df.columns[:2]) != ["gene", "family"]:
            raise CohortError(f"{path}: expected columns 'gene', 'family'")
        if df.empty:
            return None
        bad = sorted(set(df["family"]) - set(fmt.GENE_FAMILIES))
        if bad:
            raise CohortError(f"{path}: unknown families {bad}; valid: {list(fmt.GENE_FAMILIES)}")
        index = {g: i for i, g in enumerate(self.genes)}
        unknown = [g for g in df["gene"] if g not in index]
        if unknown:
            raise CohortError(f"{path}: {len(unknown)} genes not in the cohort (e.g. {unknown[0]})")
        return tuple(tuple(sorted(index[g] for g in df.loc[df["family"] == fam, "gene"])) for fam in fmt.GENE_FAMILIES)

    def clinical_matrix(self, rows: pd.DataFrame) -> np.ndarray:
        """``float32 [len(rows), 5]`` clinical covariates of the given patient rows."""
        return np.stack([clinical_vector(r) for _, r in rows.iterrows()]) if len(rows) else np.zeros((0, 5), np.float32)

    # ------------------------------------------------------------------ features
    def require_wsi(self, model: str) -> None:
        """Refuse a WSI model on a cohort imported without patch features."""
        if not self.feature_dim or int(self.patients["has_wsi"].sum()) == 0:
            raise BenchError(f"model {model} reads WSI patch features but cohort {self.root} has none "
                             "(imported without --features-root); re-import with --features-root DIR or choose an "
                             "RNA-only model (mlp, snn, smlp, genemixer)")

    # ------------------------------------------------------------------ reports
    def stats(self) -> dict[str, Any]:
        """Counts per site over the kept patients (the ``data stats`` JSON)."""
        out: dict[str, Any] = {}
        for site in self.sites:
            df = self.site_patients(site)
            classes = df["label"].value_counts().sort_index()
            out[site] = {
                **{s: int((df["split"] == s).sum()) for s in fmt.SPLITS},
                "events": int((df["event"] == 1).sum()),
                "censored": int((df["event"] == 0).sum()),
                "classes": {str(int(k)): int(v) for k, v in classes.items()},
                "bin_upper_months": [float(x) for x in self.site_meta(site)["bin_upper_months"]],
                "has_rna": int(df["has_rna"].sum()),
                "has_wsi": int(df["has_wsi"].sum()),
            }
        return {"cohort": str(self.root), "name": self.name, "fingerprint": self.fingerprint, "sites": out}

    def validate(self, check_fingerprint: bool = True) -> list[str]:
        """Every problem a run could hit (tables, RNA, pathways, families, every feature file).

        With ``check_fingerprint`` the content fingerprint is recomputed too, and a mismatch with the
        stored one (the files changed after the cohort was written) is a problem.
        """
        from bench.data.features import check_feature_file, slide_path

        problems: list[str] = []
        for attr in ("rna", "pathways", "families"):
            try:
                getattr(self, attr)
            except CohortError as err:
                problems.extend(err.problems)
        dim = self.feature_dim
        for _, row in self.patients[self.patients["has_wsi"] == 1].iterrows():
            slides = [s for s in str(row["slide_ids"]).split(";") if s]
            for slide in slides:
                try:
                    path = slide_path(self.root, row["case_id"], slide)
                except BenchError as err:  # its message already names the patient
                    problems.append(str(err))
                    continue
                problems.extend(f"patient {row['case_id']}: {p}" for p in check_feature_file(path, dim))
        if check_fingerprint:
            problem = self.fingerprint_problem()
            # an undecodable file is already listed above; its fingerprint error would repeat it
            if problem is not None and not (problems and problem.startswith("content fingerprint not computable")):
                problems.append(problem)
        return problems


def _check_manifest(manifest: Any, path: Path) -> list[str]:
    if not isinstance(manifest, dict):
        return [f"{path}: manifest must be a JSON object"]
    problems = []
    if manifest.get("format_version") != fmt.FORMAT_VERSION:
        problems.append(f"{path}: format_version {manifest.get('format_version')!r} is not {fmt.FORMAT_VERSION}; "
                        "regenerate or re-import the cohort with this version of the bench")
    for key in ("sites", "genes"):
        if key not in manifest:
            problems.append(f"{path}: missing key {key!r}")
    for site, meta in (manifest.get("sites") or {}).items():
        if not isinstance(meta, dict) or "classes" not in meta or "bin_upper_months" not in meta:
            problems.append(f"{path}: site {site} needs 'classes' and 'bin_upper_months'")
        elif len(meta["bin_upper_months"]) != fmt.N_SURVIVAL_BINS:
            problems.append(f"{path}: site {site}: bin_upper_months must hold 4 upper edges in months")
    return problems
