"""The figures' computations, on synthetic inputs with a known answer and on real (untrained) ModalTune
models of the tiny RCC cohort: Kaplan–Meier splits and log-rank p-values, t-SNE, recomputed attention
weights, Integrated Gradients per pathway, learning curves, run checkpoints, reproducible files."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench.errors import BenchError


def _survival(n: int, seed: int, planted: bool) -> pd.DataFrame:
    """Exponential survival times whose hazard grows with ``risk`` (``planted``), or a risk unrelated to
    them (the same times with the risks permuted), 25 % censored at random."""
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    time = rng.exponential(scale=np.exp(-1.5 * risk)) * 24.0
    event = (rng.random(n) > 0.25).astype(int)
    if not planted:
        risk = rng.permutation(risk)
    return pd.DataFrame({"case_id": [f"P{i}" for i in range(n)], "time": time, "event": event, "risk": risk})


# ------------------------------------------------------------------------------------------- Kaplan–Meier
def test_logrank_separates_a_planted_risk_split_not_a_shuffled_one() -> None:
    from reports.figures.km import km_stats

    planted = km_stats(_survival(200, 0, planted=True))
    shuffled = km_stats(_survival(200, 0, planted=False))
    assert planted.p_value < 1e-6
    assert shuffled.p_value > 0.1
    assert planted.n_high + planted.n_low == 200 and planted.n_high == 100  # a median split of distinct risks


def test_split_is_at_the_test_median_and_high_risk_dies_first() -> None:
    from reports.figures.km import km_stats, risk_groups

    df = _survival(101, 3, planted=True)
    high, threshold = risk_groups(df["risk"].to_numpy())
    assert threshold == pytest.approx(float(np.median(df["risk"])))
    assert high.sum() == 50  # the median patient itself is low risk
    stats = km_stats(df)
    assert np.median(df["time"][high]) < np.median(df["time"][~high])
    assert stats.events_high + stats.events_low == int(df["event"].sum())


def test_km_figure_files_and_bad_predictions(tmp_path: Path) -> None:
    from reports.figures.common import save_figure
    from reports.figures.km import KMPanel, km_figure, km_grid

    fig, stats = km_figure(_survival(60, 1, planted=True), "BRCA")
    paths = save_figure(fig, tmp_path, "km")
    assert [p.name for p in paths] == ["km.png", "km.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[1].read_bytes()[:5] == b"%PDF-"
    assert 0.0 <= stats.p_value < 0.05
    fig, out = km_grid([KMPanel("a", _survival(40, 2, True)), KMPanel("b", None, "not run")], n_cols=2)
    assert out[0] is not None and out[1] is None
    with pytest.raises(ValueError, match="risk"):
        km_figure(pd.DataFrame({"time": [1.0], "event": [1]}))


def test_figure_files_are_byte_identical_when_redrawn(tmp_path: Path) -> None:
    from reports.figures.common import save_figure
    from reports.figures.km import km_figure

    first = save_figure(km_figure(_survival(50, 4, True))[0], tmp_path / "a", "km")
    second = save_figure(km_figure(_survival(50, 4, True))[0], tmp_path / "b", "km")
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


# ------------------------------------------------------------------------------------------- t-SNE
def test_tsne_is_seeded_and_keeps_planted_clusters_apart() -> None:
    from reports.figures.tsne import EmbeddingSet, tsne_coords, tsne_figure

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 32)) * 4
    x = np.concatenate([centres[0] + rng.normal(size=(30, 32)), centres[1] + rng.normal(size=(30, 32))])
    labels = np.array(["A"] * 30 + ["B"] * 30)
    xy = tsne_coords(x, seed=0)
    np.testing.assert_array_equal(xy, tsne_coords(x, seed=0))
    dist = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(len(xy)) * 1e9
    assert (labels[dist.argmin(axis=1)] == labels).mean() == 1.0  # every point's nearest neighbour: its cluster
    fig, coords = tsne_figure([EmbeddingSet("x", x, labels.tolist(), labels.tolist())], seed=0)
    np.testing.assert_array_equal(coords[0], xy)
    with pytest.raises(ValueError, match="at least"):
        tsne_coords(x[:3])


# ------------------------------------------------------------------------------------------- attention
def test_dilated_attention_weights_reproduce_longnet() -> None:
    """Every output row of LongNet's dilated attention (segments, dilation, zero padding, branch mixing)
    is the recomputed weights times the values."""
    from models.longnet import dilated_attention
    from reports.figures.attention import dilated_attention_weights

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 37, 4, 8) for _ in range(3))
    segments, ratios = (8, 16, 64), (1, 2, 4)
    expected = dilated_attention(q, k, v, segments, ratios)
    weights = dilated_attention_weights(q, k, segments, ratios)
    torch.testing.assert_close(torch.einsum("bhqk,bkhd->bqhd", weights, v), expected, rtol=1e-4, atol=1e-5)
    cls = dilated_attention_weights(q, k, segments, ratios, queries=[0])
    torch.testing.assert_close(cls[:, :, 0], weights[:, :, 0])


@pytest.fixture(scope="module")
def rcc_patient(rcc_cohort: Path):
    """The tiny RCC cohort's first test patient (collated) and the cohort."""
    from bench.data.cohort import Cohort
    from bench.data.dataset import collate, prepare_site

    cohort = Cohort.load(rcc_cohort)
    data = prepare_site(cohort, "RCC", "multitask", ("wsi", "rna"), "modaltune")
    return cohort, data, collate([data.splits["test"][0]])


def _untrained(cohort, name: str, seed: int = 0) -> torch.nn.Module:
    """A real ModalTune of the tiny profile, moved off its initialisation as training moves it: the
    injectors' gamma off 0 (so that the task prompt reaches the tiles) and the Gene Mixer's pathway
    biases off 0 (at zero biases the expression path is scale-invariant, so singular at the all-zero
    expression baseline of Integrated Gradients)."""
    from bench.registry import get_model
    from bench.runner import model_context

    torch.manual_seed(seed)
    model = get_model(name).build(replace(model_context(cohort, 4, "tiny"), text_dim=32))
    with torch.no_grad():
        for block in model.interactions or ():
            block.injector.gamma.fill_(0.5)
        for pathway_bias in (model.gene_encoder.pathway_encoder.bias1, model.gene_encoder.pathway_encoder.bias2):
            pathway_bias.normal_(0.0, 0.5)
    return model.eval()


@pytest.mark.parametrize("name", ["modaltune", "modaltune_titan"])
def test_attention_maps_of_both_backbones(rcc_patient, name: str) -> None:
    from reports.figures.attention import attention_maps

    cohort, _, batch = rcc_patient
    model = _untrained(cohort, name)
    before = model.forward_tasks(batch)
    maps = [attention_maps(model, batch, task) for task in range(model.n_tasks)]
    torch.testing.assert_close(model.forward_tasks(batch), before)  # hooks gone, nothing changed
    n_tiles = int(batch["mask"][0].sum())
    for m in maps:
        assert m.coords.shape == (n_tiles, 2)
        assert m.image_transcriptomics.sum() == pytest.approx(1.0, abs=1e-4)  # a softmax over the tiles
        assert m.image_task.sum() == pytest.approx(1.0, abs=1e-4)
        assert 0.0 < m.image_image.sum() <= 1.0 + 1e-5 and (m.image_image >= 0).all()
    assert not np.allclose(maps[0].image_task, maps[1].image_task)  # each task prompt looks at the tiles its way


def test_attention_hooks_leave_the_forward_pass_unchanged(rcc_patient) -> None:
    from reports.figures.attention import _Recorder

    cohort, _, batch = rcc_patient
    model = _untrained(cohort, "modaltune")
    plain = model.forward_tasks(batch)
    recorders = [_Recorder(model.interactions[-1].extractor.attn), _Recorder(model.backbone.layers[-1].self_attn)]
    hooked = model.forward_tasks(batch)
    for recorder in recorders:
        recorder.remove()
    assert torch.equal(plain, hooked)
    assert recorders[0].output is not None and recorders[1].args[0].shape[1] == batch["features"].shape[1] + 1


def test_wrong_weights_fail_the_reproduction_check(rcc_patient) -> None:
    from reports.figures.attention import _check, _compressed_output, _Recorder, compressed_attention_weights

    cohort, _, batch = rcc_patient
    model = _untrained(cohort, "modaltune")
    attn = model.interactions[-1].extractor.attn
    recorder = _Recorder(attn)
    model.forward_tasks(batch, tasks=(0,))
    recorder.remove()
    query, key, value, mask = recorder.args
    weights = compressed_attention_weights(attn, query, key, mask)
    _check(_compressed_output(attn, weights, value), recorder.output, "extractor")
    uniform = torch.full_like(weights, 1.0 / weights.shape[-1])
    with pytest.raises(RuntimeError, match="does not reproduce"):
        _check(_compressed_output(attn, uniform, value), recorder.output, "extractor")


def test_attention_needs_the_modal_adapter(rcc_patient) -> None:
    from reports.figures.attention import attention_maps

    cohort, _, batch = rcc_patient
    from bench.registry import get_model
    from bench.runner import model_context

    lora = get_model("modaltune_lora").build(replace(model_context(cohort, 4, "tiny"), text_dim=32)).eval()
    with pytest.raises(ValueError, match="Modal Adapter"):
        attention_maps(lora, batch, 0)


# ------------------------------------------------------------------------------------------- pathways
class _LinearGenes(torch.nn.Module):
    """``forward_features = rna @ W``: a read-out whose Integrated Gradients are known exactly (x * w)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = torch.nn.Parameter(weight)

    def forward_features(self, batch: dict) -> torch.Tensor:
        return batch["rna"] @ self.weight


def test_integrated_gradients_of_a_linear_readout_are_exact_and_rank_the_planted_pathway() -> None:
    from reports.figures.pathways import integrated_gradients, pathway_attributions, top_pathways

    genes, dim = 12, 3
    weight = torch.zeros(genes, dim)
    weight[4:8, 0] = 2.0  # only genes 4..7 (pathway B) move the read-out
    model = _LinearGenes(weight)
    rna = torch.linspace(0.5, 1.5, genes)[None]
    batch = {"rna": rna, "features": torch.zeros(1, 2, 4), "coords": torch.zeros(1, 2, 2)}
    result = integrated_gradients(model, batch, torch.tensor([1.0, 0.0, 0.0]), n_steps=8)
    np.testing.assert_allclose(result.genes, (rna[0] * weight[:, 0]).numpy(), atol=1e-6)
    assert result.genes.sum() == pytest.approx(result.at_input - result.at_baseline, abs=1e-5)
    membership = np.zeros((genes, 3), dtype=bool)
    membership[0:4, 0], membership[4:8, 1], membership[8:12, 2] = True, True, True
    scores = pathway_attributions(np.stack([result.genes, 2 * result.genes]), membership)
    np.testing.assert_allclose(scores[0], [0.0, float((rna[0, 4:8] * 2).sum()), 0.0], atol=1e-6)
    top = top_pathways(scores, ["A", "B", "C"], top=2)
    assert top["pathway"].tolist()[0] == "B" and top["patients"].iloc[0] == 2


def test_integrated_gradients_through_modaltune_are_complete(rcc_patient) -> None:
    from reports.figures.pathways import integrated_gradients

    cohort, _, batch = rcc_patient
    model = _untrained(cohort, "modaltune")
    weight = torch.randn(model.embed_dim, generator=torch.Generator().manual_seed(0))
    result = integrated_gradients(model, batch, weight, n_steps=16)
    change = result.at_input - result.at_baseline
    assert abs(change) > 0
    assert abs(result.genes.sum() - change) <= 0.05 * abs(change)  # completeness, up to the quadrature
    assert result.genes.shape == (len(cohort.genes),)


# ------------------------------------------------------------------------------------------- learning curves
def test_learning_curves_read_lightning_csv(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    from reports.figures.curves import curves_figure, read_curves

    logger = CSVLogger(save_dir=str(tmp_path), name="csv", version="")
    logger.log_metrics({"init/val_metric": 0.5, "init/diag_centered_cosine": 0.0}, step=0)
    for epoch, (loss, metric) in enumerate([(0.9, 0.6), (0.5, 0.7)]):
        logger.log_metrics({"train_loss": loss, "val_metric": metric, "diag_centered_cosine": 0.1 * (epoch + 1),
                            "epoch": epoch}, step=10 * (epoch + 1))
    logger.log_metrics({"RCC/subtype/test_balanced_accuracy": 0.7}, step=20)
    logger.save()
    curves = read_curves(tmp_path / "csv" / "metrics.csv")
    assert curves.index.tolist() == [0, 1, 2]
    assert curves["val_metric"].tolist() == [0.5, 0.6, 0.7]
    assert np.isnan(curves.loc[0, "train_loss"]) and curves.loc[2, "train_loss"] == 0.5
    fig = curves_figure({"seed 0": curves}, "t", thresholds={"diag_centered_cosine": 0.1})
    assert len([ax for ax in fig.axes if ax.has_data()]) == 3
    empty = tmp_path / "empty.csv"
    empty.write_text("epoch,step\n0,1\n")
    with pytest.raises(ValueError, match="none of the curves"):
        read_curves(empty)


# ------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_restores_the_trained_parts_and_refuses_another_encoder(rcc_patient, tmp_path: Path) -> None:
    from bench.artifacts import load_checkpoint_record, restore, save_checkpoint

    cohort, _, batch = rcc_patient
    trained = _untrained(cohort, "modaltune", seed=0)
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(0.01)  # "training" moved the adapters
    path = save_checkpoint(tmp_path, trained, run_id="r", model_name="modaltune", text_dim=32)
    record = load_checkpoint_record(path)
    assert not any(k.startswith("backbone.encoder") and "weight" in k for k in record["state"])  # frozen: not copied
    same_encoder = _untrained(cohort, "modaltune", seed=0)
    restore(same_encoder, record, path)
    torch.testing.assert_close(same_encoder.forward_tasks(batch), trained.forward_tasks(batch))
    with pytest.raises(BenchError, match="frozen digest"):
        restore(_untrained(cohort, "modaltune", seed=1), record, path)
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(BenchError, match="not a readable run checkpoint"):
        load_checkpoint_record(tmp_path / "junk.pt")


def test_the_command_line_offers_every_figure() -> None:
    from bench.cli import build_parser
    from bench.figures import FIGURES

    commands = build_parser()._subparsers._group_actions[0].choices
    name = next(a for a in commands["figure"]._actions if a.dest == "name")
    assert list(name.choices) == list(FIGURES)
