"""A HF ``tokenizer.json`` byte-level BPE tokenizer in pure Python (CONCH's tokenizer kind).

CONCH's text tower (:mod:`models.text.conch`) reads its tokenizer from the CONCH ``tokenizer.json``
with this class, so neither ``transformers`` nor ``tokenizers`` is needed.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

__all__ = ["ByteLevelBPETokenizer"]


def _bytes_to_unicode() -> dict[int, str]:
    """Byte-level BPE's reversible byte -> printable character table (GPT-2 / HF ``ByteLevel``).

    Printable Latin-1 bytes map to themselves; the remaining 68 bytes map, in byte order, to the
    code points 256, 257, ...
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = (b for b in range(256) if b not in table)
    table.update((b, chr(256 + i)) for i, b in enumerate(extra))
    return dict(sorted(table.items()))


def _category_class(prefixes: str) -> str:
    """A regex character-class body matching every code point whose Unicode category starts with one of ``prefixes``."""
    ranges: list[tuple[int, int]] = []
    start = None
    for code in range(0x110000 + 1):
        inside = code < 0x110000 and unicodedata.category(chr(code))[0] in prefixes
        if inside and start is None:
            start = code
        elif not inside and start is not None:
            ranges.append((start, code - 1))
            start = None
    return "".join(f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in ranges)


@lru_cache(maxsize=1)
def _byte_level_split() -> re.Pattern[str]:
    """HF ``ByteLevel(use_regex=True)``'s pre-tokenising pattern with exact ``\\p{L}`` / ``\\p{N}`` classes."""
    letters, numbers = _category_class("L"), _category_class("N")
    return re.compile(
        rf"'s|'t|'re|'ve|'m|'ll|'d| ?[{letters}]+| ?[{numbers}]+| ?[^\s{letters}{numbers}]+|\s+(?!\S)|\s+"
    )


_NORMALIZERS = {
    "NFD": lambda s: unicodedata.normalize("NFD", s),
    "NFKD": lambda s: unicodedata.normalize("NFKD", s),
    "NFC": lambda s: unicodedata.normalize("NFC", s),
    "NFKC": lambda s: unicodedata.normalize("NFKC", s),
    "Lowercase": str.lower,
    "StripAccents": lambda s: "".join(c for c in s if unicodedata.category(c) != "Mn"),
}


class ByteLevelBPETokenizer:
    """A HF ``tokenizer.json`` byte-level BPE tokenizer (the CONCH tokenizer's kind) in pure Python.

    Pipeline, as the ``tokenizers`` library runs it: added (special) tokens are split out of the raw
    text; the rest is normalised (CONCH: NFD, strip accents, lowercase), a space is prefixed when
    ``add_prefix_space`` is set, the text is split with the GPT-2 pattern, each piece's UTF-8 bytes
    are mapped to printable characters and merged by BPE rank; the ``TemplateProcessing``
    post-processor then wraps the ids (CONCH: ``<start_of_text> ... <end_of_text>``). Supports
    exactly the components CONCH's file uses and rejects others with the component's name. Without
    an unknown token (CONCH has none) a symbol missing from the vocabulary is dropped, as in
    ``tokenizers``; byte-level vocabularies hold all 256 byte symbols, so none is.
    """

    def __init__(self, spec: Mapping[str, Any], pad_token: str = "<pad>"):
        model = spec.get("model") or {}
        if model.get("type") != "BPE" or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
            raise ValueError("only plain byte-level BPE tokenizers are supported "
                             "(model.type 'BPE', no subword affixes)")
        pre = spec.get("pre_tokenizer") or {}
        if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True):
            raise ValueError(f"only the ByteLevel pre-tokenizer with use_regex is supported, got {pre.get('type')!r}")
        self.add_prefix_space = bool(pre.get("add_prefix_space", True))
        self.vocab: dict[str, int] = dict(model["vocab"])
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.added = {tok["content"]: int(tok["id"]) for tok in spec.get("added_tokens") or []}
        self._normalizers = self._parse_normalizer(spec.get("normalizer"))
        self.prefix_ids, self.suffix_ids = self._parse_template(spec.get("post_processor"))
        ids = {**self.vocab, **self.added}
        if pad_token not in ids:
            raise ValueError(f"pad token {pad_token!r} is not in the tokenizer's vocabulary")
        self.pad_id = ids[pad_token]
        self._byte_chars = _bytes_to_unicode()
        self._added_split = (re.compile("(" + "|".join(map(re.escape, sorted(self.added, key=len, reverse=True))) + ")")
                             if self.added else None)
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_file(cls, path: str | Path, pad_token: str = "<pad>") -> ByteLevelBPETokenizer:
        path = Path(path)
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: unreadable tokenizer file ({err})") from err
        try:
            return cls(spec, pad_token=pad_token)
        except (KeyError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from err

    @staticmethod
    def _parse_normalizer(spec: Mapping[str, Any] | None) -> list:
        if not spec:
            return []
        steps = spec["normalizers"] if spec.get("type") == "Sequence" else [spec]
        unknown = [s.get("type") for s in steps if s.get("type") not in _NORMALIZERS]
        if unknown:
            raise ValueError(f"unsupported normalizers {unknown}; supported: {sorted(_NORMALIZERS)}")
        return [_NORMALIZERS[s["type"]] for s in steps]

    def _parse_template(self, spec: Mapping[str, Any] | None) -> tuple[list[int], list[int]]:
        if not spec:
            return [], []
        if spec.get("type") != "TemplateProcessing":
            raise ValueError(f"unsupported post-processor {spec.get('type')!r}; expected TemplateProcessing")
        specials = spec.get("special_tokens") or {}
        prefix: list[int] = []
        suffix: list[int] = []
        seen_sequence = False
        for piece in spec["single"]:
            if "Sequence" in piece:
                seen_sequence = True
            else:
                (suffix if seen_sequence else prefix).extend(specials[piece["SpecialToken"]["id"]]["ids"])
        return prefix, suffix

    def _bpe(self, piece: str) -> list[str]:
        """Merge the lowest-ranked adjacent pair (all its occurrences, left to right) until none is mergeable."""
        symbols = list(piece)
        unmergeable = len(self.ranks)
        while len(symbols) > 1:
            first, second = min(zip(symbols, symbols[1:]), key=lambda pair: self.ranks.get(pair, unmergeable))
            if (first, second) not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    def _encode_plain(self, text: str) -> list[int]:
        for normalize in self._normalizers:
            text = normalize(text)
        if self.add_prefix_space and not text.startswith(" "):
            text = " " + text
        ids: list[int] = []
        for piece in _byte_level_split().findall(text):
            cached = self._cache.get(piece)
            if cached is None:
                mapped = "".join(self._byte_chars[b] for b in piece.encode("utf-8"))
                cached = [self.vocab[sym] for sym in self._bpe(mapped) if sym in self.vocab]
                self._cache[piece] = cached
            ids.extend(cached)
        return ids

    def encode(self, text: str) -> list[int]:
        """Content token ids of ``text`` (no template tokens)."""
        if self._added_split is None:
            return self._encode_plain(text)
        ids: list[int] = []
        for part in self._added_split.split(text):
            if part in self.added:
                ids.append(self.added[part])
            elif part:
                ids.extend(self._encode_plain(part))
        return ids

    def batch(self, texts: Sequence[str], max_length: int) -> torch.Tensor:
        """``long [n, max_length]``: template-wrapped ids, truncated then right-padded to ``max_length``.

        Truncation drops content tokens from the end so the wrapped sequence fits (HF
        ``truncation=True, padding='max_length'``).
        """
        room = max_length - len(self.prefix_ids) - len(self.suffix_ids)
        if room < 0:
            raise ValueError(f"max_length {max_length} leaves no room for the template tokens")
        out = torch.full((len(texts), max_length), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.prefix_ids + self.encode(text)[:room] + self.suffix_ids
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out
