"""Harness overhead (``python -m bench perf harness``): ``abmil`` trained for a fixed number of steps
through the harness (Lightning module, trainer, loggers, the data loader's collate) and through a bare
PyTorch loop over the same loader, initialisation, loss, optimiser and learning-rate schedule; both wall
times and their ratio.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import numpy as np
import torch

from bench.perf.measure import peak_rss_mb


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
        # The module's own optimiser and per-step schedule, driven without Lightning.
        optimisation = SupervisedModule(model, "subtype", profile, steps_per_epoch=len(loader)).configure_optimizers()
        opt, scheduler = optimisation["optimizer"], optimisation["lr_scheduler"]["scheduler"]
        model.train()
        done, start = 0, time.perf_counter()
        while done < steps:
            for batch in loader:
                loss = tasks.task_loss(model(batch), batch, "subtype")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                scheduler.step()
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
