"""Pruning a tuning trial from inside its Lightning training loop (``python -m bench tune``).

optuna-integration's :class:`~optuna_integration.PyTorchLightningPruningCallback` (it imports
``lightning.pytorch``, so it works with Lightning 2.x) reports the ``val_metric`` each validation
loop logs and raises :class:`optuna.TrialPruned` when the study's pruner says so. The supervised
loop validates in Lightning's validation loop, which that callback listens to; the distillation loop
(ModalTune) has none (``limit_val_batches=0``): its probes score the validation patients at the end
of each training epoch, so :class:`EpochEndPruning` reports there instead.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import optuna
from optuna_integration import PyTorchLightningPruningCallback

MONITOR = "val_metric"


class EpochEndPruning(PyTorchLightningPruningCallback):
    """The same report and pruning decision, made at the end of each training epoch (after the
    callbacks that log ``val_metric`` there, so it must come after them in the trainer's list)."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)


def pruning_callback(trial: optuna.Trial, regime: str) -> Any:
    """The pruning callback of a trial of a model trained by ``regime``."""
    if regime == "text_distill":
        return EpochEndPruning(trial, monitor=MONITOR)
    return PyTorchLightningPruningCallback(trial, monitor=MONITOR)
