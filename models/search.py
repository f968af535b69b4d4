"""Hyper-parameter search spaces (``python -m bench tune``): what a model's Optuna study may vary.

A search space is a tuple of :class:`Param`. Each parameter goes to one place:

- ``train``: the regime's optimisation settings, which the profile holds (``lr``, ``weight_decay``,
  ``epochs``; for a ``text_distill`` model its distillation settings). A tuned run trains with the
  profile's settings replaced by these values, so they enter its run id with the profile.
- ``model``: an override of the model's builder (``dropout``, widths), so it enters the run id with
  the model's resolved configuration. The builder must take it (checked at registration).

A model declares its space next to its registration (``register_model(..., search_space=...)``);
one that declares none gets its regime's default (:func:`space_for`): the training settings for the
``supervised`` and ``text_distill`` regimes, nothing for ``linear_probe`` (a frozen encoder's probes)
or ``transfer`` (measured only out of distribution).

``epochs`` is declared relative to the profile (``relative=True``: bounds are multiples of the
profile's value, rounded, at least 1), so one declaration fits ``tiny``, ``small`` and ``paper``.

Torch-free, so that the registry and the command line can describe spaces without importing a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

TARGETS = ("train", "model")
KINDS = ("float", "int", "choice")


@dataclass(frozen=True)
class Param:
    """One tuned hyper-parameter: its name, where it goes (:data:`TARGETS`), its kind and its range.

    ``float``: ``low``..``high``, log-uniform with ``log``; ``int``: ``low``..``high`` (``relative``:
    multiples of the profile's value of the same name); ``choice``: one of ``choices``.
    """

    name: str
    target: Literal["train", "model"]
    kind: Literal["float", "int", "choice"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    relative: bool = False
    choices: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"search parameter {self.name}: target must be one of {TARGETS}, got {self.target!r}")
        if self.kind not in KINDS:
            raise ValueError(f"search parameter {self.name}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "choice":
            if not self.choices:
                raise ValueError(f"search parameter {self.name}: a choice needs at least one value")
            return
        if self.low is None or self.high is None or not self.low <= self.high:
            raise ValueError(f"search parameter {self.name}: needs low <= high, got {self.low}..{self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"search parameter {self.name}: a log-uniform range needs low > 0, got {self.low}")
        if self.relative and self.target != "train":
            raise ValueError(f"search parameter {self.name}: only training settings can be relative to the profile")

    def bounds(self, base: float | None = None) -> tuple[float, float]:
        """``(low, high)``; for a ``relative`` parameter, multiples of ``base`` (the profile's value)."""
        if not self.relative:
            return self.low, self.high
        if base is None:
            raise ValueError(f"search parameter {self.name} is relative to the profile's value, which is missing")
        low = max(1, round(self.low * base))
        return low, max(low, round(self.high * base))

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description (``bench models --json``; part of a study's key)."""
        out: dict[str, Any] = {"name": self.name, "target": self.target, "kind": self.kind}
        if self.kind == "choice":
            out["choices"] = list(self.choices)
        else:
            out.update(low=self.low, high=self.high, log=self.log)
            if self.relative:
                out["relative"] = True
        return out

    def text(self) -> str:
        """A short description: ``lr~log[1e-05,0.01]``, ``epochs~int[0.5x,2x]``, ``hidden_dim in {128,256}``."""
        if self.kind == "choice":
            return f"{self.name} in {{{','.join(map(str, self.choices))}}}"
        if self.relative:
            return f"{self.name}~{self.kind}[{self.low:g}x,{self.high:g}x]"
        return f"{self.name}~{'log' if self.log else self.kind}[{self.low:g},{self.high:g}]"


SearchSpace = tuple[Param, ...]


def log_uniform(name: str, low: float, high: float, target: Literal["train", "model"] = "train") -> Param:
    """A float drawn log-uniformly from ``low``..``high`` (learning rates, weight decays)."""
    return Param(name, target, "float", low, high, log=True)


def uniform(name: str, low: float, high: float, target: Literal["train", "model"] = "model") -> Param:
    """A float drawn uniformly from ``low``..``high`` (dropout)."""
    return Param(name, target, "float", low, high)


def choice(name: str, choices: Sequence[Any], target: Literal["train", "model"] = "model") -> Param:
    """One of ``choices`` (model widths)."""
    return Param(name, target, "choice", choices=tuple(choices))


#: The training settings every trained model tunes: SurvPath's scripts sweep lr and weight decay;
#: epochs from half to twice the profile's.
TRAINING_SPACE: SearchSpace = (
    log_uniform("lr", 1e-5, 1e-2),
    log_uniform("weight_decay", 1e-6, 1e-2),
    Param("epochs", "train", "int", 0.5, 2.0, relative=True),
)

#: A regime's default space, for a model that declares none. A ``transfer`` row is measured only where
#: it is deployed (its own site stores no row), so it has no validation objective of its own; a
#: ``linear_probe`` row has no training at all.
REGIME_SPACES: dict[str, SearchSpace] = {
    "supervised": TRAINING_SPACE,
    "text_distill": TRAINING_SPACE,
    "transfer": (),
    "linear_probe": (),
}


def check_space(name: str, space: Sequence[Param], accepted: set[str] | None) -> SearchSpace:
    """``space`` as a tuple, refusing duplicate names and ``model`` parameters the builder does not take
    (``accepted``: its override names; None = it checks them itself)."""
    space = tuple(space)
    names = [p.name for p in space]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{name}: search space names {', '.join(duplicates)} more than once")
    if accepted is not None:
        unknown = sorted(p.name for p in space if p.target == "model" and p.name not in accepted)
        if unknown:
            raise ValueError(f"{name}: search space tunes {', '.join(unknown)}, which the builder does not take as "
                             f"overrides (it takes {', '.join(sorted(accepted)) or 'none'})")
    return space


def space_for(regime: str, declared: Sequence[Param] | None) -> SearchSpace:
    """The space of a model: the declared one, else its regime's default."""
    return tuple(declared) if declared is not None else REGIME_SPACES.get(regime, ())


def split_values(space: Sequence[Param], values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Trial values as ``(training settings, model overrides)`` by each parameter's target; a value
    the space does not declare is refused (a study of another space)."""
    by_name = {p.name: p for p in space}
    unknown = sorted(set(values) - set(by_name))
    if unknown:
        raise ValueError(f"parameters {', '.join(unknown)} are not in the search space "
                         f"({', '.join(by_name) or 'empty'})")
    train = {k: _plain(v) for k, v in values.items() if by_name[k].target == "train"}
    model = {k: _plain(v) for k, v in values.items() if by_name[k].target == "model"}
    return train, model


def _plain(value: Any) -> Any:
    """A value as a plain Python scalar (Optuna may hand back numpy scalars)."""
    return value.item() if hasattr(value, "item") else value


__all__ = ["KINDS", "REGIME_SPACES", "TARGETS", "TRAINING_SPACE", "Param", "SearchSpace", "check_space", "choice",
           "log_uniform", "space_for", "split_values", "uniform"]
