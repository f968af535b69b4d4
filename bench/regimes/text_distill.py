"""The ``text_distill`` regime (ModalTune and its ablations): one multitask run distilling projected
text embeddings into the model's task embeddings; the general-task embedding of the best epoch is
linear-probed for both tasks (:mod:`bench.train.distill`). A pan-cancer model trains on every
in-domain site of the cohort at once and stores rows per site.

The model's configuration decides the text side: which cached text embeddings are read (ModalTune's
``text_encoder``) and which projector maps them (``projector``, built by
:func:`models.modaltune.projection.build_text_projector` from the built model's configuration)."""

from __future__ import annotations

from dataclasses import replace

import lightning as L
import torch

from bench.data.dataset import SiteData, prepare_site
from bench.errors import BenchError
from bench.regimes.base import PANCANCER, Evaluation, Fitted, Regime, RunEnv, RunPlan
from bench.regimes.deploy import TRANSFER_SOURCE
from models.paper.sites import IN_DOMAIN_SITES, OOD_SITES
from models.registry import ModelEntry


class TextDistill(Regime):
    name = "text_distill"

    def validate(self, entry: ModelEntry, site: str, available: list[str], where: str) -> str:
        from bench.errors import unknown_name

        if entry.pancancer:
            if site.upper() != PANCANCER and site.upper() not in available:
                raise unknown_name("site", site, [s.lower() for s in available] + [PANCANCER.lower()])
            if not any(s in available for s in IN_DOMAIN_SITES):
                raise BenchError(f"model {entry.name} trains on the in-domain sites ({', '.join(IN_DOMAIN_SITES)}); "
                                 f"{where} has none of them")
            return PANCANCER
        canonical = super().validate(entry, site, available, where)
        if canonical in OOD_SITES:
            raise BenchError(f"{entry.label} on {canonical} is the {TRANSFER_SOURCE}-trained (or pan-cancer) model "
                             f"deployed out of distribution (Table 3): run --site {TRANSFER_SOURCE.lower()} "
                             "(or the pan-cancer model)")
        return canonical

    def training_sites(self, plan: RunPlan) -> list[str]:
        if not plan.entry.pancancer:
            return [plan.site]
        return [s for s in IN_DOMAIN_SITES if s in plan.cohort.sites]

    def prepare(self, plan: RunPlan) -> dict[str, SiteData]:
        from bench.runner import ensure_text_cache

        text = ensure_text_cache(plan.cohort, text_encoder(plan), plan.text_source)
        return {s: prepare_site(plan.cohort, s, "multitask", plan.entry.modalities, plan.entry.name,
                                plan.profile.max_patches_train, text=text) for s in self.training_sites(plan)}

    def fit(self, plan: RunPlan, data: dict[str, SiteData], env: RunEnv) -> Fitted:
        from bench.train.distill import DistillLoss, train_distill
        from models.modaltune.projection import build_text_projector

        text_dim = int(next(iter(data.values())).splits["train"].text.shape[-1])
        L.seed_everything(plan.seed, workers=True, verbose=False)
        model = build_for_text(plan, text_dim)
        try:
            projector = build_text_projector(model.config, text_dim, model.embed_dim, plan.seed)
        except ValueError as err:
            raise BenchError(f"model {plan.entry.name}: {err}") from err
        options = plan.options()
        loss = DistillLoss(options["distill_temperature"], options["distill_center"])
        outcome = train_distill(model, projector, data, plan.profile.distill, run_dir=env.run_dir,
                                loggers=env.loggers, progress=env.progress, loss=loss, preprocessing=options["probe"],
                                callbacks=env.callbacks)
        save_run_artifacts(plan, env, model, text_dim, outcome.embeddings, data)
        return Fitted(model=model, best_epoch=outcome.best_epoch,
                      extra={"metrics": outcome.metrics, "diagnostics": outcome.diagnostics,
                             "predictions": outcome.predictions})

    def evaluate(self, plan: RunPlan, data: dict[str, SiteData], fitted: Fitted, env: RunEnv) -> list[Evaluation]:
        metrics, diagnostics = fitted.extra["metrics"], fitted.extra["diagnostics"]
        predictions = fitted.extra["predictions"]
        return [Evaluation(s, t, {**metrics[s][t], "best_epoch": fitted.best_epoch, **diagnostics}, data[s],
                           predictions[s][t])
                for s in data for t in ("subtype", "survival")]


def save_run_artifacts(plan: RunPlan, env: RunEnv, model: torch.nn.Module, text_dim: int,
                       embeddings: dict, data: dict[str, SiteData]) -> None:
    """Keep the best epoch's weights and the probed embeddings beside the run's logs (:mod:`bench.artifacts`),
    for the figures; what the run computes and stores is unchanged."""
    from bench.artifacts import save_checkpoint, save_embeddings
    from bench.runner import run_config

    save_checkpoint(env.run_dir, model, run_id=run_config(plan).run_id(), model_name=plan.entry.name,
                    text_dim=text_dim)
    cases = {site: {split: ds.case_ids for split, ds in data[site].splits.items()} for site in embeddings}
    save_embeddings(env.run_dir, embeddings, cases)


def text_encoder(plan: RunPlan) -> str:
    """The text embeddings the run distils: its model's resolved ``text_encoder`` (an override such as
    ``text_encoder="conch"`` included), else :data:`~models.modaltune.projection.DEFAULT_TEXT_ENCODER`."""
    from models.modaltune.projection import DEFAULT_TEXT_ENCODER

    try:
        config = plan.entry.resolve(plan.context(4), plan.overrides).get("config", {})
    except (ValueError, TypeError) as err:
        raise BenchError(f"model {plan.entry.name}: {err}") from err
    return str(config.get("text_encoder", DEFAULT_TEXT_ENCODER))


def build_for_text(plan: RunPlan, text_dim: int) -> torch.nn.Module:
    """The run's model (4 outputs) built for ``text_dim``-wide text embeddings: a model that distils
    the text unprojected (ModalTune's ``none`` / ``model_side`` projectors) sizes its output from it."""
    context = replace(plan.context(4), text_dim=text_dim)
    try:
        return plan.entry.build(context, **plan.overrides)
    except (ValueError, FileNotFoundError, KeyError) as err:
        raise BenchError(f"model {plan.entry.name}: {err}") from err
