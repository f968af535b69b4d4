"""ModalTune's configurable parts (models/modaltune): adapter (Modal Adapter / LoRA), gene tokens
(Gene Mixer / learned), task prompts, text projector and text encoder, each chosen by a
``ModalTuneConfig`` field that enters the run id."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bench.config import PROFILES
from bench.errors import BenchError
from bench.registry import get_model, paper_context
from bench.train.distill import DistillModule
from models.base import ModelContext, count_parameters
from models.gigapath import GigaPathConfig, GigaPathSlideEncoder
from models.modaltune import ModalTune, ModalTuneConfig, build_gene_encoder, resolve_config
from models.modaltune.backbones import GigaPathBackbone, TitanBackbone
from models.modaltune.gene_tokens import LearnedGeneTokens
from models.modaltune.lora import LayerLoRA, LowRank, lora_layer_parameters
from models.modaltune.projection import UnprojectedText, build_text_projector
from models.text.projector import TextProjector
from models.titan import TitanConfig, TitanSlideEncoder

N_GENES, N_PATHWAYS, FEATURE_DIM, TEXT_DIM = 24, 6, 32, 24

#: Paper-configuration trainable parameters of the release model (Modal Adapter, Gene Mixer, three
#: task prompts) plus the contract's 1,028-parameter head; the parts' counts are stated against it.
PAPER_TRAINABLE = 33_524_890 + 1_028
MODAL_ADAPTER = 6_836_160 + 1_333_632 + 49_920  # interaction blocks, prompt self-attention, gene_pe
D, LAYERS, TOKENS, OUT, TEXT = 768, 12, 64, 256, 512  # Prov-GigaPath width and depth, Gene Mixer tokens, output, CONCH


def _pathways() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    membership = torch.rand(N_GENES, N_PATHWAYS, generator=generator) < 0.3
    membership[torch.arange(N_PATHWAYS), torch.arange(N_PATHWAYS)] = True
    return membership


def _ctx(**fields) -> ModelContext:
    return ModelContext(n_outputs=3, feature_dim=FEATURE_DIM, n_genes=N_GENES, pathways=_pathways(), profile="tiny",
                        text_dim=TEXT_DIM, **fields)


def _model(encoder: str = "gigapath", depth: int = 2, **overrides) -> ModalTune:
    """Tiny-width ModalTune on a ``depth``-layer encoder with the parts in ``overrides``."""
    torch.manual_seed(0)
    ctx = _ctx()
    config = resolve_config(ctx, encoder, overrides)
    if encoder == "gigapath":
        backbone = GigaPathBackbone(GigaPathSlideEncoder(replace(GigaPathConfig.for_profile("tiny", FEATURE_DIM),
                                                                 depth=depth)))
    else:
        titan = replace(TitanConfig.for_profile("tiny"), depth=depth, feature_dim=FEATURE_DIM)
        backbone = TitanBackbone(TitanSlideEncoder(titan))
    return ModalTune(backbone, build_gene_encoder(ctx, config, backbone.embed_dim), config, 3, text_dim=TEXT_DIM)


def _batch(encoder: str = "gigapath", sizes: tuple[int, ...] = (12, 7), seed: int = 1) -> dict[str, torch.Tensor]:
    """Bags of distinct grid cells, zero-padded with a mask, RNA and four text rows per patient."""
    generator = torch.Generator().manual_seed(seed)
    tile = 256 if encoder == "gigapath" else 1024
    length = max(sizes)
    cells = torch.stack([torch.randperm(64, generator=generator)[:length] for _ in sizes])
    mask = torch.arange(length)[None, :] < torch.tensor(sizes)[:, None]
    return {
        "features": torch.randn(len(sizes), length, FEATURE_DIM, generator=generator) * mask[..., None],
        "coords": torch.stack([cells // 8, cells % 8], dim=-1).float() * tile,
        "mask": mask,
        "rna": torch.randn(len(sizes), N_GENES, generator=generator),
        "text": torch.randn(len(sizes), 4, TEXT_DIM, generator=generator),
        "label": torch.zeros(len(sizes), dtype=torch.long),
    }


def _perturb_lora(model: ModalTune, scale: float = 0.5) -> None:
    """Give every LoRA ``B`` (zero at initialisation) random values, so the updates act."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for module in model.lora.modules():
            if isinstance(module, LowRank):
                module.up.weight.copy_(torch.randn(module.up.weight.shape, generator=generator) * scale)


PARTS = [
    {},
    {"adapter": "lora"},
    {"adapter": "lora", "tasks": ("general",)},
    {"gene_tokens": "learned"},
    {"tasks": ("general",)},
    {"projector": "none"},
    {"projector": "trainable"},
    {"projector": "model_side"},
]


# --------------------------------------------------------------------------- every switch builds and trains


@pytest.mark.parametrize("encoder", ["gigapath", "titan"])
@pytest.mark.parametrize("overrides", PARTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "release")
def test_each_part_runs_forward_and_backward(encoder, overrides):
    """Every trainable parameter of every variant receives a finite gradient; the frozen encoder none."""
    model = _model(encoder, **overrides).train()
    out = model.forward_tasks(_batch(encoder))
    assert out.shape == (2, len(model.task_names), model.embed_dim)
    out.square().sum().backward()
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad and not name.startswith("head")]
    missing = [name for name, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters outside the graph: {missing}"
    assert all(p.grad is None for p in model.backbone.parameters())


def test_registered_builders_take_the_parts_and_refuse_unknown_names():
    ctx = _ctx()
    model = get_model("modaltune").build(ctx, adapter="lora", gene_tokens="learned", projector="model_side")
    assert model.lora is not None and model.interactions is None and model.gene_pe is None
    assert isinstance(model.gene_encoder, LearnedGeneTokens) and model.embed_dim == TEXT_DIM
    titan = get_model("modaltune_titan").build(ctx, adapter="lora")
    assert len(titan.lora) == titan.backbone.depth
    for name in ("modaltune", "modaltune_pancancer", "modaltune_titan"):
        with pytest.raises(ValueError, match=r"adapters?\b.*valid: .*adapter.*gene_tokens.*projector.*text_encoder"):
            get_model(name).build(ctx, adapters="lora")
        with pytest.raises(ValueError, match="valid"):
            get_model(name).resolve(ctx, {"adapters": "lora"})
    for bad, match in [({"adapter": "prefix"}, "adapter"), ({"gene_tokens": "none"}, "gene_tokens"),
                       ({"projector": "linear"}, "projector"), ({"text_encoder": "hf:/models/llama"}, "hf-"),
                       ({"lora_image_rank": 0}, "lora"), ({"lora_dropout": 1.0}, "lora_dropout")]:
        with pytest.raises(ValueError, match=match):
            get_model("modaltune").build(ctx, **bad)


# --------------------------------------------------------------------------- parameter counts (paper configuration)


def _paper_model(name: str = "modaltune", **overrides) -> ModalTune:
    entry = get_model(name)
    ctx = paper_context(entry)
    with torch.device("meta"):
        return entry.build(ctx, **overrides)


def test_default_parameter_counts_unchanged():
    model = _paper_model()
    assert count_parameters(model, trainable_only=True) == PAPER_TRAINABLE
    groups = model.parameter_groups()
    assert groups["lora"] == groups["text_project"] == 0


def test_lora_parameter_count_follows_the_formula():
    """Per layer, for each of q, k and v, each modality's ``r * (d_in + d_out)``:
    ``3 * (4 + 8 + 8) * (768 + 768) = 92,160`` per layer, 1,105,920 over Prov-GigaPath's 12 layers;
    the Modal Adapter (interaction blocks, prompt self-attention, gene positions) is gone."""
    per_layer = 3 * (4 * (D + D) + 8 * (D + D) + 8 * (D + D))
    assert per_layer == lora_layer_parameters(D, 4, 8) == 92_160
    model = _paper_model(adapter="lora")
    groups = model.parameter_groups()
    assert groups["lora"] == LAYERS * per_layer == 1_105_920
    assert groups["interactions"] == groups["prompt_attention"] == groups["gene_pe"] == 0
    assert count_parameters(model, trainable_only=True) == PAPER_TRAINABLE - MODAL_ADAPTER + LAYERS * per_layer
    assert count_parameters(model, trainable_only=True) == 26_412_126
    # One task: no task prompt, hence no task update (and no task_weight).
    single = _paper_model(adapter="lora", tasks=("general",)).parameter_groups()
    assert single["lora"] == LAYERS * 3 * (4 + 8) * (D + D) and single["task_weight"] == 0
    # TITAN: 6 layers of the same width.
    assert _paper_model("modaltune_titan", adapter="lora").parameter_groups()["lora"] == 6 * per_layer


def test_learned_gene_token_count():
    """The Gene Mixer (25,102,170) replaced by 64 tokens x 768."""
    model = _paper_model(gene_tokens="learned")
    assert model.parameter_groups()["gene_encoder"] == TOKENS * D == 49_152
    assert count_parameters(model, trainable_only=True) == PAPER_TRAINABLE - 25_102_170 + TOKENS * D


def test_projector_parameter_counts():
    """frozen / trainable: the projector is no model parameter; model_side adds Linear(256, 512) and a
    512-wide head; none widens final_project to 512."""
    assert count_parameters(_paper_model(projector="trainable"), trainable_only=True) == PAPER_TRAINABLE
    side = _paper_model(projector="model_side")
    assert side.parameter_groups()["text_project"] == OUT * TEXT + TEXT
    head_growth = (TEXT - OUT) * 4
    assert count_parameters(side, trainable_only=True) == PAPER_TRAINABLE + OUT * TEXT + TEXT + head_growth
    none = _paper_model(projector="none")
    assert none.config.output_dim == none.embed_dim == TEXT
    assert count_parameters(none, trainable_only=True) == PAPER_TRAINABLE + (TEXT - OUT) * (D + 1) + head_growth
    projector = build_text_projector(ModalTuneConfig(projector="trainable"), TEXT, OUT, seed=0)
    assert count_parameters(projector, trainable_only=True) == TEXT * OUT + OUT + 2 * OUT + OUT * OUT + OUT


# --------------------------------------------------------------------------- LoRA


def _frozen_tokens(model: ModalTune, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    bag = model.backbone.embed(batch["features"], batch["coords"], batch["mask"])
    tokens = bag.tokens
    for index in range(model.backbone.depth):
        tokens = model.backbone.run_layer(index, tokens, bag.context)
    return tokens


def _lora_tokens(model: ModalTune, batch: dict[str, torch.Tensor], gene: torch.Tensor, task) -> torch.Tensor:
    bag = model.backbone.embed(batch["features"], batch["coords"], batch["mask"])
    tokens = bag.tokens
    for index, lora in enumerate(model.lora):
        tokens = model.backbone.run_lora_layer(index, tokens, bag.context, lora, gene, task)
    return tokens


@pytest.mark.parametrize("encoder", ["gigapath", "titan"])
def test_lora_at_initialisation_is_the_frozen_encoder(encoder):
    """B = 0: every LoRA layer is the frozen layer, bit for bit on unpadded bags; updates act once B moves."""
    model = _model(encoder, depth=3, adapter="lora").eval()
    assert all(torch.count_nonzero(m.up.weight) == 0 for m in model.lora.modules() if isinstance(m, LowRank))
    width = model.backbone.embed_dim
    gene, task = torch.randn(2, 1, width), torch.randn(2, 1, width)
    unpadded = {k: v[:1, :12] if k in ("features", "coords", "mask") else v[:1] for k, v in _batch(encoder).items()}
    with torch.no_grad():
        assert torch.equal(_lora_tokens(model, unpadded, gene[:1], task[:1]), _frozen_tokens(model, unpadded))
        batch = _batch(encoder)
        torch.testing.assert_close(_lora_tokens(model, batch, gene, task), _frozen_tokens(model, batch),
                                   rtol=1e-5, atol=1e-5)
        _perturb_lora(model)
        assert not torch.allclose(_lora_tokens(model, batch, gene, task), _frozen_tokens(model, batch), atol=1e-3)


def test_lora_model_at_initialisation_fuses_the_frozen_cls_token():
    """The model's embedding is final_project(final_norm(frozen CLS + task prompt + mean gene token))."""
    model = _model(depth=3, adapter="lora").eval()
    batch = _batch()
    with torch.no_grad():
        c = model.adapter_tokens(batch["rna"], [0])
        image = _frozen_tokens(model, batch)[:, 0]
        expected = model.final_project(model.final_norm(image + c[:, 0] + c[:, 1:].mean(dim=1)))
        torch.testing.assert_close(model.forward_tasks(batch, [0])[:, 0], expected, rtol=1e-5, atol=1e-5)


def test_lora_update_is_the_release_formula():
    """proj(x) + (s_i B_i A_i x + s_m B_g A_g g + s_m B_t A_t t) / 3 with s = alpha / r (alpha 32: 8 and 4)."""
    torch.manual_seed(0)
    lora = LayerLoRA(16, image_rank=4, multimodal_rank=8, alpha=32.0)
    for module in lora.modules():
        if isinstance(module, LowRank):
            torch.nn.init.normal_(module.up.weight)
    x, gene, task = torch.randn(2, 5, 16), torch.randn(2, 1, 16), torch.randn(2, 1, 16)
    q = lora.q
    assert (q.image.scaling, q.gene.scaling, q.task.scaling) == (8.0, 4.0, 4.0)
    expected = (8 * x @ q.image.down.weight.T @ q.image.up.weight.T
                + 4 * gene @ q.gene.down.weight.T @ q.gene.up.weight.T
                + 4 * task @ q.task.down.weight.T @ q.task.up.weight.T) / 3
    dq, dk, dv = lora(x, gene, task)
    torch.testing.assert_close(dq, expected)
    assert dq.shape == dk.shape == dv.shape == (2, 5, 16) and not torch.allclose(dq, dk)


def test_lora_routes_rna_and_task_into_the_image_tokens():
    """Once B moves, the image embedding depends on the RNA (gene token) and on the task prompt."""
    model = _model(depth=2, adapter="lora").eval()
    _perturb_lora(model)
    batch = _batch()
    other = {**batch, "rna": batch["rna"] + 1.0}
    images = []

    def spy(tokens, bag):
        images.append(tokens[:, 0].clone())
        return tokens[:, 0]

    model.backbone.slide_embedding = spy
    with torch.no_grad():
        model.forward_tasks(batch, [0])
        model.forward_tasks(other, [0])
        model.forward_tasks(batch, [1])
    assert not torch.allclose(images[0], images[1], atol=1e-4)
    assert not torch.allclose(images[0], images[2], atol=1e-4)


# --------------------------------------------------------------------------- learned gene tokens


def test_learned_gene_tokens_ignore_rna():
    learned = _model(gene_tokens="learned").eval()
    mixer = _model().eval()
    batch = _batch()
    other = {**batch, "rna": torch.randn_like(batch["rna"]) * 3}
    with torch.no_grad():
        assert torch.equal(learned.forward_tasks(batch), learned.forward_tasks(other))
        assert not torch.allclose(mixer.forward_tasks(batch), mixer.forward_tasks(other), atol=1e-4)
    assert learned.gene_encoder.n_tokens == mixer.gene_encoder.n_tokens
    assert learned.gene_encoder.tokens.shape == (mixer.gene_encoder.n_tokens, learned.backbone.embed_dim)
    assert 0.005 < float(learned.gene_encoder.tokens.detach().std()) < 0.05


def test_learned_gene_tokens_need_no_pathways():
    ctx = replace(_ctx(), pathways=None)
    assert isinstance(get_model("modaltune").build(ctx, gene_tokens="learned").gene_encoder, LearnedGeneTokens)
    with pytest.raises(ValueError, match="pathways"):
        get_model("modaltune").build(ctx)


# --------------------------------------------------------------------------- projector


def test_projector_none_resolves_the_output_width_from_the_text():
    model = _model(projector="none")
    assert model.config.output_dim == model.embed_dim == TEXT_DIM
    assert model.forward_features(_batch()).shape == (2, TEXT_DIM)
    assert isinstance(build_text_projector(model.config, TEXT_DIM, model.embed_dim, seed=0), UnprojectedText)
    with pytest.raises(ValueError, match="output_dim"):
        resolve_config(_ctx(), "gigapath", {"projector": "none", "output_dim": 16})
    assert resolve_config(_ctx(), "gigapath", {"projector": "none", "output_dim": TEXT_DIM}).output_dim == TEXT_DIM
    with pytest.raises(ValueError, match="unprojected"):
        build_text_projector(model.config, 2 * TEXT_DIM, model.embed_dim, seed=0)


def test_model_side_projector_ends_the_model_in_the_text_width():
    model = _model(projector="model_side")
    assert model.config.output_dim == 256 and model.embed_dim == TEXT_DIM
    assert model.forward_tasks(_batch()).shape == (2, 3, TEXT_DIM)
    assert model.head.in_features == TEXT_DIM
    assert isinstance(build_text_projector(model.config, TEXT_DIM, model.embed_dim, seed=0), UnprojectedText)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
@pytest.mark.parametrize("choice", ["frozen", "trainable"])
def test_projector_trains_only_when_asked(choice):
    """One optimiser step through DistillModule moves a trainable projector and never a frozen one."""
    model = _model(projector=choice)
    projector = build_text_projector(model.config, TEXT_DIM, model.embed_dim, seed=3)
    assert isinstance(projector, TextProjector)
    reference = TextProjector(TEXT_DIM, model.embed_dim, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(projector.parameters(), reference.parameters(), strict=True))
    module = DistillModule(model, projector, PROFILES["tiny"].distill)
    optimizer = module.configure_optimizers()["optimizer"]
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    before = [p.detach().clone() for p in projector.parameters()]
    model_before = model.final_project.weight.detach().clone()
    loss = module.training_step(_batch(), 0)
    loss.backward()
    optimizer.step()
    moved = [not torch.equal(a, p) for a, p in zip(before, projector.parameters(), strict=True)]
    assert not torch.equal(model_before, model.final_project.weight)
    if choice == "trainable":
        assert all(moved) and all(id(p) in in_optimizer for p in projector.parameters())
    else:
        assert not any(moved) and not any(id(p) in in_optimizer for p in projector.parameters())


# --------------------------------------------------------------------------- run identity


def test_every_part_changes_the_resolved_configuration():
    """Each part enters the registry's resolved configuration, hence the run id."""
    ctx = _ctx()
    choices = PARTS + [{"text_encoder": "conch"}, {"adapter": "lora", "lora_image_rank": 2}]
    resolved = [get_model("modaltune").resolve(ctx, overrides)["config"] for overrides in choices]
    for a, b in itertools.combinations(range(len(resolved)), 2):
        assert resolved[a] != resolved[b], (choices[a], choices[b])
    default = resolved[0]
    assert (default["adapter"], default["gene_tokens"], default["projector"], default["text_encoder"]) == (
        "modal_adapter", "transcriptomics", "frozen", "bow")
    assert default["tasks"] == ["general", "diagnosis", "survival"]
    assert resolved[PARTS.index({"projector": "none"})]["output_dim"] == TEXT_DIM


# --------------------------------------------------------------------------- through the text_distill regime


def _plan(cohort_dir: Path, **overrides):
    from bench.runner import RunRequest, plan_run

    plan = plan_run(RunRequest(model="modaltune", site="rcc", profile="tiny", cohort=cohort_dir, overrides=overrides))
    one_epoch = plan.profile.model_copy(update={"distill": plan.profile.distill.model_copy(update={"epochs": 1})})
    return replace(plan, profile=one_epoch)


@pytest.mark.parametrize(("overrides", "text_rows", "width"), [
    ({"tasks": ("general",)}, [0], 256),  # Single Task Prompt: one embedding, distilled towards text row 0
    ({"adapter": "lora", "projector": "none"}, [0, 1, 3], 512),  # unprojected: the model emits the bow width
], ids=["single_task", "lora_unprojected"])
def test_parts_run_end_to_end(overrides, text_rows, width, rcc_cohort: Path, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch):
    """Through the text_distill regime: the text rows follow ``model.text_rows``, the model is built
    for the cached text width, and both probed tasks are stored."""
    import bench.train.distill as distill
    from bench.regimes.base import RunEnv
    from bench.regimes.text_distill import TextDistill

    seen = []
    original = distill.distillation_loss

    def spy(z, y, *args):
        seen.append((tuple(z.shape), tuple(y.shape)))
        return original(z, y, *args)

    rows = []
    step = distill.DistillModule.training_step

    def record_rows(self, batch, batch_idx):
        rows.append(list(self.text_rows))
        return step(self, batch, batch_idx)

    monkeypatch.setattr(distill, "distillation_loss", spy)
    monkeypatch.setattr(distill.DistillModule, "training_step", record_rows)
    evaluations = TextDistill().run(_plan(rcc_cohort, **overrides), RunEnv(run_dir=tmp_path, loggers=[]))
    assert seen and all(z[1:] == (len(text_rows), width) and y == z for z, y in seen)
    assert rows and all(r == text_rows for r in rows)
    assert {(e.site, e.task) for e in evaluations} == {("RCC", "subtype"), ("RCC", "survival")}
    assert all("test_balanced_accuracy" in e.metrics or "test_c_index" in e.metrics for e in evaluations)


def test_regime_reads_the_models_text_encoder(rcc_copy: Path):
    """The text embeddings come from the model's text_encoder; a missing non-bow cache is a clear error."""
    from bench.regimes.text_distill import TextDistill, text_encoder

    assert text_encoder(_plan(rcc_copy)) == "bow"
    plan = _plan(rcc_copy, text_encoder="conch")
    assert text_encoder(plan) == "conch"
    with pytest.raises(BenchError, match=r"no cached 'conch' text embeddings.*text embed"):
        TextDistill().prepare(plan)
