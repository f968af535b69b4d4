"""The results store: one embedded SQLite database (WAL mode, so parallel grid processes share it).

A row is one (run, site, task) result, written in one transaction only when the run has completed;
a multitask run (ModalTune) writes one row per task, and a pan-cancer run one per site and task,
under the same run id. Nothing else is ever
written, so an interrupted run leaves no trace and is simply run again.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_STORE = Path("runs") / "results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    run_id TEXT NOT NULL,
    task TEXT NOT NULL,
    model TEXT NOT NULL,
    site TEXT NOT NULL,
    seed INTEGER NOT NULL,
    profile TEXT NOT NULL,
    cohort TEXT NOT NULL,
    cohort_fingerprint TEXT NOT NULL,
    regime TEXT NOT NULL,
    metrics TEXT NOT NULL,
    config TEXT NOT NULL,
    n_train INTEGER, n_val INTEGER, n_test INTEGER, n_excluded INTEGER,
    seconds REAL,
    finished_at REAL NOT NULL,
    PRIMARY KEY (run_id, site, task)
);
CREATE INDEX IF NOT EXISTS results_lookup ON results (profile, model, site, task);
"""


def store_path(cli_value: str | None = None) -> Path:
    """``--store`` if given, else ``$BENCH_STORE``, else ``runs/results.sqlite``."""
    return Path(cli_value or os.environ.get("BENCH_STORE") or DEFAULT_STORE)


@dataclass(frozen=True)
class ResultRow:
    run_id: str
    task: str
    model: str
    site: str
    seed: int
    profile: str
    cohort: str
    cohort_fingerprint: str
    regime: str
    metrics: dict[str, float]
    config: dict[str, Any]
    n_train: int
    n_val: int
    n_test: int
    n_excluded: int
    seconds: float
    finished_at: float = 0.0


def _encode_metrics(metrics: dict[str, float]) -> str:
    # NaN is not JSON; store it as null and read it back as NaN.
    return json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()},
                      sort_keys=True)


def _decode_metrics(text: str) -> dict[str, float]:
    return {k: (float("nan") if v is None else v) for k, v in json.loads(text).items()}


class ResultStore:
    """Read/write access to one SQLite results file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA busy_timeout=60000")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has(self, run_id: str, keys: Iterable[tuple[str, str]]) -> bool:
        """True if every ``(site, task)`` row of ``run_id`` is stored."""
        stored = {(site, task) for site, task in self._conn.execute(
            "SELECT site, task FROM results WHERE run_id = ?", (run_id,)).fetchall()}
        return set(keys) <= stored

    def get(self, run_id: str) -> list[ResultRow]:
        return self._select("WHERE run_id = ?", (run_id,))

    def write(self, rows: list[ResultRow]) -> None:
        """Insert (or replace) all ``rows`` in one transaction."""
        now = time.time()
        with self._transaction():
            self._conn.executemany(
                "INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [(r.run_id, r.task, r.model, r.site, r.seed, r.profile, r.cohort, r.cohort_fingerprint, r.regime,
                  _encode_metrics(r.metrics), json.dumps(r.config, sort_keys=True), r.n_train, r.n_val, r.n_test,
                  r.n_excluded, r.seconds, now) for r in rows])

    def rows(self, *, profile: str | None = None, cohort_fingerprint: str | None = None) -> list[ResultRow]:
        clauses, params = [], []
        if profile:
            clauses.append("profile = ?")
            params.append(profile)
        if cohort_fingerprint:
            clauses.append("cohort_fingerprint = ?")
            params.append(cohort_fingerprint)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        return self._select(where + " ORDER BY finished_at", tuple(params))

    def latest(self) -> ResultRow | None:
        rows = self._select("ORDER BY finished_at DESC LIMIT 1", ())
        return rows[0] if rows else None

    def _select(self, tail: str, params: tuple) -> list[ResultRow]:
        cur = self._conn.execute(f"SELECT * FROM results {tail}", params)
        names = [d[0] for d in cur.description]
        out = []
        for values in cur.fetchall():
            rec = dict(zip(names, values))
            rec["metrics"] = _decode_metrics(rec["metrics"])
            rec["config"] = json.loads(rec["config"])
            out.append(ResultRow(**rec))
        return out

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")
