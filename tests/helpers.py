"""Assertions shared by the model tests."""

from __future__ import annotations

import torch


def assert_padding_invariant(model: torch.nn.Module, feature_dim: int, extra: dict[str, torch.Tensor]) -> None:
    """A batch of a 5- and a 13-patch bag, the short one padded with loud values and masked, gives the
    outputs of the two bags run alone. ``extra`` holds the other batch keys for both bags (``[2, …]``)."""
    short, long = torch.randn(5, feature_dim), torch.randn(13, feature_dim)
    padded = torch.full((2, 13, feature_dim), 50.0)  # loud padding: any leak would move the output
    padded[0, :5], padded[1] = short, long
    mask = torch.zeros(2, 13, dtype=torch.bool)
    mask[0, :5], mask[1] = True, True
    together = model({"features": padded, "mask": mask, **extra})
    alone = torch.cat([
        model({"features": short[None], **{k: v[:1] for k, v in extra.items()}}),
        model({"features": long[None], **{k: v[1:] for k, v in extra.items()}}),
    ])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def assert_empty_bag_rejected(model: torch.nn.Module, feature_dim: int, extra: dict[str, torch.Tensor]) -> None:
    """A batch whose second bag has no real patch raises a ValueError naming it."""
    import pytest

    batch = {"features": torch.randn(2, 4, feature_dim), "mask": torch.tensor([[True] * 4, [False] * 4]), **extra}
    with pytest.raises(ValueError, match="no real patch"):
        model(batch)
