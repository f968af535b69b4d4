"""The ``transfer`` regime (Table 3's "Prov-Gigapath Cls. / Surv. (cat)"): a model tuned on the
source site for its ``source_task`` under the supervised regime, stored only where it is deployed
out of distribution (:mod:`bench.regimes.deploy`)."""

from __future__ import annotations

from bench.data.dataset import SiteData
from bench.errors import BenchError
from bench.regimes.base import Evaluation, Fitted, RunEnv, RunPlan
from bench.regimes.deploy import TRANSFER_SOURCE
from bench.regimes.supervised import Supervised
from models.paper.sites import OOD_SITES
from models.registry import ModelEntry


class Transfer(Supervised):
    name = "transfer"

    def validate(self, entry: ModelEntry, site: str, available: list[str], where: str) -> str:
        canonical = super().validate(entry, site, available, where)
        if canonical != TRANSFER_SOURCE:
            raise BenchError(f"model {entry.name} is tuned on {TRANSFER_SOURCE} and deployed to the "
                             f"out-of-distribution sites (Table 3); run it with --site {TRANSFER_SOURCE.lower()}")
        if not any(s in available for s in OOD_SITES):
            raise BenchError(f"model {entry.name} is deployed to {', '.join(OOD_SITES)}; {where} has none")
        return canonical

    def training_sites(self, plan: RunPlan) -> list[str]:
        return []  # its own site is only the source of the deployment

    def train_task(self, plan: RunPlan) -> str:
        return plan.entry.source_task

    def evaluate(self, plan: RunPlan, data: dict[str, SiteData], fitted: Fitted, env: RunEnv) -> list[Evaluation]:
        return []
