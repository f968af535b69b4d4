"""MCAT (baselines/mcat.py): paper parameter count, the vectorised per-family SNNs and co-attention
against their reference layer definitions, shapes, masking, and planted-signal fits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from baselines.mcat import MCAT, GeneGroupSNN, GenomicCoAttention, mcat
from models.base import ModelContext, count_parameters
from models.registry import registered
from helpers import assert_empty_bag_rejected, assert_padding_invariant

N_GENES = 40
FAMILIES = ((0, 1, 2, 3), (4, 5, 6, 7, 8, 9), (2, 10, 11, 12, 13), (14, 15, 16, 17, 18, 19, 20, 21),
            (22, 23, 24, 25, 26, 27, 5), (28, 29, 30, 31, 32))


def _paper_model(n_outputs: int = 4) -> MCAT:
    entry = registered()["mcat"]
    overrides = {k: (v() if callable(v) else v) for k, v in entry.paper_context.items()}
    return entry.build(ModelContext(**{**overrides, "n_outputs": n_outputs, "profile": "paper"}))


def test_registry_entry():
    entry = registered()["mcat"]
    assert (entry.label, entry.modalities, entry.regime) == ("MCAT", ("wsi", "rna"), "supervised")
    assert set(entry.tasks) == {"subtype", "survival"}
    assert entry.description.startswith("MCAT")


@pytest.mark.parametrize(("n_outputs", "expected"), [(4, 4_082_694), (3, 4_082_437)])
def test_paper_parameter_count(n_outputs, expected):
    """SurvPath's MCAT port at D=1536 with the 6 families over the 4,999 combine genes.

    3,754,758 fixed (wsi_net 393,472; coattn 263,168; 2 x 2 Transformer layers of 527,104; 2 gated
    pools 131,841 + 2 rho 65,792; concat fusion 197,120; head 1,028) + per family
    256 * n + 66,048 with sum(n) = 1,281.
    """
    model = _paper_model(n_outputs)
    assert count_parameters(model) == expected
    assert model.embed_dim == 256
    assert model.gene_tokens.group_sizes.tolist() == [53, 173, 216, 252, 387, 200]


def _reference_group_snns(module: GeneGroupSNN) -> list[nn.Sequential]:
    """The reference layout: one ``Linear(n_p, H), ELU, Linear(H, H), ELU`` per group, sharing weights."""
    nets, start = [], 0
    for p, size in enumerate(module.group_sizes.tolist()):
        first, second = nn.Linear(size, module.hidden), nn.Linear(module.hidden, module.hidden)
        with torch.no_grad():
            first.weight.copy_(module.weight1[start:start + size].t())
            first.bias.copy_(module.bias1[p])
            second.weight.copy_(module.weight2[p])
            second.bias.copy_(module.bias2[p])
        nets.append(nn.Sequential(first, nn.ELU(), second, nn.ELU()))
        start += size
    return nets


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # the empty group's Linear(0, H)
def test_gene_group_snn_equals_one_snn_per_group():
    """Overlapping and empty groups: same output and same parameter count as per-group Linears."""
    torch.manual_seed(0)
    groups = ((0, 3, 5), (5,), (), (1, 2, 3, 4, 5, 6, 7))
    module = GeneGroupSNN.from_groups(groups, n_genes=9, hidden=12).eval()
    reference = _reference_group_snns(module)
    assert count_parameters(module) == sum(count_parameters(net) for net in reference)

    rna = torch.randn(3, 9)
    expected = torch.stack([net(rna[:, list(g)]) for net, g in zip(reference, groups)], dim=1)
    torch.testing.assert_close(module(rna), expected, rtol=1e-5, atol=1e-6)


def test_gene_group_snn_init_matches_nn_linear_bounds():
    """Per-group first-layer weights lie in +-1/sqrt(n_p) and use that range (nn.Linear default)."""
    torch.manual_seed(0)
    module = GeneGroupSNN.from_groups((tuple(range(4)), tuple(range(400))), n_genes=400, hidden=64)
    small, large = module.weight1[:4], module.weight1[4:]
    assert small.abs().max() <= 0.5 and small.abs().max() > 0.45
    assert large.abs().max() <= 0.05 and large.abs().max() > 0.045


def test_gene_group_snn_membership_matches_groups():
    membership = torch.zeros(6, 3, dtype=torch.bool)
    membership[[0, 2, 5], 0] = True
    membership[[1, 2], 2] = True
    module = GeneGroupSNN.from_membership(membership, hidden=4)
    assert module.group_sizes.tolist() == [3, 0, 2]
    assert module.gene_index.tolist() == [0, 2, 5, 1, 2]
    with pytest.raises(ValueError, match="rna"):
        module(torch.randn(2, 7))


def test_coattention_equals_nn_multihead_attention():
    """Same weights in nn.MultiheadAttention(1 head): same output, padded keys masked."""
    torch.manual_seed(0)
    coattn = GenomicCoAttention(16)
    reference = nn.MultiheadAttention(16, num_heads=1, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(coattn.in_proj.weight)
        reference.in_proj_bias.copy_(torch.randn(48))
        coattn.in_proj.bias.copy_(reference.in_proj_bias)
        reference.out_proj.load_state_dict(coattn.out_proj.state_dict())
    genes, patches = torch.randn(2, 6, 16), torch.randn(2, 9, 16)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 4:] = False
    expected, _ = reference(genes, patches, patches, key_padding_mask=~mask)
    torch.testing.assert_close(coattn(genes, patches, mask), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_patches", [1, 17, 4096])
def test_output_shapes(n_patches):
    torch.manual_seed(0)
    model = MCAT(feature_dim=24, families=FAMILIES, n_genes=N_GENES, n_outputs=3).eval()
    batch = {"features": torch.randn(2, n_patches, 24), "rna": torch.randn(2, N_GENES)}
    embedding = model.forward_features(batch)
    assert embedding.shape == (2, 256) and torch.isfinite(embedding).all()
    assert model(batch).shape == (2, 3)
    assert model.predict(batch, "survival").shape == (2,)


def test_padding_and_mask_invariance():
    torch.manual_seed(0)
    model = MCAT(feature_dim=16, families=FAMILIES, n_genes=N_GENES, n_outputs=4).eval()
    assert_padding_invariant(model, 16, {"rna": torch.randn(2, N_GENES)})


def test_empty_bag_is_rejected():
    assert_empty_bag_rejected(MCAT(feature_dim=8, families=FAMILIES, n_genes=N_GENES, n_outputs=2, dim=16), 8, {"rna": torch.randn(2, N_GENES)})


def test_builder_profiles_and_missing_families():
    tiny = mcat(ModelContext(feature_dim=8, n_genes=N_GENES, families=FAMILIES, n_outputs=2, profile="tiny"))
    assert isinstance(tiny, MCAT) and tiny.embed_dim == 32
    with pytest.raises(ValueError, match="families"):
        mcat(ModelContext(feature_dim=8, n_genes=N_GENES, profile="tiny"))
    with pytest.raises(ValueError, match="profile"):
        mcat(ModelContext(feature_dim=8, n_genes=N_GENES, families=FAMILIES, profile="huge"))


def _planted(generator: torch.Generator, n_bags: int, signal: str, dim: int = 16, n_patches: int = 16):
    """Noise bags and noise RNA; class 1 carries the signal in one modality only.

    ``wsi``: a fixed direction (norm 4) added to 3 of the bag's 16 patches. ``rna``: family 1's 6
    genes shifted by +2 (a family-level shift among 40 noise genes).
    """
    labels = torch.arange(n_bags) % 2
    features = torch.randn(n_bags, n_patches, dim, generator=generator)
    rna = torch.randn(n_bags, N_GENES, generator=generator)
    if signal == "wsi":
        direction = 4.0 * nn.functional.normalize(torch.ones(dim), dim=0)
        carriers = torch.zeros(n_bags, n_patches).scatter_(
            1, torch.randint(0, n_patches, (n_bags, 3), generator=generator), 1.0
        )
        features += (labels[:, None] * carriers)[..., None] * direction
    else:
        rna[:, list(FAMILIES[1])] += 2.0 * labels[:, None].float()
    return {"features": features, "rna": rna, "label": labels}


@pytest.mark.parametrize("signal", ["wsi", "rna"])
def test_planted_signal_is_learned(signal):
    """30 Adam steps on 64 patients: held-out accuracy far above chance from either modality.

    Chance is 0.5 +- 0.035 on 200 test patients; MCAT reaches 0.85-0.95 over seeds (its dropout of
    0.25 everywhere slows the fit), so 0.75 separates a working model from one blind to a modality.
    """
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    train, test = _planted(generator, 64, signal), _planted(generator, 200, signal)
    model = mcat(ModelContext(feature_dim=16, n_genes=N_GENES, families=FAMILIES, n_outputs=2, profile="tiny"))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        optimiser.zero_grad()
        model.compute_loss(train, "subtype").backward()
        optimiser.step()
    model.eval()
    accuracy = (model.predict(test, "subtype").argmax(dim=1) == test["label"]).float().mean()
    assert accuracy > 0.75, f"{signal} signal: test accuracy {accuracy:.3f} (chance 0.5)"
