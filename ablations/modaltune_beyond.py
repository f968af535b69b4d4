"""ModalTune configurations BEYOND THE PAPER (``beyond_paper=True``): the same model, trained or
probed differently through run options (:mod:`models.run_options`), never a copy of the model.

Why they exist: the release's loss (KL divergence between softmaxes, temperature 1, of L2-normalised
256-d vectors) is close to a squared error between the vectors; the projected text targets of
different patients are mostly one shared vector (mean pairwise cosine ~0.8 with the offline ``bow``
text encoder), so the student can reach most of the loss's floor by emitting that shared vector for
everyone, and the unscaled probe then reads features that barely differ between patients.

``modaltune_centered``      the text targets minus the training patients' mean target (per task):
                            only what differs between patients is distilled.
``modaltune_t007``          distillation temperature 0.07 (the release: 1), which sharpens both softmaxes.
``modaltune_std_probe``     the release's training; probes on features z-scored on the training patients.
``modaltune_centered_std``  centred targets and the standardised probe together.
``modaltune_centered_narrow`` centred targets and a 64-d output (``output_dim=64``; the release: 256): the
                            survival probe is a Cox model on the general embedding, and 256 covariates
                            against the ~60-250 training events of a site overfit it (the LP rows of
                            the ``small`` profile read 64-d embeddings).
"""

from __future__ import annotations

from models.registry import register_variant

_BEYOND = " [beyond the paper]"

register_variant(
    "modaltune_centered", "modaltune", label="ModalTune, centred targets" + _BEYOND, overrides={},
    run_options={"distill_center": True}, beyond_paper=True,
    description="ModalTune distilling centred text targets (the training patients' mean target subtracted)",
)
register_variant(
    "modaltune_t007", "modaltune", label="ModalTune, temperature 0.07" + _BEYOND, overrides={},
    run_options={"distill_temperature": 0.07}, beyond_paper=True,
    description="ModalTune with distillation temperature 0.07 instead of 1",
)
register_variant(
    "modaltune_std_probe", "modaltune", label="ModalTune, standardised probe" + _BEYOND, overrides={},
    run_options={"probe": "standardized"}, beyond_paper=True,
    description="ModalTune as released, its probes reading features z-scored on the training patients",
)
register_variant(
    "modaltune_centered_std", "modaltune", label="ModalTune, centred targets + standardised probe" + _BEYOND,
    overrides={}, run_options={"distill_center": True, "probe": "standardized"}, beyond_paper=True,
    description="ModalTune distilling centred text targets, probed on standardised features",
)
register_variant(
    "modaltune_centered_narrow", "modaltune", label="ModalTune, centred targets, 64-d output" + _BEYOND,
    overrides={"output_dim": 64}, run_options={"distill_center": True}, beyond_paper=True,
    description="ModalTune distilling centred text targets into a 64-d general embedding (the release: 256-d)",
)
