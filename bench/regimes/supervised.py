"""The ``supervised`` regime: one task per run, trained end to end, selected by validation.

Subtype: cross-entropy; survival: discrete-time NLL over 4 bins; the loss is the model's own
``compute_loss``. The checkpoint of the best validation metric (balanced accuracy / C-index) is
tested (:mod:`bench.train.supervised`).
"""

from __future__ import annotations

import lightning as L

from bench.data.dataset import SiteData, prepare_site
from bench.regimes.base import Evaluation, Fitted, Regime, RunEnv, RunPlan, n_outputs


class Supervised(Regime):
    name = "supervised"

    def prepare(self, plan: RunPlan) -> dict[str, SiteData]:
        task = self.train_task(plan)
        return {plan.site: prepare_site(plan.cohort, plan.site, task, plan.entry.modalities, plan.entry.name,
                                        plan.profile.max_patches_train)}

    def train_task(self, plan: RunPlan) -> str:
        """The task the model is trained on."""
        return plan.task

    def fit(self, plan: RunPlan, data: dict[str, SiteData], env: RunEnv) -> Fitted:
        from bench.train.supervised import train_supervised

        site_data = data[plan.site]
        L.seed_everything(plan.seed, workers=True, verbose=False)
        model = plan.build_model(n_outputs(site_data.task, site_data))
        outcome = train_supervised(model, site_data, plan.profile, run_dir=env.run_dir, loggers=env.loggers,
                                   progress=env.progress, callbacks=env.callbacks)
        return Fitted(model=model, best_epoch=outcome.best_epoch,
                      extra={"metrics": outcome.metrics, "predictions": outcome.predictions})

    def evaluate(self, plan: RunPlan, data: dict[str, SiteData], fitted: Fitted, env: RunEnv) -> list[Evaluation]:
        metrics = {**fitted.extra["metrics"], "best_epoch": fitted.best_epoch}
        return [Evaluation(plan.site, plan.task, metrics, data[plan.site], fitted.extra["predictions"])]
