"""Figures and the report from a real ModalTune run (tiny RCC cohort, a 2-epoch distillation schedule so
that the module trains once in seconds): the run's saved checkpoint and embeddings, ``bench figure``,
``bench report`` (every image a valid PNG, every table present, W&B offline), and the page opened in a
real headless browser (Debian's chromium; skipped, with the reason, where it is not installed)."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main
from bench.config import PROFILES

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(rcc_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One stored ModalTune run on RCC (seed 0, tiny profile shortened to 2 distillation epochs)."""
    from bench.runner import RunRequest, execute

    root = tmp_path_factory.mktemp("report")
    tiny = PROFILES["tiny"]
    short = tiny.model_copy(update={"distill": tiny.distill.model_copy(update={"epochs": 2})})
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(PROFILES, "tiny", short)
        result = execute(RunRequest(model="modaltune", site="RCC", task="multitask", profile="tiny",
                                    cohort=rcc_cohort, store=root / "results.sqlite", wandb="disabled",
                                    runs_dir=root / "runs"))
    return {"root": root, "store": root / "results.sqlite", "runs": root / "runs", "result": result}


def _args(run: dict) -> list[str]:
    return ["--store", str(run["store"]), "--runs-dir", str(run["runs"])]


def test_the_run_keeps_a_checkpoint_that_reproduces_its_embeddings(run: dict) -> None:
    from bench.artifacts import EMBEDDINGS, latest_artifact, load_embeddings
    from bench.figures import first_run, load_context, rebuild_model, site_data
    from bench.train.probe import embed

    ctx = load_context(run["store"], runs_dir=run["runs"])
    row = first_run(ctx, "modaltune", "RCC")
    saved = load_embeddings(latest_artifact(run["runs"], "modaltune", row.run_id, EMBEDDINGS))
    test = saved["splits"] == "test"
    data = site_data(ctx, row, "RCC").splits["test"]
    assert saved["case_ids"][test].tolist() == data.case_ids
    again = embed(rebuild_model(ctx, row), data)
    np.testing.assert_allclose(again, saved["embeddings"][test], rtol=1e-5, atol=1e-6)


def _png(path: Path) -> tuple[int, int]:
    from PIL import Image

    assert path.read_bytes()[:8] == PNG, f"{path} is not a PNG"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def test_figure_command_writes_png_and_pdf(run: dict, capsys, tmp_path: Path) -> None:
    code = main(["figure", "curves", *_args(run), "--out", str(tmp_path), "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert [f["name"] for f in out["figures"]] == ["curves-modaltune-RCC"]
    png, pdf = map(Path, out["figures"][0]["files"])
    assert min(_png(png)) > 100
    assert pdf.read_bytes()[:5] == b"%PDF-"


def test_km_figure_from_the_stored_predictions(run: dict, capsys, tmp_path: Path) -> None:
    """The Kaplan–Meier figure reads the run's stored test predictions; rows not run are panels saying so."""
    assert main(["figure", "km", *_args(run), "--out", str(tmp_path), "--json"]) == 0
    figure = json.loads(capsys.readouterr().out)["figures"][0]
    assert min(_png(Path(figure["files"][0]))) > 100
    assert "median predicted risk of the test patients" in figure["caption"]
    assert "ModalTune" in figure["caption"] and "Prov-Gigapath (cat)" in figure["caption"]


def test_figure_bad_input_is_a_named_error(run: dict, capsys, tmp_path: Path) -> None:
    assert main(["figure", "km", "--case", "X", *_args(run)]) == 2
    assert "--case applies to the attention figure" in capsys.readouterr().err
    assert main(["figure", "attention", "--case", "TCGA-NOPE", *_args(run), "--out", str(tmp_path)]) == 2
    assert "patient TCGA-NOPE is not among" in capsys.readouterr().err
    assert main(["figure", "curves", "--store", str(tmp_path / "none.sqlite")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # argparse: --out is a file, not a directory
        main(["report", "--store", str(run["store"]), "--out", str(run["store"])])
    assert exit_.value.code == 2 and "is a file" in capsys.readouterr().err


class _Page(HTMLParser):
    """The page's image sources, table count and element ids."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables = 0
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "img":
            self.images.append(attributes["src"] or "")
        self.tables += tag == "table"
        if attributes.get("id"):
            self.ids.add(attributes["id"])


@pytest.fixture(scope="module")
def report(run: dict) -> dict:
    """``bench report`` of the run, W&B offline."""
    from bench.report import build_report

    out = run["root"] / "report"
    summary = build_report(out, store=run["store"], runs_dir=run["runs"], wandb="offline")
    page = _Page()
    page.feed(summary.page.read_text(encoding="utf-8"))
    return {"out": out, "summary": summary, "page": page}


def test_report_page_holds_every_table_and_figure(report: dict) -> None:
    summary, page, out = report["summary"], report["page"], report["out"]
    assert summary.page == out / "index.html"
    assert set(summary.figures) >= {"tsne", "attention-modaltune-RCC", "pathways-modaltune", "curves-modaltune-RCC"}
    assert len(page.images) == len(summary.figures)
    for src in page.images:
        assert not Path(src).is_absolute() and src.startswith("figures/")
        assert min(_png(out / src)) > 100
        assert (out / src).with_suffix(".pdf").is_file()
    assert {f"table-{name}" for name in summary.tables} <= page.ids and "table2" in summary.tables
    assert page.tables >= 2 * len(summary.tables) + 3  # two tasks per table; cohort, profile, encoders
    assert {"figure-km", "cohort", "profile", "encoders"} <= page.ids
    text = summary.page.read_text(encoding="utf-8")
    assert "random init" in text and "ModalTune (Ours)" in text and "RCC" in text
    assert "confidence intervals and paired tests (bootstrap over test patients)" in text  # bench table --ci
    assert not list(out.parent.glob(".report.*"))  # the staging directory is gone


def test_report_logs_figures_and_tables_to_wandb_offline(report: dict) -> None:
    summary = report["summary"]
    media = summary.wandb_dir / "files" / "media"
    assert summary.wandb_dir.is_dir() and list(summary.wandb_dir.glob("run-*.wandb"))
    assert len(list((media / "images").rglob("*.png"))) == len(summary.figures)
    assert len(list((media / "table").rglob("*.table.json"))) == len(summary.tables)


CHECK = """<script>
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src'));
  document.body.setAttribute('data-images', String(images.length));
  document.body.setAttribute('data-broken', broken.join(' '));
  document.body.setAttribute('data-tables', String(document.querySelectorAll('table').length));
});
</script>"""


def _chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def test_report_opens_in_a_headless_browser(report: dict) -> None:
    """Every image of the page loads (naturalWidth > 0) and every table is in the DOM, in real chromium."""
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium); the HTML checks above still ran")
    page, out = report["page"], report["out"]
    check = out / "check.html"  # beside index.html, so that the relative image paths resolve the same way
    check.write_text(report["summary"].page.read_text(encoding="utf-8").replace("</body>", CHECK + "</body>"))
    try:
        dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                              "--virtual-time-budget=10000", "--dump-dom", check.as_uri()],
                             capture_output=True, text=True, timeout=120, check=True).stdout
    finally:
        check.unlink()
    body = _Body()
    body.feed(dom)
    assert body.attrs.get("data-images") == str(len(page.images)) and page.images
    assert body.attrs.get("data-broken") == ""
    assert body.attrs.get("data-tables") == str(page.tables)


class _Body(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.attrs: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self.attrs = {k: v or "" for k, v in attrs}


def test_a_missing_image_is_caught_by_the_browser_check(report: dict, tmp_path: Path) -> None:
    """The browser check can fail: a page whose image file is gone reports it as broken."""
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    shutil.copytree(report["out"], tmp_path / "copy", ignore=shutil.ignore_patterns("wandb"))
    gone = report["page"].images[0]
    (tmp_path / "copy" / gone).unlink()
    check = tmp_path / "copy" / "check.html"
    page = (tmp_path / "copy" / "index.html").read_text(encoding="utf-8")
    check.write_text(page.replace("</body>", CHECK + "</body>"))
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                          "--dump-dom", check.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    body = _Body()
    body.feed(dom)
    assert body.attrs.get("data-broken") == gone


def test_pathway_inputs_are_cached(run: dict, report: dict, monkeypatch: pytest.MonkeyPatch,
                                   tmp_path: Path) -> None:
    """Drawing the pathway figure again reads the report's cached attributions instead of recomputing them."""
    from bench.figures import CACHE_NAME, draw, load_context

    def no_ig(*args, **kwargs):
        raise AssertionError("Integrated Gradients recomputed")

    monkeypatch.setattr("reports.figures.pathways.integrated_gradients", no_ig)
    results = draw("pathways", load_context(run["store"], runs_dir=run["runs"]), tmp_path)
    assert min(_png(results[0].paths[0])) > 100
    assert list((run["runs"] / CACHE_NAME).glob("*.npz"))
