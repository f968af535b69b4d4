"""Errors the CLI turns into a message and an exit code (the conventions of README "Command line").

``BenchError`` carries the exit code: 2 for bad usage or bad input (the default), 1 for a check or
validation that ran and failed. Every message names the file / patient / field at fault and what to
do about it.
"""

from __future__ import annotations

EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2


class BenchError(Exception):
    """A user-facing error: ``str(err)`` is the complete message, ``exit_code`` the process status."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class CohortError(BenchError):
    """A cohort directory, or a file in it, is not usable; the message lists every problem found."""

    def __init__(self, problems: list[str] | str, cohort: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            where = f"cohort {cohort}: " if cohort else ""
            message = where + f"{len(self.problems)} problems:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


class CohortImportError(BenchError, ValueError):
    """A release file cannot be imported as a cohort. The message names the file, the patient or row and
    the field at fault, and says how to fix it."""


class CohortTargetError(CohortImportError, FileExistsError):
    """A cohort's output directory holds something that is not a cohort, so it is not overwritten.

    The one error of :mod:`bench.data.publish` for the generator, the importer and the runner alike:
    a :class:`CohortImportError` because the importer raises nothing else for bad input, and a
    :class:`FileExistsError` as the generator has always raised for this.
    """


def unknown_name(kind: str, name: str, valid: list[str] | tuple[str, ...]) -> BenchError:
    """The error for an unknown site / model / table name, listing the valid ones."""
    return BenchError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(sorted(valid))}")
