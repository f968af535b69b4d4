"""Out-of-distribution deployment (Table 3): the one home of its rule, and the regime wrapper that applies it.

The paper evaluates COADREAD and BLCA with models never trained on them: the BRCA-trained ModalTune,
the pan-cancer ModalTune, and Prov-Gigapath tuned on BRCA for one task (the ``transfer`` rows). Each
such model embeds the patients of every out-of-distribution site and is linear-probed there, on that
site's own training split. Every other row of an out-of-distribution table is trained on the site
itself.
"""

from __future__ import annotations

from bench.data.dataset import SiteData, prepare_site
from bench.regimes.base import PANCANCER, Evaluation, Fitted, Regime, RunEnv, RunPlan
from models.paper.sites import OOD_SITES
from models.registry import ModelEntry

#: The in-domain site whose tuned models are deployed out of distribution.
TRANSFER_SOURCE = "BRCA"
#: Regimes whose models reach the out-of-distribution sites by deployment.
DEPLOYED_REGIMES = ("text_distill", "transfer")


def deploys(entry: ModelEntry, site: str) -> bool:
    """True if a run of ``entry`` trained on ``site`` is deployed out of distribution."""
    if entry.regime == "transfer":
        return True
    return entry.regime == "text_distill" and (entry.pancancer or site == TRANSFER_SOURCE)


def deploy_sites(entry: ModelEntry, site: str, available: list[str]) -> list[str]:
    """The out-of-distribution sites among ``available`` that a run of ``entry`` on ``site`` deploys to."""
    return [s for s in OOD_SITES if s in available] if deploys(entry, site) else []


def source_site(entry: ModelEntry, target: str) -> str:
    """The site a run must train on for ``entry``'s row at ``target``: the deployment's source
    (``PANCANCER`` for a pan-cancer model, else :data:`TRANSFER_SOURCE`) where ``entry`` reaches an
    out-of-distribution ``target`` by deployment, else ``target`` itself."""
    if target in OOD_SITES and entry.regime in DEPLOYED_REGIMES:
        return PANCANCER if entry.pancancer else TRANSFER_SOURCE
    return PANCANCER if entry.pancancer else target


class Deployed(Regime):
    """``inner`` plus deployment: after ``inner`` fits, its model embeds and probes every
    out-of-distribution site of the cohort (when :func:`deploys` says so)."""

    def __init__(self, inner: Regime):
        self.inner = inner
        self.name = inner.name

    def validate(self, entry: ModelEntry, site: str, available: list[str], where: str) -> str:
        return self.inner.validate(entry, site, available, where)

    def result_keys(self, plan: RunPlan) -> list[tuple[str, str]]:
        tasks = ("subtype", "survival") if plan.task == "multitask" else (plan.task,)
        return self.inner.result_keys(plan) + [(s, t) for s in self._sites(plan) for t in tasks]

    def training_sites(self, plan: RunPlan) -> list[str]:
        return self.inner.training_sites(plan)

    def prepare(self, plan: RunPlan) -> dict[str, SiteData]:
        return self.inner.prepare(plan)

    def fit(self, plan: RunPlan, data: dict[str, SiteData], env: RunEnv) -> Fitted:
        return self.inner.fit(plan, data, env)

    def evaluate(self, plan: RunPlan, data: dict[str, SiteData], fitted: Fitted, env: RunEnv) -> list[Evaluation]:
        from bench.train.distill import probe_sites

        rows = self.inner.evaluate(plan, data, fitted, env)
        deployed = {s: prepare_site(plan.cohort, s, "multitask", plan.entry.modalities, plan.entry.name)
                    for s in self._sites(plan)}
        probed = probe_sites(fitted.model, deployed, preprocessing=plan.options().get("probe", "raw"))
        run_wide = {"best_epoch": fitted.best_epoch, **fitted.extra.get("diagnostics", {})}
        return rows + [Evaluation(s, t, {**probed[s][t].metrics, **run_wide}, deployed[s], probed[s][t].predictions)
                       for s in deployed for t in ("subtype", "survival")]

    def _sites(self, plan: RunPlan) -> list[str]:
        return deploy_sites(plan.entry, plan.site, plan.cohort.sites)
