"""Reader of MCAT's gene families, the ``gene_families.csv`` of an imported cohort.

Facts about the release file it reads (facts only, no code taken from the repository): MCAT (Chen et
al., ICCV 2021), github.com/mahmoodlab/MCAT, ``signatures.csv`` holds the six gene families in wide
layout, one column per family (title case), gene names down the column.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from bench.data import format as fmt
from bench.data.importers.values import read_csv
from bench.errors import CohortImportError


def read_families(path: Path, genes: Sequence[str], notes: list[str]) -> pd.DataFrame:
    """Gene families as ``gene, family`` rows (family-major, cohort gene order), cohort genes only.

    Accepts MCAT's wide ``signatures.csv`` (one column per family, any letter case) and the long
    ``gene, family`` layout this format writes.
    """
    if not path.is_file():
        raise CohortImportError(f"{path}: gene family file not found (--families)")
    df = read_csv(path, "--families", dtype=str, keep_default_na=False, na_values=[""])
    lower = {str(c).strip().lower(): c for c in df.columns}
    if "gene" in lower and "family" in lower:
        pairs = df[[lower["gene"], lower["family"]]].set_axis(["gene", "family"], axis=1)
    else:
        pairs = df.melt(var_name="family", value_name="gene")
    pairs = pairs.dropna()
    pairs = pd.DataFrame({"gene": pairs["gene"].str.strip(), "family": pairs["family"].str.strip().str.lower()})
    pairs = pairs[pairs["gene"] != ""]
    unknown = sorted(set(pairs["family"]) - set(fmt.GENE_FAMILIES))
    if unknown:
        raise CohortImportError(f"{path}: unknown gene families {unknown}; valid (any letter case): "
                                f"{', '.join(fmt.GENE_FAMILIES)}")
    pairs = pairs.drop_duplicates()
    order = {g: i for i, g in enumerate(genes)}
    outside = sorted(set(pairs["gene"]) - set(order))
    if outside:
        notes.append(f"{len(outside)} gene-family genes not in the cohort dropped (e.g. {', '.join(outside[:3])})")
    kept = pairs[pairs["gene"].isin(order)].copy()
    kept["_f"] = kept["family"].map(fmt.GENE_FAMILIES.index)
    kept["_g"] = kept["gene"].map(order)
    return kept.sort_values(["_f", "_g"])[["gene", "family"]].reset_index(drop=True)
