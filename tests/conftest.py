"""Shared fixtures: one tiny synthetic cohort per test session, copies of it to break, a temp store.

Tests never write into the repository: cohorts, stores, run logs and caches go under pytest's
temporary directories (``BENCH_COHORTS``, ``BENCH_CACHE`` and the run directory are redirected).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

# The tests' tensors are small: one intra-op thread is faster on CI's 2 cores and keeps runs repeatable.
torch.set_num_threads(1)
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny synthetic cohort (all six sites, seed 0), generated once per session."""
    from bench.data.synth import generate_cohort

    root = tmp_path_factory.mktemp("cohorts") / "synthetic-tiny"
    generate_cohort(root, scale="tiny", seed=0)
    return root


@pytest.fixture(scope="session")
def rcc_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic cohort of RCC only: small enough to copy and break in every test."""
    from bench.data.synth import generate_cohort

    root = tmp_path_factory.mktemp("cohorts") / "synthetic-tiny-rcc"
    generate_cohort(root, scale="tiny", seed=0, sites=["RCC"])
    return root


@pytest.fixture
def rcc_copy(rcc_cohort: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the RCC cohort (without its feature cache)."""
    dst = tmp_path / "cohort"
    shutil.copytree(rcc_cohort, dst, ignore=shutil.ignore_patterns(".cache"))
    return dst


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every test's stores, run logs and default cohorts inside its temporary directory."""
    monkeypatch.setenv("BENCH_STORE", str(tmp_path / "results.sqlite"))
    monkeypatch.setenv("BENCH_COHORTS", str(tmp_path / "default-cohorts"))
    monkeypatch.chdir(tmp_path)
