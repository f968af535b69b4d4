"""The interface every training regime implements, and the objects that pass between its steps.

A regime turns one validated request (:class:`RunPlan`) into stored result rows in four steps, each
a method: ``result_keys`` (the ``(site, task)`` rows the run stores, known before anything runs, so
the results store can tell whether the run is cached), ``prepare`` (the data), ``fit`` (build and
train, or just build for a frozen encoder) and ``evaluate`` (the metrics of each stored row).
``validate`` checks the site a run is asked for before anything is written. The runner looks a
regime up by name (:func:`bench.regimes.regime_for`) and never branches on it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from bench.config import Profile
from bench.data.cohort import Cohort
from bench.data.dataset import SiteData
from bench.errors import BenchError
from bench.predictions import Predictions
from models.base import ModelContext
from models.registry import ModelEntry

PANCANCER = "PANCANCER"


@dataclass
class RunPlan:
    """One validated run: the model entry, the cohort, the canonical site (``PANCANCER`` for a
    pan-cancer model), the task, the seed, the profile, the weights, the overrides, the request's run
    options (:mod:`models.run_options`, on top of the entry's) and where text embeddings missing from
    the cohort's cache come from (``text_source``, see :class:`bench.text_cache.TextSource`).
    ``training``: the optimisation settings that replaced the profile's (already applied to
    ``profile``); ``tuning``: the Optuna study they came from (``{"study", "trials"}``), if any."""

    entry: ModelEntry
    cohort: Cohort
    site: str
    task: str
    seed: int
    profile: Profile
    weights: str | Path | None = None
    weights_tag: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    run_options: dict[str, Any] = field(default_factory=dict)
    text_source: Any = None
    training: dict[str, Any] = field(default_factory=dict)
    tuning: dict[str, Any] = field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        """Every run option this run's regime reads, resolved (defaults, the entry's, the request's)."""
        try:
            return self.entry.merged_run_options(self.run_options)
        except ValueError as err:
            raise BenchError(f"model {self.entry.name}: {err}") from err

    def context(self, n_outputs: int) -> ModelContext:
        """The model context of this run's cohort and profile for a head of ``n_outputs``."""
        from bench.runner import model_context

        return model_context(self.cohort, n_outputs, self.profile.name, weights=self.weights)

    def build_model(self, n_outputs: int) -> torch.nn.Module:
        """This run's model (:func:`build_entry`)."""
        return build_entry(self.entry, self.context(n_outputs), self.overrides)


def build_entry(entry: ModelEntry, ctx: ModelContext, overrides: dict[str, Any] | None = None) -> torch.nn.Module:
    """``entry`` built for ``ctx``; a builder's ValueError (a model that cannot read this cohort, a
    checkpoint that does not fit) is a bad-input error naming the model."""
    try:
        return entry.build(ctx, **(overrides or {}))
    except (ValueError, FileNotFoundError, KeyError) as err:
        raise BenchError(f"model {entry.name}: {err}") from err


@dataclass
class RunEnv:
    """Where one attempt of a run writes: its own directory, its loggers, progress and ``--force``;
    ``callbacks``: more Lightning callbacks for its training loop (a tuning trial's pruning)."""

    run_dir: Path
    loggers: list
    progress: bool = False
    force: bool = False
    callbacks: list = field(default_factory=list)


@dataclass
class Fitted:
    """A fitted model, the epoch its weights come from and whatever the regime's evaluation needs."""

    model: torch.nn.Module
    best_epoch: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Evaluation:
    """The metrics of one stored row, the data they were measured on (counts of the row) and the
    per-patient test predictions the test metric was computed from (stored with the row)."""

    site: str
    task: str
    metrics: dict[str, float]
    data: SiteData
    predictions: Predictions | None = None


class Regime(ABC):
    """A training and evaluation regime (``supervised``, ``linear_probe``, ``text_distill``, ``transfer``)."""

    name: ClassVar[str]

    def validate(self, entry: ModelEntry, site: str, available: list[str], where: str) -> str:
        """The canonical site a run of ``entry`` on ``site`` trains on, given the cohort's sites
        ``available`` (``where`` names the cohort in errors); raises :class:`BenchError`."""
        from bench.errors import unknown_name

        canonical = next((s for s in available if s.lower() == site.lower()), None)
        if canonical is None:
            raise unknown_name("site", site, [s.lower() for s in available])
        return canonical

    def result_keys(self, plan: RunPlan) -> list[tuple[str, str]]:
        """The ``(site, task)`` rows this run stores."""
        tasks = ("subtype", "survival") if plan.task == "multitask" else (plan.task,)
        return [(s, t) for s in self.training_sites(plan) for t in tasks]

    def training_sites(self, plan: RunPlan) -> list[str]:
        """Sites the run trains on (and stores rows for)."""
        return [plan.site]

    @abstractmethod
    def prepare(self, plan: RunPlan) -> dict[str, SiteData]:
        """The data of each site the run trains on."""

    @abstractmethod
    def fit(self, plan: RunPlan, data: dict[str, SiteData], env: RunEnv) -> Fitted:
        """Build (and train) the model."""

    @abstractmethod
    def evaluate(self, plan: RunPlan, data: dict[str, SiteData], fitted: Fitted, env: RunEnv) -> list[Evaluation]:
        """The metrics of every row of :meth:`result_keys` this regime measures itself."""

    def run(self, plan: RunPlan, env: RunEnv) -> list[Evaluation]:
        """prepare, fit, evaluate."""
        data = self.prepare(plan)
        return self.evaluate(plan, data, self.fit(plan, data, env), env)


def n_outputs(task: str, data: SiteData) -> int:
    """Head width of a task: the site's classes for ``subtype``, the 4 survival bins otherwise."""
    return data.n_classes if task == "subtype" else 4
