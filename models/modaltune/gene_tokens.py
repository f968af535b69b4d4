"""Learned gene tokens: the "Single Modal" ablation of ModalTune (Table 8, Supplement Sec. 11.1).

The paper replaces "transcriptomics tokens from the genomic encoder with the same number and
dimension of randomly initialized trainable embedding vectors", to test whether the Modal Adapter
helps even without a second modality. :class:`LearnedGeneTokens` stands where the Gene Mixer
stands (``forward_tokens``, ``n_tokens``, ``embed_dim``) and ignores the expression values: every
patient gets the same trainable tokens.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LearnedGeneTokens"]


class LearnedGeneTokens(nn.Module):
    """``n_tokens`` trainable vectors of width ``dim``; ``forward_tokens(rna [B, G]) -> [B, n_tokens, dim]``
    reads only the batch size (and dtype / device) of ``rna``.

    Initialised ``trunc_normal(std 0.02)``, the release's initialisation of ModalTune's other
    learned token tables (the adapter tokens' positions); the paper states only "randomly initialized".
    """

    def __init__(self, n_tokens: int, dim: int) -> None:
        super().__init__()
        if n_tokens < 1 or dim < 1:
            raise ValueError(f"n_tokens and dim must be positive, got {n_tokens} and {dim}")
        self.tokens = nn.Parameter(torch.empty(n_tokens, dim))
        self.n_tokens = n_tokens
        self.embed_dim = dim
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.tokens, std=0.02)

    def forward_tokens(self, rna: torch.Tensor) -> torch.Tensor:
        """The same tokens for each of the ``rna.shape[0]`` patients, ``[B, n_tokens, dim]``."""
        return self.tokens.unsqueeze(0).expand(rna.shape[0], -1, -1)
