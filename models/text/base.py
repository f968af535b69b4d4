"""The text-encoder interface: ``n`` texts in, ``float32 [n, dim]`` unit vectors out.

Every encoder (:mod:`models.text.bow`, :mod:`models.text.conch`, :mod:`models.text.hf`) implements
``_embed`` on one batch; :meth:`TextEncoder.encode` batches, L2-normalises and moves the result to
the CPU, and :meth:`TextEncoder.encode_prompt_sets` embeds each patient's four prompts
(:mod:`models.text.prompts`) in :data:`TEXT_TASKS` order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from models.text.prompts import TEXT_TASKS

__all__ = ["TextEncoder"]


class TextEncoder(ABC):
    """``encode(texts) -> float32 [n, dim]`` unit vectors; ``name`` keys the cache, ``label`` is for tables."""

    name: str
    label: str
    dim: int
    batch_size: int = 32

    def fit(self, texts: Sequence[str]) -> TextEncoder:
        """Adapt to a cohort's texts (only ``bow`` learns anything: its vocabulary and IDF)."""
        return self

    @abstractmethod
    def _embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Unnormalised embeddings ``[len(texts), dim]`` of one batch."""

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised embeddings ``float32 [n, dim]``, computed ``batch_size`` texts at a time."""
        texts = list(texts)
        if not texts:
            return torch.zeros(0, self.dim)
        chunks = [self._embed(texts[i:i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        return F.normalize(torch.cat(chunks).float().cpu(), dim=-1)

    def encode_prompt_sets(self, prompt_sets: Sequence[Mapping[str, str]]) -> torch.Tensor:
        """``float32 [n, 4, dim]``: each patient's texts in :data:`TEXT_TASKS` order."""
        flat = [prompts[task] for prompts in prompt_sets for task in TEXT_TASKS]
        return self.encode(flat).view(len(prompt_sets), len(TEXT_TASKS), self.dim)
