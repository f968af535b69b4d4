"""The offline ``bow`` text encoder: TF-IDF over the cohort's prompt vocabulary times a seeded projection.

It needs no weights; it is an offline stand-in for CONCH's text encoder and is labelled as such
wherever its embeddings are used.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from models.text.base import TextEncoder

__all__ = ["BowEncoder"]


class BowEncoder(TextEncoder):
    """TF-IDF bag of word 1-3-grams with a fixed seeded Gaussian projection to ``dim`` (default 512).

    Tokens are ``\\b\\w+\\b`` so single-digit bin edges ("before 8 months") count, and 3-grams keep
    "tumor stage one" apart from "node stage one" (unigrams and bigrams alone cannot tell T1 N2 from
    T2 N1). The projection ``[V, dim]`` is ``N(0, 1/dim)`` from ``numpy.random.default_rng(seed)``
    over scikit-learn's sorted vocabulary, so a cohort and a seed fix the embeddings exactly. A text
    with no known term embeds as the zero vector.
    """

    name = "bow"

    def __init__(self, dim: int = 512, seed: int = 0):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.dim = dim
        self.seed = seed
        self.label = f"TF-IDF bag-of-words + seeded Gaussian projection ({dim}-d, seed {seed}; not CONCH)"
        self._vectorizer = TfidfVectorizer(lowercase=True, token_pattern=r"(?u)\b\w+\b", ngram_range=(1, 3))
        self._projection: np.ndarray | None = None

    def fit(self, texts: Sequence[str]) -> BowEncoder:
        self._vectorizer.fit(list(texts))
        vocab_size = len(self._vectorizer.vocabulary_)
        rng = np.random.default_rng(self.seed)
        self._projection = rng.standard_normal((vocab_size, self.dim)) / np.sqrt(self.dim)
        return self

    @property
    def vocabulary(self) -> list[str]:
        """The fitted n-gram vocabulary, in projection-row order."""
        if self._projection is None:
            raise RuntimeError("the bow encoder is not fitted; call fit(texts) with the cohort's prompts first")
        return list(self._vectorizer.get_feature_names_out())

    def _embed(self, texts: Sequence[str]) -> torch.Tensor:
        if self._projection is None:
            raise RuntimeError("the bow encoder is not fitted; call fit(texts) with the cohort's prompts first")
        tfidf = self._vectorizer.transform(list(texts))
        return torch.from_numpy(np.asarray(tfidf @ self._projection, dtype=np.float32))
