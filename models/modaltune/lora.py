"""LoRA in place of the Modal Adapters (Table 8, "ModalTune w/ LoRA"): modality-specific low-rank
updates of the frozen slide encoder's query, key and value projections.

Reference: ModalTune (ICCV 2025) Supplement Sec. 11.1; LoRA (Hu et al., ICLR 2022). The release,
martellab-sri/ModalTune, carries it in its vendored Prov-GigaPath: ``DilatedAttentionLoraAdapter``
(``gigapath/torchscale/component/dilated_attention.py``), ``LongNetLoraAdapterEncoderLayer``
(``torchscale/model/LongNet.py``), switched on by ``lora_adapter`` / ``lora_args`` in
``gigapath/slide_encoder.py``, defaults in ``torchscale/architecture/config.py`` (``lora_alpha`` 32,
``img_lora_dim`` 4, ``mm_lora_dim`` 8, ``lora_dropout`` 0).

In every layer of the encoder, each projection ``W`` of q, k and v (``D -> D``, frozen) becomes::

    proj(x) = W x + b + (s_i B_i A_i x + s_m B_g A_g g + s_m B_t A_t t) / 3

``x [B, L, D]`` are the layer's normalised input tokens (image), ``g [B, 1, D]`` the gene token and
``t [B, 1, D]`` the task token, both normalised by the same frozen pre-attention LayerNorm as ``x``.
``A_i [r_i, D]``, ``B_i [D, r_i]`` with image rank ``r_i = 4``; ``A_g, A_t [r_m, D]``, ``B_g, B_t
[D, r_m]`` with gene / task rank ``r_m = 8``; scaling ``s = alpha / r`` (``alpha`` 32: ``s_i = 8``,
``s_m = 4``); dropout (0) on the inputs of every ``A``. The gene and task updates are one vector
per patient and task, added to the projection of every image token: they steer all the patch
tokens' attention, without joining the sequence as tokens. ``A`` is drawn like ``nn.Linear``'s
default (Kaiming-uniform, ``a = sqrt(5)``) and ``B = 0``, so a freshly built model runs the frozen
encoder exactly.

Parameters per layer: ``3 * (r_i + 2 r_m) * 2D`` (``2D`` = ``d_in + d_out`` of a low-rank pair):
92,160 for ``D = 768``, 1,105,920 over Prov-GigaPath's 12 layers.

Release facts this follows and choices where the release gives none: the update is in every
encoder layer; the release's layer takes one gene and one task vector per patient, but no released
model drives this encoder (``LongNetViT.forward`` never passes them), so here the gene token is the
mean of the gene encoder's tokens and the task token the task prompt, the two vectors ModalTune's
output fusion reads. The release's ``reset_parameters`` iterates attributes it never defines
(``q_proj_dict``), so building its encoder with ``lora_adapter=True`` raises; the initialisation
here is the one that code intends (``A`` Kaiming, ``B`` zero). With a single task no task prompt
exists: the task update is left out and the mean runs over the image and gene updates.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["LayerLoRA", "LowRank", "ModalLoRA", "lora_layer_parameters"]


def lora_layer_parameters(dim: int, image_rank: int, multimodal_rank: int, with_task: bool = True) -> int:
    """Parameters of one layer's :class:`LayerLoRA` on a ``dim``-wide encoder: for q, k and v,
    each modality's ``r * (d_in + d_out)``."""
    ranks = image_rank + multimodal_rank * (2 if with_task else 1)
    return 3 * ranks * (dim + dim)


class LowRank(nn.Module):
    """``x [..., d_in] -> scaling * up(down(x)) [..., d_out]``: ``down: Linear(d_in, r)``, ``up:
    Linear(r, d_out)``, no biases, ``scaling = alpha / r``; ``up`` starts at zero."""

    def __init__(self, in_dim: int, out_dim: int, rank: int, alpha: float) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        self.down = nn.Linear(in_dim, rank, bias=False)
        self.up = nn.Linear(rank, out_dim, bias=False)
        self.scaling = float(alpha) / rank
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """``down`` Kaiming-uniform (``a = sqrt(5)``, ``nn.Linear``'s default), ``up`` zero."""
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x)) * self.scaling


class ModalLoRA(nn.Module):
    """The update of one projection: the mean of the image, gene and (when ``with_task``) task
    low-rank updates, ``(image [B, L, D_out] + gene [B, 1, D_out] + task [B, 1, D_out]) / 3``."""

    def __init__(self, in_dim: int, out_dim: int, image_rank: int, multimodal_rank: int, alpha: float,
                 dropout: float = 0.0, with_task: bool = True) -> None:
        super().__init__()
        self.image = LowRank(in_dim, out_dim, image_rank, alpha)
        self.gene = LowRank(in_dim, out_dim, multimodal_rank, alpha)
        self.task = LowRank(in_dim, out_dim, multimodal_rank, alpha) if with_task else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, gene: torch.Tensor, task: torch.Tensor | None) -> torch.Tensor:
        """``x [B, L, D]``, ``gene [B, 1, D]``, ``task [B, 1, D]`` (or None) -> update ``[B, L, D_out]``."""
        parts = [self.image(self.dropout(x)), self.gene(self.dropout(gene))]
        if self.task is not None:
            if task is None:
                raise ValueError("this LoRA has a task update but no task token was given")
            parts.append(self.task(self.dropout(task)))
        return sum(parts[1:], parts[0]) / len(parts)


class LayerLoRA(nn.Module):
    """The q, k and v updates of one encoder layer (``q``, ``k``, ``v``: :class:`ModalLoRA`).

    ``forward(x, gene, task) -> (dq, dk, dv)``, each ``[B, L, D]``, to be added to the frozen
    projections of ``x`` (the backbone runs the layer: :meth:`SlideBackbone.run_lora_layer`).
    """

    def __init__(self, dim: int, image_rank: int = 4, multimodal_rank: int = 8, alpha: float = 32.0,
                 dropout: float = 0.0, with_task: bool = True) -> None:
        super().__init__()
        self.q, self.k, self.v = (
            ModalLoRA(dim, dim, image_rank, multimodal_rank, alpha, dropout, with_task) for _ in range(3)
        )

    def forward(
        self, x: torch.Tensor, gene: torch.Tensor, task: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.q(x, gene, task), self.k(x, gene, task), self.v(x, gene, task)
