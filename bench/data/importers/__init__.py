"""Importers that turn published data releases into the cohort format (:mod:`bench.data.format`).

Each importer reads a release's own files (split lists, expression tables, pathway compositions,
feature files) once and writes a complete cohort directory, atomically. The harness only ever reads
cohorts, never the release files themselves.
"""

from bench.data.importers.modaltune import CohortImportError, ImportReport, SiteCounts, import_modaltune

__all__ = ["CohortImportError", "ImportReport", "SiteCounts", "import_modaltune"]
