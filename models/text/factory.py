"""The text encoder a spec names: the offline ``bow`` default, CONCH's text tower, local HF models.

ModalTune (ICCV 2025, Sec. 3.4) embeds each patient's four prompts (:mod:`models.text.prompts`)
with CONCH's text encoder (512-d, L2-normalised; release ``data_utils/make_textemb_conch.py``) and
tries Llama-3-8B-UltraMedical, mean-pooled, as an ablation (Table 8, "w/ MedLlama v3.1"). Every
encoder here maps ``n`` texts to ``float32 [n, E]`` unit vectors:

``bow``      TF-IDF over the cohort's prompt vocabulary (word 1- to 3-grams, scikit-learn) times a
             fixed seeded Gaussian matrix ``[V, 512]``, L2-normalised. Needs no weights; it is an
             offline stand-in for CONCH and is labelled as such wherever its embeddings are used.
``conch``    CONCH's CoCa text tower (mahmoodlab/CONCH ``conch/open_clip_custom``), re-implemented in
             torch and loaded strictly from a local checkpoint, with its byte-level BPE tokenizer
             read from the CONCH ``tokenizer.json`` (no ``transformers`` / ``tokenizers`` needed).
``hf:DIR``   any local ``transformers`` model directory: last hidden state mean-pooled over real
             tokens (the paper's pooling for the MedLlama ablation), L2-normalised.

Nothing is downloaded: weights and tokenizer files are local paths. The interface is in
:mod:`models.text.base`, the encoders in :mod:`models.text.bow`, :mod:`models.text.conch` (with the
tokenizer of :mod:`models.text.tokenizer`) and :mod:`models.text.hf`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from models.text.base import TextEncoder
from models.text.bow import BowEncoder
from models.text.conch import ConchEncoder
from models.text.hf import HFEncoder, hf_cache_name

__all__ = ["ENCODER_SPECS", "build_text_encoder", "encoder_cache_name"]

ENCODER_SPECS = ("bow", "conch", "hf:DIR")


def build_text_encoder(spec: str, *, weights: str | Path | None = None, tokenizer: str | Path | None = None,
                       heads: int | None = None, seed: int = 0, dim: int = 512,
                       device: str | torch.device = "cpu") -> TextEncoder:
    """The encoder named by ``spec``: ``bow``, ``conch`` (needs ``weights``) or ``hf:DIR``."""
    if spec == "bow":
        return BowEncoder(dim=dim, seed=seed)
    if spec == "conch":
        if weights is None:
            raise ValueError("text encoder 'conch' needs a local CONCH checkpoint: --text-weights PATH "
                             "(pytorch_model.bin / conch.pt)")
        return ConchEncoder(weights, tokenizer, heads=heads, device=device)
    if spec.startswith("hf:") and len(spec) > 3:
        return HFEncoder(spec[3:], device=device)
    raise ValueError(f"unknown text encoder {spec!r}; valid: {', '.join(ENCODER_SPECS)}")


def encoder_cache_name(spec: str) -> str:
    """The name under which the encoder ``spec`` caches a cohort's embeddings (``text/<name>.pt``) and
    which a ModalTune's ``text_encoder`` setting names: ``bow``, ``conch``, or ``hf-<directory name>``
    for ``hf:DIR``. An unknown spec is a ValueError listing the valid ones."""
    if spec in ("bow", "conch"):
        return spec
    if spec.startswith("hf:") and len(spec) > 3:
        return hf_cache_name(spec[3:])
    raise ValueError(f"unknown text encoder {spec!r}; valid: {', '.join(ENCODER_SPECS)}")
