"""ModalTune (models/modaltune): paper counts per component, adapter maths, masking, freezing, checkpointing."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from baselines.genemixer import GENE_MIXER_PAPER_CONTEXT
from bench.registry import get_model, paper_context
from models.base import count_parameters
from models.genemixer import GeneMixer, GeneMixerConfig
from models.gigapath import GigaPathConfig, GigaPathSlideEncoder
from models.modaltune import PAPER_CONFIGS, ModalTune, ModalTuneConfig, interaction_groups
from models.modaltune.adapter import (
    CompressedAttention,
    InteractionBlock,
    PromptSelfAttention,
    validate_interaction_groups,
)
from models.modaltune.backbones import GigaPathBackbone, TitanBackbone
from models.titan import TitanConfig, TitanSlideEncoder

N_GENES, N_PATHWAYS, FEATURE_DIM = 24, 6, 32

# Release counts (martellab-sri/ModalTune, measured on LongNetGeneAdapter / TITANGeneAdapter).
PAPER_COMPONENTS = {
    "gene_encoder": 25_102_170,
    "interactions": 6_836_160,
    "prompt_attention": 1_333_632,
    "gene_pe": 49_920,
    "task_weight": 4_608,
}
PAPER_TARGETS = {
    # name: (final layers, release trainable total, frozen encoder)
    "modaltune": (198_400, 33_524_890, 86_330_880),
    "modaltune_pancancer": (198_400, 33_524_890, 86_330_880),
    "modaltune_titan": (594_688, 33_921_178, 48_539_904),
}


def _pathways(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    membership = torch.rand(N_GENES, N_PATHWAYS, generator=generator) < 0.3
    membership[torch.arange(N_PATHWAYS), torch.arange(N_PATHWAYS)] = True
    return membership


def _tiny_model(encoder: str = "gigapath", depth: int = 3, **overrides) -> ModalTune:
    """Tiny-width ModalTune on a 3-layer encoder: 3 interaction blocks, 2 prompt self-attentions."""
    torch.manual_seed(0)
    if encoder == "gigapath":
        backbone = GigaPathBackbone(
            GigaPathSlideEncoder(replace(GigaPathConfig.for_profile("tiny", FEATURE_DIM), depth=depth))
        )
    else:
        config = replace(TitanConfig.for_profile("tiny"), depth=depth, feature_dim=FEATURE_DIM)
        backbone = TitanBackbone(TitanSlideEncoder(config))
    mixer = GeneMixer(_pathways(), replace(GeneMixerConfig.for_profile("tiny"), out_dim=64, pool_norm=False))
    config = ModalTuneConfig.for_encoder(encoder, "tiny", **overrides)
    return ModalTune(backbone, mixer, config, n_outputs=3)


def _batch(encoder: str = "gigapath", sizes: tuple[int, ...] = (12, 7), seed: int = 1) -> dict[str, torch.Tensor]:
    """Bags of distinct grid cells (GigaPath: 256-px tiles, TITAN: 1024-px cells), zero-padded + mask."""
    generator = torch.Generator().manual_seed(seed)
    tile = 256 if encoder == "gigapath" else 1024
    length = max(sizes)
    features = torch.randn(len(sizes), length, FEATURE_DIM, generator=generator)
    cells = torch.stack([torch.randperm(64, generator=generator)[:length] for _ in sizes])
    coords = torch.stack([cells // 8, cells % 8], dim=-1).float() * tile
    mask = torch.arange(length)[None, :] < torch.tensor(sizes)[:, None]
    features = features * mask[..., None]
    rna = torch.randn(len(sizes), N_GENES, generator=generator)
    return {"features": features, "coords": coords, "mask": mask, "rna": rna}


def _sample(batch: dict[str, torch.Tensor], index: int, size: int) -> dict[str, torch.Tensor]:
    """Patient ``index`` alone, unpadded (no mask)."""
    return {
        "features": batch["features"][index : index + 1, :size],
        "coords": batch["coords"][index : index + 1, :size],
        "rna": batch["rna"][index : index + 1],
    }


# --------------------------------------------------------------------------- registry, counts


def test_registry_entries():
    for name, label, feature_dim in [
        ("modaltune", "ModalTune (Ours)", 1536),
        ("modaltune_pancancer", "ModalTune Pan-Cancer (Ours)", 1536),
        ("modaltune_titan", "ModalTune TITAN", 768),
    ]:
        entry = get_model(name)
        assert (entry.label, entry.modalities, entry.tasks, entry.regime, entry.family) == (
            label, ("wsi", "rna"), ("multitask",), "text_distill", "modaltune"
        )
        assert entry.pancancer == (name == "modaltune_pancancer")
        ctx = paper_context(entry)
        assert ctx.feature_dim == feature_dim and ctx.n_genes == GENE_MIXER_PAPER_CONTEXT["n_genes"] == 4987
        # The same pathways as the genemixer baseline's paper configuration (one Gene Mixer).
        assert torch.equal(ctx.pathways, GENE_MIXER_PAPER_CONTEXT["pathways"]())


@pytest.mark.parametrize("name", list(PAPER_TARGETS))
def test_paper_parameter_counts_per_component(name):
    final, trainable, frozen = PAPER_TARGETS[name]
    entry = get_model(name)
    with torch.device("meta"):
        model = entry.build(paper_context(entry))
    groups = model.parameter_groups()
    assert {k: groups[k] for k in PAPER_COMPONENTS} == PAPER_COMPONENTS
    assert (groups["final"], groups["encoder"], groups["head"]) == (final, frozen, 256 * 4 + 4)
    # The release's trainable total, plus the benchmark contract's linear head.
    assert count_parameters(model, trainable_only=True) == trainable + groups["head"]
    assert count_parameters(model) - count_parameters(model, trainable_only=True) == frozen
    assert not any(p.requires_grad for p in model.backbone.parameters())
    expected_groups = ((0, 3), (4, 7), (8, 11)) if name != "modaltune_titan" else ((0, 1), (2, 3), (4, 5))
    assert model.groups == expected_groups
    assert [len(block.extra_extractors) for block in model.interactions] == [0, 0, 2]
    assert model.task_names == ("general", "diagnosis", "survival") and model.text_rows == (0, 1, 3)


def test_interaction_groups_reproduce_release_and_map_shallow_encoders():
    assert interaction_groups(12) == PAPER_CONFIGS["gigapath"].interaction_indexes
    assert interaction_groups(6) == PAPER_CONFIGS["titan"].interaction_indexes
    assert interaction_groups(2) == ((0, 0), (1, 1))
    assert interaction_groups(1) == ((0, 0),)
    assert interaction_groups(7) == ((0, 2), (3, 4), (5, 6))
    assert validate_interaction_groups([[2, 5], [6, 11]], 12) == ((2, 5), (6, 11))  # layers 0-1 run plainly
    for bad in ([[0, 3], [5, 11]], [[0, 3], [4, 10]], [[0, 5], [6, 5], [6, 11]]):
        with pytest.raises(ValueError):
            validate_interaction_groups(bad, 12)


def test_config_validation():
    with pytest.raises(ValueError, match="general"):
        ModalTuneConfig(tasks=("diagnosis", "survival"))
    with pytest.raises(ValueError, match="tasks"):
        ModalTuneConfig(tasks=("general", "grade"))
    with pytest.raises(ValueError, match="token_agg"):
        ModalTuneConfig(token_agg="mean")
    with pytest.raises(ValueError, match="divisible"):
        CompressedAttention(64, num_heads=12, ratio=0.25)


# --------------------------------------------------------------------------- adapter maths


def test_compressed_attention_matches_multihead_attention():
    """q_in -> nn.MultiheadAttention(d, H, kdim=D, vdim=D) -> expand, as the release's attention layers."""
    torch.manual_seed(0)
    attn = CompressedAttention(32, num_heads=4, ratio=0.5).eval()
    reference = nn.MultiheadAttention(16, 4, kdim=32, vdim=32, batch_first=True).eval()
    with torch.no_grad():
        reference.q_proj_weight.copy_(attn.q_proj.weight)
        reference.k_proj_weight.copy_(attn.k_proj.weight)
        reference.v_proj_weight.copy_(attn.v_proj.weight)
        reference.in_proj_bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]) + 0.1)
        attn.q_proj.bias.add_(0.1), attn.k_proj.bias.add_(0.1), attn.v_proj.bias.add_(0.1)
        reference.out_proj.load_state_dict(attn.out_proj.state_dict())
    query, key, value = torch.randn(2, 5, 32), torch.randn(2, 9, 32), torch.randn(2, 9, 32)
    keep = torch.ones(2, 9, dtype=torch.bool)
    keep[1, 6:] = False
    expected = attn.expand(reference(attn.q_in(query), key, value, key_padding_mask=~keep)[0])
    torch.testing.assert_close(attn(query, key, value, keep), expected, rtol=1e-5, atol=1e-6)


def test_release_residuals_and_positions():
    """Injector ``x + gamma (x + A)`` (positions on keys/values), extractors ``2c + A`` then ``+ MLP``
    (positions on queries, padded patches masked), prompt attention ``c + A(LN c + pos, LN c + pos, LN c)``."""
    torch.manual_seed(0)
    block = InteractionBlock(32, 4, 0.5, init_gamma=0.3, drop_path=0.1, extra_extractors=2).eval()
    x, c, pos = torch.randn(2, 10, 32), torch.randn(2, 5, 32), torch.randn(5, 32)
    keep = torch.ones(2, 10, dtype=torch.bool)
    keep[0, 7:] = False
    injector = block.injector
    memory = injector.norm_kv(c) + pos
    expected = x + injector.gamma * (x + injector.attn(injector.norm(x), memory, memory))
    torch.testing.assert_close(block.inject(x, c, pos), expected)
    expected = c
    for extractor in (block.extractor, *block.extra_extractors):
        assert [type(m) for m in extractor.ffn] == [nn.LayerNorm, nn.Linear, nn.ReLU, nn.Linear]
        assert extractor.ffn[1].out_features == 16
        memory = extractor.norm_kv(x)
        expected = 2 * expected + extractor.attn(extractor.norm(expected) + pos, memory, memory, keep)
        expected = expected + extractor.ffn(expected)
    torch.testing.assert_close(block.extract(c, x, pos, keep), expected)
    attention = PromptSelfAttention(32, 4, 0.5).eval()
    normed = attention.norm(c)
    torch.testing.assert_close(attention(c, pos), c + attention.attn(normed + pos, normed + pos, normed))


def test_injector_is_identity_at_initial_gamma_zero():
    model = _tiny_model()
    block = model.interactions[0]
    assert torch.count_nonzero(block.injector.gamma) == 0
    x, c = torch.randn(2, 10, 64), torch.randn(2, 9, 64)
    assert torch.equal(block.inject(x, c, model.gene_pe), x)
    with torch.no_grad():
        block.injector.gamma.fill_(0.5)
    assert not torch.allclose(block.inject(x, c, model.gene_pe), x)


def test_gamma_zero_model_runs_the_frozen_encoder_unchanged(monkeypatch):
    """At initialisation the image feature is exactly the frozen encoder's own last-layer CLS token."""
    model = _tiny_model().eval()
    batch = _batch()
    seen = []
    original = model.backbone.slide_embedding

    def record(tokens, bag):
        seen.append(original(tokens, bag))
        return seen[-1]

    monkeypatch.setattr(model.backbone, "slide_embedding", record)
    with torch.no_grad():
        model.forward_tasks(batch, [0])
        encoder = model.backbone.encoder
        tokens = encoder.embed(batch["features"], batch["coords"], batch["mask"])
        for layer in encoder.layers:
            tokens = layer(tokens, encoder.token_mask(batch["mask"]))
    torch.testing.assert_close(seen[0], tokens[:, 0], rtol=0, atol=0)
    with torch.no_grad():
        for block in model.interactions:
            block.injector.gamma.fill_(0.5)
        model.forward_tasks(batch, [0])
    assert not torch.allclose(seen[1], tokens[:, 0], atol=1e-4)


def test_initialisation_follows_release():
    model = _tiny_model()
    for block in model.interactions:
        for extractor in (block.extractor, *block.extra_extractors):
            for linear in (extractor.attn.q_in, extractor.attn.k_proj, extractor.attn.expand, extractor.ffn[1]):
                assert torch.count_nonzero(linear.bias) == 0
    assert torch.count_nonzero(model.final_project.bias) == 0
    assert 0.005 < float(model.gene_pe.detach().std()) < 0.05
    # Prompt self-attention keeps nn.Linear's default bias on its outer projections (release quirk).
    assert torch.count_nonzero(model.prompt_attention[0].attn.q_in.bias) > 0


# --------------------------------------------------------------------------- forward behaviour


@pytest.mark.parametrize("encoder", ["gigapath", "titan"])
def test_forward_shapes_and_task_folding(encoder):
    model = _tiny_model(encoder, init_gamma=0.5).eval()
    batch = _batch(encoder)
    with torch.no_grad():
        all_tasks = model.forward_tasks(batch)
        one_by_one = torch.cat([model.forward_tasks(batch, [t]) for t in range(3)], dim=1)
        assert all_tasks.shape == (2, 3, 256)
        torch.testing.assert_close(all_tasks, one_by_one, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.forward_tasks(batch, [2, 0]), all_tasks[:, [2, 0]], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.forward_features(batch), all_tasks[:, 0], rtol=1e-4, atol=1e-5)
        assert model(batch).shape == (2, 3)
    # Task prompts make the three embeddings differ.
    assert not torch.allclose(all_tasks[:, 0], all_tasks[:, 1], atol=1e-3)


@pytest.mark.parametrize("encoder", ["gigapath", "titan"])
def test_padding_and_batching_do_not_change_outputs(encoder):
    model = _tiny_model(encoder, init_gamma=0.5).eval()
    sizes = (12, 7)
    batch = _batch(encoder, sizes)
    # Padding carries junk that a mask-blind model would read.
    batch["features"] = batch["features"].masked_fill(~batch["mask"][..., None], 5.0)
    with torch.no_grad():
        batched = model.forward_tasks(batch)
        for index, size in enumerate(sizes):
            alone = model.forward_tasks(_sample(batch, index, size))
            torch.testing.assert_close(batched[index], alone[0], rtol=1e-4, atol=1e-5)


def test_bags_without_real_patches_and_bad_tasks_are_rejected():
    model = _tiny_model().eval()
    batch = _batch()
    with pytest.raises(ValueError, match="task indexes"):
        model.forward_tasks(batch, [3])
    batch["mask"][1] = False
    with pytest.raises(ValueError, match="real patch"):
        model.forward_tasks(batch)


def test_single_task_has_no_prompt_token():
    model = _tiny_model(tasks=("general",)).eval()
    assert model.task_weight is None and model.gene_pe.shape == (8, 64)  # 8 pathway tokens, no prompt
    with torch.no_grad():
        assert model.forward_tasks(_batch()).shape == (2, 1, 256)


def test_cat_aggregation_widens_final_layers():
    model = _tiny_model("titan").eval()
    assert model.final_norm.normalized_shape == (3 * 64,) and model.final_project.in_features == 3 * 64
    with torch.no_grad():
        assert model.forward_tasks(_batch("titan")).shape == (2, 3, 256)


# --------------------------------------------------------------------------- freezing, checkpointing


def test_frozen_encoder_gets_no_gradients_and_stays_in_eval_mode():
    model = _tiny_model(init_gamma=0.5)
    model.train()
    assert model.interactions.training and model.gene_encoder.training
    assert not any(m.training for m in model.backbone.encoder.modules())
    model.forward_tasks(_batch()).square().sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in model.backbone.parameters())
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")}
    assert trainable and all(p.grad is not None for p in trainable.values())
    for prefix in ("gene_encoder.", "interactions.", "prompt_attention.", "task_weight.", "final_", "gene_pe"):
        grads = [p.grad for n, p in trainable.items() if n.startswith(prefix)]
        assert grads and any(bool(g.abs().sum() > 0) for g in grads), prefix


@pytest.mark.parametrize("encoder", ["gigapath", "titan"])
def test_checkpoint_switch_gives_identical_outputs_and_gradients(encoder):
    model = _tiny_model(encoder, init_gamma=0.5).train()
    batch = _batch(encoder)
    calls = []
    for layer in model.backbone.layers:
        layer.register_forward_pre_hook(lambda *_: calls.append(1))
    results = []
    for switch in (False, True):
        model.checkpoint_encoder = switch
        model.zero_grad()
        calls.clear()
        torch.manual_seed(3)  # same dropout masks in the Gene Mixer and drop paths
        out = model.forward_tasks(batch)
        out.square().sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.detach(), grads, len(calls)))
    (out_plain, grads_plain, calls_plain), (out_ckpt, grads_ckpt, calls_ckpt) = results
    assert calls_plain == 3 and calls_ckpt == 6  # every encoder layer recomputed in the backward pass
    torch.testing.assert_close(out_ckpt, out_plain, rtol=0, atol=0)
    assert grads_ckpt.keys() == grads_plain.keys()
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-6, atol=1e-7, msg=name)
