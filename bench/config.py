"""Profiles and the resolved, validated configuration of one run (hashed into its run id).

Profiles (README "Profiles"): ``tiny`` for tests (seconds), ``small`` for the default ``make table2`` on a
laptop CPU (minutes), ``paper`` for the paper's sizes on a GPU. A profile sets the synthetic cohort
scale, whether model widths are narrowed, epochs, batch size and bag sampling.

The supervised baselines' hyper-parameters are not given in the ModalTune paper; ``paper`` uses the
defaults of the reference harness the baselines come from (mahmoodlab/SurvPath: 20 epochs, lr 1e-4,
weight decay 1e-5, batch size 1, cosine schedule, ``alpha_surv`` 0.5 and 4,096 patches sampled per
bag during training as in its run scripts).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from models.names import ProfileName, RegimeName, Task

# Part of every run id: bump it with any change to a model, a regime or the data pipeline that changes
# results, so that stored results of the old code are not served as cached results of the new.
CODE_VERSION = "0.2.0"


class DistillSettings(BaseModel):
    """The ``text_distill`` regime's optimisation (ModalTune, Table 6: AdamW, max lr 1e-4, weight decay
    5e-4, linear warm-up from lr/20 over 10 epochs then cosine annealing, 30 epochs, batch size 1).
    Which text embeddings a run distils is the model's setting (ModalTune's ``text_encoder``), not the
    profile's.

    The ``small`` and ``tiny`` budgets come from measured learning curves (``python -m
    bench.perf.distill_curve``, BRCA, seed 0; README "ModalTune on the synthetic cohort"). ``small``
    (batch 16, 1 warm-up epoch): at lr 5e-4 the release's loss reaches the mean-target floor within 5
    epochs and never leaves it (12-epoch curve: subtype probe 0.50 throughout); at lr 2e-3 (about the
    paper's 1e-4 at batch 1 scaled linearly to batch 16) it leaves the floor after ~320 optimiser steps
    and its validation loss bottoms out by ~460 (16-epoch curve), so 12 epochs (552 steps on BRCA; the
    paper: ~22k at batch 1). ``tiny`` (batch 4, lr 1e-3; 70 BRCA training patients): the centred
    variant's validation loss is lowest at epoch 6 of a 16-epoch curve and rises after, the release's
    is within 7 % of its floor by then, so 6 epochs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(gt=0)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    warmup_epochs: int = Field(ge=0)
    warmup_factor: float = Field(default=20.0, ge=1)
    batch_size: int = Field(gt=0)


class Profile(BaseModel):
    """Training-time settings shared by every supervised run of a profile.

    The ``small`` supervised budget (8 epochs at batch 16, lr 1e-3: ~330 optimiser steps on BRCA) comes
    from a measured curve (``python -m bench.perf.supervised_curve``; README "Profiles"): at 4 epochs the
    Kronecker (KP) fusion rows still predict the majority class on BRCA and GBMLGG (balanced accuracy
    0.50, AUC > 0.9) and one class on RCC (0.33) — their multiplicative fusion starts with an output
    that barely varies between patients and leaves that plateau only after about 3 epochs — and at 6
    epochs GBMLGG (half BRCA's patients) is still on it. At 8 epochs every KP row learns on every site,
    and every concatenation row also ends higher than at 4 (mean over the four sites, seed 0: ABMIL
    (cat) 0.861 → 0.943, TransMIL (cat) 0.866 → 0.924, Prov-Gigapath (cat) 0.719 → 0.913), so the
    budget is the same for every supervised row."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: ProfileName
    scale: ProfileName = Field(description="synthetic cohort scale used by default")
    narrowed: bool = Field(description="True where model widths are narrower than the paper's")
    epochs: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    warmup_epochs: int = Field(ge=0)
    alpha_surv: float = Field(ge=0, le=1)
    max_patches_train: int | None = Field(default=None, gt=0, description="bag sampling during training")
    threads: int | None = Field(default=None, gt=0, description="torch threads per run (None = library default)")
    grid_jobs: int = Field(default=1, gt=0, description="default parallel runs of `bench grid`")
    distill: DistillSettings


PROFILES: dict[str, Profile] = {
    "tiny": Profile(name="tiny", scale="tiny", narrowed=True, epochs=10, batch_size=4, lr=1e-3, weight_decay=1e-5,
                    warmup_epochs=0, alpha_surv=0.5, max_patches_train=64, threads=1, grid_jobs=2,
                    distill=DistillSettings(epochs=6, lr=1e-3, weight_decay=5e-4, warmup_epochs=1, batch_size=4)),
    "small": Profile(name="small", scale="small", narrowed=True, epochs=8, batch_size=16, lr=1e-3, weight_decay=1e-5,
                     warmup_epochs=0, alpha_surv=0.5, max_patches_train=48, threads=1, grid_jobs=2,
                     distill=DistillSettings(epochs=12, lr=2e-3, weight_decay=5e-4, warmup_epochs=1, batch_size=16)),
    "paper": Profile(name="paper", scale="paper", narrowed=False, epochs=20, batch_size=1, lr=1e-4, weight_decay=1e-5,
                     warmup_epochs=1, alpha_surv=0.5, max_patches_train=4096, threads=None, grid_jobs=1,
                     distill=DistillSettings(epochs=30, lr=1e-4, weight_decay=5e-4, warmup_epochs=10, batch_size=1)),
}


def get_profile(name: str) -> Profile:
    from bench.errors import unknown_name

    key = name.lower()
    if key not in PROFILES:
        raise unknown_name("profile", name, list(PROFILES))
    return PROFILES[key]


class RunConfig(BaseModel):
    """Everything that determines a run's result; its hash is the run id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    site: str
    task: Task
    seed: int = Field(ge=0)
    profile: Profile
    cohort_fingerprint: str
    regime: RegimeName = RegimeName.SUPERVISED
    resolved_model: dict[str, Any] = Field(default_factory=dict, description="base, overrides, resolved config")
    options: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    code_version: str = Field(default_factory=lambda: CODE_VERSION,
                              description="bumped whenever models or training change results")

    def run_id(self) -> str:
        """Stable 16-hex-digit id: the hash of the canonical JSON of this configuration."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]
