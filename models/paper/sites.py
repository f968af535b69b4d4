"""The six TCGA sites of the paper: class groupings (Table 4), bin edges (Table 5), counts (Table 1).

All figures come from ``models/paper/reference.json``; nothing here is typed in by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from models.paper.reference import paper_reference

IN_DOMAIN_SITES = ("BRCA", "GBMLGG", "NSCLC", "RCC")
OOD_SITES = ("COADREAD", "BLCA")
ALL_SITES = IN_DOMAIN_SITES + OOD_SITES


@dataclass(frozen=True)
class SiteInfo:
    """Published facts about one site.

    ``class_names[k]`` lists the primary diagnoses grouped into class k; ``rare_names`` those of
    the rare set (label -1). ``class_counts[k]`` and ``rare_count`` are patient counts (Table 1).
    """

    name: str
    class_names: tuple[tuple[str, ...], ...]
    rare_names: tuple[str, ...]
    bin_upper_months: tuple[float, float, float, float]
    split_counts: dict[str, int]
    events: int
    censored: int
    class_counts: tuple[int, ...]
    rare_count: int

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_patients(self) -> int:
        return sum(self.split_counts.values())


@lru_cache(maxsize=None)
def site_info(name: str) -> SiteInfo:
    """Facts of site ``name`` (case-insensitive); unknown names raise listing the valid ones."""
    key = name.upper()
    if key not in ALL_SITES:
        raise KeyError(f"unknown site {name!r}; valid sites: {', '.join(s.lower() for s in ALL_SITES)}")
    ref = paper_reference()
    t1, t4, t5 = ref["table1_dataset"], ref["table4_class_groupings"][key], ref["table5_duration_bins_months"]
    n_classes = len(t1["class_counts"][key])
    return SiteInfo(
        name=key,
        class_names=tuple(tuple(t4[str(k)]) for k in range(n_classes)),
        rare_names=tuple(t4.get("rare", [])),
        bin_upper_months=tuple(float(x) for x in t5[key]),
        split_counts={s: int(t1[f"{s}_cases"][key]) for s in ("train", "val", "test")},
        events=int(t1["events"][key]),
        censored=int(t1["censored"][key]),
        class_counts=tuple(int(x) for x in t1["class_counts"][key]),
        rare_count=int(t1["rare_set"][key]),
    )


def resolve_site(name: str) -> str:
    """Canonical upper-case site name; raises ``KeyError`` listing valid sites for an unknown one."""
    return site_info(name).name
