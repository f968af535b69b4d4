"""ModalTune w/ Clinical (the paper's Table 10): ModalTune whose adapter tokens also hold a clinical token.

A registered variant of ``modaltune`` (override ``clinical=True``, which enters the run id), never a
copy of the model: a 2-layer MLP (the release's ``clinical_mlp``, :mod:`models.modaltune.clinical`)
encodes the patient's clinical variables into one token of the gene-token width, concatenated with
the transcriptomics tokens. It reads the ``clinical`` modality besides WSI and RNA, so its runs get
the encoded clinical vector of :mod:`bench.data.clinical`: age (every site; standardised on the
run's training patients), AJCC stage / T / N / M (BRCA, NSCLC, RCC), treatment type and ER / PR /
HER2 status (BRCA), each categorical variable one-hot with an explicit missing indicator, and every
variable that does not apply at the site all zeros (:mod:`models.clinical`). Trained and evaluated
exactly as ModalTune (``text_distill``: the same text targets, the same linear probes).
"""

from __future__ import annotations

from models.registry import register_variant

register_variant("modaltune_clinical", "modaltune", label="ModalTune w/ Clinical", overrides={"clinical": True},
                 modalities=("wsi", "rna", "clinical"),
                 description="ModalTune with a clinical token (2-layer MLP over age, TNM, treatment and receptor "
                             "status) beside the transcriptomics tokens")
