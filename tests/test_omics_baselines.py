"""RNA-only baselines MLP, SNN and S-MLP: paper parameter counts, shapes, independence, learning."""

from __future__ import annotations

import math

import pytest
import torch

from baselines.mlp import MLPOmics
from baselines.smlp import SparseMLPOmics
from baselines.snn import SNNOmics
from models.base import ModelContext, count_parameters
from models.paper.omics import paper_pathways
from models.registry import registered

N_GENES, N_PATHWAYS = 60, 8


def small_pathways(n_genes: int = N_GENES, n_pathways: int = N_PATHWAYS, seed: int = 0) -> torch.Tensor:
    """Random membership ``bool [G, P]`` with ~10 genes per pathway and every gene in >= 1 pathway."""
    generator = torch.Generator().manual_seed(seed)
    membership = torch.rand(n_genes, n_pathways, generator=generator) < 10 / n_genes
    membership[torch.arange(n_genes), torch.arange(n_genes) % n_pathways] = True
    return membership


def build(name: str, n_outputs: int = 4, pathways: torch.Tensor | None = None):
    pathways = small_pathways() if pathways is None else pathways
    if name == "mlp":
        return MLPOmics(pathways.shape[0], n_outputs)
    if name == "snn":
        return SNNOmics(pathways.shape[0], n_outputs)
    return SparseMLPOmics(pathways, n_outputs)


MODELS = ("mlp", "snn", "smlp")


def paper_model(name: str, **overrides):
    """Build a registry entry at its paper context (callables resolved, as the harness does)."""
    entry = registered()[name]
    values = {key: (value() if callable(value) else value) for key, value in entry.paper_context.items()}
    values.update(overrides)
    return entry.build(ModelContext(**values))


@pytest.mark.parametrize(
    ("name", "label", "n_genes", "params"),
    [("mlp", "MLP", 4999, 161_188), ("snn", "SNN", 4987, 1_343_748), ("smlp", "S-MLP", 4999, 34_287_632)],
)
def test_registry_paper_configuration(name, label, n_genes, params):
    entry = registered()[name]
    assert entry.label == label
    assert entry.modalities == ("rna",)
    assert entry.regime == "supervised"
    assert set(entry.tasks) == {"subtype", "survival"}
    assert entry.family == name
    assert entry.paper_context["n_genes"] == n_genes
    model = paper_model(name)
    assert count_parameters(model) == params


@pytest.mark.parametrize(
    ("name", "n_genes", "params"),
    [("mlp", 4987, 161_188 - 12 * 32), ("snn", 4999, 1_346_820), ("mlp", 4999, 161_188)],
)
def test_parameter_count_at_the_other_reference_gene_set(name, n_genes, params):
    assert count_parameters(paper_model(name, n_genes=n_genes)) == params


def test_head_size_follows_outputs():
    # 3 subtype classes instead of 4 survival bins: one row of the head (32 weights + 1 bias) fewer.
    assert count_parameters(paper_model("mlp", n_outputs=3)) == 161_188 - 33
    assert count_parameters(paper_model("snn", n_outputs=3)) == 1_343_748 - 257


@pytest.mark.parametrize(
    ("n_genes", "dense", "unmasked"),
    # 4,987 genes: 12 input rows (x 2,648 units) and 14 memberships (x 8 units) fewer.
    [(4999, 34_287_632, 7_146_800), (4987, 34_287_632 - 12 * 2648, 7_146_800 - 14 * 8)],
)
def test_smlp_dense_and_unmasked_counts(n_genes, dense, unmasked):
    model = SparseMLPOmics(paper_pathways(n_genes), n_outputs=4)
    assert count_parameters(model) == dense
    assert model.unmasked_parameter_count() == unmasked
    assert model.embed_dim == 331 * 16 // 4
    assert not any(name.endswith("mask") for name, _ in model.named_parameters())
    assert {name for name, _ in model.named_buffers()} == {"encoder.0.mask", "encoder.1.mask"}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("batch_size", [1, 17, 4096])
def test_output_shapes(name, batch_size):
    model = build(name, n_outputs=3).eval()
    batch = {"rna": torch.randn(batch_size, N_GENES)}
    embedding = model.forward_features(batch)
    assert embedding.shape == (batch_size, model.embed_dim)
    assert model(batch).shape == (batch_size, 3)
    assert model.predict(batch, "subtype").shape == (batch_size, 3)
    assert model.predict(batch, "survival").shape == (batch_size,)


@pytest.mark.parametrize("name", MODELS)
def test_rows_are_independent_and_wsi_keys_ignored(name):
    """The RNA analogue of mask invariance: a patient's output does not depend on its batch mates."""
    torch.manual_seed(0)
    model = build(name).eval()
    rna = torch.randn(5, N_GENES)
    together = model({"rna": rna})
    alone = torch.cat([model({"rna": rna[i : i + 1]}) for i in range(5)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    with_wsi = model({"rna": rna, "features": torch.randn(5, 7, 16), "mask": torch.zeros(5, 7, dtype=torch.bool)})
    torch.testing.assert_close(with_wsi, together)


@pytest.mark.parametrize("name", MODELS)
def test_wrong_gene_count_is_rejected(name):
    with pytest.raises(ValueError, match=f"rna \\[B, {N_GENES}\\]"):
        build(name)({"rna": torch.randn(2, N_GENES + 1)})


@pytest.mark.parametrize("name", MODELS)
def test_survival_loss_backpropagates(name):
    model = build(name).train()
    batch = {
        "rna": torch.randn(6, N_GENES),
        "survival_bin": torch.tensor([0, 1, 2, 3, 1, 2]),
        "event": torch.tensor([1, 0, 1, 1, 0, 0]),
    }
    loss = model.compute_loss(batch, "survival")
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@torch.no_grad()
def test_snn_initialisation_is_lecun_normal_with_zero_bias():
    model = SNNOmics(4000, n_outputs=4)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3
    for linear in linears:
        assert float(linear.bias.abs().max()) == 0.0
        std = float(linear.weight.std())
        assert abs(std * math.sqrt(linear.in_features) - 1.0) < 0.05
    assert sum(isinstance(m, torch.nn.AlphaDropout) for m in model.modules()) == 2
    assert sum(isinstance(m, torch.nn.ELU) for m in model.modules()) == 2


def test_smlp_gene_reaches_only_its_pathways():
    pathways = small_pathways()
    model = SparseMLPOmics(pathways, n_outputs=4).eval()
    fc1, fc2 = model.encoder[0], model.encoder[1]
    gene = 5
    outside = torch.nonzero(~pathways[gene]).flatten()
    inside = torch.nonzero(pathways[gene]).flatten()
    assert len(outside) and len(inside)
    rna = torch.randn(3, N_GENES)
    bumped = rna.clone()
    bumped[:, gene] += 3.0
    with torch.no_grad():  # fc2 units are pathway-major: [B, P * 16] -> [B, P, 16]
        delta = (fc2(fc1(bumped)) - fc2(fc1(rna))).view(3, N_PATHWAYS, 16).abs().amax(dim=(0, 2))
    assert float(delta[outside].max()) == 0.0
    assert bool((delta[inside] > 0).all())
    # Masked-out weights receive no gradient.
    model.train()
    model({"rna": rna}).sum().backward()
    assert float(fc1.weight.grad[~fc1.mask].abs().max()) == 0.0
    assert float(fc2.weight.grad[~fc2.mask].abs().max()) == 0.0
    assert float(fc2.weight.grad[fc2.mask].abs().max()) > 0.0


def _balanced_accuracy(pred: torch.Tensor, label: torch.Tensor, n_classes: int) -> float:
    return float(torch.stack([(pred[label == c] == c).float().mean() for c in range(n_classes)]).mean())


def _planted_pathway_cohort(pathways: torch.Tensor, n: int, seed: int, shift: float = 0.7):
    """RNA ``N(0, 1)``; class ``c`` (of 3) raises every gene of pathway ``c`` by ``shift``."""
    generator = torch.Generator().manual_seed(seed)
    label = torch.arange(n) % 3
    rna = torch.randn(n, pathways.shape[0], generator=generator)
    rna += shift * pathways[:, label].T.float()
    return rna, label


@pytest.mark.parametrize("name", MODELS)
def test_planted_pathway_shift_is_learned(name):
    torch.manual_seed(0)
    pathways = small_pathways()
    model = build(name, n_outputs=3, pathways=pathways)
    train_rna, train_label = _planted_pathway_cohort(pathways, 240, seed=1)
    test_rna, test_label = _planted_pathway_cohort(pathways, 300, seed=2)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(40):
        optimiser.zero_grad()
        model.compute_loss({"rna": train_rna, "label": train_label}, "subtype").backward()
        optimiser.step()
    model.eval()
    pred = model.predict({"rna": test_rna}, "subtype").argmax(dim=1)
    # Chance is 1/3; a model blind to its input stays there.
    assert _balanced_accuracy(pred, test_label, 3) > 0.7
