"""Prov-GigaPath slide encoder and LongNet dilated attention (models/gigapath.py, models/longnet.py).

Reference facts checked here come from prov-gigapath/prov-gigapath: ``gigapath/slide_encoder.py``
(``LongNetViT``, ``gigapath_slide_enc12l768d``), ``gigapath/pos_embed.py`` and
``gigapath/torchscale`` (dilated attention, encoder layer, sub-LN feed-forward).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.gigapath import (
    PAPER_PARAMETERS,
    GigaPathConfig,
    GigaPathSlideEncoder,
    load_gigapath_weights,
    optimal_segment_lengths,
    sincos_position_embedding,
)
from models.longnet import attention_with_lse, dilated_attention

PAPER_SEGMENTS = (1024, 5792, 32768, 185363, 1048576)
PAPER_RATIOS = (1, 2, 4, 8, 16)


def official_key_shapes(depth: int = 12, dim: int = 768, ffn: int = 3072, feat: int = 1536) -> dict[str, tuple]:
    """The official checkpoint's keys and shapes, spelled out from the reference module tree."""
    shapes: dict[str, tuple] = {
        "cls_token": (1, 1, dim),
        "patch_embed.proj.weight": (dim, feat),
        "patch_embed.proj.bias": (dim,),
        "encoder.layer_norm.weight": (dim,),
        "encoder.layer_norm.bias": (dim,),
        "norm.weight": (dim,),
        "norm.bias": (dim,),
    }
    for i in range(depth):
        pre = f"encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{pre}self_attn.{proj}.weight"] = (dim, dim)
            shapes[f"{pre}self_attn.{proj}.bias"] = (dim,)
        for norm in ("self_attn.inner_attn_ln", "self_attn_layer_norm", "final_layer_norm"):
            shapes[f"{pre}{norm}.weight"] = (dim,)
            shapes[f"{pre}{norm}.bias"] = (dim,)
        shapes[f"{pre}ffn.fc1.weight"] = (ffn, dim)
        shapes[f"{pre}ffn.fc1.bias"] = (ffn,)
        shapes[f"{pre}ffn.fc2.weight"] = (dim, ffn)
        shapes[f"{pre}ffn.fc2.bias"] = (dim,)
        shapes[f"{pre}ffn.ffn_layernorm.weight"] = (ffn,)
        shapes[f"{pre}ffn.ffn_layernorm.bias"] = (ffn,)
    return shapes


def reference_dilated_attention(q, k, v, segments, ratios):
    """Loop-per-(branch, segment, head) restatement of the reference algorithm, float64.

    Zero rows stand for the reference's padding (sequence to a multiple of the segment, segment to
    a multiple of the ratio); head ``h`` belongs to group ``h // ceil(H / r)``; uncovered
    (position, head) pairs get output 0 and log-sum-exp -1e8; branches are mixed by softmax(lse).
    """
    q, k, v = (t.double() for t in (q, k, v))
    batch, length, heads, dim = q.shape
    outs, lses = [], []
    for segment, ratio in zip(segments, ratios):
        seg = min(segment, length)
        slots = math.ceil(seg / ratio)
        out = torch.zeros_like(q)
        lse = torch.full((batch, length, heads), -1e8, dtype=torch.float64)
        for start in range(0, length, seg):
            for h in range(heads):
                group = h // math.ceil(heads / ratio)
                within = torch.arange(slots) * ratio + group
                pos = start + within
                real = (within < seg) & (pos < length)
                pick = pos.clamp_max(length - 1)

                def gather(x):
                    return x[:, pick, h] * real[None, :, None]

                logits = gather(q) @ gather(k).transpose(1, 2) / math.sqrt(dim)
                branch_out = torch.softmax(logits, -1) @ gather(v)
                out[:, pos[real], h] = branch_out[:, real]
                lse[:, pos[real], h] = torch.logsumexp(logits, -1)[:, real]
        outs.append(out)
        lses.append(lse)
    weights = torch.softmax(torch.stack(lses), 0).unsqueeze(-1)
    return (torch.stack(outs) * weights).sum(0)


def full_attention(q, k, v):
    """Plain softmax attention over the whole sequence, ``[B, L, H, d]`` layout."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """These tensors are small: one intra-op thread avoids thread hand-off costing more than the work
    (10x slower on a shared 2-core machine); the previous setting is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def paper_model() -> GigaPathSlideEncoder:
    torch.manual_seed(0)
    return GigaPathSlideEncoder(GigaPathConfig.paper()).eval()


def tiny_model(**overrides) -> GigaPathSlideEncoder:
    torch.manual_seed(0)
    cfg = replace(GigaPathConfig.for_profile("tiny", feature_dim=32), **overrides)
    return GigaPathSlideEncoder(cfg).eval()


def random_bag(n: int, feature_dim: int = 32, batch: int = 1, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, n, feature_dim, generator=gen)
    coords = torch.randint(0, 60_000, (batch, n, 2), generator=gen).float()
    return features, coords


# --- paper configuration -------------------------------------------------------------------------


def test_paper_segment_lengths_follow_the_reference_formula():
    assert optimal_segment_lengths() == PAPER_SEGMENTS
    cfg = GigaPathConfig.paper()
    assert (cfg.depth, cfg.embed_dim, cfg.num_heads, cfg.ffn_dim) == (12, 768, 16, 3072)
    assert cfg.segment_lengths == PAPER_SEGMENTS and cfg.dilation_ratios == PAPER_RATIOS


def test_paper_parameter_count_and_official_keys(paper_model):
    assert sum(p.numel() for p in paper_model.parameters()) == PAPER_PARAMETERS == 86_330_880
    expected = official_key_shapes()
    state = paper_model.state_dict()
    assert len(expected) == 247
    assert set(state) == set(expected)
    assert {name: tuple(t.shape) for name, t in state.items()} == expected
    # positions are computed per tile: the model holds no (1 + 1000**2) x 768 table
    assert sum(b.numel() for b in paper_model.buffers()) == 0


def test_official_checkpoint_loads_strictly(paper_model, tmp_path):
    gen = torch.Generator().manual_seed(1)
    official = {name: torch.randn(shape, generator=gen) * 0.02 for name, shape in official_key_shapes().items()}
    path = tmp_path / "slide_encoder.pth"
    torch.save({"model": official}, path)
    features, coords = random_bag(8, feature_dim=1536)
    before = paper_model(features, coords)
    assert load_gigapath_weights(paper_model, path) is paper_model
    for name, tensor in paper_model.state_dict().items():
        assert torch.equal(tensor, official[name]), name
    assert not torch.allclose(before, paper_model(features, coords))


def test_checkpoint_round_trip_preserves_outputs(tmp_path):
    from safetensors.torch import save_file

    source = tiny_model()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    features, coords = random_bag(90)
    expected = source(features, coords)
    torch.save({"model": source.state_dict()}, tmp_path / "slide_encoder.pth")
    torch.save(source.state_dict(), tmp_path / "bare.pt")
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors"))
    for name in ("slide_encoder.pth", "bare.pt", "w.safetensors"):
        target = tiny_model()
        assert not torch.equal(target(features, coords), expected)
        load_gigapath_weights(target, tmp_path / name)
        assert torch.equal(target(features, coords), expected), name

    bad = {k: v for k, v in source.state_dict().items() if k != "norm.bias"}
    torch.save({"model": bad}, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="norm.bias"):
        load_gigapath_weights(tiny_model(), tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError):
        load_gigapath_weights(tiny_model(), tmp_path / "absent.pth")


# --- positions -----------------------------------------------------------------------------------


def reference_sincos_1d(values: np.ndarray, width: int) -> np.ndarray:
    """``get_1d_sincos_pos_embed_from_grid``: float64 ``[sin(p w), cos(p w)]``, ``w_t = 1/10000^(2t/width)``."""
    omega = 1.0 / 10000 ** (np.arange(width // 2, dtype=float) / (width / 2.0))
    angle = np.einsum("m,d->md", values.reshape(-1), omega)
    return np.concatenate([np.sin(angle), np.cos(angle)], axis=1)


def reference_table(dim: int, grid: int) -> np.ndarray:
    """The reference's full table: meshgrid (w first), half the width per axis, zero CLS row first."""
    gw, gh = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    table = np.concatenate([reference_sincos_1d(gw, dim // 2), reference_sincos_1d(gh, dim // 2)], axis=1)
    return np.concatenate([np.zeros([1, dim]), table], axis=0).astype(np.float32)


def reference_index(coords: torch.Tensor, grid: int, tile: int = 256) -> torch.Tensor:
    cell = torch.floor(coords / tile)
    return (cell[..., 0] * grid + cell[..., 1]).long() + 1


def test_positions_equal_reference_table_rows_full_width():
    grid = 6
    table = torch.from_numpy(reference_table(768, grid))
    xs, ys = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    coords = torch.stack([xs, ys], -1).reshape(1, -1, 2).float() * 256 + 17.0  # inside each tile
    ours = sincos_position_embedding(coords, 768, tile_size=256, grid=grid)
    assert torch.equal(ours, table[reference_index(coords, grid)])


def test_positions_equal_reference_table_rows_on_the_paper_grid():
    grid = 1000
    table = torch.from_numpy(reference_table(4, grid))  # every cell of the 1000 x 1000 grid, narrow
    gen = torch.Generator().manual_seed(3)
    coords = torch.randint(0, grid * 256, (2, 500, 2), generator=gen).float()
    coords[0, 0] = torch.tensor([0.0, 0.0])
    coords[0, 1] = torch.tensor([999 * 256 + 255.0, 999 * 256 + 255.0])
    coords[0, 2] = torch.tensor([3 * 256.0, 1000 * 256.0])  # y past the grid aliases into row x + 1
    ours = sincos_position_embedding(coords, 4, tile_size=256, grid=grid)
    assert torch.equal(ours, table[reference_index(coords, grid)])


def test_positions_equal_reference_rows_at_full_width_on_the_paper_grid():
    # only the rows the tiles need: numpy's own meshgrid convention locates each table row's cell
    grid, dim = 1000, 768
    gen = torch.Generator().manual_seed(4)
    coords = torch.randint(0, grid * 256, (1, 300, 2), generator=gen).float()
    rows = reference_index(coords, grid)[0].numpy() - 1  # table row minus the CLS row
    h_idx, w_idx = np.unravel_index(rows, (grid, grid))  # meshgrid(w, h): w varies along axis 1
    grid_w = np.arange(grid, dtype=np.float32)[w_idx]
    grid_h = np.arange(grid, dtype=np.float32)[h_idx]
    halves = [reference_sincos_1d(grid_w, dim // 2), reference_sincos_1d(grid_h, dim // 2)]
    expected = np.concatenate(halves, axis=1).astype(np.float32)
    ours = sincos_position_embedding(coords, dim, tile_size=256, grid=grid)[0]
    assert torch.equal(ours, torch.from_numpy(expected))


def test_positions_outside_the_grid_are_rejected_unless_masked():
    coords = torch.tensor([[[999 * 256.0, 1000 * 256.0], [10.0, 10.0]]])
    with pytest.raises(ValueError, match="grid"):
        sincos_position_embedding(coords, 8)
    with pytest.raises(ValueError, match="grid"):
        sincos_position_embedding(-coords, 8)
    mask = torch.tensor([[False, True]])
    out = sincos_position_embedding(coords, 8, mask=mask)
    assert torch.equal(out[0, 1], sincos_position_embedding(coords[:, 1:], 8)[0, 0])


# --- dilated attention ---------------------------------------------------------------------------


def test_attention_with_lse_matches_explicit_softmax():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 37, 16, generator=gen) for _ in range(3))
    for sharpness in (1.0, 12.0):  # 12: logits spanning ~+-150, one key dominates each row
        qs = q * sharpness
        logits = (qs.double() @ k.double().transpose(-1, -2)) / 4.0
        out, lse = attention_with_lse(qs, k, v)
        assert torch.allclose(out.double(), torch.softmax(logits, -1) @ v.double(), atol=1e-5)
        assert torch.allclose(lse.double(), torch.logsumexp(logits, -1), atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("sharpness", [1.0, 6.0])
def test_attention_with_lse_low_precision(dtype, sharpness):
    # sharpness 6 makes rows peaked enough (lse ~25 above the first sink logit) that float16's
    # probabilities would flush the sink mass: the sink logit must be raised and the call repeated
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 4, 256, 48, generator=gen).to(dtype) for _ in range(3))
    q = (q.float() * sharpness).to(dtype)
    logits = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(48)
    out, lse = attention_with_lse(q, k, v)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert torch.allclose(out.double(), torch.softmax(logits, -1) @ v.double(), atol=3e-2)
    assert torch.allclose(lse.double(), torch.logsumexp(logits, -1), atol=2e-2)


def test_single_segment_ratio_one_equals_full_attention():
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 50, 4, 8, generator=gen, requires_grad=True) for _ in range(3))
    dense = full_attention(q, k, v)
    for segments in ((50,), (64,), (1000, 64)):  # one or several branches, each a single segment
        ours = dilated_attention(q, k, v, segments, (1,) * len(segments))
        assert torch.allclose(ours, dense, atol=1e-5)
    # gradients too: the log-sum-exp trick must not change the attention's derivative
    probe = torch.randn_like(dense)
    grads_dense = torch.autograd.grad((dense * probe).sum(), (q, k, v))
    grads_ours = torch.autograd.grad((dilated_attention(q, k, v, (64,), (1,)) * probe).sum(), (q, k, v))
    for a, b in zip(grads_dense, grads_ours):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize(
    ("length", "heads", "segments", "ratios"),
    [
        (17, 4, (8, 16, 32), (1, 2, 4)),  # just above a segment length: a 1-token segment of zeros
        (33, 4, (8, 16, 32), (1, 2, 4)),  # just above the largest segment
        (16, 4, (8, 16, 32), (1, 2, 4)),  # exactly a multiple
        (23, 3, (5, 7, 40), (1, 2, 4)),  # odd segments (dilation padding) and heads % ratio != 0
        (12, 6, (5,), (2,)),  # several segments that each need dilation padding
    ],
)
def test_dilated_attention_matches_reference_algorithm(length, heads, segments, ratios):
    gen = torch.Generator().manual_seed(length)
    q, k, v = (torch.randn(2, length, heads, 6, generator=gen) for _ in range(3))
    ours = dilated_attention(q, k, v, segments, ratios)
    expected = reference_dilated_attention(q, k, v, segments, ratios)
    assert torch.allclose(ours.double(), expected, atol=1e-5)


def test_dilated_attention_paper_segments_just_above_1024():
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 1025, 16, 4, generator=gen) for _ in range(3))
    ours = dilated_attention(q, k, v, PAPER_SEGMENTS, PAPER_RATIOS)
    expected = reference_dilated_attention(q, k, v, PAPER_SEGMENTS, PAPER_RATIOS)
    assert torch.allclose(ours.double(), expected, atol=1e-5)
    # the 1025th token sits alone in branch 1's second segment with 1023 zero keys: it differs
    # from a sequence in which it had its own full-attention segment
    alone = dilated_attention(q, k, v, (2048,) + PAPER_SEGMENTS[1:], PAPER_RATIOS)
    assert not torch.allclose(ours[:, -1], alone[:, -1], atol=1e-3)


# --- the encoder ---------------------------------------------------------------------------------


def test_forward_shapes_and_layer_stack_api():
    model = tiny_model()
    features, coords = random_bag(70, batch=2)
    out = model(features, coords)
    assert out.shape == (2, model.embed_dim) == (2, 64)

    tokens = model.embed(features, coords)
    assert tokens.shape == (2, 71, 64)
    assert torch.equal(tokens[:, 0], model.cls_token[0].expand(2, -1))  # CLS position row is zero
    for layer in model.layers:
        tokens = layer(tokens)
    tokens = model.final_norm(tokens)
    assert torch.equal(tokens, model.forward_tokens(features, coords))
    assert torch.equal(model.norm(tokens[:, 0]), out)


def test_layer_embeddings_follow_all_layer_embed():
    model = tiny_model(depth=2)
    with torch.no_grad():  # a non-trivial output LayerNorm, so that skipping it shows
        model.final_norm.weight.uniform_(0.5, 1.5)
        model.final_norm.bias.normal_()
    features, coords = random_bag(40)
    states = model.layer_embeddings(features, coords)
    assert states.shape == (3, 1, 64)
    tokens = model.embed(features, coords)
    assert torch.equal(states[0], model.norm(tokens[:, 0]))
    for i, layer in enumerate(model.layers, start=1):
        tokens = layer(tokens)
        assert torch.equal(states[i], model.norm(tokens[:, 0]))
    # the default output additionally passes LongNet's output LayerNorm
    assert torch.equal(model(features, coords), model.norm(model.final_norm(tokens)[:, 0]))
    assert not torch.allclose(states[-1], model(features, coords))


def test_global_pool_averages_real_tiles():
    model = tiny_model(global_pool=True)
    features, coords = random_bag(30)
    tokens = model.forward_tokens(features, coords)
    assert torch.allclose(model(features, coords), model.norm(tokens[:, 1:].mean(1)), atol=1e-6)


def test_padded_masked_bag_equals_unpadded_bag():
    model = tiny_model(depth=2)
    long_f, long_c = random_bag(150, seed=1)
    short_f, short_c = random_bag(70, seed=2)
    features = torch.zeros(2, 150, 32)
    coords = torch.zeros(2, 150, 2)
    features[0], coords[0] = long_f[0], long_c[0]
    features[1, :70], coords[1, :70] = short_f[0], short_c[0]
    features[1, 70:] = torch.randn(80, 32)  # padding content must not matter
    mask = torch.zeros(2, 150, dtype=torch.bool)
    mask[0] = True
    mask[1, :70] = True
    for pool in (False, True):
        model.config = replace(model.config, global_pool=pool)
        batched = model(features, coords, mask)
        assert torch.allclose(batched[0], model(long_f, long_c)[0], atol=1e-5)
        assert torch.allclose(batched[1], model(short_f, short_c)[0], atol=1e-5)
    tokens = model.forward_tokens(features, coords, mask)
    assert torch.allclose(tokens[1, :71], model.forward_tokens(short_f, short_c)[0], atol=1e-5)


def test_batch_of_equal_bags_matches_single_bags_and_backpropagates():
    model = tiny_model(dropout=0.0, drop_path_rate=0.0).train()
    features, coords = random_bag(100, batch=3)
    features.requires_grad_(True)
    batched = model(features, coords)
    for i in range(3):
        assert torch.allclose(batched[i], model(features[i : i + 1], coords[i : i + 1])[0], atol=1e-5)
    batched.square().sum().backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_runs_in_half_precision(dtype):
    model = tiny_model()
    features, coords = random_bag(120)
    expected = model(features, coords)
    with torch.autocast("cpu", dtype=dtype):
        autocast = model(features, coords)
    low = model.to(dtype)(features.to(dtype), coords)
    assert low.dtype == dtype
    assert torch.allclose(low.float(), expected, atol=0.1)
    assert torch.allclose(autocast.float(), expected, atol=0.1)


def test_profiles_build_the_same_class_narrower():
    small = GigaPathSlideEncoder(GigaPathConfig.for_profile("small"))
    assert (small.embed_dim, len(small.layers)) == (64, 2)
    assert small.config.segment_lengths == PAPER_SEGMENTS
    with pytest.raises(ValueError, match="profile"):
        GigaPathConfig.for_profile("huge")
    with pytest.raises(ValueError, match="divisible"):
        GigaPathConfig(embed_dim=100, num_heads=16)


def test_initialisation_follows_the_reference():
    torch.manual_seed(0)
    cfg = replace(GigaPathConfig.paper(), depth=3, embed_dim=64, num_heads=4, ffn_dim=256, drop_path_rate=0.1)
    model = GigaPathSlideEncoder(cfg)
    assert [layer.drop_path.p for layer in model.layers] == pytest.approx([0.0, 0.05, 0.1])
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):  # Xavier-uniform weights, zero biases
            bound = math.sqrt(6.0 / sum(module.weight.shape))
            assert module.weight.abs().max() <= bound and module.weight.abs().max() > 0.9 * bound
            assert torch.equal(module.bias, torch.zeros_like(module.bias))
        elif isinstance(module, torch.nn.LayerNorm):
            assert torch.equal(module.weight, torch.ones_like(module.weight))
            assert torch.equal(module.bias, torch.zeros_like(module.bias))
    assert 0.01 < model.cls_token.std() < 0.03


def test_attention_score_pairs_counts_segments_slots_and_sink():
    from bench.perf.gigapath import attention_score_pairs

    assert attention_score_pairs(100, 4, (128,), (1,)) == 4 * 100 * 101  # one full segment
    # 1025 tokens, segment 1024: two segments of 1024 slots (the second zero-padded)
    assert attention_score_pairs(1025, 16, (1024,), (1,)) == 2 * 16 * 1024 * 1025
    # ratio 2 over a 1025-token segment: ceil(1025 / 2) = 513 slots per head group
    assert attention_score_pairs(1025, 16, (4096,), (2,)) == 16 * 513 * 514
