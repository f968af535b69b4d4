"""Run options: evaluation and training settings that a regime reads, never the model builder.

A model's builder takes *overrides* (its configuration); a *run option* changes how the regime
trains or evaluates the built model: the linear probes' feature preprocessing, the distillation
loss's target centring and temperature. Both enter the run id: :meth:`ModelEntry.resolve` adds the
resolved run options (every option the entry's regime reads, defaults filled in) beside the
overrides, so a variant that only changes a run option (``register_variant(..., run_options=...)``)
never reuses another's result.

| option | regimes | values | default (the release) |
|---|---|---|---|
| ``probe`` | linear_probe, text_distill, transfer | ``raw``, ``standardized`` | ``raw`` |
| ``distill_center`` | text_distill | ``False``, ``True`` | ``False`` |
| ``distill_temperature`` | text_distill | a number > 0 | ``1.0`` |

``probe``: the linear probes (logistic regression, Cox PH) read the embeddings as they are (``raw``,
as the ModalTune release), or z-scored per feature with the training patients' mean and standard
deviation (``standardized``). ``distill_center``: subtract the training patients' mean projected
text target (per task) from every target before the KL divergence, so that only what differs
between patients is distilled. ``distill_temperature``: the softmax temperature of the KL
divergence (the release: 1).

Torch-free, so that the command line can offer the choices without importing a model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

PROBE_PREPROCESSING = ("raw", "standardized")


@dataclass(frozen=True)
class RunOption:
    """One run option: its default, the regimes that read it, and the check of a value (returns the
    canonical value or raises ValueError saying what is allowed)."""

    name: str
    default: Any
    regimes: tuple[str, ...]
    check: Callable[[Any], Any]
    doc: str


def _choice(name: str, choices: tuple[str, ...]) -> Callable[[Any], Any]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"run option {name} must be one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return check


def _flag(name: str) -> Callable[[Any], Any]:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"run option {name} must be true or false, got {value!r}")
        return value

    return check


def _positive(name: str) -> Callable[[Any], Any]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"run option {name} must be a finite number > 0, got {value!r}")
        return float(value)

    return check


RUN_OPTIONS: dict[str, RunOption] = {o.name: o for o in (
    RunOption("probe", "raw", ("linear_probe", "text_distill", "transfer"), _choice("probe", PROBE_PREPROCESSING),
              "linear-probe feature preprocessing: raw (the release) or standardized (z-scored on the training "
              "patients)"),
    RunOption("distill_center", False, ("text_distill",), _flag("distill_center"),
              "subtract the training patients' mean text target (per task) before the KL divergence"),
    RunOption("distill_temperature", 1.0, ("text_distill",), _positive("distill_temperature"),
              "softmax temperature of the distillation KL divergence (the release: 1)"),
)}


def regime_options(regime: str) -> dict[str, RunOption]:
    """The run options ``regime`` reads, by name (empty for a regime that reads none)."""
    return {name: o for name, o in RUN_OPTIONS.items() if regime in o.regimes}


def resolve_run_options(regime: str, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every run option ``regime`` reads: its default, replaced by ``given``; each value checked.

    An unknown name, or one ``regime`` does not read, is a ValueError naming the options it reads.
    """
    readable = regime_options(regime)
    given = dict(given or {})
    unknown = sorted(set(given) - set(readable))
    if unknown:
        valid = ", ".join(sorted(readable)) or "none"
        raise ValueError(f"the {regime} regime does not read the run option(s) {', '.join(unknown)}; it reads {valid}")
    return {name: option.check(given[name]) if name in given else option.default for name, option in readable.items()}


__all__ = ["PROBE_PREPROCESSING", "RUN_OPTIONS", "RunOption", "regime_options", "resolve_run_options"]
