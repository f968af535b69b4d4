"""Local ``transformers`` models as text encoders (``hf:DIR``): last hidden state mean-pooled, L2-normalised.

The paper tries Llama-3-8B-UltraMedical, mean-pooled, as an ablation (Table 8, "w/ MedLlama v3.1").
``transformers`` is imported only when such an encoder is built, and loads with
``local_files_only`` (never downloads).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from models.text.base import TextEncoder

__all__ = ["HFEncoder", "mean_pool"]


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
    ``local_files_only`` (never downloads) in the checkpoint's dtype; a causal LM checkpoint
    (``LlamaForCausalLM``) loads as its base model (``LlamaModel``, the LM head unused).

    Pooling: the mean of the final hidden state (after the model's last norm) over every token the
    tokenizer emits for the text, its special tokens included (Llama 3's ``<|begin_of_text|>``), never
    over padding. Batches are padded on the right, whatever the tokenizer's default: a causal model's
    real tokens then keep their positions and never see the padding, so a text embeds the same alone
    or in any batch (left padding would shift its positions). A tokenizer without a pad token pads
    with its end-of-sequence token.
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
        self.tokenizer.padding_side = "right"
        # the checkpoint's own dtype (an 8B model in float32 would need 32 GB); transformers >= 4.56 names it dtype
        version = tuple(int(p) for p in re.findall(r"\d+", transformers.__version__)[:2])
        dtype_arg = "dtype" if version >= (4, 56) else "torch_dtype"
        self.model = transformers.AutoModel.from_pretrained(model_dir, local_files_only=True, **{dtype_arg: "auto"})
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)
        self.name = hf_cache_name(model_dir)
        self.label = f"{model_dir.name} (transformers, mean-pooled, {self.dim}-d)"

    def _embed(self, texts: Sequence[str]) -> torch.Tensor:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(self.device)
        hidden = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        return mean_pool(hidden.float(), enc["attention_mask"])


def hf_cache_name(model_dir: str | Path) -> str:
    """The name an ``hf:DIR`` encoder's embeddings are cached under: ``hf-<directory name>`` (characters
    outside ``[A-Za-z0-9._-]`` replaced by ``_``)."""
    return "hf-" + re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model_dir).resolve().name)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden [B, L, H]`` over the positions where ``attention_mask [B, L]`` is 1 -> ``[B, H]``."""
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
