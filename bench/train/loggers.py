"""Lightning loggers of a run: CSV always, W&B (offline by default, so no account is needed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

WANDB_MODES = ("online", "offline", "disabled")


def make_loggers(run_dir: Path, run_id: str, config: dict[str, Any], wandb_mode: str = "offline",
                 name: str | None = None) -> list:
    """``[CSVLogger, WandbLogger?]`` writing under ``run_dir``; ``wandb_mode`` is online/offline/disabled;
    ``name`` is the W&B run name (default ``run_dir``'s name)."""
    from lightning.pytorch.loggers import CSVLogger

    loggers: list = [CSVLogger(save_dir=str(run_dir), name="csv", version="")]
    if wandb_mode not in WANDB_MODES:
        from bench.errors import unknown_name

        raise unknown_name("wandb mode", wandb_mode, list(WANDB_MODES))
    if wandb_mode != "disabled":
        from lightning.pytorch.loggers import WandbLogger

        os.environ.setdefault("WANDB_SILENT", "true")
        loggers.append(WandbLogger(project=os.environ.get("WANDB_PROJECT", "modaltune-bench"),
                                   name=name or run_dir.name, id=run_id, save_dir=str(run_dir),
                                   offline=wandb_mode == "offline", resume="allow"))
    for logger in loggers:
        logger.log_hyperparams(config)
    return loggers


def close_loggers(loggers: list) -> None:
    """Finalise every logger; a W&B run is finished so that the next run of this process starts its own."""
    for logger in loggers:
        logger.finalize("success")
        if type(logger).__name__ == "WandbLogger" and getattr(logger, "_experiment", None) is not None:
            logger.experiment.finish()
