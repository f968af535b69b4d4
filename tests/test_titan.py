"""TITAN slide encoder (models/titan.py).

Reference facts checked here come from MahmoodLab/TITAN's remote code as vendored in
DIAGNijmegen/unicorn_baseline (``src/unicorn_baseline/vision/pathology/titan/``:
``vision_transformer.py`` for the module tree, ``preprocess_features``, ``get_alibi`` and the
attentional poolers; ``config.json`` / ``configuration_titan.py`` for the sizes;
``modeling_titan.py`` for the ``vision_encoder`` prefix and ``no_proj=True``).
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from models.base import count_parameters
from models.titan import (
    PAPER_PARAMETERS,
    VISION_PREFIX,
    AlibiBias,
    AttentionalPooler,
    TitanAttention,
    TitanConfig,
    TitanSlideEncoder,
    alibi_slopes,
    load_titan_weights,
    tile_grid,
)

# get_slopes(12): 8 geometric slopes 2^-1..2^-8, then every other one of get_slopes(16), first 4.
PAPER_SLOPES = [2.0**-e for e in (1, 2, 3, 4, 5, 6, 7, 8, 0.5, 1.5, 2.5, 3.5)]
PATCH = 1024


def official_key_shapes(depth: int = 6, dim: int = 768, mlp: int = 3072, feat: int = 768, queries: int = 128):
    """The ``vision_encoder.*`` keys (prefix removed) and shapes, spelled out from the reference tree."""
    shapes: dict[str, tuple] = {
        "cls_token": (1, 1, dim),
        "proj": (dim, dim),
        "patch_embed.0.weight": (dim, feat),
        "patch_embed.0.bias": (dim,),
        "norm.weight": (dim,),
        "norm.bias": (dim,),
    }
    for i in range(depth):
        pre = f"blocks.modules_list.{i}."
        for name, shape in {
            "norm1": (dim,), "norm2": (dim,), "attn.qkv": (3 * dim,), "attn.proj": (dim,),
            "mlp.fc1": (mlp,), "mlp.fc2": (dim,),
        }.items():
            shapes[f"{pre}{name}.bias"] = shape
        shapes[f"{pre}norm1.weight"] = shapes[f"{pre}norm2.weight"] = (dim,)
        shapes[f"{pre}attn.qkv.weight"] = (3 * dim, dim)
        shapes[f"{pre}attn.proj.weight"] = (dim, dim)
        shapes[f"{pre}mlp.fc1.weight"] = (mlp, dim)
        shapes[f"{pre}mlp.fc2.weight"] = (dim, mlp)
    for pool, n_queries in (("attn_pool", queries), ("attn_pool_contrastive", 1)):
        shapes[f"{pool}.query"] = (n_queries, dim)
        shapes[f"{pool}.attn.in_proj_weight"] = (3 * dim, dim)
        shapes[f"{pool}.attn.in_proj_bias"] = (3 * dim,)
        shapes[f"{pool}.attn.out_proj.weight"] = (dim, dim)
        shapes[f"{pool}.attn.out_proj.bias"] = (dim,)
        for norm in ("ln_q", "ln_k"):
            shapes[f"{pool}.{norm}.weight"] = shapes[f"{pool}.{norm}.bias"] = (dim,)
    return shapes


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Small tensors: one intra-op thread avoids hand-off costs on a shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_model(seed: int = 0, **overrides) -> TitanSlideEncoder:
    """Tiny profile on 32-d features, with perturbed norms so LayerNorm parameters matter."""
    torch.manual_seed(seed)
    model = TitanSlideEncoder(replace(TitanConfig.for_profile("tiny"), feature_dim=32, **overrides)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.add_(0.1 * torch.randn_like(module.weight))
                module.bias.add_(0.1 * torch.randn_like(module.bias))
    return model


def random_bag(n: int, dim: int = 32, seed: int = 0, span: int = 12):
    """``n`` tiles on distinct cells of a ``span x span`` grid, offset from the origin."""
    gen = torch.Generator().manual_seed(seed)
    cells = torch.randperm(span * span, generator=gen)[:n]
    coords = torch.stack([cells // span, cells % span], dim=-1).float() * PATCH + 30_000
    return torch.randn(1, n, dim, generator=gen), coords.unsqueeze(0)


def dense_grid_reference(features: torch.Tensor, coords: torch.Tensor, patch: int):
    """The reference's ``preprocess_features`` + background removal, restated with a dense grid.

    ``features [N, F]``, ``coords [N, 2]`` -> (cell features ``[L, F]``, cells ``[L, 2]``) in raster order.
    """
    cells = torch.div(coords.long() - coords.long().min(dim=0).values, patch, rounding_mode="floor")
    rows, cols = (int(v) + 1 for v in cells.max(dim=0).values)
    grid = torch.zeros(rows, cols, features.shape[1], dtype=torch.float64)
    for tile, (r, c) in zip(features.double(), cells.tolist()):
        grid[r, c] += tile
    kept = [(r, c) for r in range(rows) for c in range(cols) if bool((grid[r, c] != 0).any())]
    return torch.stack([grid[r, c] for r, c in kept]), torch.tensor(kept)


def naive_alibi_bias(cells: torch.Tensor, slopes: list[float]) -> torch.Tensor:
    """``[H, 1 + L, 1 + L]`` from cells ``[L, 2]``: ``-slope * euclidean distance``, zero for CLS."""
    n = cells.shape[0]
    bias = torch.zeros(len(slopes), n + 1, n + 1, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            dist = math.dist(cells[i].tolist(), cells[j].tolist())
            for h, slope in enumerate(slopes):
                bias[h, i + 1, j + 1] = -slope * dist
    return bias


# --- paper configuration -------------------------------------------------------------------------


def test_paper_parameter_count_and_official_keys():
    with torch.device("meta"):
        model = TitanSlideEncoder(TitanConfig.paper())
    assert count_parameters(model) == PAPER_PARAMETERS == 48_539_904
    assert model.embed_dim == 768 and len(model.layers) == 6
    state = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert state == official_key_shapes()
    assert len(state) == 96


def test_profiles_build_the_same_class_narrower():
    paper = TitanConfig.paper()
    for profile, depth, width in (("small", 2, 64), ("tiny", 1, 64)):
        cfg = TitanConfig.for_profile(profile)
        assert (cfg.depth, cfg.embed_dim, cfg.feature_dim) == (depth, width, 768)
        model = TitanSlideEncoder(cfg)
        assert type(model) is TitanSlideEncoder and model.embed_dim == width
        assert count_parameters(model) < PAPER_PARAMETERS
        features, coords = random_bag(5, dim=768)
        assert model(features, coords).shape == (1, width)
    assert TitanConfig.for_profile("paper") == paper
    with pytest.raises(ValueError, match="unknown profile"):
        TitanConfig.for_profile("huge")
    with pytest.raises(ValueError, match="divisible"):
        TitanConfig(embed_dim=100, num_heads=12)


def test_alibi_slopes_follow_press_et_al():
    assert torch.allclose(alibi_slopes(12), torch.tensor(PAPER_SLOPES), rtol=0, atol=1e-7)
    assert torch.allclose(alibi_slopes(8), torch.tensor([2.0**-i for i in range(1, 9)]))
    assert torch.allclose(alibi_slopes(4), torch.tensor([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8]))
    # 6 heads: the 4-head slopes, then slopes 1 and 3 of the 8-head sequence.
    assert torch.allclose(alibi_slopes(6), torch.tensor([2.0**-e for e in (2, 4, 6, 8, 1, 3)]))


# --- grid ----------------------------------------------------------------------------------------


def test_tile_grid_matches_the_dense_reference_grid():
    gen = torch.Generator().manual_seed(3)
    coords = torch.stack([torch.randint(0, 9, (40,), generator=gen), torch.randint(0, 7, (40,), generator=gen)], -1)
    coords = coords * 512 + torch.tensor([5_000, 77_000])  # half-size steps: many tiles share a cell
    features = torch.randn(40, 6, generator=gen)
    features[[3, 17]] = 0.0
    expected_feats, expected_cells = dense_grid_reference(features, coords, PATCH)

    grid = tile_grid(features[None], coords[None].float(), PATCH)
    kept = grid.mask[0]
    assert torch.equal(grid.cells[0][kept], expected_cells)
    assert torch.allclose(grid.features[0][kept].double(), expected_feats, atol=1e-5)
    assert int(kept.sum()) < 40  # duplicates were merged


def test_tile_grid_batches_with_padding_and_zero_cells():
    feats_a, coords_a = random_bag(9, dim=4, seed=1)
    feats_b, coords_b = random_bag(5, dim=4, seed=2)
    feats_b[0, 2] = 0.0  # background tile inside the second bag
    features = torch.zeros(2, 9, 4)
    coords = torch.full((2, 9, 2), -1e9)  # padding coordinates must not move the origin
    features[0], coords[0] = feats_a[0], coords_a[0]
    features[1, :5], coords[1, :5] = feats_b[0], coords_b[0]
    features[1, 5:] = 7.0
    mask = torch.arange(9).unsqueeze(0) < torch.tensor([[9], [5]])

    grid = tile_grid(features, coords, PATCH, mask)
    assert grid.features.shape == (2, 9, 4)
    assert grid.mask.sum(dim=1).tolist() == [9, 4]
    for b, (feats, crd) in enumerate(((feats_a, coords_a), (feats_b, coords_b))):
        expected_feats, expected_cells = dense_grid_reference(feats[0], crd[0], PATCH)
        assert torch.equal(grid.cells[b][grid.mask[b]], expected_cells)
        assert torch.allclose(grid.features[b][grid.mask[b]].double(), expected_feats, atol=1e-6)


# --- ALiBi attention -----------------------------------------------------------------------------


def test_alibi_bias_values_on_a_known_layout():
    cells = torch.tensor([[[0, 0], [3, 4], [6, 8]]])
    mask = torch.tensor([[True, True, True, False]])
    bias = AlibiBias(cells, torch.tensor([0.5, 0.25]), mask).dense()
    assert bias.shape == (1, 2, 4, 4)
    assert torch.equal(bias[0, :, 0, :3], torch.zeros(2, 3))  # CLS row
    assert torch.equal(bias[0, :, :, 0], torch.zeros(2, 4))  # CLS column
    assert torch.allclose(bias[0, :, 1, 2], torch.tensor([-2.5, -1.25]))  # distance 5
    assert torch.allclose(bias[0, :, 2, 1], torch.tensor([-2.5, -1.25]))
    assert torch.equal(bias[0, :, 1, 1], torch.zeros(2))
    assert torch.isneginf(bias[0, :, :, 3]).all()  # masked key column
    unmasked = AlibiBias(cells, torch.tensor([0.5, 0.25]), torch.ones(1, 4, dtype=torch.bool))
    assert unmasked.token_mask is None and torch.allclose(unmasked.dense()[0, 0, 1, 3], torch.tensor(-5.0))


@pytest.mark.parametrize(
    ("max_elements", "ranges"),
    [
        (2 * 4 * 31 * 7, [(0, 7), (7, 14), (14, 21), (21, 28), (28, 31)]),  # distances rebuilt per block
        (2 * 31 * 31 * 2, [(0, 15), (15, 30), (30, 31)]),  # distance table kept, bias blocked
        (2 * 4 * 31 * 31, [(0, 31)]),  # whole bias in one block, shared
    ],
)
def test_bias_blocks_are_bounded_and_tile_the_dense_bias(max_elements, ranges):
    cells = torch.randint(0, 20, (2, 30, 2))
    mask = torch.rand(2, 31) > 0.3
    mask[:, 0] = True
    dense = AlibiBias(cells, alibi_slopes(4), mask).dense()
    bias = AlibiBias(cells, alibi_slopes(4), mask, max_elements=max_elements)
    blocks = list(bias.blocks())
    assert [(s, e) for s, e, _ in blocks] == ranges
    assert all(b.numel() <= max_elements for _, _, b in blocks)
    assert torch.equal(torch.cat([b for _, _, b in blocks], dim=2), dense)
    again = list(bias.blocks())  # a second layer
    assert (again[0][2] is blocks[0][2]) == (len(ranges) == 1)


def test_repeated_bias_follows_repeated_bags():
    cells = torch.randint(0, 20, (2, 6, 2))
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    bias = AlibiBias(cells, alibi_slopes(4), mask, max_elements=500)
    repeated = bias.repeat_interleave(3)
    assert repeated.rows == max(1, 500 // (6 * 4 * 7))
    assert torch.equal(repeated.dense(), bias.dense().repeat_interleave(3, dim=0))
    assert torch.equal(repeated.token_mask, mask.repeat_interleave(3, dim=0))


@pytest.mark.parametrize("max_elements", [2**26, 3 * 4 * 20 * 5])
def test_attention_equals_naive_softmax_with_alibi_bias(max_elements):
    torch.manual_seed(0)
    heads, dim, n_tiles = 4, 32, 19
    attn = TitanAttention(dim, heads).double()
    gen = torch.Generator().manual_seed(5)
    cells = torch.randint(0, 15, (3, n_tiles, 2), generator=gen)
    mask = torch.rand(3, 1 + n_tiles, generator=gen) > 0.25
    mask[:, 0] = True
    x = torch.randn(3, 1 + n_tiles, dim, dtype=torch.float64, generator=gen)
    bias = AlibiBias(cells, alibi_slopes(heads), mask, max_elements=max_elements)
    out = attn(x, bias)

    slopes = [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8]
    w_q, w_k, w_v = attn.qkv.weight.chunk(3)
    b_q, b_k, b_v = attn.qkv.bias.chunk(3)
    hd = dim // heads
    for b in range(3):
        expected_bias = naive_alibi_bias(cells[b], slopes)
        heads_out = []
        for h in range(heads):
            rows = slice(h * hd, (h + 1) * hd)
            q = x[b] @ w_q[rows].T + b_q[rows]
            k = x[b] @ w_k[rows].T + b_k[rows]
            v = x[b] @ w_v[rows].T + b_v[rows]
            logits = q @ k.T / math.sqrt(hd) + expected_bias[h]
            logits[:, ~mask[b]] = -math.inf
            heads_out.append(torch.softmax(logits, dim=-1) @ v)
        expected = attn.proj(torch.cat(heads_out, dim=-1))
        assert torch.allclose(out[b], expected, atol=1e-6)  # bias is float32, like the reference's


def test_pooler_matches_nn_multihead_attention():
    torch.manual_seed(1)
    dim, heads = 32, 4
    pooler = AttentionalPooler(dim, heads, num_queries=3)
    nn.init.normal_(pooler.query)
    pooler.attn.reset_parameters()
    nn.init.normal_(pooler.attn.in_proj_bias)
    mha = nn.MultiheadAttention(dim, heads, kdim=dim, vdim=dim)
    mha.load_state_dict({k.removeprefix("attn."): v for k, v in pooler.state_dict().items() if k.startswith("attn.")})
    tokens = torch.randn(2, 11, dim)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, 6:] = False
    out = pooler(tokens, mask)

    q = pooler.ln_q(pooler.query)
    for b in range(2):
        k = pooler.ln_k(tokens[b][mask[b]])
        expected, _ = mha(q.unsqueeze(1), k.unsqueeze(1), k.unsqueeze(1), need_weights=False)
        assert torch.allclose(out[b], expected[:, 0], atol=1e-5)


# --- encoder -------------------------------------------------------------------------------------


def test_layer_stack_api_equals_forward_and_pools_with_the_contrastive_query():
    model = tiny_model()
    features, coords = random_bag(10)
    tokens, bias = model.embed(features, coords)
    assert tokens.shape == (1, 11, 64) and bias.n_tokens == 11
    assert torch.equal(tokens[:, 0], model.cls_token[:, 0])
    for layer in model.layers:
        tokens = layer(tokens, bias)
    tokens = model.final_norm(tokens)
    embedding = model.pool(tokens, bias.token_mask)
    assert torch.equal(embedding, model(features, coords))
    assert embedding.shape == (1, 64)
    assert not torch.allclose(embedding, tokens[:, 0])  # not the CLS token
    assert model.caption_tokens(tokens).shape == (1, 8, 64)
    assert torch.allclose(model.project(embedding), embedding @ model.proj)


def test_geometry_enters_only_through_relative_cell_positions():
    model = tiny_model()
    features, coords = random_bag(12)
    reference = model(features, coords)
    perm = torch.randperm(12)
    assert torch.allclose(model(features[:, perm], coords[:, perm]), reference, atol=1e-5)
    assert torch.allclose(model(features, coords + torch.tensor([PATCH * 3.0, -PATCH * 2.0])), reference, atol=1e-6)
    assert torch.allclose(model(features, coords + 0.4 * PATCH), reference, atol=1e-6)  # origin moves too
    moved = coords.clone()
    moved[0, 0] = coords[0].max(dim=0).values + 5 * PATCH
    assert not torch.allclose(model(features, moved), reference, atol=1e-4)
    assert not torch.allclose(model(features, coords, patch_size_lv0=PATCH // 2), reference, atol=1e-4)


def test_shared_cells_are_summed_and_zero_tiles_are_background():
    model = tiny_model()
    features, coords = random_bag(8)
    extra = torch.randn(1, 1, 32)
    split_feats = torch.cat([features, extra], dim=1)
    split_feats[0, 3] -= extra[0, 0]
    split_coords = torch.cat([coords, coords[:, 3:4] + PATCH // 2], dim=1)  # same cell as tile 3
    assert torch.allclose(model(split_feats, split_coords), model(features, coords), atol=1e-5)
    with_zero = torch.cat([features, torch.zeros(1, 1, 32)], dim=1)
    far = torch.cat([coords, coords[:, :1] + 40 * PATCH], dim=1)
    assert torch.allclose(model(with_zero, far), model(features, coords), atol=1e-6)


def test_padded_masked_batch_equals_single_bags_and_backpropagates():
    model = tiny_model()
    bags = [random_bag(n, seed=s) for n, s in ((11, 1), (6, 2), (1, 3))]
    singles = torch.cat([model(f, c) for f, c in bags])
    features = torch.randn(3, 14, 32) * 50
    coords = torch.randint(-10**6, 10**6, (3, 14, 2)).float()
    mask = torch.zeros(3, 14, dtype=torch.bool)
    for b, (f, c) in enumerate(bags):
        features[b, : f.shape[1]], coords[b, : f.shape[1]], mask[b, : f.shape[1]] = f[0], c[0], True
    batched = model(features, coords, mask)
    assert torch.allclose(batched, singles, atol=1e-5)
    batched.sum().backward()
    assert model.patch_embed[0].weight.grad is not None and torch.isfinite(model.patch_embed[0].weight.grad).all()


def test_a_bag_without_tiles_pools_the_cls_token_alone():
    model = tiny_model()
    features, coords = random_bag(4)
    masked = model(features, coords, torch.zeros(1, 4, dtype=torch.bool))
    empty = model(torch.zeros(1, 0, 32), torch.zeros(1, 0, 2))
    no_tiles = AlibiBias(torch.zeros(1, 0, 2), alibi_slopes(4))
    cls_only = model.pool(model.final_norm(model.layers[0](model.cls_token, no_tiles)))
    assert torch.isfinite(masked).all()
    assert torch.allclose(masked, cls_only, atol=1e-6) and torch.allclose(empty, cls_only, atol=1e-6)


def test_small_bias_budget_gives_the_same_outputs_and_gradients():
    features, coords = random_bag(40, span=8)
    full_model = tiny_model()
    full = full_model(features, coords)
    full.sum().backward()
    blocked = tiny_model(max_bias_elements=4 * 41 * 3)
    tokens, bias = blocked.embed(features, coords)
    assert len(list(bias.blocks())) == 14
    out = blocked(features, coords)  # autograd: a fresh tensor per block
    assert torch.allclose(out, full, atol=1e-6)
    out.sum().backward()
    qkv_grads = [m.layers[0].attn.qkv.weight.grad for m in (full_model, blocked)]
    assert torch.allclose(*qkv_grads, atol=1e-5)
    with torch.no_grad():  # inference: blocks share one reused buffer
        assert torch.allclose(blocked(features, coords), full, atol=1e-6)


def test_runs_in_bfloat16():
    model = tiny_model()
    features, coords = random_bag(9)
    expected = model(features, coords)
    out = model.to(torch.bfloat16)(features.bfloat16(), coords)
    assert out.dtype == torch.bfloat16 and torch.allclose(out.float(), expected, atol=0.1)


def test_initialisation_follows_the_reference():
    torch.manual_seed(0)  # width 256: enough weights for the initialisation statistics below
    model = TitanSlideEncoder(replace(TitanConfig.paper(), depth=2, embed_dim=256, num_heads=8, pool_queries=32))
    qkv = model.layers[0].attn.qkv
    assert abs(qkv.weight.std().item() - 0.02) < 1e-3  # timm trunc_normal_: bounds +-2 absolute, i.e. N(0, 0.02)
    assert torch.equal(qkv.bias, torch.zeros_like(qkv.bias))
    assert model.cls_token.abs().max() < 1e-4
    assert abs(model.attn_pool.query.std().item() - 1.0) < 0.05
    assert abs(model.proj.std().item() - model.config.embed_dim**-0.5) < 0.005
    pool = model.attn_pool_contrastive.attn
    assert torch.equal(pool.in_proj_bias, torch.zeros_like(pool.in_proj_bias))
    assert abs(pool.in_proj_weight.std().item() - math.sqrt(2.0 / (256 + 3 * 256))) < 0.003  # Xavier-uniform
    assert model.attn_pool.ln_k.eps == 1e-5 and model.norm.eps == 1e-6 and model.layers[0].norm1.eps == 1e-6


# --- checkpoints ---------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["pth", "bin-wrapped", "safetensors", "full-pth", "full-safetensors"])
def test_checkpoint_round_trip_preserves_outputs(tmp_path, layout):
    source = tiny_model(seed=1)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    if layout.startswith("full"):
        state = {VISION_PREFIX + k: v for k, v in state.items()}
        state["text_encoder.token_embedding.weight"] = torch.randn(10, 4)
        state["logit_scale"] = torch.ones(())
    if layout.endswith("safetensors"):
        path = tmp_path / "model.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / ("model.bin" if layout == "bin-wrapped" else "model.pth")
        torch.save({"model": state} if layout == "bin-wrapped" else state, path)

    target = tiny_model(seed=2)
    features, coords = random_bag(10)
    assert not torch.allclose(target(features, coords), source(features, coords))
    assert load_titan_weights(target, path) is target
    assert torch.equal(target(features, coords), source(features, coords))


def test_loading_is_strict(tmp_path):
    model = tiny_model()
    state = model.state_dict()
    missing = {k: v for k, v in state.items() if k != "attn_pool.query"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="attn_pool.query"):
        load_titan_weights(model, tmp_path / "missing.pth")
    renamed = {k.replace("modules_list.", ""): v for k, v in state.items()}
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(ValueError, match="unexpected"):
        load_titan_weights(model, tmp_path / "renamed.pth")
    full = {VISION_PREFIX + k: v for k, v in missing.items()} | {"text_encoder.x": torch.ones(1)}
    save_file(full, str(tmp_path / "full.safetensors"))
    with pytest.raises(ValueError, match="attn_pool.query"):
        load_titan_weights(model, tmp_path / "full.safetensors")
    with pytest.raises(FileNotFoundError):
        load_titan_weights(model, tmp_path / "absent.safetensors")


def test_flex_attention_computes_the_bias_in_the_kernel_with_the_same_outputs():
    """Inference over bags of at least ``flex_min_tokens`` tokens runs one compiled FlexAttention kernel
    that computes the ALiBi bias per score; it must give the materialised bias's outputs, masked tokens
    and the CLS row/column (distance 0, although a tile can sit on cell (0, 0)) included."""
    from models import flex_alibi

    features, coords = random_bag(40, span=8)
    coords[0, 0] = 0.0  # a tile on the grid origin: its distance to CLS must still be 0
    batch = torch.cat([features, features.flip(1)]), torch.cat([coords, coords.flip(1)])
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 25:] = False
    sdpa, flex = tiny_model(flex_min_tokens=None), tiny_model(flex_min_tokens=1)
    with torch.no_grad():
        _, bias = flex.embed(*batch, mask)
        assert bias.uses_flex()
        expected, got = sdpa(*batch, mask), flex(*batch, mask)
    if flex_alibi.flex_unavailable_reason() is not None:
        pytest.skip(f"FlexAttention cannot compile here: {flex_alibi.flex_unavailable_reason()}")
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    assert not flex.embed(*batch, mask)[1].uses_flex()  # autograd always takes the SDPA path
    trained = flex(*batch, mask)
    assert trained.requires_grad and torch.allclose(trained, expected, atol=1e-5)
