"""The paper's figures, one module per figure, drawn with matplotlib's Agg backend into PNG and PDF
(:mod:`reports.figures.common`): Kaplan–Meier curves (:mod:`.km`), t-SNE maps (:mod:`.tsne`), attention
heatmaps (:mod:`.attention`), pathway attributions (:mod:`.pathways`) and learning curves (:mod:`.curves`).
They take data (predictions, embeddings, a model and a patient, a metrics CSV); :mod:`bench.figures`
gathers that data from the results store and the runs' directories."""
