"""The text side of a ModalTune run: which text encoder's embeddings it distils, and through which projector.

ModalTune (ICCV 2025, Sec. 3.4) distils each task's text embedding, mapped by a frozen random
Projector (:class:`models.text.projector.TextProjector`) to the model's output width; Table 8
(Supplement Sec. 11.5) ablates that projector. :attr:`ModalTuneConfig.projector` chooses:

``frozen``      the release: the fixed random projector, drawn from the run seed (never a model parameter).
``trainable``   the same projector, trained with the model (the text_distill trainer puts its
                parameters into the optimiser); the paper reports that this collapses.
``none``        no projector: the text embeddings are distilled as they are, so the model's output
                width is the text width (resolved from the text embeddings, never set twice).
``model_side``  the text as it is, and a trained ``Linear(output_dim, text_width)`` at the end of the
                model (:attr:`ModalTune.text_project`), a model parameter.

:attr:`ModalTuneConfig.text_encoder` names the cohort's cached text embeddings the run reads
(``text/<name>.pt``): ``bow`` (the offline stand-in, built on first use), ``conch`` or ``hf-<model
directory name>``, as ``python -m bench text embed`` writes them.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from models.text.projector import TextProjector

if TYPE_CHECKING:
    from models.modaltune.model import ModalTuneConfig

__all__ = [
    "DEFAULT_TEXT_ENCODER",
    "PROJECTORS",
    "UnprojectedText",
    "build_text_projector",
    "check_text_encoder",
    "projects_text",
]

PROJECTORS = ("frozen", "trainable", "none", "model_side")
#: The text embeddings a text_distill run reads unless its model's configuration names others.
DEFAULT_TEXT_ENCODER = "bow"
_CACHE_NAME = re.compile(r"[A-Za-z0-9._-]+")


def check_text_encoder(name: str) -> str:
    """``name`` if it can name a cohort's text cache (``text/<name>.pt``), else a ValueError saying how."""
    if not isinstance(name, str) or not _CACHE_NAME.fullmatch(name) or name.startswith("."):
        hint = " (an hf:DIR encoder's cache is named hf-<directory name>)" if str(name).startswith("hf:") else ""
        raise ValueError(f"text_encoder names the cohort's cached text embeddings text/<name>.pt: 'bow', "
                         f"'conch' or 'hf-<model directory name>' as `python -m bench text embed` writes them; "
                         f"got {name!r}{hint}")
    return name


def projects_text(projector: str) -> bool:
    """True where a projector maps the text to the model's output width (so that width is free)."""
    return projector in ("frozen", "trainable")


class UnprojectedText(nn.Module):
    """The text embeddings as they are, ``[..., E] -> [..., E]`` (L2-normalised unless ``normalize=False``,
    as :class:`TextProjector`'s output)."""

    def forward(self, text: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return F.normalize(text, dim=-1) if normalize else text


def build_text_projector(config: ModalTuneConfig, text_dim: int, out_dim: int, seed: int) -> nn.Module:
    """The text projector of ``config.projector`` for ``text_dim``-wide text and a model whose task
    embeddings are ``out_dim`` wide; ``seed`` draws the ``frozen`` / ``trainable`` projector.

    ``none`` and ``model_side`` distil the text unprojected, so the model must emit ``text_dim``-wide
    embeddings (ValueError otherwise: the model was built for other text embeddings).
    """
    if config.projector in ("frozen", "trainable"):
        return TextProjector(in_dim=text_dim, out_dim=out_dim, seed=seed, trainable=config.projector == "trainable")
    if config.projector in ("none", "model_side"):
        if out_dim != text_dim:
            raise ValueError(f"projector {config.projector!r} distils the text unprojected, but the model emits "
                             f"{out_dim}-d embeddings and the '{config.text_encoder}' text embeddings are "
                             f"{text_dim}-d; build the model for {text_dim}-d text")
        return UnprojectedText()
    raise ValueError(f"unknown projector {config.projector!r}; expected one of {PROJECTORS}")
