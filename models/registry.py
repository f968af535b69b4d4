"""One registry of every model of the benchmark (timm-style ``register_model`` / ``create_model``).

A registered *builder* is a function ``builder(ctx: ModelContext, **overrides) -> BenchModel``; its
registry entry records what the harness needs to schedule it: the modalities it consumes, the tasks
it supports, its training regime and the row label of the paper's tables. Builders live next to their
model (``baselines/abmil.py`` registers ``abmil``); :mod:`bench.registry` imports every family so the
registry is complete.

A *variant* (every ablation) is a registered name holding a base model and ``overrides``
(:func:`register_variant`): building it builds the base with those keyword arguments, so an ablation
is a line of configuration, never a copy of a model. A builder that takes overrides declares them as
keyword arguments; one that takes none refuses them by name. ``resolve`` gives the configuration
that enters a run id: the overrides, plus the builder's full resolved configuration where the model
registers a ``config`` function (ModalTune), plus the run options its regime reads
(:mod:`models.run_options`: settings of the training or evaluation, never passed to the builder).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from models.base import BenchModel, ModelContext
from models.names import MODALITIES, REGIMES, TASKS
from models.run_options import resolve_run_options
from models.search import Param, SearchSpace, check_space, space_for

Builder = Callable[..., BenchModel]
ConfigFn = Callable[..., Mapping[str, Any]]


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
    base: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    config: ConfigFn | None = None
    beyond_paper: bool = False
    run_options: Mapping[str, Any] = field(default_factory=dict)
    search_space: SearchSpace | None = None

    def build(self, ctx: ModelContext, **overrides: Any) -> BenchModel:
        """The model for ``ctx``: the builder with this entry's overrides, then ``overrides``."""
        return self.builder(ctx, **self.merged_overrides(overrides))

    def merged_overrides(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """This entry's overrides updated by ``overrides``; names the builder does not take are refused."""
        merged = {**self.overrides, **(overrides or {})}
        accepted = accepted_overrides(self.builder)
        unknown = [] if accepted is None else sorted(set(merged) - accepted)
        if unknown:
            valid = sorted(accepted)
            raise ValueError(f"model {self.name} does not take the override(s) {', '.join(unknown)}; "
                             f"it takes {', '.join(valid) if valid else 'none'}")
        return merged

    def merged_run_options(self, run_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every run option this entry's regime reads (:mod:`models.run_options`): the defaults, this
        entry's ``run_options``, then ``run_options``; an option the regime does not read is refused."""
        return resolve_run_options(self.regime, {**self.run_options, **(run_options or {})})

    def resolve(self, ctx: ModelContext, overrides: Mapping[str, Any] | None = None,
                run_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The configuration that identifies this model in a run id (canonical JSON types).

        ``{"base": ..., "overrides": {...}}`` plus ``"config"``: the builder's resolved configuration
        (defaults of the profile with the overrides applied) where the family registers one, and
        ``"run_options"``: :meth:`merged_run_options` where the regime reads any.
        """
        merged = self.merged_overrides(overrides)
        out: dict[str, Any] = {"base": self.base or self.name, "overrides": canonical(merged)}
        if self.config is not None:
            out["config"] = canonical(dict(self.config(ctx, **merged)))
        options = self.merged_run_options(run_options)
        if options:
            out["run_options"] = canonical(options)
        return out

    def tuning_space(self) -> SearchSpace:
        """What ``bench tune`` varies for this model (:mod:`models.search`): the declared space, else
        its regime's default (empty for a frozen encoder's linear probes)."""
        return space_for(self.regime, self.search_space)


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
    config: ConfigFn | None = None,
    search_space: tuple[Param, ...] | None = None,
) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder`` under ``name`` (lower-case, unique).

    ``pancancer`` marks a model trained once on all in-domain sites together and evaluated per site;
    ``source_task`` is the task a ``transfer``-regime model is tuned on before it is deployed;
    ``config(ctx, **overrides)`` returns the builder's resolved configuration (enters the run id);
    ``search_space`` is what ``bench tune`` varies (:mod:`models.search`; default: the regime's), each
    ``model`` parameter an override the builder takes.
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
            config=config,
            search_space=None if search_space is None else check_space(name, search_space,
                                                                       accepted_overrides(builder)),
        )
        return builder

    return decorate


def register_variant(name: str, base: str, *, label: str, overrides: Mapping[str, Any], description: str,
                     beyond_paper: bool = False, run_options: Mapping[str, Any] | None = None,
                     **fields: Any) -> ModelEntry:
    """Register ``name`` as ``base`` built with ``overrides`` (an ablation: one line of configuration).

    ``fields`` replace other entry fields of the base (``regime``, ``tasks``, ``modalities``,
    ``pancancer`` …) where the variant is trained differently; ``beyond_paper`` marks a variant the
    paper does not report. ``run_options`` (:mod:`models.run_options`) change how the regime trains or
    evaluates the model (the probe's preprocessing, the distillation loss), never the model itself.
    The base must be registered first; its builder must take every override and its regime must read
    every run option.
    """
    if name != name.lower():
        raise ValueError(f"model names are lower-case: {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} registered twice")
    if base not in _REGISTRY:
        raise ValueError(f"variant {name}: base model {base!r} is not registered (register it first)")
    parent = _REGISTRY[base]
    entry = replace(parent, name=name, label=label, description=description, base=parent.base or parent.name,
                    overrides={**parent.overrides, **overrides}, beyond_paper=beyond_paper,
                    run_options={**parent.run_options, **(run_options or {})}, **fields)
    entry.merged_overrides()  # refuse an override the builder does not take, at registration
    entry.merged_run_options()  # and a run option its regime does not read, or a bad value
    _check_fields(entry)
    _REGISTRY[name] = entry
    return entry


def _check_fields(entry: ModelEntry) -> None:
    if (entry.regime == "transfer") != (entry.source_task is not None):
        raise ValueError(f"{entry.name}: a transfer-regime model needs a source_task, and only it")
    if entry.regime not in REGIMES:
        raise ValueError(f"{entry.name}: unknown regime {entry.regime!r}; valid: {REGIMES}")
    bad = [t for t in entry.tasks if t not in TASKS] + [m for m in entry.modalities if m not in MODALITIES]
    if bad:
        raise ValueError(f"{entry.name}: unknown tasks or modalities {bad}")


def accepted_overrides(builder: Builder) -> set[str] | None:
    """Keyword arguments ``builder`` takes after its context (its override names); None when it takes
    ``**overrides`` and checks the names itself (against its configuration's fields)."""
    params = list(inspect.signature(builder).parameters.values())[1:]
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def canonical(value: Any) -> Any:
    """``value`` as canonical JSON types (tuples as lists, dataclasses as dicts, sorted keys)."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.loads(json.dumps(value, sort_keys=True, default=_json_default))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    raise TypeError(f"override value {obj!r} of type {type(obj).__name__} is not JSON-representable")


def registered() -> dict[str, ModelEntry]:
    """All entries registered so far, by name (import :mod:`bench.registry` for the full set)."""
    return dict(_REGISTRY)
