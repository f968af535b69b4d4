"""Training and evaluation regimes, looked up by name (:func:`regime_for`).

| regime | models | one run |
|---|---|---|
| ``supervised`` | the Table 2 baselines, fusions, slide encoders (Tuned) | one task, best epoch by validation |
| ``linear_probe`` | Prov-Gigapath LP, TITAN LP | frozen encoder, cached embeddings, linear probes |
| ``text_distill`` | ModalTune and its ablations | multitask text distillation, probes of the general embedding |
| ``transfer`` | Prov-Gigapath Cls. / Surv. (cat) | tuned on BRCA for one task, probed out of distribution |

Out-of-distribution deployment wraps any regime whose runs can be deployed (:mod:`bench.regimes.deploy`).
"""

from __future__ import annotations

from bench.regimes.base import PANCANCER, Evaluation, Fitted, Regime, RunEnv, RunPlan
from bench.regimes.deploy import DEPLOYED_REGIMES, TRANSFER_SOURCE, Deployed, deploy_sites, deploys, source_site
from bench.regimes.linear_probe import LinearProbe
from bench.regimes.supervised import Supervised
from bench.regimes.text_distill import TextDistill
from bench.regimes.transfer import Transfer
from models.registry import ModelEntry

REGIMES: dict[str, type[Regime]] = {cls.name: cls for cls in (Supervised, LinearProbe, TextDistill, Transfer)}

__all__ = ["DEPLOYED_REGIMES", "PANCANCER", "REGIMES", "TRANSFER_SOURCE", "Deployed", "Evaluation", "Fitted",
           "Regime", "RunEnv", "RunPlan", "deploy_sites", "deploys", "regime_for", "source_site"]


def regime_for(entry: ModelEntry) -> Regime:
    """The regime object of ``entry`` (wrapped for deployment where its runs can be deployed)."""
    regime = REGIMES[entry.regime]()
    return Deployed(regime) if entry.regime in DEPLOYED_REGIMES else regime
