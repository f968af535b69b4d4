"""One registry of every model of the benchmark (timm-style ``register_model`` / ``create_model``).

A registered *builder* is a function ``builder(ctx: ModelContext) -> BenchModel``; its registry
entry records what the harness needs to schedule it: the modalities it consumes, the tasks it
supports, its training regime and the row label of the paper's tables. Builders live next to their
model (``baselines/abmil.py`` registers ``abmil``); :mod:`bench.registry` imports every family so the
registry is complete.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from models.base import MODALITIES, REGIMES, TASKS, BenchModel, ModelContext

Builder = Callable[[ModelContext], BenchModel]


@dataclass(frozen=True)
class ModelEntry:
    """A registry record. ``paper_context`` overrides the default paper :class:`ModelContext`."""

    name: str
    builder: Builder
    label: str
    modalities: tuple[str, ...]
    tasks: tuple[str, ...]
    regime: str
    family: str
    description: str = ""
    paper_context: dict[str, Any] = field(default_factory=dict)
    pancancer: bool = False
    source_task: str | None = None

    def build(self, ctx: ModelContext) -> BenchModel:
        return self.builder(ctx)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    *,
    label: str,
    modalities: tuple[str, ...],
    tasks: tuple[str, ...] = ("subtype", "survival"),
    regime: str = "supervised",
    paper_context: dict[str, Any] | None = None,
    pancancer: bool = False,
    source_task: str | None = None,
) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder`` under ``name`` (lower-case, unique).

    ``pancancer`` marks a model trained once on all in-domain sites together and evaluated per site;
    ``source_task`` is the task a ``transfer``-regime model is tuned on before it is deployed.
    """
    if (regime == "transfer") != (source_task is not None):
        raise ValueError(f"{name}: a transfer-regime model needs a source_task, and only it")
    if name != name.lower():
        raise ValueError(f"model names are lower-case: {name!r}")
    bad = [m for m in modalities if m not in MODALITIES]
    if bad:
        raise ValueError(f"{name}: unknown modalities {bad}; valid: {MODALITIES}")
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise ValueError(f"{name}: unknown tasks {bad}; valid: {TASKS}")
    if regime not in REGIMES:
        raise ValueError(f"{name}: unknown regime {regime!r}; valid: {REGIMES}")

    def decorate(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        doc = (builder.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ModelEntry(
            name=name,
            builder=builder,
            label=label,
            modalities=tuple(modalities),
            tasks=tuple(tasks),
            regime=regime,
            family=builder.__module__.rsplit(".", 1)[-1],
            description=doc[0] if doc else "",
            paper_context=dict(paper_context or {}),
            pancancer=pancancer,
            source_task=source_task,
        )
        return builder

    return decorate


def registered() -> dict[str, ModelEntry]:
    """All entries registered so far, by name (import :mod:`bench.registry` for the full set)."""
    return dict(_REGISTRY)
