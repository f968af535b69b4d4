"""The paper's omics configuration (models/paper/omics.py) reproduces the reference counts exactly."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest
import torch

from models.paper import omics as paper_omics
from models.paper.omics import family_sizes, paper_families, paper_pathways, pathway_sizes

SURVPATH_MIRROR = Path("/work/.mirror/mahmoodlab+SurvPath/repo")


@pytest.mark.parametrize(
    ("n_genes", "memberships", "one_pathway_genes"), [(4999, 9745, 2757), (4987, 9731, 2747)]
)
def test_membership_has_reference_marginals(n_genes, memberships, one_pathway_genes):
    membership = paper_pathways(n_genes)
    assert membership.dtype == torch.bool
    assert membership.shape == (n_genes, 331)
    assert int(membership.sum()) == memberships
    assert membership.sum(0).tolist() == list(pathway_sizes(n_genes))
    per_gene = membership.sum(1)
    assert int(per_gene.min()) == 1, "every reference gene belongs to at least one pathway"
    assert int((per_gene == 1).sum()) == one_pathway_genes
    assert int(per_gene.max()) == 12


def test_known_pathway_sizes():
    sizes = pathway_sizes(4999)
    assert len(sizes) == 331
    # First pathways of combine_comps.csv (GABA_B_receptor_activation, EGFR_interacts_..., ...) and the largest.
    assert sizes[:5] == (2, 5, 8, 3, 3)
    assert max(sizes) == 199 and sizes.index(199) == 303


def test_4987_gene_set_drops_14_memberships_over_12_pathways():
    full = torch.tensor(pathway_sizes(4999))
    paper = torch.tensor(pathway_sizes(4987))
    diff = full - paper
    assert int(diff.sum()) == 14
    assert torch.nonzero(diff).flatten().tolist() == [46, 115, 122, 195, 212, 215, 288, 293, 310, 315, 325, 329]
    assert bool((paper >= 1).all())


def test_membership_is_deterministic_and_returned_as_a_copy():
    first = paper_pathways()
    first[:] = False
    again = paper_pathways()
    assert int(again.sum()) == 9745
    assert torch.equal(again, paper_pathways(4999))
    # Not clumped: the 2,757 single-pathway genes are spread over the whole gene order.
    single = torch.nonzero(again.sum(1) == 1).flatten().float()
    assert 1500 < float(single.mean()) < 3500


@pytest.mark.parametrize(
    ("n_genes", "sizes", "distinct"),
    [(4999, (53, 173, 216, 252, 387, 200), 1111), (4987, (53, 170, 216, 251, 384, 199), 1103)],
)
def test_families_reproduce_mcat_sizes_and_overlap(n_genes, sizes, distinct):
    families = paper_families(n_genes)
    assert len(families) == 6
    assert tuple(len(f) for f in families) == sizes == family_sizes(n_genes)
    assert len(set().union(*families)) == distinct
    for family in families:
        assert list(family) == sorted(set(family))
        assert 0 <= family[0] and family[-1] < n_genes
    # Oncogene / protein kinase overlap of the reference (patterns with bits 1 and 2 set): 18 + 4 + 1 + 2.
    assert len(set(families[1]) & set(families[2])) == 25


@pytest.mark.parametrize("bad", [0, 1000, 4988, 20530])
def test_unsupported_gene_counts_are_rejected(bad):
    for fn in (paper_pathways, paper_families, pathway_sizes, family_sizes):
        with pytest.raises(ValueError, match="4999"):
            fn(bad)


def _reference_csv(path: str):
    pandas = pytest.importorskip("pandas")
    if not SURVPATH_MIRROR.exists():
        pytest.skip("reference mirror of mahmoodlab/SurvPath not present on this machine")
    text = subprocess.run(
        ["git", "-C", str(SURVPATH_MIRROR), "show", f"HEAD:{path}"], capture_output=True, text=True, check=True
    ).stdout
    return pandas.read_csv(io.StringIO(text), index_col=None)


def test_facts_match_the_reference_files_when_available():
    """Provenance check against SurvPath's own CSVs (skipped where the reference is not fetched)."""
    comps = _reference_csv("datasets_csv/pathway_compositions/combine_comps.csv").set_index("gene")
    assert comps.shape == (4999, paper_omics.N_PATHWAYS)
    assert comps.sum(0).tolist() == list(pathway_sizes(4999))
    per_gene = torch.bincount(torch.tensor(comps.sum(1).to_numpy()))
    assert per_gene.tolist() == list(paper_omics._GENE_DEGREE_HISTOGRAM[4999])
    signatures = _reference_csv("datasets_csv/metadata/signatures.csv")
    genes = set(comps.index)
    present = [len(set(signatures[c].dropna()) & genes) for c in signatures.columns]
    assert tuple(present) == family_sizes(4999)
