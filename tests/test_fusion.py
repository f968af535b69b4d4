"""Late fusion (baselines/fusion.py): cat / KP definitions, parameter counts, shapes, masks, interactions."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from baselines.abmil import ABMIL
from baselines.fusion import (
    PAPER_LATE_FUSION,
    ConcatFusion,
    KroneckerFusion,
    LateFusion,
    LateFusionConfig,
    build_late_fusion,
    kronecker_with_ones,
)
from models.base import BenchModel, ModelContext, bag_mask, count_parameters
from models.genemixer import GeneMixer, GeneMixerConfig
from models.registry import registered

FUSED = ("abmil_cat", "abmil_kp", "transmil_cat", "transmil_kp")


class MeanPoolWSI(BenchModel):
    """A minimal WSI model (masked mean of projected patches) to show LateFusion is encoder-agnostic."""

    modalities = ("wsi",)

    def __init__(self, feature_dim: int, embed_dim: int, n_outputs: int = 2) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.fc = nn.Linear(feature_dim, embed_dim)
        self.head = nn.Linear(embed_dim, n_outputs)

    def forward_features(self, batch):
        mask = bag_mask(batch).unsqueeze(-1).float()
        return (self.fc(batch["features"]) * mask).sum(1) / mask.sum(1)


def _pathways(n_genes: int = 24, n_pathways: int = 3) -> torch.Tensor:
    membership = torch.zeros(n_genes, n_pathways, dtype=torch.bool)
    size = n_genes // n_pathways
    for p in range(n_pathways):
        membership[p * size : (p + 1) * size, p] = True
    return membership


def _tiny_fused(kind: str, wsi: BenchModel | None = None, feature_dim: int = 8, n_outputs: int = 2) -> LateFusion:
    ctx = ModelContext(n_outputs=n_outputs, feature_dim=feature_dim, n_genes=24, pathways=_pathways(), profile="tiny")
    wsi = wsi or ABMIL(feature_dim=feature_dim, n_outputs=n_outputs)
    return build_late_fusion(ctx, lambda _: wsi, kind)


def _paper_context(name: str) -> ModelContext:
    entry = registered()[name]
    return ModelContext(**{key: (v() if callable(v) else v) for key, v in entry.paper_context.items()})


# --- definitions -------------------------------------------------------------------------------


def _record_input(module: nn.Module) -> dict[str, torch.Tensor]:
    """Record the first input of ``module`` on each forward call under key ``"x"``."""
    seen: dict[str, torch.Tensor] = {}

    def hook(_module, inputs):
        seen["x"] = inputs[0]

    module.register_forward_pre_hook(hook)
    return seen


def test_kronecker_with_ones_on_hand_made_vectors():
    a = torch.tensor([[2.0, 3.0]])
    b = torch.tensor([[5.0, 7.0]])
    # rows: a_i * [b, 1] for each i, then 1 * [b, 1]: cross terms, unimodal terms, constant
    expected = torch.tensor([[10.0, 14.0, 2.0, 15.0, 21.0, 3.0, 5.0, 7.0, 1.0]])
    torch.testing.assert_close(kronecker_with_ones(a, b), expected)
    batch = kronecker_with_ones(torch.randn(4, 3), torch.randn(4, 5))
    assert batch.shape == (4, 24) and torch.all(batch[:, -1] == 1)


def test_concat_fusion_concatenates_wsi_then_rna():
    fusion = ConcatFusion(3, 2, hidden=4)
    seen = _record_input(fusion.mlp[0])
    h_wsi, h_rna = torch.randn(2, 3), torch.randn(2, 2)
    assert fusion(h_wsi, h_rna).shape == (2, 4)
    torch.testing.assert_close(seen["x"], torch.cat([h_wsi, h_rna], dim=1))
    assert fusion.mlp[0].in_features == 5


def test_kronecker_fusion_fuses_the_product_of_the_gated_vectors():
    torch.manual_seed(0)
    fusion = KroneckerFusion(6, 4, gated_dim1=3, gated_dim2=2, mmhid=5).eval()
    seen = _record_input(fusion.encoder1)
    v1, v2 = torch.randn(2, 6), torch.randn(2, 4)
    out = fusion(v1, v2)
    o1, o2 = fusion.gated_embeddings(v1, v2)
    fused = seen["x"].view(2, 4, 3)  # (g1 + 1) x (g2 + 1)
    torch.testing.assert_close(fused[:, :3, :2], o1[:, :, None] * o2[:, None, :])  # cross terms
    torch.testing.assert_close(fused[:, :3, 2], o1)  # unimodal WSI terms survive
    torch.testing.assert_close(fused[:, 3, :2], o2)  # unimodal RNA terms survive
    torch.testing.assert_close(out, fusion.encoder2(fusion.encoder1(seen["x"])))
    # the gate of each modality depends on the other one
    assert not torch.allclose(fusion.gated_embeddings(v1, v2 + 1.0)[0], o1)


def test_kronecker_skip_appends_the_extended_gated_vectors():
    fusion = KroneckerFusion(4, 4, mmhid=8, skip=True).eval()
    assert fusion.encoder2[0].in_features == 8 + 5 + 5
    assert fusion(torch.randn(3, 4), torch.randn(3, 4)).shape == (3, 8)


# --- parameter counts --------------------------------------------------------------------------


def test_fusion_block_parameter_counts():
    """cat: SurvPath's ``mm`` Linear(512,256)+Linear(256,256); KP: PathomicFusion BilinearFusion."""
    assert count_parameters(ConcatFusion(256, 256)) == 197_120
    # options.py defaults (dim 32, mmhid 64, bilinear gates, skip 0): 2 x 34,912 + 69,760 + 4,160
    assert count_parameters(KroneckerFusion()) == 143_744
    # fusion.py signature default skip=1 adds the 66 appended features to encoder2: + 66 x 64
    assert count_parameters(KroneckerFusion(skip=True)) == 147_968


@pytest.mark.parametrize(
    ("kind", "wsi_dim", "expected"),
    [
        ("cat", 256, 197_120),
        ("cat", 512, 262_656),  # TransMIL's 512-wide embedding widens the first layer only
        # SurvPath's BilinearFusion(dim1=256, dim2=256, scale_dim 8, mmhid=256), linear gates:
        # 2 x (Linear(256,32) + Linear(512,32) + Linear(32,32)) + Linear(33*33, 256) + Linear(256, 256)
        ("kp", 256, 396_224),
        ("kp", 512, 420_800),
    ],
)
def test_paper_fusion_heads(kind, wsi_dim, expected):
    assert count_parameters(PAPER_LATE_FUSION.build(kind, wsi_dim, 256)) == expected


def test_bilinear_gates_cost_the_reference_bilinear_weights():
    """PathomicFusion gates (nn.Bilinear) at 256 x 256 -> 32: 2 x 2,097,184 instead of 2 x 16,416."""
    bilinear = replace(PAPER_LATE_FUSION, bilinear_gate=True).build("kp", 256, 256)
    assert count_parameters(bilinear) == 396_224 + 2 * (256 * 256 * 32 + 32) - 2 * (512 * 32 + 32)


@pytest.mark.parametrize(
    ("name", "wsi_name", "head"),
    [
        ("abmil_cat", "abmil", 197_120),
        ("abmil_kp", "abmil", 396_224),
        ("transmil_cat", "transmil", 262_656),
        ("transmil_kp", "transmil", 420_800),
    ],
)
def test_paper_configuration_is_the_sum_of_its_parts(name, wsi_name, head):
    """WSI model without its head + Gene Mixer without its head (24,972,126 - 1,028) + fusion head
    + Linear(256, 4)."""
    ctx = _paper_context(name)
    model = registered()[name].build(ctx)
    wsi_alone = registered()[wsi_name].build(ctx)
    assert count_parameters(model.fusion) == head
    assert isinstance(model.wsi.head, nn.Identity)
    expected_wsi = count_parameters(wsi_alone) - count_parameters(wsi_alone.head)
    assert count_parameters(model) == expected_wsi + 24_971_098 + head + 1_028
    assert model.genes.n_genes == 4987


def test_abmil_cat_paper_count():
    """ABMIL at D = 1536 without its head is 592,133 - 1,028 = 591,105 parameters."""
    assert count_parameters(registered()["abmil_cat"].build(_paper_context("abmil_cat"))) == 25_760_351


def test_registry_entries():
    entries = registered()
    for name in FUSED:
        entry = entries[name]
        assert entry.modalities == ("wsi", "rna") and entry.regime == "supervised"
        assert entry.paper_context["feature_dim"] == 1536 and entry.paper_context["n_genes"] == 4987
    assert [entries[n].label for n in FUSED] == ["ABMIL (cat)", "ABMIL (KP)", "TransMIL (cat)", "TransMIL (KP)"]


# --- behaviour -----------------------------------------------------------------------------------


def _tiny_registered(name: str, n_outputs: int = 3) -> LateFusion:
    ctx = ModelContext(n_outputs=n_outputs, feature_dim=8, n_genes=24, pathways=_pathways(), profile="tiny")
    return registered()[name].build(ctx)


@pytest.mark.parametrize("name", FUSED)
@pytest.mark.parametrize("n_patches", [1, 17, 4096])
def test_output_shapes(name, n_patches):
    model = _tiny_registered(name).eval()
    batch = {"features": torch.randn(2, n_patches, 8), "rna": torch.randn(2, 24)}
    assert model.forward_features(batch).shape == (2, model.embed_dim)
    assert model(batch).shape == (2, 3)
    assert model.predict(batch, "subtype").shape == (2, 3)


@pytest.mark.parametrize("name", [*FUSED, "meanpool_cat", "meanpool_kp"])
def test_padding_and_mask_invariance(name):
    torch.manual_seed(0)
    if name.startswith("meanpool"):
        model = _tiny_fused(name.split("_")[1], wsi=MeanPoolWSI(8, 12)).eval()
    else:
        model = _tiny_registered(name).eval()
    short, long = torch.randn(5, 8), torch.randn(11, 8)
    rna = torch.randn(2, 24)
    padded = torch.full((2, 11, 8), 40.0)  # loud padding: a leak would move the output
    padded[0, :5], padded[1] = short, long
    mask = torch.zeros(2, 11, dtype=torch.bool)
    mask[0, :5], mask[1] = True, True
    together = model({"features": padded, "mask": mask, "rna": rna})
    alone = torch.cat(
        [model({"features": short[None], "rna": rna[:1]}), model({"features": long[None], "rna": rna[1:]})]
    )
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


def test_late_fusion_checks_embedding_widths():
    genes = GeneMixer(_pathways(), GeneMixerConfig.for_profile("tiny"))
    with pytest.raises(ValueError, match="fusion expects"):
        LateFusion(MeanPoolWSI(8, 12), genes, ConcatFusion(10, genes.embed_dim), n_outputs=2)


def test_profiles():
    assert LateFusionConfig.for_profile("paper") == PAPER_LATE_FUSION
    assert LateFusionConfig.for_profile("tiny").hidden < PAPER_LATE_FUSION.hidden
    with pytest.raises(ValueError, match="unknown fusion"):
        PAPER_LATE_FUSION.build("sum", 4, 4)


@pytest.mark.parametrize("profile", ["tiny", "small", "paper"])
def test_kp_gated_vectors_keep_the_reference_width(profile):
    """Narrowed profiles narrow ``mmhid`` only: the gated vectors stay 32 wide (SurvPath 256 / 8,
    PathomicFusion's ``dim`` 32) whatever the input widths, so the Kronecker product has 33 x 33 terms."""
    config = LateFusionConfig.for_profile(profile)
    for wsi_dim, rna_dim in [(256, 64), (64, 16), (512, 256)]:
        fusion = config.build("kp", wsi_dim, rna_dim)
        assert fusion.gated_dims == (32, 32)
        assert fusion.encoder1[0].in_features == 33 * 33
        assert fusion.out_dim == config.hidden


def _linear_layers(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if type(m) is nn.Linear]


def test_pathomicfusion_defaults_start_from_init_max_weights():
    """PathomicFusion's ``BilinearFusion`` calls ``init_max_weights``: N(0, 1/fan_in), zero bias."""
    torch.manual_seed(0)
    fusion = KroneckerFusion()
    for layer in _linear_layers(fusion):
        assert torch.all(layer.bias == 0)
    encoder1 = fusion.encoder1[0].weight  # 64 x 1089 samples of N(0, 1/1089)
    assert encoder1.std().item() == pytest.approx(1 / 33, rel=0.02)


def test_survpath_configuration_keeps_the_default_initialisation():
    """SurvPath's copy of ``BilinearFusion`` drops ``init_max_weights``: PyTorch's default
    U(+-1/sqrt(fan_in)) weights (std 1/sqrt(3 fan_in)) and non-zero biases."""
    for profile in ("tiny", "small", "paper"):
        torch.manual_seed(0)
        fusion = LateFusionConfig.for_profile(profile).build("kp", 256, 64)
        for layer in _linear_layers(fusion):
            bound = 1 / layer.in_features**0.5
            assert layer.bias.abs().max() <= bound and layer.bias.abs().max() > 0
            assert layer.weight.abs().max() <= bound
        encoder1 = fusion.encoder1[0].weight
        assert encoder1.std().item() == pytest.approx(1 / (3 * 33 * 33) ** 0.5, rel=0.03)


@pytest.mark.parametrize("kind", ["cat", "kp"])
def test_survival_loss_reaches_both_encoders(kind):
    model = _tiny_fused(kind, n_outputs=4)
    batch = {
        "features": torch.randn(3, 6, 8),
        "rna": torch.randn(3, 24),
        "survival_bin": torch.tensor([0, 2, 3]),
        "event": torch.tensor([1, 0, 1]),
    }
    model.compute_loss(batch, "survival").backward()
    for part in (model.wsi, model.genes, model.fusion, model.head):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


@pytest.fixture
def one_thread():
    """Tiny training loops run fastest on one thread (and leave the shared CPU to others)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _interaction_cohort(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Label = (WSI carries the planted direction) XOR (RNA pathway 0 is raised): each modality alone is
    at chance. The WSI signal sits in 3 of 12 patches (+4 along a fixed direction); the RNA signal
    raises pathway 0's 8 genes by 2.5 (noise N(0, 1) everywhere)."""
    generator = torch.Generator().manual_seed(seed)
    wsi_flag = torch.arange(n) % 2
    rna_flag = (torch.arange(n) // 2) % 2
    direction = torch.nn.functional.normalize(torch.ones(8), dim=0)
    features = torch.randn(n, 12, 8, generator=generator)
    features[:, :3] += 4.0 * wsi_flag[:, None, None] * direction
    features = features[:, torch.randperm(12, generator=generator)]
    rna = torch.randn(n, 24, generator=generator)
    rna[:, :8] += 2.5 * rna_flag[:, None]
    return {"features": features, "rna": rna, "label": wsi_flag ^ rna_flag}


@pytest.mark.parametrize("kind", ["cat", "kp"])
def test_planted_interaction_is_learned(kind, one_thread):
    """A masked-mean WSI encoder keeps the fit to seconds; the interaction is the fusion head's job."""
    torch.manual_seed(0)
    model = _tiny_fused(kind, wsi=MeanPoolWSI(8, 16))
    train, test = _interaction_cohort(256, seed=1), _interaction_cohort(200, seed=2)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(100):
        optimiser.zero_grad()
        model.compute_loss(train, "subtype").backward()
        optimiser.step()
    model.eval()
    accuracy = (model.predict(test, "subtype").argmax(dim=1) == test["label"]).float().mean()
    assert accuracy > 0.75, f"held-out accuracy {accuracy:.2f} (chance and any single modality: 0.5)"
