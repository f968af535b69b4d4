"""TransMIL (baselines/transmil.py): parameter count, Nyström attention, masking, memory, a planted fit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from baselines.transmil import NystromAttention, TransMIL, iterative_pinv
from models.base import ModelContext, count_parameters
from models.registry import registered


def test_registry_entry_and_profiles():
    entry = registered()["transmil"]
    assert (entry.label, entry.modalities, entry.regime) == ("TransMIL", ("wsi",), "supervised")
    assert entry.description.startswith("TransMIL")
    widths = {p: entry.build(ModelContext(feature_dim=8, profile=p)).embed_dim for p in ("tiny", "small", "paper")}
    assert widths == {"tiny": 64, "small": 64, "paper": 512}
    with pytest.raises(ValueError, match="unknown profile"):
        entry.build(ModelContext(profile="huge"))


def test_paper_parameter_count():
    """Original TransMIL at D=1536, 4 outputs: fc1 786,944 + CLS 512 + 2 x 1,050,376 (LayerNorm +
    Nyström: qkv 786,432, out 262,656, residual conv 264) + PPEG 44,032 + LayerNorm 1,024 + head 2,052."""
    entry = registered()["transmil"]
    model = entry.build(ModelContext(**entry.paper_context))
    assert count_parameters(model) == 2_935_316
    assert model.embed_dim == 512


def test_iterative_pinv_converges_and_keeps_bags_independent():
    torch.manual_seed(0)
    well_conditioned = torch.softmax(4 * torch.eye(8) + torch.randn(2, 3, 8, 8), dim=-1)
    expected = torch.linalg.pinv(well_conditioned)
    torch.testing.assert_close(iterative_pinv(well_conditioned), expected, atol=1e-4, rtol=1e-4)
    # Six iterations do not converge on these; the result depends on the initial scaling, which
    # must come from each bag alone.
    a, b = torch.softmax(torch.randn(1, 2, 8, 8), -1), torch.softmax(5 * torch.randn(1, 2, 8, 8), -1)
    together = iterative_pinv(torch.cat([a, b]))
    torch.testing.assert_close(together, torch.cat([iterative_pinv(a), iterative_pinv(b)]))


def _split(att: NystromAttention, t: torch.Tensor) -> torch.Tensor:
    return t.unflatten(-1, (att.heads, att.dim_head)).transpose(-3, -2)


def test_nystrom_with_one_token_per_landmark_is_softmax_attention():
    """With n = m every landmark is one token, so A pinv(A) A V = A V: exact attention (Xiong et al.)."""
    torch.manual_seed(0)
    att = NystromAttention(16, heads=2, dim_head=8, num_landmarks=8, pinv_iterations=40, dropout=0.0)
    x = 2 * torch.randn(1, 8, 16)
    q, k, v = (_split(att, t) for t in att.to_qkv(x).chunk(3, dim=-1))
    exact = F.scaled_dot_product_attention(q, k, v) + att.res_conv(v)
    exact = att.to_out(exact.transpose(1, 2).flatten(2))
    torch.testing.assert_close(att(x, torch.tensor([8])), exact, atol=1e-4, rtol=1e-4)


def _left_padded_nystrom(att: NystromAttention, x: torch.Tensor) -> torch.Tensor:
    """The reference formulation for one bag ``x [n, dim]``: explicit zero tokens on the left up to
    a multiple of m, landmarks as means of m equal segments, full L x m / m x m / m x L matrices."""
    n, m = x.shape[0], att.num_landmarks
    seg = -(-n // m)
    padded = torch.cat([x.new_zeros(m * seg - n, x.shape[1]), x])
    q, k, v = (_split(att, t) for t in att.to_qkv(padded).chunk(3, dim=-1))  # [h, m*seg, d]
    q = q * att.scale
    q_land, k_land = (t.unflatten(1, (m, seg)).mean(dim=2) for t in (q, k))
    pairs = ((q, k_land), (q_land, k_land), (q_land, k))
    attn1, attn2, attn3 = (torch.softmax(a @ b.transpose(-1, -2), dim=-1) for a, b in pairs)
    out = (attn1 @ iterative_pinv(attn2[None], att.pinv_iterations)[0]) @ (attn3 @ v) + att.res_conv(v[None])[0]
    return att.to_out(out.transpose(0, 1).flatten(1))[-n:]


def test_nystrom_matches_the_left_padded_reference_formulation_per_bag():
    """Batched, variable-length, vectorised attention == the explicit per-bag reference computation,
    for bags shorter than, equal to, just above, and several times the landmark count."""
    torch.manual_seed(0)
    att = NystromAttention(16, heads=2, dim_head=8, num_landmarks=8, dropout=0.0).eval()
    lengths = [1, 7, 8, 9, 20, 41]
    x = torch.full((len(lengths), max(lengths), 16), 1e3)  # loud padding
    bags = [torch.randn(n, 16) for n in lengths]
    for i, bag in enumerate(bags):
        x[i, : len(bag)] = bag
    out = att(x, torch.tensor(lengths))
    for i, bag in enumerate(bags):
        torch.testing.assert_close(out[i, : len(bag)], _left_padded_nystrom(att, bag), atol=1e-5, rtol=1e-4)
        assert torch.all(out[i, len(bag) :] == 0)


def test_square_padding_repeats_the_first_patches():
    """Reference: a bag of n patches fills ceil(sqrt n)^2 grid cells with the first patches again."""
    model = TransMIL(feature_dim=4, n_outputs=2, dim=8)
    h = torch.arange(2 * 6 * 8, dtype=torch.float32).view(2, 6, 8)
    mask = torch.tensor([[True, False, True, True, False, True], [True] * 6])  # bag 0: patches 0, 2, 3, 5
    counts = mask.sum(dim=1)
    seq = model._grid_sequence(h, mask, counts, torch.tensor([2, 3]))
    assert seq.shape == (2, 10, 8)
    torch.testing.assert_close(seq[0, 1:5], h[0, [0, 2, 3, 5]])
    torch.testing.assert_close(seq[1, 1:10], h[1, [0, 1, 2, 3, 4, 5, 0, 1, 2]])
    assert torch.all(seq[0, 5:] == 0)
    torch.testing.assert_close(seq[:, 0], model.cls_token[0].expand(2, -1))


@pytest.mark.parametrize("n_patches", [1, 17, 4096])
def test_output_shapes(n_patches):
    model = TransMIL(feature_dim=24, n_outputs=3, dim=64).eval()
    batch = {"features": torch.randn(2, n_patches, 24)}
    assert model.forward_features(batch).shape == (2, 64)
    assert model(batch).shape == (2, 3)
    assert model.predict(batch, "survival").shape == (2,)


def test_paper_width_forward():
    model = TransMIL(feature_dim=1536, n_outputs=4).eval()
    logits = model({"features": torch.randn(1, 17, 1536)})
    assert logits.shape == (1, 4) and torch.isfinite(logits).all()


def test_padding_and_mask_invariance():
    """Three bags (grid sides 2, 4, 9; the last spans 6 tokens per landmark) padded with NaN at
    scattered positions give each bag's unpadded output."""
    torch.manual_seed(0)
    model = TransMIL(feature_dim=16, n_outputs=3, dim=32).eval()
    bags = [torch.randn(n, 16) for n in (3, 10, 70)]
    n_max = 80
    features = torch.full((3, n_max, 16), float("nan"))
    mask = torch.zeros(3, n_max, dtype=torch.bool)
    for i, bag in enumerate(bags):
        where = torch.randperm(n_max)[: len(bag)].sort().values
        features[i, where], mask[i, where] = bag, True

    together = model({"features": features, "mask": mask})
    alone = torch.cat([model({"features": bag[None]}) for bag in bags])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


def test_empty_bag_is_rejected():
    model = TransMIL(feature_dim=8, n_outputs=2, dim=16)
    batch = {"features": torch.randn(2, 4, 8), "mask": torch.tensor([[True] * 4, [False] * 4])}
    with pytest.raises(ValueError, match="no real patch"):
        model(batch)


def _largest_saved_tensor(model: TransMIL, n_patches: int) -> int:
    """Largest tensor (elements) autograd saves for backward in one training forward pass."""
    largest = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal largest
        largest = max(largest, t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model({"features": torch.randn(1, n_patches, 8)})
    return largest


def test_memory_is_linear_in_bag_length():
    """Doubling the bag doubles (not quadruples) the largest intermediate: no N x N matrix."""
    torch.manual_seed(0)
    model = TransMIL(feature_dim=8, n_outputs=2, dim=32)
    small, large = _largest_saved_tensor(model, 3000), _largest_saved_tensor(model, 6000)
    assert large < 2.3 * small
    assert large < 6000 * 6000 // 4


def _planted_bags(generator: torch.Generator, n_bags: int, direction: torch.Tensor):
    """Noise bags of 16 patches; class-1 bags get ``direction`` added to 3 random patches."""
    labels = torch.arange(n_bags) % 2
    features = torch.randn(n_bags, 16, direction.numel(), generator=generator)
    carriers = torch.zeros(n_bags, 16).scatter_(1, torch.randint(0, 16, (n_bags, 3), generator=generator), 1.0)
    return features + (labels[:, None] * carriers)[..., None] * direction, labels


def test_planted_minority_signal_is_learned():
    """A width-32 TransMIL separates bags by a direction planted in 3 of 16 patches in 40 Adam steps.

    Runs single-threaded: on these tiny tensors intra-op threads only add contention on a shared CPU.
    """
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    direction = 6.0 * F.normalize(torch.randn(16, generator=generator), dim=0)
    x_train, y_train = _planted_bags(generator, 48, direction)
    x_test, y_test = _planted_bags(generator, 200, direction)

    model = TransMIL(feature_dim=16, n_outputs=2, dim=32)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(40):
            optimiser.zero_grad()
            model.compute_loss({"features": x_train, "label": y_train}, "subtype").backward()
            optimiser.step()
        model.eval()
        accuracy = (model.predict({"features": x_test}, "subtype").argmax(dim=1) == y_test).float().mean()
    finally:
        torch.set_num_threads(threads)
    assert accuracy > 0.85, f"test accuracy {accuracy:.3f} (chance 0.5)"
