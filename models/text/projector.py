"""ModalTune's Projector: a frozen, randomly initialised map of text embeddings to the model's output space.

ModalTune (ICCV 2025, Sec. 3.4 and Supplement Sec. 11.5) passes each 512-d CONCH text embedding
through a fixed random Projector to 256-d before the KL-divergence distillation; the release
(martellab-sri/ModalTune ``train_modaltune.py``, ``Projection_layer``) builds it as
``Conv2d(512, 256, 1) -> LayerNorm([256, 1, 1]) -> ReLU -> Conv2d(256, 256, 1)`` on a ``[N, 512, 1, 1]``
view of the embeddings, with PyTorch's default initialisation drawn after the run's
``torch.manual_seed(seed)``, and freezes every parameter. The trainer L2-normalises the output.

Here the same layers, in the same order, are drawn from a private RNG seeded with ``seed``, so two
projectors of one seed are identical whatever the global RNG state, and building one leaves the
global RNG untouched. ``trainable=True`` gives the "Trainable Projector" ablation of Table 8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TextProjector(nn.Module):
    """``[..., in_dim]`` text embeddings -> ``[..., out_dim]`` (L2-normalised unless ``normalize=False``).

    A 1x1 convolution on a ``[N, C, 1, 1]`` tensor is a linear map of the C channels, and
    ``LayerNorm([C, 1, 1])`` normalises over those C channels; the module keeps the release's
    ``Conv2d`` / ``LayerNorm`` parameter shapes and default initialisation so a seed draws the same
    numbers the release draws after ``torch.manual_seed(seed)``.
    """

    def __init__(self, in_dim: int = 512, out_dim: int = 256, seed: int = 0, trainable: bool = False):
        super().__init__()
        self.in_dim, self.out_dim, self.seed = in_dim, out_dim, seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.layers = nn.Sequential(
                nn.Conv2d(in_dim, out_dim, 1),
                nn.LayerNorm([out_dim, 1, 1]),
                nn.ReLU(),
                nn.Conv2d(out_dim, out_dim, 1),
            )
        self.requires_grad_(trainable)

    def forward(self, text: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        lead = text.shape[:-1]
        out = self.layers(text.reshape(-1, self.in_dim, 1, 1)).reshape(*lead, self.out_dim)
        return F.normalize(out, dim=-1) if normalize else out

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}, seed={self.seed}"
