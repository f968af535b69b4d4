"""Importers that turn published data releases into the cohort format (:mod:`bench.data.format`).

Each importer reads a release's own files (split lists, expression tables, pathway compositions,
feature files) once and writes a complete cohort directory, atomically. The harness only ever reads
cohorts, never the release files themselves. :mod:`.modaltune` reads ModalTune's split files,
:mod:`.survpath` SurvPath's expression and pathway tables, :mod:`.mcat` MCAT's gene families.
"""

from bench.data.importers.modaltune import ImportReport, SiteCounts, import_modaltune
from bench.errors import CohortImportError

__all__ = ["CohortImportError", "ImportReport", "SiteCounts", "import_modaltune"]
