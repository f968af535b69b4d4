"""Logging set-up shared by the CLI and the grid's worker processes."""

from __future__ import annotations

import logging


def quiet_libraries() -> None:
    """Keep Lightning's and W&B's chatter (tips, device banners) off stderr; warnings still show."""
    import warnings

    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
    for name in ("lightning", "lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric",
                 "pytorch_lightning", "wandb", "numexpr", "numexpr.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
