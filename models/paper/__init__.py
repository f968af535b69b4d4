"""The ModalTune paper's published facts, in one place every layer may import.

What is here: the cohort counts (Table 1), class groupings (Table 4), survival-bin edges (Table 5),
the gene/pathway/family structure of the transcriptomics input (as counts), and the published
result figures (Tables 2, 3, 8, 9). Nothing here is computed from data or runs.

Where it comes from: the ModalTune paper (ICCV 2025) and its code release
(``martellab-sri/ModalTune``); the pathway and gene-family structure of the SurvPath and MCAT
reference CSVs (``mahmoodlab/SurvPath``, ``mahmoodlab/MCAT``), kept as counts only, never gene
names or CSV content.

Modules:

* :mod:`models.paper.reference` loads ``reference.json`` (every published figure) and looks up
  one published table cell.
* :mod:`models.paper.sites` gives each of the six TCGA sites' facts from that document.
* :mod:`models.paper.omics` rebuilds the paper's 331-pathway / 6-family gene membership from the
  stored counts, for parameter counts at the paper configuration.

This package imports only :mod:`models` and ``torch``, so the harness (``bench``), the baselines
and the reports all depend on it, never the other way round.
"""
