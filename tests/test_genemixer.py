"""Gene Mixer (models/genemixer.py, baselines/genemixer.py): counts, structure, shapes, planted signal."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from baselines.genemixer import GeneMixerModel, genemixer
from models.base import ModelContext, count_parameters
from models.genemixer import PAPER_GENE_MIXER, GeneMixer, GeneMixerConfig, PathwaySNN
from models.paper.omics import paper_pathways
from models.registry import registered


def _membership(n_genes: int, n_pathways: int, seed: int = 0) -> torch.Tensor:
    """Random ``bool [G, P]`` membership where every pathway has >= 1 gene and some genes overlap."""
    generator = torch.Generator().manual_seed(seed)
    membership = torch.rand(n_genes, n_pathways, generator=generator) < 0.25
    membership[torch.arange(n_pathways) % n_genes, torch.arange(n_pathways)] = True
    return membership


def _paper_context(**overrides) -> ModelContext:
    entry = registered()["genemixer"]
    values = {key: (value() if callable(value) else value) for key, value in entry.paper_context.items()}
    return ModelContext(**{**values, **overrides})


def test_registry_entry_and_paper_context():
    entry = registered()["genemixer"]
    assert (entry.label, entry.modalities, entry.regime) == ("Gene Mixer", ("rna",), "supervised")
    assert entry.description.startswith("Gene Mixer")
    ctx = _paper_context()
    assert ctx.n_genes == 4987 and tuple(ctx.pathways.shape) == (4987, 331)
    assert int(ctx.pathways.sum()) == 9731  # gene-pathway memberships of gene_pathway_processed_v2.csv


@pytest.mark.parametrize(
    ("n_genes", "expected"),
    # ModalTune's 4,987-gene table (9,731 memberships) gives the target; SurvPath's 4,999-gene
    # combine_comps.csv has 14 more memberships, i.e. 14 x 256 more first-layer weights.
    [(4987, 24_972_126), (4999, 24_975_710)],
)
def test_paper_parameter_count(n_genes, expected):
    """Per pathway Linear(g_p,256)+Linear(256,256); 3 mixer blocks; LN+Linear(256,256); Linear(331,64); LN; head."""
    model = genemixer(_paper_context(n_genes=n_genes, pathways=paper_pathways(n_genes), n_outputs=4))
    assert count_parameters(model) == expected
    assert model.embed_dim == 256 and model.encoder.n_tokens == 64
    mixer = model.encoder.mixer[0]
    assert mixer.token_mlp[0].out_features == 165  # int(331 * 0.5)
    assert mixer.channel_mlp[0].out_features == 128


def test_pathway_snn_equals_one_linear_per_pathway():
    """The vectorised S-MLP computes exactly ModalTune's per-pathway Linear -> ELU -> Linear -> ELU."""
    torch.manual_seed(0)
    membership = _membership(12, 5)
    snn = PathwaySNN(membership, dim=7, dropout=0.25).eval()
    rna = torch.randn(3, 12)
    out = snn(rna)
    assert out.shape == (3, 5, 7)
    offset = 0
    for p in range(5):
        genes = membership[:, p].nonzero().squeeze(1)
        first = nn.Linear(len(genes), 7)
        second = nn.Linear(7, 7)
        with torch.no_grad():
            first.weight.copy_(snn.weight1[offset : offset + len(genes)].T)
            first.bias.copy_(snn.bias1[p])
            second.weight.copy_(snn.weight2[p].T)
            second.bias.copy_(snn.bias2[p])
        offset += len(genes)
        expected = nn.functional.elu(second(nn.functional.elu(first(rna[:, genes]))))
        torch.testing.assert_close(out[:, p], expected, rtol=1e-5, atol=1e-6)


def test_genes_outside_every_pathway_are_ignored_and_mixing_crosses_pathways():
    torch.manual_seed(0)
    membership = torch.zeros(10, 3, dtype=torch.bool)
    membership[0:3, 0] = membership[3:6, 1] = membership[5:8, 2] = True  # genes 8, 9 in no pathway
    model = GeneMixer(membership, GeneMixerConfig.for_profile("tiny")).eval()
    rna = torch.randn(2, 10)
    moved = rna.clone()
    moved[:, 8:] += 5.0
    torch.testing.assert_close(model(moved), model(rna))

    only_first = rna.clone()
    only_first[:, 0:3] += 3.0  # genes of pathway 0 only
    before = model.pathway_encoder(rna), model.mixer(model.pathway_encoder(rna))
    after = model.pathway_encoder(only_first), model.mixer(model.pathway_encoder(only_first))
    torch.testing.assert_close(after[0][:, 1:], before[0][:, 1:])  # S-MLP keeps pathways apart
    assert not torch.allclose(after[1][:, 1:], before[1][:, 1:])  # the token-mixing MLP mixes them


@pytest.mark.parametrize("profile", ["tiny", "small", "paper"])
def test_token_and_embedding_shapes(profile):
    config = GeneMixerConfig.for_profile(profile)
    model = GeneMixer(_membership(40, 9), config).eval()
    rna = torch.randn(3, 40)
    tokens = model.forward_tokens(rna)
    assert tokens.shape == (3, config.n_tokens, config.out_dim)
    torch.testing.assert_close(model(rna), model.pool_norm(tokens.mean(dim=1)))
    assert model(rna[:1]).shape == (1, config.out_dim)


def test_profiles_narrow_widths_only():
    assert GeneMixerConfig.for_profile("paper") == PAPER_GENE_MIXER
    tiny = GeneMixerConfig.for_profile("tiny")
    assert tiny.latent_dim < PAPER_GENE_MIXER.latent_dim and tiny.depth == PAPER_GENE_MIXER.depth
    with pytest.raises(ValueError, match="unknown profile"):
        GeneMixerConfig.for_profile("huge")


def test_builder_requires_pathways_and_rejects_wrong_gene_count():
    with pytest.raises(ValueError, match="no pathways"):
        genemixer(ModelContext(n_genes=10, profile="tiny"))
    model = genemixer(ModelContext(n_genes=10, pathways=_membership(10, 3), profile="tiny"))
    with pytest.raises(ValueError, match=r"\[B, 10\]"):
        model({"rna": torch.randn(2, 11)})


def test_survival_loss_reaches_every_parameter():
    model = genemixer(ModelContext(n_genes=20, pathways=_membership(20, 4), profile="tiny", n_outputs=4))
    batch = {"rna": torch.randn(5, 20), "survival_bin": torch.tensor([0, 1, 2, 3, 1]), "event": torch.tensor([1, 0, 1, 1, 0])}
    model.compute_loss(batch, "survival").backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert model.predict(batch, "survival").shape == (5,)


def _planted_cohort(membership: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class k raises the expression of pathway k's genes by 1.5 (noise N(0, 1)): a pathway-level signal."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    rna = torch.randn(n, membership.shape[0], generator=generator)
    rna += 1.5 * membership[:, labels].T.float()
    return rna, labels


@pytest.fixture
def one_thread():
    """Tiny training loops run fastest on one thread (and leave the shared CPU to others)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_planted_pathway_shift_is_learned(one_thread):
    torch.manual_seed(0)
    membership = torch.zeros(48, 6, dtype=torch.bool)
    for p in range(6):
        membership[8 * p : 8 * p + 8, p] = True
    model = genemixer(ModelContext(n_genes=48, pathways=membership, profile="tiny", n_outputs=3))
    assert isinstance(model, GeneMixerModel)
    train_rna, train_y = _planted_cohort(membership, 120, seed=1)
    test_rna, test_y = _planted_cohort(membership, 150, seed=2)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(40):
        optimiser.zero_grad()
        model.compute_loss({"rna": train_rna, "label": train_y}, "subtype").backward()
        optimiser.step()
    model.eval()
    accuracy = (model.predict({"rna": test_rna}, "subtype").argmax(dim=1) == test_y).float().mean()
    assert accuracy > 0.75, f"held-out accuracy {accuracy:.2f} (chance 0.33)"
