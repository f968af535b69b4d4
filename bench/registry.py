"""The complete model registry: importing this module registers every model family.

Entries come from :mod:`models.registry` (builders register themselves next to their model);
this module imports every family module, resolves names case-insensitively and measures
parameter counts at the paper configuration and at a profile's configuration.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache
from typing import Any

import torch

from bench.errors import unknown_name
from models.base import ModelContext, count_parameters
from models.registry import ModelEntry, registered

_FAMILY_PACKAGES = ("models", "baselines", "ablations")


@lru_cache(maxsize=1)
def _import_families() -> None:
    for package_name in _FAMILY_PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
            if not info.name.rsplit(".", 1)[-1].startswith("_"):
                importlib.import_module(info.name)


def all_models() -> dict[str, ModelEntry]:
    """Every registered model by name, in registration order."""
    _import_families()
    return registered()


def get_model(name: str) -> ModelEntry:
    """The entry of ``name`` (case-insensitive); unknown names raise listing the valid ones."""
    models = all_models()
    entry = models.get(name.lower())
    if entry is None:
        raise unknown_name("model", name, list(models))
    return entry


def create_model(name: str, ctx: ModelContext, **overrides: Any) -> torch.nn.Module:
    """Build the registered model ``name`` for ``ctx`` (timm's ``create_model``): a variant's own
    overrides first, then ``overrides``."""
    return get_model(name).build(ctx, **overrides)


def resolve_models(names: str | list[str] | None) -> list[str]:
    """Validate a comma-separated (or list) selection of model names."""
    if names is None:
        return list(all_models())
    items = names.split(",") if isinstance(names, str) else names
    return [get_model(n.strip()).name for n in items if n.strip()]


def paper_context(entry: ModelEntry, n_outputs: int = 4) -> ModelContext:
    """The paper configuration of ``entry``: defaults of :class:`ModelContext` plus its overrides."""
    overrides: dict[str, Any] = {k: (v() if callable(v) else v) for k, v in entry.paper_context.items()}
    overrides.setdefault("n_outputs", n_outputs)
    overrides["profile"] = "paper"
    return ModelContext(**overrides)


def params_paper(entry: ModelEntry) -> dict[str, int]:
    """``{"all", "trainable"}`` parameter counts at the paper configuration (4 outputs)."""
    ctx = paper_context(entry)  # resolved on the CPU: its lazy facts (pathway memberships) are real data
    with torch.device("meta"):  # meta tensors: no memory, no initialisation cost
        model = entry.build(ctx)
    return {"all": count_parameters(model), "trainable": count_parameters(model, trainable_only=True)}
