"""The ``linear_probe`` regime (Prov-Gigapath LP, TITAN LP): a frozen encoder's patient embeddings,
cached per encoder configuration, probed by logistic regression (subtype) or Cox PH (survival), after
the run's ``probe`` preprocessing (``raw`` or ``standardized``, :mod:`models.run_options`)."""

from __future__ import annotations

import lightning as L

from bench.data.dataset import SiteData, prepare_site
from bench.regimes.base import Evaluation, Fitted, Regime, RunEnv, RunPlan, n_outputs


class LinearProbe(Regime):
    name = "linear_probe"

    def prepare(self, plan: RunPlan) -> dict[str, SiteData]:
        text = None
        if "text" in plan.entry.modalities:  # Table 7's probes of the text embeddings themselves
            from bench.regimes.text_distill import text_encoder
            from bench.runner import ensure_text_cache

            text = ensure_text_cache(plan.cohort, text_encoder(plan))
        return {plan.site: prepare_site(plan.cohort, plan.site, plan.task, plan.entry.modalities, plan.entry.name,
                                        plan.profile.max_patches_train, text=text)}

    def fit(self, plan: RunPlan, data: dict[str, SiteData], env: RunEnv) -> Fitted:
        L.seed_everything(plan.seed, workers=True, verbose=False)
        return Fitted(model=plan.build_model(n_outputs(plan.task, data[plan.site])))

    def evaluate(self, plan: RunPlan, data: dict[str, SiteData], fitted: Fitted, env: RunEnv) -> list[Evaluation]:
        from bench.runner import probe_key
        from bench.train.probe import embedding_cache_path, run_linear_probe

        cache = embedding_cache_path(plan.cohort.root, probe_key(plan.entry.name, plan.profile.name, plan.cohort,
                                                                 plan.seed, plan.weights_tag))
        if env.force:  # --force recomputes everything, the cached embeddings included
            cache.unlink(missing_ok=True)
        probed = run_linear_probe(fitted.model, data[plan.site], cache, preprocessing=plan.options()["probe"])
        return [Evaluation(plan.site, plan.task, probed.metrics, data[plan.site], probed.predictions)]
