"""Late fusion of a WSI embedding with the Gene Mixer embedding: concatenation (cat) and Kronecker (KP).

ModalTune (ICCV 2025, Sec. 4.2) evaluates "late fusion methods, merging image-only baselines with
MLP-mixers via concatenation [Mobadersany et al.] and Kronecker product [PathomicFusion]". Its
release (martellab-sri/ModalTune) does not contain these baselines; both heads follow the
late-fusion code of the SurvPath / MCAT baselines (mahmoodlab/SurvPath ``models/model_ABMIL.py``,
``model_TMIL.py``; mahmoodlab/MCAT ``models/model_set_mil.py``), whose ``fusion="concat"`` /
``fusion="bilinear"`` branches are the ones whose figures match:

- :class:`ConcatFusion` — SurvPath's ``mm`` for ``concat``: ``[h_wsi, h_rna] -> Linear -> ReLU ->
  Linear -> ReLU`` (197,120 parameters at 256 + 256 -> 256);
- :class:`KroneckerFusion` — PathomicFusion's gated ``BilinearFusion`` (mahmoodlab/PathomicFusion
  ``fusion.py``): each modality passes a gated unit, both gated vectors are extended by a constant
  1 and their outer (Kronecker) product — unimodal terms and all pairwise products — is encoded by
  two ReLU layers. Its defaults are PathomicFusion's ``options.py`` defaults (143,744 parameters);
  the fused models build it as SurvPath instantiates its copy (:class:`LateFusionConfig`).

:class:`LateFusion` wraps any WSI :class:`~models.base.BenchModel` exposing ``forward_features``
and ``embed_dim`` (ABMIL, TransMIL here; the slide encoders later) with a Gene Mixer and one of the
two heads, then a linear task head.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from baselines.abmil import abmil as build_abmil
from baselines.genemixer import GENE_MIXER_PAPER_CONTEXT, gene_mixer_for
from baselines.transmil import transmil as build_transmil
from models.base import BenchModel, ModelContext
from models.names import PROFILES
from models.genemixer import GeneMixer
from models.registry import register_model

__all__ = [
    "ConcatFusion",
    "KroneckerFusion",
    "LateFusion",
    "LateFusionConfig",
    "kronecker_with_ones",
]


def kronecker_with_ones(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Kronecker product of ``[a, 1]`` and ``[b, 1]``: ``[B, d1], [B, d2] -> [B, (d1+1)(d2+1)]``.

    Entry ``i * (d2 + 1) + j`` is ``a_i * b_j`` for ``i < d1, j < d2``; the last column of each row
    block is ``a_i`` and the last row block is ``b_j`` (the unimodal terms), the final entry is 1.
    """
    a1 = F.pad(a, (0, 1), value=1.0)
    b1 = F.pad(b, (0, 1), value=1.0)
    return (a1.unsqueeze(2) * b1.unsqueeze(1)).flatten(start_dim=1)


class ConcatFusion(nn.Module):
    """Concatenation late fusion: ``(h1 [B, d1], h2 [B, d2]) -> [B, hidden]``.

    ``[h1, h2]`` (modality 1 first) -> Linear(d1 + d2, hidden) -> ReLU -> Linear(hidden, hidden)
    -> ReLU, SurvPath's ``mm`` for ``fusion="concat"`` (no dropout there).
    """

    def __init__(self, dim1: int, dim2: int, hidden: int = 256) -> None:
        super().__init__()
        self.in_dims = (dim1, dim2)
        self.out_dim = hidden
        self.mlp = nn.Sequential(nn.Linear(dim1 + dim2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())

    def forward(self, h1: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([h1, h2], dim=-1))


class _GatedUnit(nn.Module):
    """PathomicFusion's gated multimodal unit for one modality.

    ``o = Dropout(ReLU(W_o (sigmoid(z) * ReLU(W_h v_own))))`` with the gate ``z`` computed from both
    modalities ``(v1, v2)``: ``nn.Bilinear(v1, v2)`` or, without bilinear gating, a linear map of
    ``[v1, v2]`` (SurvPath's port). ``[B, in_dim] -> [B, out_dim]``.
    """

    def __init__(self, in_dim: int, dim1: int, dim2: int, out_dim: int, bilinear: bool, dropout: float) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU())
        self.gate = nn.Bilinear(dim1, dim2, out_dim) if bilinear else nn.Linear(dim1 + dim2, out_dim)
        self.out = nn.Sequential(nn.Linear(out_dim, out_dim), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, own: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        z = self.gate(v1, v2) if isinstance(self.gate, nn.Bilinear) else self.gate(torch.cat([v1, v2], dim=-1))
        return self.out(torch.sigmoid(z) * self.hidden(own))


class KroneckerFusion(nn.Module):
    """Gated Kronecker-product (bilinear) fusion, PathomicFusion's ``BilinearFusion``: ``[B, mmhid]``.

    ``(v1 [B, dim1], v2 [B, dim2])`` -> gated units ``o1 [B, gated_dim1]``, ``o2 [B, gated_dim2]``
    -> :func:`kronecker_with_ones` ``[B, (g1+1)(g2+1)]`` -> Dropout -> Linear -> ReLU -> Dropout
    (``mmhid``) -> [``skip``: concatenate ``[o1, 1, o2, 1]``] -> Linear -> ReLU -> Dropout (``mmhid``).

    Defaults are PathomicFusion's ``options.py`` defaults (``dim 32``, ``mmhid 64``, bilinear gates,
    no skip, dropout 0.25): 143,744 parameters. ``gated_dim*`` are ``dim / scale_dim*`` in the
    reference. ``max_init``: Linear layers start as in PathomicFusion's ``init_max_weights``
    (normal with std ``1/sqrt(fan_in)``, zero bias), which its ``BilinearFusion`` applies in its
    constructor; SurvPath's copy of the class (``models/model_utils.py``) drops that call, so its
    layers keep PyTorch's default initialisation (``max_init=False``).
    """

    def __init__(
        self,
        dim1: int = 32,
        dim2: int = 32,
        gated_dim1: int | None = None,
        gated_dim2: int | None = None,
        mmhid: int = 64,
        bilinear_gate: bool = True,
        skip: bool = False,
        dropout: float = 0.25,
        max_init: bool = True,
    ) -> None:
        super().__init__()
        g1 = dim1 if gated_dim1 is None else gated_dim1
        g2 = dim2 if gated_dim2 is None else gated_dim2
        self.in_dims = (dim1, dim2)
        self.gated_dims = (g1, g2)
        self.out_dim = mmhid
        self.skip = skip
        self.unit1 = _GatedUnit(dim1, dim1, dim2, g1, bilinear_gate, dropout)
        self.unit2 = _GatedUnit(dim2, dim1, dim2, g2, bilinear_gate, dropout)
        self.post_fusion_dropout = nn.Dropout(dropout)
        self.encoder1 = nn.Sequential(nn.Linear((g1 + 1) * (g2 + 1), mmhid), nn.ReLU(), nn.Dropout(dropout))
        skip_dim = g1 + g2 + 2 if skip else 0
        self.encoder2 = nn.Sequential(nn.Linear(mmhid + skip_dim, mmhid), nn.ReLU(), nn.Dropout(dropout))
        if max_init:
            self._init_max_weights()

    @torch.no_grad()
    def _init_max_weights(self) -> None:
        """PathomicFusion's ``init_max_weights``: every ``nn.Linear`` (not the bilinear gates) gets
        weights ``N(0, 1/fan_in)`` and zero bias."""
        for module in self.modules():
            if type(module) is nn.Linear:
                module.weight.normal_(0.0, 1.0 / math.sqrt(module.weight.shape[1]))
                module.bias.zero_()

    def gated_embeddings(self, v1: torch.Tensor, v2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two gated vectors ``o1 [B, g1]``, ``o2 [B, g2]`` whose Kronecker product is fused."""
        return self.unit1(v1, v1, v2), self.unit2(v2, v1, v2)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        o1, o2 = self.gated_embeddings(v1, v2)
        out = self.encoder1(self.post_fusion_dropout(kronecker_with_ones(o1, o2)))
        if self.skip:
            out = torch.cat([out, F.pad(o1, (0, 1), value=1.0), F.pad(o2, (0, 1), value=1.0)], dim=-1)
        return self.encoder2(out)


FUSION_KINDS = ("cat", "kp")


@dataclass(frozen=True)
class LateFusionConfig:
    """Widths of the fusion heads (declarative record; :data:`PAPER_LATE_FUSION` is the reference).

    ``hidden``: output width of both heads (SurvPath's ``size[2]`` for cat, ``mmhid`` for KP);
    ``gated_dim``: width of each modality's gated vector in KP (SurvPath: 256 / ``scale_dim`` 8),
    whatever the WSI width (TransMIL's 512 is gated down to 32 as well, i.e. ``scale_dim1`` 16);
    ``bilinear_gate``: gate with ``nn.Bilinear`` (PathomicFusion) or a linear map of ``[v1, v2]``
    (SurvPath's port, the configuration its ``fusion="bilinear"`` baselines instantiate);
    ``max_init``: PathomicFusion's ``init_max_weights`` (False: SurvPath's port, which keeps
    PyTorch's default initialisation).
    """

    hidden: int = 256
    gated_dim: int = 32
    bilinear_gate: bool = False
    dropout: float = 0.25
    max_init: bool = False

    @classmethod
    def for_profile(cls, profile: str) -> LateFusionConfig:
        """Paper widths, or a narrower ``hidden`` for ``small`` (64) / ``tiny`` (32).

        The KP gated vectors keep the reference's width (32) in every profile. Gated down to 8, a
        modality kept only two or three live ReLU units (its embedding is dominated by a component
        shared by all patients, so a unit tends to be on or off for every patient alike) and
        TransMIL (KP) stayed at chance (AUC 0.53) through a tiny-profile fit.
        """
        if profile == "small":
            return cls(hidden=64)
        if profile == "tiny":
            return cls(hidden=32)
        if profile == "paper":
            return PAPER_LATE_FUSION
        raise ValueError(f"unknown profile {profile!r}; valid: {PROFILES}")

    def build(self, kind: str, dim1: int, dim2: int) -> ConcatFusion | KroneckerFusion:
        """The ``cat`` or ``kp`` head fusing a ``dim1`` WSI embedding with a ``dim2`` RNA embedding."""
        if kind == "cat":
            return ConcatFusion(dim1, dim2, hidden=self.hidden)
        if kind == "kp":
            return KroneckerFusion(
                dim1, dim2, gated_dim1=self.gated_dim, gated_dim2=self.gated_dim, mmhid=self.hidden,
                bilinear_gate=self.bilinear_gate, dropout=self.dropout, max_init=self.max_init,
            )
        raise ValueError(f"unknown fusion {kind!r}; valid: {FUSION_KINDS}")


#: SurvPath's late-fusion instantiation: cat ``Linear(512, 256)`` + ``Linear(256, 256)``; KP
#: ``BilinearFusion(dim1=256, dim2=256, scale_dim1=8, scale_dim2=8, mmhid=256)`` (linear gates, no
#: skip, dropout 0.25, PyTorch's default initialisation).
PAPER_LATE_FUSION = LateFusionConfig()


class LateFusion(BenchModel):
    """WSI model + Gene Mixer + fusion head + linear task head.

    ``forward_features(batch) -> [B, fusion.out_dim]`` = ``fusion(wsi.forward_features(batch)
    [B, E_wsi], genes(batch["rna"]) [B, E_rna])`` (WSI first); ``head``: Linear(out_dim, K). The WSI
    model's own task head is replaced by ``nn.Identity`` (it is never used here), so the parameter
    count holds only what the fused model trains.
    """

    modalities = ("wsi", "rna")

    def __init__(self, wsi: BenchModel, genes: GeneMixer, fusion: ConcatFusion | KroneckerFusion, n_outputs: int):
        super().__init__()
        if fusion.in_dims != (wsi.embed_dim, genes.embed_dim):
            raise ValueError(
                f"fusion expects embeddings {fusion.in_dims}, got WSI {wsi.embed_dim} and RNA {genes.embed_dim}"
            )
        wsi.head = nn.Identity()
        self.wsi = wsi
        self.genes = genes
        self.fusion = fusion
        self.embed_dim = fusion.out_dim
        self.head = nn.Linear(self.embed_dim, n_outputs)

    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.fusion(self.wsi.forward_features(batch), self.genes(batch["rna"]))


def build_late_fusion(ctx: ModelContext, wsi_builder: Callable[[ModelContext], BenchModel], kind: str) -> LateFusion:
    """The late-fusion model of ``ctx``: ``wsi_builder(ctx)``, its Gene Mixer and the ``kind`` head."""
    wsi = wsi_builder(ctx)
    genes = gene_mixer_for(ctx)
    fusion = LateFusionConfig.for_profile(ctx.profile).build(kind, wsi.embed_dim, genes.embed_dim)
    return LateFusion(wsi, genes, fusion, ctx.n_outputs)


_PAPER_CONTEXT = {"feature_dim": 1536, **GENE_MIXER_PAPER_CONTEXT}


@register_model("abmil_cat", label="ABMIL (cat)", modalities=("wsi", "rna"), paper_context=_PAPER_CONTEXT)
def abmil_cat(ctx: ModelContext) -> LateFusion:
    """ABMIL (cat): ABMIL embedding concatenated with the Gene Mixer embedding, two ReLU layers, head.

    Profiles: ABMIL keeps its reference widths; the Gene Mixer narrows to 64 / 16 and the fusion
    width to 64 / 32 (``small`` / ``tiny``).
    """
    return build_late_fusion(ctx, build_abmil, "cat")


@register_model("abmil_kp", label="ABMIL (KP)", modalities=("wsi", "rna"), paper_context=_PAPER_CONTEXT)
def abmil_kp(ctx: ModelContext) -> LateFusion:
    """ABMIL (KP): gated Kronecker-product fusion of the ABMIL and Gene Mixer embeddings, then head.

    Profiles: ABMIL keeps its reference widths; the Gene Mixer narrows to 64 / 16 and ``mmhid`` to
    64 / 32 (``small`` / ``tiny``); the gated vectors stay 32 wide.
    """
    return build_late_fusion(ctx, build_abmil, "kp")


@register_model("transmil_cat", label="TransMIL (cat)", modalities=("wsi", "rna"), paper_context=_PAPER_CONTEXT)
def transmil_cat(ctx: ModelContext) -> LateFusion:
    """TransMIL (cat): TransMIL class-token embedding concatenated with the Gene Mixer embedding, head.

    Profiles: TransMIL narrows as its own builder documents; the Gene Mixer narrows to 64 / 16 and
    the fusion width to 64 / 32 (``small`` / ``tiny``).
    """
    return build_late_fusion(ctx, build_transmil, "cat")


@register_model("transmil_kp", label="TransMIL (KP)", modalities=("wsi", "rna"), paper_context=_PAPER_CONTEXT)
def transmil_kp(ctx: ModelContext) -> LateFusion:
    """TransMIL (KP): gated Kronecker-product fusion of the TransMIL and Gene Mixer embeddings, head.

    Profiles: TransMIL narrows as its own builder documents; the Gene Mixer narrows to 64 / 16 and
    ``mmhid`` to 64 / 32 (``small`` / ``tiny``); the gated vectors stay 32 wide.
    """
    return build_late_fusion(ctx, build_transmil, "kp")
