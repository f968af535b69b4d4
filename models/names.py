"""The names the whole benchmark shares, validated in one place: profiles, tasks, regimes, modalities.

Torch-free, so that the command line can offer them as choices without importing a model.
"""

from __future__ import annotations

from enum import StrEnum


class ProfileName(StrEnum):
    """``tiny`` (tests, seconds), ``small`` (the default tables on a CPU), ``paper`` (the paper's sizes)."""

    TINY = "tiny"
    SMALL = "small"
    PAPER = "paper"


class Task(StrEnum):
    """A run's task: one of the two, or ``multitask`` (one run serving both, e.g. ModalTune)."""

    SUBTYPE = "subtype"
    SURVIVAL = "survival"
    MULTITASK = "multitask"


class RegimeName(StrEnum):
    """How a model is trained and evaluated (the regime objects live in ``bench.regimes``)."""

    SUPERVISED = "supervised"
    TEXT_DISTILL = "text_distill"
    LINEAR_PROBE = "linear_probe"
    TRANSFER = "transfer"


MODALITIES = ("wsi", "rna", "clinical", "text")
PROFILES = tuple(p.value for p in ProfileName)
TASKS = tuple(t.value for t in Task)
REGIMES = tuple(r.value for r in RegimeName)


def check_profile(profile: str) -> str:
    """``profile`` if it names a profile, else a ValueError listing the valid ones (the one check
    every ``for_profile`` configuration shares)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; valid: {', '.join(PROFILES)}")
    return profile


__all__ = ["MODALITIES", "PROFILES", "REGIMES", "TASKS", "ProfileName", "RegimeName", "Task", "check_profile"]
