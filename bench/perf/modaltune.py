"""ModalTune's cost (``python -m bench perf modaltune``): one training step and one embedding pass at
the paper configuration, with and without activation checkpointing of the frozen slide encoder.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from bench.perf.measure import in_fresh_process, peak_rss_mb


def _modaltune_step(patches: int, checkpoint: bool, encoder: str) -> dict[str, Any]:
    """Worker: one ModalTune training step and one embedding pass at the paper configuration."""
    from bench.registry import get_model, paper_context
    from bench.train.distill import distillation_loss
    from models.text.projector import TextProjector

    torch.manual_seed(0)
    name = "modaltune" if encoder == "gigapath" else "modaltune_titan"
    ctx = paper_context(get_model(name))
    ctx = type(ctx)(**{**ctx.__dict__, "extra": {**ctx.extra, "checkpoint_encoder": checkpoint}})
    start = time.perf_counter()
    model = get_model(name).build(ctx)
    construction_s = time.perf_counter() - start
    tile_px = 256 if encoder == "gigapath" else 1024
    batch = {"features": torch.randn(1, patches, ctx.feature_dim),
             "coords": torch.stack(torch.meshgrid(torch.arange(64), torch.arange(patches // 64 + 1), indexing="ij"),
                                   -1).reshape(-1, 2)[:patches].float().unsqueeze(0) * tile_px,
             "mask": torch.ones(1, patches, dtype=torch.bool), "rna": torch.randn(1, ctx.n_genes),
             "text": torch.randn(1, 4, 512)}
    projector = TextProjector(in_dim=512, out_dim=model.embed_dim, seed=0)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=5e-4)
    model.train()
    base = peak_rss_mb()
    start = time.perf_counter()
    loss = distillation_loss(model.forward_tasks(batch), projector(batch["text"][:, list(model.text_rows)]))
    loss.backward()
    optimizer.step()
    step_s = time.perf_counter() - start
    step_rss = peak_rss_mb()
    frozen_with_grad = sum(p.grad is not None for p in model.parameters() if not p.requires_grad)
    state_params = sum(v.numel() for st in optimizer.state.values() for v in st.values() if torch.is_tensor(v) and v.dim())
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        model.forward_features(batch)
    embed_s = time.perf_counter() - start
    return {"encoder": encoder, "tiles": patches, "checkpoint_encoder": checkpoint,
            "construction_s": round(construction_s, 3), "train_step_s": round(step_s, 3),
            "embed_s": round(embed_s, 3), "peak_rss_mb": round(peak_rss_mb(), 1),
            "train_step_rss_over_start_mb": round(step_rss - base, 1),
            "trainable_params": sum(p.numel() for p in trainable),
            "frozen_params": sum(p.numel() for p in model.parameters() if not p.requires_grad),
            "frozen_params_with_grad": int(frozen_with_grad), "optimizer_state_values": int(state_params)}


def modaltune(patches: int = 4096, encoder: str = "gigapath") -> dict[str, Any]:
    """ModalTune at the paper configuration: a training step and an embedding pass, with and without
    activation checkpointing of the frozen encoder, each in a fresh process (peak RSS per setting)."""
    runs = [in_fresh_process(_modaltune_step, patches, checkpoint, encoder) for checkpoint in (False, True)]
    return {"benchmark": "modaltune", "threads": torch.get_num_threads(), "runs": runs}
