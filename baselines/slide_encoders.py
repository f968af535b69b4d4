"""Slide foundation models as comparison rows: linear-probed, tuned, and late-fused with RNA.

Table 2 / Table 9 of ModalTune (ICCV 2025) compare against Prov-GigaPath's slide encoder (and TITAN
in the supplement) used three ways:

- ``*_lp``: the frozen encoder's slide embedding, linear-probed (``linear_probe`` regime:
  logistic regression for subtype, Cox PH for survival; one run, no std);
- ``*_tuned``: the encoder fine-tuned end-to-end with a linear task head (``supervised`` regime);
- ``*_cat`` / ``*_kp``: the tuned encoder's embedding fused with the Gene Mixer embedding by the
  same concatenation / Kronecker heads as ABMIL and TransMIL (:mod:`baselines.fusion`).

A patient with several slides is one token sequence: all its tiles, with each further slide's
coordinates shifted past the previous ones (:mod:`bench.data.features`), as ModalTune's code feeds
the encoder. The encoders come from :func:`models.slide_encoders.build_slide_encoder`, the factory
ModalTune's backbones use too (same configuration, feature-width rule and weight loading). Weights
come from a local checkpoint (``ctx.extra["weights"]``, the CLI's ``--weights``); without one the
encoder is randomly initialised, which the ``tiny``/``small`` profiles use with a shallow, narrow
encoder of the same class.
"""

from __future__ import annotations

import torch
from torch import nn

from baselines.fusion import build_late_fusion
from baselines.genemixer import GENE_MIXER_PAPER_CONTEXT
from models.base import BenchModel, ModelContext
from models.gigapath import GigaPathSlideEncoder
from models.registry import register_model
from models.slide_encoders import build_slide_encoder, slide_encoder_paper_context
from models.titan import TitanSlideEncoder


class SlideEncoderModel(BenchModel):
    """A slide encoder's slide embedding ``[B, E]`` and a linear task head; ``frozen`` stops its gradients.

    Reads ``features [B, N, F]``, ``coords [B, N, 2]`` and ``mask [B, N]`` of the batch.
    """

    modalities = ("wsi",)

    def __init__(self, encoder: nn.Module, n_outputs: int, frozen: bool):
        super().__init__()
        self.encoder = encoder
        self.embed_dim = int(encoder.embed_dim)
        self.head = nn.Linear(self.embed_dim, n_outputs)
        self.frozen = frozen
        if frozen:
            self.encoder.requires_grad_(False)

    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.frozen:
            self.encoder.eval()
        return self.encoder(batch["features"], batch["coords"], batch.get("mask"))


def gigapath_encoder(ctx: ModelContext) -> GigaPathSlideEncoder:
    """Prov-GigaPath's slide encoder for ``ctx`` (paper config, or the profile's narrow one), weights loaded;
    built by :func:`models.slide_encoders.build_slide_encoder`, as ModalTune's backbone is."""
    return build_slide_encoder("gigapath", ctx)


_GIGAPATH_PAPER = slide_encoder_paper_context("gigapath")
_GIGAPATH_FUSION_PAPER = {**_GIGAPATH_PAPER, **GENE_MIXER_PAPER_CONTEXT}


@register_model("gigapath_lp", label="Prov-Gigapath LP", modalities=("wsi",), regime="linear_probe",
                paper_context=_GIGAPATH_PAPER)
def gigapath_lp(ctx: ModelContext) -> SlideEncoderModel:
    """Prov-GigaPath LP: frozen slide encoder (86,330,880 parameters), embedding linear-probed."""
    return SlideEncoderModel(gigapath_encoder(ctx), ctx.n_outputs, frozen=True)


@register_model("gigapath_tuned", label="Prov-Gigapath (Tuned)", modalities=("wsi",), paper_context=_GIGAPATH_PAPER)
def gigapath_tuned(ctx: ModelContext) -> SlideEncoderModel:
    """Prov-Gigapath (Tuned): slide encoder fine-tuned end-to-end with a linear task head."""
    return SlideEncoderModel(gigapath_encoder(ctx), ctx.n_outputs, frozen=False)


def _tuned_gigapath_wsi(ctx: ModelContext) -> SlideEncoderModel:
    return SlideEncoderModel(gigapath_encoder(ctx), ctx.n_outputs, frozen=False)


@register_model("gigapath_cat", label="Prov-Gigapath (cat)", modalities=("wsi", "rna"),
                paper_context=_GIGAPATH_FUSION_PAPER)
def gigapath_cat(ctx: ModelContext) -> BenchModel:
    """Prov-Gigapath (cat): tuned slide embedding concatenated with the Gene Mixer embedding."""
    return build_late_fusion(ctx, _tuned_gigapath_wsi, "cat")


@register_model("gigapath_kp", label="Prov-Gigapath (KP)", modalities=("wsi", "rna"),
                paper_context=_GIGAPATH_FUSION_PAPER)
def gigapath_kp(ctx: ModelContext) -> BenchModel:
    """Prov-Gigapath (KP): tuned slide embedding and Gene Mixer embedding fused by the gated Kronecker head."""
    return build_late_fusion(ctx, _tuned_gigapath_wsi, "kp")


@register_model("gigapath_cat_cls", label="Prov-Gigapath Cls. (cat)", modalities=("wsi", "rna"),
                tasks=("multitask",), regime="transfer", source_task="subtype", paper_context=_GIGAPATH_FUSION_PAPER)
def gigapath_cat_cls(ctx: ModelContext) -> BenchModel:
    """Prov-Gigapath Cls. (cat): Prov-Gigapath (cat) tuned for BRCA subtyping, deployed out of distribution
    (Table 3): its embedding (prediction layer removed) is linear-probed on COADREAD / BLCA."""
    return build_late_fusion(ctx, _tuned_gigapath_wsi, "cat")


@register_model("gigapath_cat_surv", label="Prov-Gigapath Surv. (cat)", modalities=("wsi", "rna"),
                tasks=("multitask",), regime="transfer", source_task="survival", paper_context=_GIGAPATH_FUSION_PAPER)
def gigapath_cat_surv(ctx: ModelContext) -> BenchModel:
    """Prov-Gigapath Surv. (cat): Prov-Gigapath (cat) tuned for BRCA survival, deployed out of distribution
    (Table 3): its embedding (prediction layer removed) is linear-probed on COADREAD / BLCA."""
    return build_late_fusion(ctx, _tuned_gigapath_wsi, "cat")


def titan_encoder(ctx: ModelContext) -> TitanSlideEncoder:
    """TITAN's vision tower for ``ctx``: the paper's reads 768-d CONCH v1.5 tile features (a cohort of other
    features is refused); ``tiny``/``small`` build the profile's narrow tower on the cohort's features. Its
    grid uses the cohort's tile size in level-0 pixels (TITAN's own tiles: 512 px at 20x = 1,024). Built by
    :func:`models.slide_encoders.build_slide_encoder`, as ModalTune TITAN's backbone is."""
    return build_slide_encoder("titan", ctx)


def _tuned_titan_wsi(ctx: ModelContext) -> SlideEncoderModel:
    return SlideEncoderModel(titan_encoder(ctx), ctx.n_outputs, frozen=False)


_TITAN_PAPER = slide_encoder_paper_context("titan")
_TITAN_FUSION_PAPER = {**_TITAN_PAPER, **GENE_MIXER_PAPER_CONTEXT}


@register_model("titan_lp", label="TITAN LP", modalities=("wsi",), regime="linear_probe", paper_context=_TITAN_PAPER)
def titan_lp(ctx: ModelContext) -> SlideEncoderModel:
    """TITAN LP: frozen TITAN vision tower (48,539,904 parameters), slide embedding linear-probed."""
    return SlideEncoderModel(titan_encoder(ctx), ctx.n_outputs, frozen=True)


@register_model("titan_tuned", label="TITAN (Tuned)", modalities=("wsi",), paper_context=_TITAN_PAPER)
def titan_tuned(ctx: ModelContext) -> SlideEncoderModel:
    """TITAN (Tuned): TITAN's vision tower fine-tuned end-to-end with a linear task head."""
    return _tuned_titan_wsi(ctx)


@register_model("titan_cat", label="TITAN (cat)", modalities=("wsi", "rna"), paper_context=_TITAN_FUSION_PAPER)
def titan_cat(ctx: ModelContext) -> BenchModel:
    """TITAN (cat): tuned TITAN slide embedding concatenated with the Gene Mixer embedding."""
    return build_late_fusion(ctx, _tuned_titan_wsi, "cat")


@register_model("titan_kp", label="TITAN (KP)", modalities=("wsi", "rna"), paper_context=_TITAN_FUSION_PAPER)
def titan_kp(ctx: ModelContext) -> BenchModel:
    """TITAN (KP): tuned TITAN slide embedding and Gene Mixer embedding fused by the gated Kronecker head."""
    return build_late_fusion(ctx, _tuned_titan_wsi, "kp")


@register_model("titan_cat_cls", label="TITAN Cls. (cat)", modalities=("wsi", "rna"), tasks=("multitask",),
                regime="transfer", source_task="subtype", paper_context=_TITAN_FUSION_PAPER)
def titan_cat_cls(ctx: ModelContext) -> BenchModel:
    """TITAN Cls. (cat): TITAN (cat) tuned for BRCA subtyping, deployed out of distribution (Table 11) by the
    rule that deploys Prov-Gigapath Cls. (cat): its embedding is linear-probed on COADREAD / BLCA."""
    return build_late_fusion(ctx, _tuned_titan_wsi, "cat")


@register_model("titan_cat_surv", label="TITAN Surv. (cat)", modalities=("wsi", "rna"), tasks=("multitask",),
                regime="transfer", source_task="survival", paper_context=_TITAN_FUSION_PAPER)
def titan_cat_surv(ctx: ModelContext) -> BenchModel:
    """TITAN Surv. (cat): TITAN (cat) tuned for BRCA survival, deployed out of distribution (Table 11) by the
    rule that deploys Prov-Gigapath Surv. (cat): its embedding is linear-probed on COADREAD / BLCA."""
    return build_late_fusion(ctx, _tuned_titan_wsi, "cat")
