"""Text encoders behind one interface: the offline ``bow`` default, CONCH's text tower, local HF models.

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

Nothing is downloaded: weights and tokenizer files are local paths.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoint import load_checkpoint
from models.text.prompts import TEXT_TASKS

log = logging.getLogger(__name__)

ENCODER_SPECS = ("bow", "conch", "hf:DIR")
CONCH_TOKENIZER_NAMES = ("tokenizer.json", "conch_byte_level_bpe_uncased.json")


# =============================================================================================== interface
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


# =============================================================================================== bow
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


# =============================================================================================== tokenizer
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


# =============================================================================================== CONCH tower
@dataclass(frozen=True)
class ConchTextConfig:
    """CONCH ``conch_ViT-B-16`` text tower sizes (``text_cfg`` of its model config, ``embed_dim`` 512)."""

    vocab_size: int = 32007
    context_length: int = 128
    width: int = 768
    heads: int = 12
    layers: int = 12
    mlp_width: int = 3072
    output_dim: int = 512
    pad_id: int = 0

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], heads: int | None = None) -> ConchTextConfig:
        """Sizes read off a text-tower state dict.

        ``heads`` is not stored in the weights; it defaults to width / 64 (CONCH's head size).
        """
        try:
            vocab_size, width = state["token_embedding.weight"].shape
            layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("transformer.resblocks."))
            cfg = cls(
                vocab_size=int(vocab_size),
                context_length=int(state["positional_embedding"].shape[0]),
                width=int(width),
                heads=int(heads) if heads is not None else max(1, int(width) // 64),
                layers=layers,
                mlp_width=int(state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
                output_dim=int(state["text_projection"].shape[1]),
            )
        except (KeyError, ValueError) as err:
            raise ValueError(f"not a CONCH text-tower state dict (missing or malformed {err})") from err
        if cfg.width % cfg.heads:
            raise ValueError(f"width {cfg.width} is not divisible by {cfg.heads} heads")
        return cfg


class _SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names, computed by SDPA.

    ``in_proj_weight [3W, W]`` stacks the q, k, v projections; ``out_proj`` is ``[W, W]``.
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """``x [B, L, W]``, ``allowed bool [B, 1, L, L]`` (True = may attend) -> ``[B, L, W]``."""
        b, length, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(b, length, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.out_proj(out.transpose(1, 2).reshape(b, length, width))


class _ResidualBlock(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))`` with a GELU MLP."""

    def __init__(self, width: int, heads: int, mlp_width: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = _SelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, mlp_width)),
            ("gelu", nn.GELU()),
            ("c_proj", nn.Linear(mlp_width, width)),
        ]))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), allowed)
        return x + self.mlp(self.ln_2(x))


class ConchTextTower(nn.Module):
    """CONCH's text encoder: CoCa's causal text transformer with a [CLS] token appended at the end.

    Follows mahmoodlab/CONCH ``conch/open_clip_custom/transformer.py`` (``TextTransformer`` with
    ``embed_cls``) and ``coca_model.py`` (``encode_text``); parameter names equal the checkpoint's
    ``text.*`` keys so its state dict loads strictly. :meth:`forward` takes the tokenizer's ids
    ``[B, C]`` (C <= context_length, CONCH: 128, the last position a placeholder pad), drops the last
    position, embeds the tokens, appends ``cls_emb``, adds positional embeddings, runs the blocks
    under a causal mask and returns ``ln_final(h_cls) @ text_projection`` ``[B, output_dim]``.

    The [CLS] query attends to key 0 and to every key ``j >= 1`` whose token ``j - 1`` is not padding:
    CoCa's ``build_cls_mask`` pads the padding mask on the left (open_clip issue #549), so the [CLS]
    sees the real tokens plus the first pad (or itself when there is none). CONCH was trained that
    way, so it is reproduced, not corrected.
    """

    def __init__(self, cfg: ConchTextConfig = ConchTextConfig()):
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.cls_emb = nn.Parameter(torch.empty(cfg.width))
        self.transformer = nn.ModuleDict({"resblocks": nn.ModuleList(
            _ResidualBlock(cfg.width, cfg.heads, cfg.mlp_width) for _ in range(cfg.layers)
        )})
        self.ln_final = nn.LayerNorm(cfg.width)
        self.text_projection = nn.Parameter(torch.empty(cfg.width, cfg.output_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """CoCa's initialisation (only matters for the random towers tests build)."""
        width, layers = self.cfg.width, self.cfg.layers
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.cls_emb, std=0.01)
        for block in self.transformer["resblocks"]:
            nn.init.normal_(block.attn.in_proj_weight, std=width**-0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=width**-0.5 * (2 * layers) ** -0.5)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=width**-0.5 * (2 * layers) ** -0.5)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def attention_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """``bool [B, 1, L, L]`` for ``tokens [B, L-1]``: causal, with the [CLS] row as described above."""
        b, n = tokens.shape
        allowed = torch.ones(n + 1, n + 1, dtype=torch.bool, device=tokens.device).tril().expand(b, -1, -1).clone()
        allowed[:, -1, 1:] = tokens != self.cfg.pad_id
        return allowed.unsqueeze(1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        tokens = ids[:, :-1]
        length = tokens.shape[1] + 1
        if length > self.cfg.context_length:
            raise ValueError(f"{ids.shape[1]} token positions exceed the context length {self.cfg.context_length}")
        x = self.token_embedding(tokens)
        x = torch.cat([x, self.cls_emb.expand(x.shape[0], 1, -1)], dim=1) + self.positional_embedding[:length]
        allowed = self.attention_mask(tokens)
        for block in self.transformer["resblocks"]:
            x = block(x, allowed)
        return self.ln_final(x[:, -1]) @ self.text_projection


def read_conch_text_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The text-tower state dict in a CONCH checkpoint (full CoCa ``text.*`` keys, or a bare tower).

    Accepts CONCH's ``pytorch_model.bin`` / ``conch.pt`` layout: an optional ``{"state_dict": ...}``
    wrapper and ``module.`` prefixes (DDP) are removed, as CONCH's ``read_state_dict`` does.
    """
    path = Path(path)
    checkpoint = load_checkpoint(path, "CONCH checkpoint (--text-weights)")
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping) or not state:
        raise ValueError(f"{path}: not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("text.") for k in state):
        state = {k.removeprefix("text."): v for k, v in state.items() if k.startswith("text.")}
    return state


def load_conch_text_tower(path: str | Path, heads: int | None = None) -> ConchTextTower:
    """Build a :class:`ConchTextTower` sized from the checkpoint and load its weights strictly."""
    state = read_conch_text_state(path)
    try:
        cfg = ConchTextConfig.from_state_dict(state, heads=heads)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    with torch.device("meta"):
        tower = ConchTextTower(cfg)
    expected = set(tower.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{path}: CONCH text-tower keys do not match "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    tower.load_state_dict(state, strict=True, assign=True)
    return tower.float().eval()


def find_conch_tokenizer(weights: str | Path) -> Path:
    """The tokenizer file next to a CONCH checkpoint (``tokenizer.json`` or CONCH's own file name)."""
    folder = Path(weights).parent
    for name in CONCH_TOKENIZER_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"no CONCH tokenizer next to {weights} (looked for {', '.join(CONCH_TOKENIZER_NAMES)}); copy "
        "conch/open_clip_custom/tokenizers/conch_byte_level_bpe_uncased.json from the CONCH package there "
        "or pass its path"
    )


class ConchEncoder(TextEncoder):
    """CONCH text embeddings ``[n, 512]``, L2-normalised, as the release's ``model.encode_text``.

    Tokenised as CONCH's ``tokenize``: ``<start_of_text> ... <end_of_text>`` truncated and padded to
    ``context_length - 1`` ids, plus one placeholder pad, which the tower replaces by [CLS].
    """

    name = "conch"

    def __init__(self, weights: str | Path, tokenizer: str | Path | None = None, *, heads: int | None = None,
                 device: str | torch.device = "cpu", batch_size: int = 32):
        self.tower = load_conch_text_tower(weights, heads=heads).to(device)
        tokenizer = tokenizer if tokenizer is not None else find_conch_tokenizer(weights)
        self.tokenizer = ByteLevelBPETokenizer.from_file(tokenizer)
        if self.tokenizer.pad_id != self.tower.cfg.pad_id:
            log.warning("tokenizer pads with id %d, not CONCH's %d; the [CLS] mask follows the tokenizer",
                        self.tokenizer.pad_id, self.tower.cfg.pad_id)
            self.tower.cfg = replace(self.tower.cfg, pad_id=self.tokenizer.pad_id)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.dim = self.tower.cfg.output_dim
        self.label = f"CONCH text encoder ({self.dim}-d, {Path(weights).name})"

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """``long [n, context_length]`` in CONCH's layout (the last position a placeholder pad)."""
        ids = self.tokenizer.batch(texts, self.tower.cfg.context_length - 1)
        return F.pad(ids, (0, 1), value=self.tokenizer.pad_id)

    def _embed(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tower(self.tokenize(texts).to(self.device))


# =============================================================================================== HF models
def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError as err:
        raise ImportError(
            "text encoder 'hf:DIR' needs the 'transformers' package, which is not installed; install it "
            "(without upgrading torch) or use --text-encoder bow / conch"
        ) from err
    return transformers


class HFEncoder(TextEncoder):
    """A local ``transformers`` model: last hidden state mean-pooled over real tokens, L2-normalised.

    The paper's MedLlama ablation (Table 8, Supplement Sec. 11.4) mean-pools Llama-3-8B-UltraMedical's
    hidden states into one 4096-d vector. The paper does not say whether it normalised them; they
    are L2-normalised here so every cached encoder shares CONCH's convention. Loads with
    ``local_files_only`` (never downloads) in the checkpoint's dtype; a tokenizer without a pad
    token pads with its end-of-sequence token.
    """

    def __init__(self, model_dir: str | Path, *, device: str | torch.device = "cpu", batch_size: int = 8,
                 max_length: int = 512):
        transformers = _import_transformers()
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"{model_dir}: not a local model directory (hf:DIR)")
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # the checkpoint's own dtype (an 8B model in float32 would need 32 GB); transformers >= 4.56 names it dtype
        version = tuple(int(p) for p in re.findall(r"\d+", transformers.__version__)[:2])
        dtype_arg = "dtype" if version >= (4, 56) else "torch_dtype"
        self.model = transformers.AutoModel.from_pretrained(model_dir, local_files_only=True, **{dtype_arg: "auto"})
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)
        self.name = "hf-" + re.sub(r"[^A-Za-z0-9._-]+", "_", model_dir.resolve().name)
        self.label = f"{model_dir.name} (transformers, mean-pooled, {self.dim}-d)"

    def _embed(self, texts: Sequence[str]) -> torch.Tensor:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(self.device)
        hidden = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        return mean_pool(hidden.float(), enc["attention_mask"])


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden [B, L, H]`` over the positions where ``attention_mask [B, L]`` is 1 -> ``[B, H]``."""
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


# =============================================================================================== factory
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
