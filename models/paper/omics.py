"""The paper's transcriptomics configuration, stored as facts: 331 pathways and 6 MCAT gene families.

Models that tokenise RNA (S-MLP, Gene Mixer, SurvPath, MCAT, ModalTune) have parameter counts that
depend on *how many* genes each token reads. To measure those counts at the paper configuration
without shipping the reference CSVs, this module keeps only the counts and builds a deterministic
membership that reproduces them exactly.

Sources (read once for the counts; no gene names or CSV content are kept):

* ``mahmoodlab/SurvPath`` ``datasets_csv/pathway_compositions/combine_comps.csv`` (identical to
  ``martellab-sri/ModalTune`` ``dataset/combine_comps.csv``): 4,999 genes x 331 pathways, 9,745
  memberships. SurvPath sorts the genes by name and keeps the CSV's column order; every gene belongs
  to at least one pathway. Its combine_signatures.csv gives the same per-pathway sizes.
* ``martellab-sri/ModalTune`` ``dataset/gene_pathway_processed_v2.csv``: the paper's "331 pathways
  with 4,987 genes" (ModalTune Sec. 4): the same 331 pathways in the same order, 9,731 memberships.
  It renames some genes to older symbols and drops others; the net effect on the counts is 14
  memberships fewer, spread over 12 pathways (:data:`_MISSING_IN_4987`), and 12 genes fewer.
* ``mahmoodlab/MCAT`` ``datasets_csv_sig/signatures.csv`` (identical to SurvPath's
  ``datasets_csv/metadata/signatures.csv``): the 6 gene families, in MCAT's order
  (:data:`bench.data.format.GENE_FAMILIES`). As in SurvPath's ``_setup_mcat``, a family keeps the
  genes present in the omic data: here the 4,999 (or 4,987) genes above. Families overlap (a gene
  can be, e.g., both an oncogene and a protein kinase); the overlap pattern is kept exactly.

Stored facts per gene set: the 331 pathway sizes (column sums), the histogram of how many pathways
each gene belongs to (row sums), and the histogram of 6-bit family-membership patterns.
"""

from __future__ import annotations

from functools import cache

import torch

N_PATHWAYS = 331
SURVPATH_N_GENES = 4999  # SurvPath's combine_comps.csv
PAPER_N_GENES = 4987  # ModalTune's gene_pathway_processed_v2.csv (the paper's gene set)
SUPPORTED_N_GENES = (SURVPATH_N_GENES, PAPER_N_GENES)
_SEED = 331

# Genes per pathway in combine_comps.csv (4,999 genes), in the CSV's column order; sum 9,745.
_PATHWAY_SIZES_4999 = (
    2, 5, 8, 3, 3, 1, 4, 4, 4, 3, 4, 9, 3, 2, 13, 1, 27, 11, 13, 17,
    32, 4, 4, 5, 9, 14, 50, 6, 2, 2, 2, 2, 11, 29, 18, 10, 17, 11, 18, 63,
    4, 6, 14, 10, 10, 12, 15, 11, 5, 3, 2, 9, 5, 2, 11, 20, 7, 2, 7, 3,
    1, 17, 19, 12, 2, 4, 14, 1, 1, 13, 5, 4, 5, 2, 20, 4, 6, 10, 25, 1,
    4, 25, 4, 14, 14, 4, 7, 10, 10, 10, 49, 1, 28, 1, 2, 9, 2, 10, 3, 45,
    1, 1, 2, 2, 17, 17, 4, 2, 8, 8, 4, 64, 8, 17, 11, 9, 2, 3, 15, 3,
    2, 9, 11, 14, 1, 4, 6, 19, 4, 1, 5, 3, 14, 2, 11, 2, 2, 10, 8, 10,
    10, 13, 11, 6, 2, 2, 2, 4, 3, 3, 5, 5, 5, 5, 6, 3, 18, 10, 5, 2,
    9, 1, 12, 14, 2, 1, 33, 8, 8, 16, 69, 2, 6, 5, 23, 23, 4, 2, 5, 3,
    3, 3, 2, 4, 2, 4, 3, 7, 3, 19, 4, 1, 21, 3, 7, 6, 3, 9, 9, 11,
    2, 5, 38, 21, 1, 4, 1, 15, 8, 6, 5, 2, 10, 14, 10, 31, 4, 4, 4, 3,
    17, 3, 3, 4, 4, 5, 2, 10, 1, 11, 5, 5, 54, 6, 6, 6, 9, 13, 5, 4,
    6, 6, 8, 2, 15, 7, 3, 8, 2, 3, 2, 7, 7, 6, 6, 7, 7, 6, 4, 8,
    15, 10, 24, 21, 11, 4, 25, 25, 5, 2, 7, 15, 10, 6, 16, 24, 1, 28, 18, 5,
    34, 197, 190, 72, 197, 41, 53, 86, 146, 189, 158, 31, 191, 195, 195, 95, 197, 94, 94, 197,
    192, 42, 35, 199, 106, 103, 194, 194, 192, 56, 197, 198, 196, 154, 183, 196, 46, 192, 153, 138,
    35, 193, 137, 194, 111, 103, 194, 132, 195, 193, 39,
)

# Pathway index -> memberships that gene_pathway_processed_v2.csv (4,987 genes) lacks; sum 14.
_MISSING_IN_4987 = {46: 2, 115: 1, 122: 1, 195: 1, 212: 1, 215: 1, 288: 1, 293: 2, 310: 1, 315: 1, 325: 1, 329: 1}

# Number of genes that belong to exactly k pathways, k = 0, 1, 2, ...
_GENE_DEGREE_HISTOGRAM = {
    4999: (0, 2757, 1086, 556, 259, 152, 71, 57, 36, 15, 7, 2, 1),
    4987: (0, 2747, 1084, 556, 259, 152, 71, 57, 36, 15, 7, 2, 1),
}

# (family pattern, number of genes): bit k set = the gene is in MCAT family k (GENE_FAMILIES order).
# Genes in no family (3,888 of 4,999; 3,884 of 4,987) are not listed.
_FAMILY_PATTERNS = {
    4999: (
        (1, 37), (2, 84), (4, 178), (5, 4), (6, 18), (8, 185), (9, 2), (10, 8), (12, 3), (13, 1),
        (14, 4), (16, 320), (17, 9), (18, 52), (20, 5), (22, 1), (32, 148), (34, 3), (40, 46),
        (42, 1), (46, 2),
    ),
    4987: (
        (1, 37), (2, 81), (4, 178), (5, 4), (6, 18), (8, 184), (9, 2), (10, 8), (12, 3), (13, 1),
        (14, 4), (16, 317), (17, 9), (18, 52), (20, 5), (22, 1), (32, 147), (34, 3), (40, 46),
        (42, 1), (46, 2),
    ),
}
N_FAMILIES = 6


def _check_n_genes(n_genes: int) -> None:
    if n_genes not in SUPPORTED_N_GENES:
        raise ValueError(
            f"the reference omics configuration exists for n_genes in {SUPPORTED_N_GENES} "
            f"(SurvPath combine_comps.csv / ModalTune gene_pathway_processed_v2.csv), got {n_genes}"
        )


def pathway_sizes(n_genes: int = SURVPATH_N_GENES) -> tuple[int, ...]:
    """Genes per pathway (331 ints, reference column order) for the 4,999- or 4,987-gene set."""
    _check_n_genes(n_genes)
    if n_genes == SURVPATH_N_GENES:
        return _PATHWAY_SIZES_4999
    return tuple(size - _MISSING_IN_4987.get(j, 0) for j, size in enumerate(_PATHWAY_SIZES_4999))


def family_sizes(n_genes: int = SURVPATH_N_GENES) -> tuple[int, ...]:
    """Genes per MCAT family (6 ints, GENE_FAMILIES order): (53, 173, 216, 252, 387, 200) at 4,999."""
    _check_n_genes(n_genes)
    return tuple(
        sum(count for pattern, count in _FAMILY_PATTERNS[n_genes] if pattern >> k & 1) for k in range(N_FAMILIES)
    )


@cache
def _membership(n_genes: int) -> torch.Tensor:
    """Realise a bool ``[G, 331]`` matrix with the stored row- and column-sum sequences.

    Gale-Ryser construction (Ryser's greedy): each pathway in turn takes the genes with the most
    memberships still to place; this realises any bigraphic pair of degree sequences, and the real
    reference matrix proves the stored pair is one. Which genes carry which degree, and how ties
    are broken, is drawn from a fixed seed so the membership is deterministic but not clumped.
    """
    generator = torch.Generator().manual_seed(_SEED)
    histogram = torch.tensor(_GENE_DEGREE_HISTOGRAM[n_genes])
    degrees = torch.repeat_interleave(torch.arange(len(histogram)), histogram)
    remaining = degrees[torch.randperm(n_genes, generator=generator)]
    sizes = torch.tensor(pathway_sizes(n_genes))
    membership = torch.zeros(n_genes, N_PATHWAYS, dtype=torch.bool)
    for column in torch.argsort(sizes, descending=True, stable=True).tolist():
        # Residual degree dominates; a random fraction in [0, 1) only breaks ties.
        priority = remaining.double() + torch.rand(n_genes, generator=generator, dtype=torch.float64)
        chosen = torch.topk(priority, int(sizes[column])).indices
        if bool((remaining[chosen] <= 0).any()):
            raise RuntimeError("stored pathway facts are inconsistent: no bipartite realisation")
        membership[chosen, column] = True
        remaining[chosen] -= 1
    if bool(remaining.any()):
        raise RuntimeError("stored pathway facts are inconsistent: gene memberships left over")
    return membership


def paper_pathways(n_genes: int = SURVPATH_N_GENES) -> torch.Tensor:
    """Gene x pathway membership ``bool [n_genes, 331]`` with the reference's exact counts.

    ``n_genes = 4999`` reproduces SurvPath's combine_comps.csv counts (what SurvPath's S-MLP and
    SurvPath models are built from); ``n_genes = 4987`` those of ModalTune's
    gene_pathway_processed_v2.csv (the paper's gene set). Column ``j`` has exactly the reference's
    ``j``-th pathway size, and as many genes belong to exactly ``k`` pathways as in the reference
    (every gene to at least one). Which gene is which is synthetic: only counts are facts here.
    Deterministic; each call returns a fresh tensor.
    """
    _check_n_genes(n_genes)
    return _membership(n_genes).clone()


@cache
def _families(n_genes: int) -> tuple[tuple[int, ...], ...]:
    generator = torch.Generator().manual_seed(_SEED + 1)
    patterns = torch.tensor(_FAMILY_PATTERNS[n_genes])
    gene_patterns = torch.repeat_interleave(patterns[:, 0], patterns[:, 1])
    genes = torch.randperm(n_genes, generator=generator)[: len(gene_patterns)]
    families = []
    for k in range(N_FAMILIES):
        in_family = (gene_patterns >> k) & 1 == 1
        families.append(tuple(sorted(genes[in_family].tolist())))
    return tuple(families)


def paper_families(n_genes: int = SURVPATH_N_GENES) -> tuple[tuple[int, ...], ...]:
    """The 6 MCAT gene families as tuples of gene indices into an ``n_genes`` gene order.

    Sizes are those of MCAT's signatures.csv restricted to the reference gene set
    (:func:`family_sizes`): ``(53, 173, 216, 252, 387, 200)`` at 4,999 genes and
    ``(53, 170, 216, 251, 384, 199)`` at 4,987; the families overlap exactly as the reference's do
    (1,111 / 1,103 distinct genes). Indices are sorted within a family (SurvPath sorts family gene
    names) and deterministic; which indices is synthetic.
    """
    _check_n_genes(n_genes)
    return _families(n_genes)
