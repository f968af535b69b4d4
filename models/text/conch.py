"""CONCH's text encoder: its CoCa text tower re-implemented in torch, the checkpoint loader, ``ConchEncoder``.

ModalTune (ICCV 2025, Sec. 3.4) embeds each patient's four prompts with CONCH's text encoder (512-d,
L2-normalised; release ``data_utils/make_textemb_conch.py``). The tower follows mahmoodlab/CONCH
``conch/open_clip_custom``, is loaded strictly from a local checkpoint and tokenises with the
byte-level BPE tokenizer of :mod:`models.text.tokenizer` read from CONCH's ``tokenizer.json``.
Nothing is downloaded.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoint import load_checkpoint
from models.text.base import TextEncoder
from models.text.tokenizer import ByteLevelBPETokenizer

__all__ = [
    "CONCH_TOKENIZER_NAMES",
    "ConchEncoder",
    "ConchTextConfig",
    "ConchTextTower",
    "find_conch_tokenizer",
    "load_conch_text_tower",
    "read_conch_text_state",
]

log = logging.getLogger(__name__)

CONCH_TOKENIZER_NAMES = ("tokenizer.json", "conch_byte_level_bpe_uncased.json")


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
