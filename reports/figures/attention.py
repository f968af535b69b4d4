"""ModalTune's attention for one patient, as heatmaps over the tiles' coordinates (the paper's
Fig. 3c, d): image–image, image–transcriptomics and image–task-prompt attention, one row per task
prompt.

Which attention is drawn (all read from one eval-mode forward pass of the patient's whole bag,
one task prompt at a time):

``image–image``
    the slide encoder's last layer: the CLS token's attention over the tiles (Prov-GigaPath reads
    the raw CLS token as the slide embedding), mean over heads. For LongNet's dilated attention
    this is the effective weight of each tile in the CLS output — every branch's softmax
    (zero-padding keys included in its normaliser, as LongNet computes it) mixed with the
    branches' log-sum-exp weights; for TITAN the ALiBi-biased softmax.
``image–transcriptomics``
    the last interaction block's extractor, where the adapter tokens read the tiles: the pathway
    tokens' attention over the tiles, mean over heads and pathway tokens.
``image–task prompt``
    the same extractor: the task prompt token's attention over the tiles, mean over heads.

Scaled-dot-product attention returns no weights, so forward hooks record the inputs of exactly those
layers and the weights are recomputed from their query and key projections; the hooks only read,
so the forward pass (and every output) is unchanged. As a check, each recomputed set of weights is
multiplied back into the layer's values and must reproduce the output the hooked layer produced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from reports.figures.common import new_figure

KINDS = ("image_image", "image_transcriptomics", "image_task")
KIND_TITLES = {"image_image": "image–image\n(last encoder layer: CLS → tiles)",
               "image_transcriptomics": "image–transcriptomics\n(extractor: pathway tokens → tiles)",
               "image_task": "image–task prompt\n(extractor: prompt → tiles)"}
#: Recomputed weights must reproduce the hooked layer's output this closely (relative to its scale).
CHECK_TOLERANCE = 1e-3


@dataclass(frozen=True)
class AttentionMaps:
    """One patient's maps for one task prompt: ``coords [N, 2]`` of the tiles and, per kind, a weight
    per tile ``[N]`` (``image_task`` is None for a model without task prompts)."""

    task: str
    coords: np.ndarray
    image_image: np.ndarray
    image_transcriptomics: np.ndarray
    image_task: np.ndarray | None


class _Recorder:
    """Forward hooks that keep the positional inputs and the output of one module's last call."""

    def __init__(self, module: nn.Module):
        self.args: tuple = ()
        self.output: torch.Tensor | None = None
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.args = tuple(a.detach() if torch.is_tensor(a) else a for a in args)
        self.output = output.detach()

    def remove(self) -> None:
        self._handle.remove()


def compressed_attention_weights(attn: nn.Module, query: torch.Tensor, key: torch.Tensor,
                                 key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The softmax weights ``[B, H, Q, K]`` of a :class:`~models.modaltune.adapter.CompressedAttention`
    call ``attn(query, key, value, key_mask)`` (the same projections and scale as its SDPA)."""
    q = attn._heads(attn.q_proj(attn.q_in(query))).float()
    k = attn._heads(attn.k_proj(key)).float()
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask.bool()[:, None, None, :], -math.inf)
    return scores.softmax(dim=-1)


def _compressed_output(attn: nn.Module, weights: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``attn``'s output from given ``weights``: what its SDPA computes, then its output layers."""
    v = attn._heads(attn.v_proj(value)).float()
    out = (weights @ v).transpose(1, 2).flatten(2)
    return attn.expand(attn.out_proj(out.to(value.dtype)))


def dilated_attention_weights(q: torch.Tensor, k: torch.Tensor, segment_lengths: Sequence[int],
                              dilation_ratios: Sequence[int], queries: Sequence[int] | None = None) -> torch.Tensor:
    """Effective weights ``[B, H, len(queries), L]`` of LongNet's dilated attention
    (:func:`models.longnet.dilated_attention`) for ``q, k [B, L, H, d]``: output row ``i`` of head ``h``
    is ``sum_j W[b, h, i, j] v[b, j, h]``.

    Per branch, a (position, head) row attends over its segment's dilated positions plus zero-padding
    keys (logit 0, value 0: they only enlarge the normaliser); the branches are mixed with
    ``softmax(lse)`` over the branches covering the row. ``queries``: the positions to compute
    (default all; the CLS row alone is ``[0]``).
    """
    from models.longnet import UNCOVERED_LSE, _branch_rows

    batch, length, heads, dim = q.shape
    wanted = torch.arange(length) if queries is None else torch.as_tensor(list(queries), dtype=torch.long)
    slot = torch.full((length,), -1, dtype=torch.long)
    slot[wanted] = torch.arange(len(wanted))
    scale = dim**-0.5
    n_branches = len(segment_lengths)
    lse = torch.full((n_branches, batch, heads, len(wanted)), UNCOVERED_LSE, dtype=torch.float32)
    weights = torch.zeros(n_branches, batch, heads, len(wanted), length, dtype=torch.float32)
    qf, kf = q.detach().float().cpu(), k.detach().float().cpu()
    for branch, (segment, ratio) in enumerate(zip(segment_lengths, dilation_ratios, strict=True)):
        index = _branch_rows(length, heads, segment, ratio, torch.device("cpu"))  # [n, H, m]
        for rows in index:
            for head in range(heads):
                real = rows[head] < length * heads
                keys = rows[head][real] // heads
                rows_here = slot[keys] >= 0
                if not bool(rows_here.any()):
                    continue
                query_pos, query_slot = keys[rows_here], slot[keys[rows_here]]
                scores = torch.einsum("bqd,bkd->bqk", qf[:, query_pos, head], kf[:, keys, head]) * scale
                padding = scores.new_zeros(batch, len(query_pos), int((~real).sum()))
                branch_lse = torch.logsumexp(torch.cat([scores, padding], dim=-1), dim=-1)  # [B, q]
                lse[branch, :, head, query_slot] = branch_lse
                block = weights[branch, :, head]  # [B, Q, L] view
                block[:, query_slot[:, None], keys[None, :]] = torch.exp(scores - branch_lse.unsqueeze(-1))
    mix = torch.softmax(lse, dim=0)  # [n_branches, B, H, Q]
    return (mix.unsqueeze(-1) * weights).sum(dim=0)


def _check(recomputed: torch.Tensor, recorded: torch.Tensor, what: str) -> None:
    """Raise if weights multiplied back into a layer's values do not give the layer's recorded output."""
    recorded = recorded.detach().float()
    error = float((recomputed.detach().float() - recorded).abs().max())
    scale = float(recorded.abs().max()) or 1.0
    if error > CHECK_TOLERANCE * scale:
        raise RuntimeError(f"recomputed {what} attention does not reproduce the layer's output "
                           f"(max error {error:.3g} at scale {scale:.3g}); the model's attention changed")


def _encoder_cls_weights(attn: nn.Module, recorder: _Recorder) -> torch.Tensor:
    """CLS row ``[B, H, T]`` of the last encoder layer's attention (LongNet or TITAN), checked."""
    x = recorder.args[0]
    batch, length, dim = x.shape
    if hasattr(attn, "segment_lengths"):  # LongNet's DilatedAttention
        shape = (batch, length, attn.num_heads, attn.head_dim)
        q, k, v = (proj(x).view(shape) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        weights = dilated_attention_weights(q, k, attn.segment_lengths, attn.dilation_ratios, queries=[0])
        rows = torch.einsum("bhqk,bkhd->bqhd", weights, v.float().cpu()).reshape(batch, 1, dim)
        _check(attn.out_proj(attn.inner_attn_ln(rows.to(x.dtype))), recorder.output[:, :1], "slide-encoder")
        return weights[:, :, 0]
    bias = recorder.args[1]  # TITAN: the ALiBi bias of the bag
    heads = attn.num_heads
    q, k, v = attn.qkv(x).unflatten(-1, (3, heads, dim // heads)).permute(2, 0, 3, 1, 4).float()
    scores = q[:, :, :1] @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias.block(0, 1).float()
    weights = scores.softmax(dim=-1)  # [B, H, 1, T]
    out = attn.proj((weights @ v).transpose(1, 2).reshape(batch, 1, dim).to(x.dtype))
    _check(out, recorder.output[:, :1], "slide-encoder")
    return weights[:, :, 0]


def _require_modal_adapter(model: nn.Module) -> None:
    if getattr(model, "interactions", None) is None:
        raise ValueError("attention maps need ModalTune's Modal Adapter (its extractors); this model has none "
                         "(adapter='lora' or not a ModalTune model)")


@torch.no_grad()
def attention_maps(model: nn.Module, batch: dict, task: int) -> AttentionMaps:
    """The three maps of ``batch``'s one patient (``features [1, N, F]``, ``coords``, ``rna``) for the task
    prompt of index ``task`` (see the module docstring); ``model`` is a ModalTune in eval mode."""
    _require_modal_adapter(model)
    if batch["features"].shape[0] != 1:
        raise ValueError(f"attention maps are drawn for one patient; the batch holds {batch['features'].shape[0]}")
    last_layer = model.backbone.layers[-1]
    encoder_attn = last_layer.self_attn if hasattr(last_layer, "self_attn") else last_layer.attn
    extractor_attn = model.interactions[-1].extractor.attn
    recorders = {"encoder": _Recorder(encoder_attn), "extractor": _Recorder(extractor_attn)}
    try:
        model.forward_tasks(batch, tasks=(task,))
    finally:
        for recorder in recorders.values():
            recorder.remove()
    query, key, value, *rest = recorders["extractor"].args
    key_mask = rest[0] if rest else None
    weights = compressed_attention_weights(extractor_attn, query, key, key_mask)  # [1, H, T, N]
    _check(_compressed_output(extractor_attn, weights, value), recorders["extractor"].output, "extractor")
    cls_row = _encoder_cls_weights(encoder_attn, recorders["encoder"])  # [1, H, 1 + N]
    prompts = int(model.n_prompts)
    mask = batch.get("mask")
    real = slice(None) if mask is None else mask[0].bool().cpu().numpy()
    per_tile = {"image_image": cls_row[0, :, 1:].mean(dim=0),
                "image_transcriptomics": weights[0, :, prompts:].mean(dim=(0, 1)),
                "image_task": weights[0, :, 0].mean(dim=0) if prompts else None}
    out = {k: None if v is None else v.float().cpu().numpy()[real] for k, v in per_tile.items()}
    return AttentionMaps(task=model.task_names[task], coords=batch["coords"][0].cpu().numpy()[real], **out)


def tile_grid(coords: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """``values`` rasterised on the tiles' grid (NaN where there is no tile) and the image extent in
    coordinate units; the tile size is the smallest positive step between distinct x (or y) coordinates."""
    coords = np.asarray(coords, dtype=float)
    steps = [np.diff(np.unique(coords[:, axis])) for axis in (0, 1)]
    positive = np.concatenate([s[s > 0] for s in steps]) if any(len(s) for s in steps) else np.array([])
    step = float(positive.min()) if len(positive) else 1.0
    origin = coords.min(axis=0)
    cells = np.rint((coords - origin) / step).astype(int)
    grid = np.full((cells[:, 1].max() + 1, cells[:, 0].max() + 1), np.nan)
    grid[cells[:, 1], cells[:, 0]] = values
    extent = (origin[0], origin[0] + step * grid.shape[1], origin[1] + step * grid.shape[0], origin[1])
    return grid, extent


def attention_figure(maps: Sequence[AttentionMaps], title: str) -> Figure:
    """Rows: the task prompts of ``maps``; columns: :data:`KINDS`. Each panel is scaled to its own maximum
    (relative attention; the weights' scales differ between kinds)."""
    if not maps:
        raise ValueError("no attention maps to draw")
    fig, axes = new_figure(len(maps), len(KINDS), width=3.0, height=2.8)
    for row, patient in enumerate(maps):
        for column, kind in enumerate(KINDS):
            ax = axes[row][column]
            values = getattr(patient, kind)
            if row == 0:
                ax.set_title(KIND_TITLES[kind], fontsize=8)
            if column == 0:
                ax.set_ylabel(f"task prompt: {patient.task}", fontsize=8)
            if values is None:
                ax.text(0.5, 0.5, "no task prompt in this model", ha="center", va="center", transform=ax.transAxes)
                ax.set_axis_off()
                continue
            peak = float(np.max(values)) or 1.0
            grid, extent = tile_grid(patient.coords, np.asarray(values) / peak)
            image = ax.imshow(grid, extent=extent, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_facecolor("#eeeeee")
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="relative attention")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
