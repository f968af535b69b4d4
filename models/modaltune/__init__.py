"""ModalTune (ICCV 2025): Modal Adapters, Gene Mixer tokens and task prompts on a frozen slide encoder.

Registry entries (all ``text_distill``, modalities ``wsi`` + ``rna``, task ``multitask``):

``modaltune``
    "ModalTune (Ours)": frozen Prov-GigaPath, trained per cancer site.
``modaltune_pancancer``
    "ModalTune Pan-Cancer (Ours)": the same model, registered ``pancancer=True``. The release's
    ``train_modaltune_pancancer.py`` reuses ``train_modaltune.py``'s trainer and model unchanged
    (no site-aware prompts); only the data (all sites pooled) and the probes (one logistic
    regression / Cox model per site, plus a site classifier) differ, which is the harness's business.
``modaltune_titan``
    "ModalTune TITAN" (Table 9): frozen TITAN, token aggregation "cat", stochastic depth 0.2.

The frozen encoder comes from :func:`models.slide_encoders.build_slide_encoder`, the factory of the
other slide-encoder rows too (same configuration, feature-width rule and weight loading):
``ctx.extra["weights"]`` (the CLI's ``--weights``) is a local checkpoint of the frozen encoder,
loaded strictly; without one the encoder is randomly initialised. ``ctx.extra["checkpoint_encoder"]``
switches activation checkpointing of the encoder layers. ``paper`` builds the release configuration
(TITAN on 768-d CONCH v1.5 features only); ``small`` / ``tiny`` use the profile's narrow
encoder (``GigaPathConfig`` / ``TitanConfig.for_profile``) and narrow Gene Mixer
(``GeneMixerConfig.for_profile``, output width = encoder width) with the same classes; see
:meth:`ModalTuneConfig.for_encoder` for the interaction-index mapping of the shallow encoders.

Every entry takes overrides, the fields of :class:`ModalTuneConfig` (an unknown name is a
ValueError listing the valid ones), and registers its resolved configuration (``config=``), so each
part enters the run id: ``adapter`` (Modal Adapter or LoRA), ``gene_tokens`` (Gene Mixer or learned
tokens), ``tasks`` (three task prompts or the general one alone), ``projector`` (frozen, none,
trainable, model-side), ``text_encoder`` (the cohort's cached text embeddings the run distils) and
``clinical`` (a clinical token joins the adapter tokens: "ModalTune w/ Clinical", ``ablations/clinical.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, replace

import torch
from torch import nn

from models.base import ModelContext
from models.clinical import encoded_width
from models.genemixer import GeneMixer, GeneMixerConfig
from models.modaltune.adapter import InteractionBlock, interaction_groups
from models.modaltune.backbones import GigaPathBackbone, SlideBackbone, TitanBackbone
from models.modaltune.gene_tokens import LearnedGeneTokens
from models.modaltune.model import ADAPTERS, GENE_TOKENS, MODALTUNE_TASKS, PAPER_CONFIGS, ModalTune, ModalTuneConfig
from models.modaltune.projection import PROJECTORS, build_text_projector
from models.paper.omics import PAPER_N_GENES, paper_pathways
from models.registry import register_model
from models.slide_encoders import SLIDE_ENCODERS, build_slide_encoder, slide_encoder_paper_context

__all__ = [
    "ADAPTERS",
    "ENCODERS",
    "GENE_TOKENS",
    "MODALTUNE_TASKS",
    "PAPER_CONFIGS",
    "PROJECTORS",
    "InteractionBlock",
    "LearnedGeneTokens",
    "ModalTune",
    "ModalTuneConfig",
    "build_backbone",
    "build_gene_encoder",
    "build_modaltune",
    "build_text_projector",
    "interaction_groups",
    "modaltune_gene_pathways",
    "resolve_config",
]

ENCODERS = SLIDE_ENCODERS


def modaltune_gene_pathways() -> torch.Tensor:
    """The paper's pathway membership ``bool [4987, 331]`` (ModalTune's gene_pathway_processed_v2.csv)."""
    return paper_pathways(PAPER_N_GENES)


_PAPER_GENES = {"n_genes": PAPER_N_GENES, "pathways": modaltune_gene_pathways}
#: Prov-GigaPath tile features are 1536-d; TITAN reads 768-d CONCH v1.5 features on 1,024-px tiles.
GIGAPATH_PAPER_CONTEXT = {**slide_encoder_paper_context("gigapath"), **_PAPER_GENES}
TITAN_PAPER_CONTEXT = {**slide_encoder_paper_context("titan"), **_PAPER_GENES}


def build_backbone(encoder: str, ctx: ModelContext) -> SlideBackbone:
    """The frozen slide encoder of ``ctx`` from :func:`models.slide_encoders.build_slide_encoder` (its
    profile's configuration, ``ctx.feature_dim`` inputs, ``ctx.extra["weights"]`` loaded when given),
    seen as a :class:`SlideBackbone`."""
    backbones = {"gigapath": GigaPathBackbone, "titan": TitanBackbone}
    if encoder not in backbones:
        raise ValueError(f"unknown encoder {encoder!r}; expected one of {ENCODERS}")
    return backbones[encoder](build_slide_encoder(encoder, ctx))


def resolve_config(ctx: ModelContext, encoder: str, overrides: Mapping[str, object]) -> ModalTuneConfig:
    """The :class:`ModalTuneConfig` a build of ``encoder`` for ``ctx`` uses: the release configuration
    at ``ctx.profile``, ``overrides`` applied (unknown names refused), activation checkpointing from
    ``ctx.extra["checkpoint_encoder"]`` unless overridden, the text width from ``ctx.text_dim``."""
    overrides = dict(overrides)
    overrides.setdefault("checkpoint_encoder", bool(ctx.extra.get("checkpoint_encoder", False)))
    return ModalTuneConfig.for_encoder(encoder, ctx.profile, text_dim=ctx.text_dim, **overrides)


def build_gene_encoder(ctx: ModelContext, config: ModalTuneConfig, width: int) -> nn.Module:
    """The Gene Mixer over ``ctx.pathways`` (output width ``width`` = the encoder's), or, with
    ``gene_tokens="learned"``, as many learned tokens of that width (no pathways needed)."""
    mixer_config = replace(GeneMixerConfig.for_profile(ctx.profile), out_dim=width, pool_norm=False)
    if config.gene_tokens == "learned":
        return LearnedGeneTokens(mixer_config.n_tokens, width)
    if ctx.pathways is None:
        raise ValueError("ModalTune tokenises RNA by pathway but the context has no pathways")
    return GeneMixer(ctx.pathways, mixer_config)


def build_modaltune(ctx: ModelContext, encoder: str = "gigapath", **overrides: object) -> ModalTune:
    """ModalTune on ``encoder`` for ``ctx``; ``overrides`` replace :class:`ModalTuneConfig` fields
    (parts and ablations: e.g. ``adapter="lora"``, ``gene_tokens="learned"``, ``projector="none"``,
    ``tasks=("general",)``, ``output_dim=512``, ``clinical=True``: the clinical token reads the
    :func:`models.clinical.encoded_width`-wide clinical vector)."""
    config = resolve_config(ctx, encoder, overrides)
    backbone = build_backbone(encoder, ctx)
    gene_encoder = build_gene_encoder(ctx, config, backbone.embed_dim)
    clinical_dim = encoded_width() if config.clinical else None
    return ModalTune(backbone, gene_encoder, config, ctx.n_outputs, text_dim=ctx.text_dim, clinical_dim=clinical_dim)


def _run_id_config(config: ModalTuneConfig) -> dict[str, object]:
    """``config`` as the dict that enters the run id. ``clinical`` appears only when set: the field came
    after results were stored, and a model without the clinical token is the model those runs trained."""
    fields = asdict(config)
    if not fields["clinical"]:
        del fields["clinical"]
    return fields


def _gigapath_config(ctx: ModelContext, **overrides: object) -> dict[str, object]:
    """The resolved configuration of a Prov-GigaPath ModalTune (enters the run id)."""
    return _run_id_config(resolve_config(ctx, "gigapath", overrides))


def _titan_config(ctx: ModelContext, **overrides: object) -> dict[str, object]:
    """The resolved configuration of a TITAN ModalTune (enters the run id)."""
    return _run_id_config(resolve_config(ctx, "titan", overrides))


_REGISTRATION = {"modalities": ("wsi", "rna"), "tasks": ("multitask",), "regime": "text_distill"}


@register_model("modaltune", label="ModalTune (Ours)", paper_context=GIGAPATH_PAPER_CONTEXT,
                config=_gigapath_config, **_REGISTRATION)
def modaltune(ctx: ModelContext, **overrides: object) -> ModalTune:
    """ModalTune: frozen Prov-GigaPath with Modal Adapters, Gene Mixer tokens and three task prompts.

    Paper configuration: 33,524,890 trainable parameters as released (+ the contract's 1,028-parameter
    head for 4 outputs), 86,330,880 frozen. ``overrides``: :class:`ModalTuneConfig` fields.
    """
    return build_modaltune(ctx, "gigapath", **overrides)


@register_model(
    "modaltune_pancancer",
    label="ModalTune Pan-Cancer (Ours)",
    paper_context=GIGAPATH_PAPER_CONTEXT,
    pancancer=True,
    config=_gigapath_config,
    **_REGISTRATION,
)
def modaltune_pancancer(ctx: ModelContext, **overrides: object) -> ModalTune:
    """ModalTune Pan-Cancer: the ModalTune model trained on all sites pooled (per-site probes)."""
    return build_modaltune(ctx, "gigapath", **overrides)


@register_model("modaltune_titan", label="ModalTune TITAN", paper_context=TITAN_PAPER_CONTEXT,
                config=_titan_config, **_REGISTRATION)
def modaltune_titan(ctx: ModelContext, **overrides: object) -> ModalTune:
    """ModalTune TITAN: frozen TITAN with Modal Adapters, "cat" token aggregation (Table 9).

    Paper configuration: 33,921,178 trainable parameters as released (+ the 1,028-parameter head),
    48,539,904 frozen. ``overrides``: :class:`ModalTuneConfig` fields.
    """
    return build_modaltune(ctx, "titan", **overrides)
