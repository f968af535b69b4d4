"""ABMIL (baselines/abmil.py): paper parameter count, shapes, masking, and a planted-signal fit."""

from __future__ import annotations

import pytest
import torch

from baselines.abmil import ABMIL
from models.base import ModelContext, count_parameters
from models.registry import registered


def _paper_model(n_outputs: int) -> ABMIL:
    entry = registered()["abmil"]
    return entry.build(ModelContext(**{**entry.paper_context, "n_outputs": n_outputs}))


def test_registry_entry():
    entry = registered()["abmil"]
    assert entry.label == "ABMIL"
    assert entry.modalities == ("wsi",)
    assert entry.regime == "supervised"
    assert entry.description.startswith("ABMIL")


@pytest.mark.parametrize(("n_outputs", "expected"), [(4, 592_133), (2, 591_619)])
def test_paper_parameter_count(n_outputs, expected):
    """SurvPath ABMIL at D=1536: 393,472 (fc) + 3 x 65,792 (tanh, gate, rho) + 257 + head."""
    model = _paper_model(n_outputs)
    assert count_parameters(model) == expected
    assert model.embed_dim == 256


@pytest.mark.parametrize("n_patches", [1, 17, 4096])
def test_output_shapes(n_patches):
    model = ABMIL(feature_dim=24, n_outputs=3).eval()
    batch = {"features": torch.randn(2, n_patches, 24)}
    assert model.forward_features(batch).shape == (2, 256)
    assert model(batch).shape == (2, 3)
    assert model.predict(batch, "subtype").shape == (2, 3)
    weights = model.attention(batch)
    assert weights.shape == (2, n_patches)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2))


def test_padding_and_mask_invariance():
    torch.manual_seed(0)
    model = ABMIL(feature_dim=16, n_outputs=4).eval()
    short, long = torch.randn(5, 16), torch.randn(13, 16)
    padded = torch.full((2, 13, 16), float("nan"))  # any leak of the padding would poison the output
    padded[0, :5], padded[1] = short, long
    mask = torch.zeros(2, 13, dtype=torch.bool)
    mask[0, :5], mask[1] = True, True
    batch = {"features": padded, "mask": mask}

    together = model(batch)
    alone = torch.cat([model({"features": short[None]}), model({"features": long[None]})])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    assert torch.all(model.attention(batch)[0, 5:] == 0)


def test_empty_bag_is_rejected():
    model = ABMIL(feature_dim=8, n_outputs=2)
    batch = {"features": torch.randn(2, 4, 8), "mask": torch.tensor([[True] * 4, [False] * 4])}
    with pytest.raises(ValueError, match="no real patch"):
        model(batch)


def test_survival_loss_backpropagates_to_every_parameter():
    model = ABMIL(feature_dim=8, n_outputs=4)
    batch = {
        "features": torch.randn(3, 6, 8),
        "survival_bin": torch.tensor([0, 2, 3]),
        "event": torch.tensor([1, 0, 1]),
    }
    model.compute_loss(batch, "survival").backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert model.predict(batch, "survival").shape == (3,)


def _planted_bags(generator: torch.Generator, n_bags: int, n_patches: int, dim: int, direction: torch.Tensor):
    """Bags of noise; class-1 bags get ``direction`` added to 3 of their patches (a ~10% minority)."""
    labels = torch.arange(n_bags) % 2
    features = torch.randn(n_bags, n_patches, dim, generator=generator)
    positives = torch.randint(0, n_patches, (n_bags, 3), generator=generator)
    signal = torch.zeros(n_bags, n_patches)
    signal.scatter_(1, positives, 1.0)
    features += (labels[:, None, None] * signal[..., None]) * direction
    return features, labels


def test_planted_minority_signal_is_learned():
    """A class-specific direction in 3 of 32 patches: 60 Adam steps must separate the classes."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    dim = 16
    direction = 4.0 * torch.nn.functional.normalize(torch.randn(dim, generator=generator), dim=0)
    x_train, y_train = _planted_bags(generator, 64, 32, dim, direction)
    x_test, y_test = _planted_bags(generator, 200, 32, dim, direction)

    model = ABMIL(feature_dim=dim, n_outputs=2)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(60):
        optimiser.zero_grad()
        model.compute_loss({"features": x_train, "label": y_train}, "subtype").backward()
        optimiser.step()

    model.eval()
    accuracy = (model.predict({"features": x_test}, "subtype").argmax(dim=1) == y_test).float().mean()
    assert accuracy > 0.85, f"test accuracy {accuracy:.3f} (chance 0.5)"
