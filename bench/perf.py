"""Performance benchmarks (``python -m bench perf …``) — measured here, never asserted in tests.

``models``: forward+backward time and peak RSS of each model at its paper configuration for one bag
of N = 4,096 patches at D = 1,536 (batch 1), each model in a fresh process.

``harness``: trains ``abmil`` for a fixed number of steps through the harness (Lightning module,
trainer, loggers, data loader and collate of :mod:`bench.data.dataset`) and through a bare PyTorch
loop over the same loader, model initialisation and loss, and reports both wall times and their
ratio (target ≤ 1.10), plus the process's peak RSS.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from typing import Any

import numpy as np
import torch

from models.encoder_perf import in_fresh_process, peak_rss_mb


def _loader(n_bags: int, patches: int, dim: int, batch_size: int) -> torch.utils.data.DataLoader:
    from bench.data.dataset import collate

    rng = np.random.default_rng(0)
    samples = [{
        "features": torch.from_numpy(rng.standard_normal((patches, dim), dtype=np.float32)),
        "coords": torch.zeros(patches, 2), "clinical": torch.zeros(5), "label": int(i % 2),
        "survival_bin": int(i % 4), "event": 1, "survival_months": 1.0, "case_id": f"P{i}", "site": "X",
    } for i in range(n_bags)]
    return torch.utils.data.DataLoader(samples, batch_size=batch_size, shuffle=True, collate_fn=collate,
                                       generator=torch.Generator().manual_seed(0))


def harness(steps: int = 200, patches: int = 512, dim: int = 1536, batch_size: int = 1) -> dict[str, Any]:
    """Wall time of ``steps`` ABMIL training steps: bare loop vs the harness."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from bench.config import get_profile
    from bench.registry import get_model
    from bench.train.supervised import SupervisedModule
    from models import tasks
    from models.base import ModelContext

    profile = get_profile("paper").model_copy(update={"epochs": 1, "batch_size": batch_size})
    entry = get_model("abmil")
    ctx = ModelContext(n_outputs=2, feature_dim=dim, profile="paper")
    loader = _loader(64, patches, dim, batch_size)

    def bare() -> float:
        torch.manual_seed(0)
        model = entry.build(ctx)
        opt = torch.optim.AdamW(model.parameters(), lr=profile.lr, weight_decay=profile.weight_decay)
        model.train()
        done, start = 0, time.perf_counter()
        while done < steps:
            for batch in loader:
                loss = tasks.task_loss(model(batch), batch, "subtype")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                done += 1
                if done == steps:
                    break
        return time.perf_counter() - start

    def through_harness() -> float:
        torch.manual_seed(0)
        module = SupervisedModule(entry.build(ctx), "subtype", profile, steps_per_epoch=len(loader))
        with tempfile.TemporaryDirectory() as tmp:
            trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, max_epochs=-1, limit_val_batches=0,
                                logger=[CSVLogger(tmp, name="perf")], enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                                log_every_n_steps=50, default_root_dir=tmp)
            start = time.perf_counter()
            trainer.fit(module, loader)
            return time.perf_counter() - start

    bare()  # warm-up: allocator and kernels
    bare_s = min(bare(), bare())
    harness_s = min(through_harness(), through_harness())
    return {"benchmark": "harness", "model": "abmil", "steps": steps, "patches": patches, "dim": dim,
            "batch_size": batch_size, "threads": torch.get_num_threads(), "bare_s": round(bare_s, 4),
            "harness_s": round(harness_s, 4), "ratio": round(harness_s / bare_s, 4),
            "peak_rss_mb": round(peak_rss_mb(), 1)}


def _model_step(name: str, patches: int, dim: int, repeats: int) -> dict[str, Any]:
    """Worker (own process, so peak RSS is this model's): forward+backward of one bag, median of ``repeats``."""
    from bench.registry import get_model, paper_context

    torch.manual_seed(0)
    entry = get_model(name)
    ctx = paper_context(entry, n_outputs=4)
    ctx = type(ctx)(**{**ctx.__dict__, "feature_dim": dim})
    batch = {"features": torch.randn(1, patches, dim), "coords": torch.randint(0, 200, (1, patches, 2)).float() * 256,
             "mask": torch.ones(1, patches, dtype=torch.bool), "rna": torch.randn(1, ctx.n_genes),
             "clinical": torch.zeros(1, 5), "label": torch.tensor([1]), "survival_bin": torch.tensor([2]),
             "event": torch.tensor([1]), "survival_months": torch.tensor([10.0])}
    base_rss = peak_rss_mb()
    model = entry.build(ctx).train()
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        model.compute_loss(batch, "survival").backward()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return {"model": name, "params": sum(p.numel() for p in model.parameters()),
            "fwd_bwd_s": round(float(np.median(times[1:])), 4), "peak_rss_mb": round(peak_rss_mb(), 1),
            "peak_rss_over_start_mb": round(peak_rss_mb() - base_rss, 1)}


def models(names: list[str] | None = None, patches: int = 4096, dim: int = 1536, repeats: int = 3) -> dict[str, Any]:
    """Forward+backward time and peak memory of each model at its paper configuration, one bag of ``patches``.

    Default: every supervised Table 2 comparison model that needs no slide foundation model.
    """
    from bench.registry import all_models

    registry = all_models()
    if names is None:
        names = [n for n, e in registry.items() if e.regime == "supervised" and e.family != "slide_encoders"
                 and e.family not in ("modaltune",)]
    runs = []
    for name in names:
        runs.append(in_fresh_process(_model_step, name, patches, dim, repeats))
    return {"benchmark": "models", "patches": patches, "dim": dim, "batch_size": 1, "repeats": repeats,
            "threads": torch.get_num_threads(), "runs": runs}


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


def run(what: str, args: argparse.Namespace) -> dict[str, Any]:
    if what == "harness":
        return harness(steps=args.steps, patches=args.patches or 512, dim=args.dim)
    if what in ("gigapath", "titan"):
        import importlib

        module = importlib.import_module(f"models.{what}_perf")
        kwargs = {"tokens": tuple(args.tokens)} if args.tokens else {}
        if args.layers:
            kwargs["layers"] = args.layers
        return module.benchmark(**kwargs)
    if what == "modaltune":
        return modaltune(patches=args.patches or 4096)
    if what == "models":
        from bench.registry import resolve_models

        return models(resolve_models(args.models) if args.models else None, patches=args.patches or 4096,
                      dim=args.dim)
    raise ValueError(what)


