"""Publishing a cohort directory: written in private, stamped, renamed into place, rolled back on failure.

The synthetic generator, the importer and the runner's embedded cohort all publish through
:func:`publish_cohort` (or, for a cohort already complete in a private directory, :func:`install`),
so a reader never sees a half-written cohort and a failure never leaves one behind:

- an output directory that exists and is neither empty nor a cohort (no ``cohort.json``) is refused
  with :class:`~bench.errors.CohortTargetError`, before anything is written and again just before
  the rename;
- the cohort is written into a private temporary directory next to the target (same file system,
  so the final rename is atomic), which is removed on any failure, interrupts included;
- its content fingerprint (:mod:`bench.data.fingerprint`) is stamped into its ``cohort.json``;
- it is renamed onto the target. An earlier cohort there is moved aside first, deleted once the new
  one is in place, and moved back if the rename fails.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.data import format as fmt
from bench.data.fingerprint import stamp_fingerprint
from bench.errors import CohortTargetError

log = logging.getLogger(__name__)


def is_cohort(path: Path) -> bool:
    """Whether ``path`` is a published cohort (a directory with ``cohort.json``)."""
    return (Path(path) / fmt.MANIFEST).is_file()


def refuse_foreign(target: Path) -> None:
    """Raise :class:`CohortTargetError` unless ``target`` is absent, an empty directory or a cohort."""
    target = Path(target)
    if not target.exists() and not target.is_symlink():
        return
    if target.is_dir() and (is_cohort(target) or not any(target.iterdir())):
        return
    raise CohortTargetError(
        f"{target} is not a cohort: it exists and is neither empty nor a cohort (a file, or a non-empty directory "
        f"without {fmt.MANIFEST}); refusing to overwrite it — choose another output directory (--out, or "
        "$BENCH_COHORTS for the embedded synthetic cohort), or move its contents away")


@contextmanager
def publish_cohort(target: str | Path) -> Iterator[Path]:
    """Yield a private, empty directory next to ``target``; on leaving the block, publish it as ``target``.

    The block writes a complete cohort into the directory. On success its content fingerprint is
    stamped into ``cohort.json``, its files get the usual umask modes (the private directory is
    created 0700) and it is renamed onto ``target`` (:func:`install`, replacing an earlier cohort).
    On any failure, or if ``target`` turned into something that is not a cohort meanwhile, the
    private directory is removed and ``target`` is left as it was.
    """
    target = Path(target).absolute()
    refuse_foreign(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield private
        stamp_fingerprint(private)
        _umask_modes(private)
        install(private, target)
    finally:
        if private.exists():
            shutil.rmtree(private, ignore_errors=True)  # removes symlinks, never their targets


def install(private: Path, target: Path, *, replace: bool = True) -> bool:
    """Rename the complete cohort ``private`` onto ``target``; True if it was published there.

    ``target`` may be absent or an empty directory (a plain atomic rename), or a cohort: with
    ``replace`` it is moved aside, ``private`` renamed in and the old one deleted (moved back if the
    rename fails); without, ``target`` is kept and False returned — the caller uses the cohort that
    someone else published first. Anything else is refused (:func:`refuse_foreign`).
    """
    refuse_foreign(target)
    if not is_cohort(target):
        try:
            os.rename(private, target)  # onto an empty directory too; fails if it has been filled meanwhile
            return True
        except OSError:
            if not is_cohort(target):
                refuse_foreign(target)
                raise
    if not replace:
        log.info("another process published %s meanwhile; keeping it", target)
        return False
    _swap(private, target)
    return True


def _swap(private: Path, target: Path) -> None:
    """Replace the cohort ``target`` by ``private``: old moved aside, new renamed in, old deleted."""
    retired = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(target, retired)
    try:
        os.rename(private, target)
    except BaseException:
        os.rename(retired, target)
        raise
    shutil.rmtree(retired, ignore_errors=True)  # removes symlinks, never their targets


def _umask_modes(root: Path) -> None:
    """Give ``root`` and everything in it the modes the umask gives new files and directories
    (private temporary directories and files are created 0700 / 0600); symlinks are left alone."""
    mask = os.umask(0o022)
    os.umask(mask)
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)
