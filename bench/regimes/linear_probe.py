"""The ``linear_probe`` regime (Prov-Gigapath LP, TITAN LP): a frozen encoder's patient embeddings,
cached per encoder configuration, probed by logistic regression (subtype) or Cox PH (survival), after
the run's ``probe`` preprocessing (``raw`` or ``standardized``, :mod:`models.run_options`).

Table 7's probes of the text embeddings themselves (models reading ``text``) measure two more rows of
that table in their survival run (Supplement Sec. 10): "Duration Bins", a logistic regression of the
survival bin on the same embeddings (``*_bins_balanced_accuracy``), and "Survival prediction w/o
stage", the Cox probe of the embeddings of the texts without staging sentences (the cohort's
``<encoder>-nostage`` text cache; ``*_nostage_c_index``)."""

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
        from bench.train.probe import run_linear_probe

        cache = embedding_cache(plan, plan.entry.name, env.force)
        probed = run_linear_probe(fitted.model, data[plan.site], cache, preprocessing=plan.options()["probe"])
        metrics = dict(probed.metrics)
        if plan.task == "survival" and "text" in plan.entry.modalities:
            metrics.update(text_survival_rows(plan, fitted.model, data[plan.site], env.force))
        return [Evaluation(plan.site, plan.task, metrics, data[plan.site], probed.predictions)]


def embedding_cache(plan: RunPlan, name: str, force: bool):
    """The embedding cache file of ``plan``'s encoder under ``name`` (removed first with ``--force``)."""
    from bench.runner import probe_key
    from bench.train.probe import embedding_cache_path

    cache = embedding_cache_path(plan.cohort.root, probe_key(name, plan.profile.name, plan.cohort, plan.seed,
                                                             plan.weights_tag))
    if force:  # --force recomputes everything, the cached embeddings included
        cache.unlink(missing_ok=True)
    return cache


def text_survival_rows(plan: RunPlan, model, data: SiteData, force: bool) -> dict[str, float]:
    """Table 7's "Duration Bins" (``{val,test}_bins_balanced_accuracy``) on the run's embeddings and
    "Survival prediction w/o stage" (``{val,test}_nostage_c_index``, ``..._nostage_ipcw_c_index``) on the
    embeddings of the same patients' texts without staging sentences, both after the run's preprocessing."""
    from bench.regimes.text_distill import text_encoder
    from bench.runner import ensure_text_cache
    from bench.text_cache import WITHOUT_STAGE, without_stage_name
    from bench.train.probe import cached_embeddings, probe_duration_bins, probe_survival

    preprocessing = plan.options()["probe"]
    out = probe_duration_bins(cached_embeddings(model, data.splits, embedding_cache(plan, plan.entry.name, False)),
                              data, preprocessing)
    text = ensure_text_cache(plan.cohort, without_stage_name(text_encoder(plan)))
    unstaged = prepare_site(plan.cohort, plan.site, plan.task, plan.entry.modalities, plan.entry.name,
                            plan.profile.max_patches_train, text=text)
    x = cached_embeddings(model, unstaged.splits, embedding_cache(plan, plan.entry.name + WITHOUT_STAGE, force))
    survival = probe_survival(x, unstaged, preprocessing=preprocessing)
    out.update({key.replace("_", "_nostage_", 1): value for key, value in survival.items()})
    return out
