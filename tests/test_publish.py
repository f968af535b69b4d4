"""Tests of the one cohort publisher (bench.data.publish) that the generator, the importer and the runner use."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from bench.cli import main
from bench.data import format as fmt
from bench.data import publish
from bench.data.fingerprint import content_fingerprint
from bench.data.importers import import_modaltune
from bench.data.synth import generate_cohort
from bench.errors import CohortTargetError


def _foreign(path: Path) -> Path:
    path.mkdir()
    (path / "notes.txt").write_text("mine")
    return path


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def _publish_copy(source: Path, target: Path) -> None:
    """Publish a copy of the cohort ``source`` (its stored fingerprint dropped) as ``target``."""
    with publish.publish_cohort(target) as private:
        shutil.copytree(source, private, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".cache"))
        manifest = json.loads((private / fmt.MANIFEST).read_text())
        del manifest["fingerprint"]
        (private / fmt.MANIFEST).write_text(json.dumps(manifest))


def test_generator_and_importer_refuse_a_foreign_directory_with_one_error(tmp_path: Path, capsys) -> None:
    target = _foreign(tmp_path / "out")
    with pytest.raises(CohortTargetError) as generated:
        generate_cohort(target, "tiny", sites=["BLCA"])
    splits = tmp_path / "splits"
    splits.mkdir()
    with pytest.raises(CohortTargetError) as imported:
        import_modaltune(splits, target)
    assert str(generated.value) == str(imported.value)
    assert f"{target} is not a cohort" in str(generated.value) and "without cohort.json" in str(generated.value)
    assert isinstance(generated.value, FileExistsError)

    capsys.readouterr()
    assert main(["data", "synth", "--out", str(target), "--scale", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "is not a cohort" in err and "Traceback" not in err
    assert [p.name for p in target.iterdir()] == ["notes.txt"] and _siblings(target) == ["out", "splits"]


def test_published_cohort_is_stamped_with_its_fingerprint(rcc_cohort: Path, tmp_path: Path) -> None:
    target = tmp_path / "cohort"
    _publish_copy(rcc_cohort, target)
    stored = json.loads((target / fmt.MANIFEST).read_text())["fingerprint"]
    assert stored == content_fingerprint(target) == content_fingerprint(rcc_cohort)
    assert _siblings(target) == ["cohort"]
    assert os.stat(target).st_mode & 0o777 == 0o777 & ~_umask()  # not the private directory's 0700


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_failure_in_the_block_leaves_the_target_as_it_was(rcc_cohort: Path, tmp_path: Path) -> None:
    target = tmp_path / "cohort"
    _publish_copy(rcc_cohort, target)
    before = (target / fmt.PATIENTS).read_text()
    with pytest.raises(KeyboardInterrupt), publish.publish_cohort(target) as private:
        (private / fmt.PATIENTS).write_text("half-written")
        raise KeyboardInterrupt
    assert (target / fmt.PATIENTS).read_text() == before
    assert _siblings(target) == ["cohort"]
    with pytest.raises(KeyboardInterrupt), publish.publish_cohort(tmp_path / "fresh"):
        raise KeyboardInterrupt
    assert _siblings(target) == ["cohort"]


def test_a_failed_replacement_restores_the_old_cohort(rcc_cohort: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "cohort"
    _publish_copy(rcc_cohort, target)
    before = json.loads((target / fmt.MANIFEST).read_text())
    real_rename = os.rename

    def failing_rename(src, dst):
        if Path(src).name.endswith(".partial"):  # the new cohort's rename into place
            raise OSError("disk on fire")
        real_rename(src, dst)

    monkeypatch.setattr(publish.os, "rename", failing_rename)
    with pytest.raises(OSError, match="disk on fire"):
        _publish_copy(rcc_cohort, target)
    monkeypatch.undo()
    assert json.loads((target / fmt.MANIFEST).read_text()) == before
    assert _siblings(target) == ["cohort"], "the old cohort must be moved back and the private copy removed"


def test_target_turned_foreign_meanwhile_is_refused_at_publication(rcc_cohort: Path, tmp_path: Path) -> None:
    target = tmp_path / "cohort"
    with pytest.raises(CohortTargetError), publish.publish_cohort(target) as private:
        shutil.copytree(rcc_cohort, private, dirs_exist_ok=True)
        _foreign(target)
    assert [p.name for p in target.iterdir()] == ["notes.txt"] and _siblings(target) == ["cohort"]


def test_install_without_replace_keeps_the_cohort_published_first(rcc_cohort: Path, tmp_path: Path) -> None:
    theirs = tmp_path / "cohort"
    _publish_copy(rcc_cohort, theirs)
    mine = tmp_path / "mine"
    generate_cohort(mine, "tiny", seed=1, sites=["BLCA"])
    assert publish.install(mine, theirs, replace=False) is False
    assert json.loads((theirs / fmt.MANIFEST).read_text())["sites"].keys() == {"RCC"}
    assert publish.install(mine, theirs) is True  # the default replaces it
    assert json.loads((theirs / fmt.MANIFEST).read_text())["sites"].keys() == {"BLCA"}
    assert _siblings(theirs) == ["cohort"]
