"""The results store: one embedded SQLite database (WAL mode, so parallel grid processes share it).

A row is one (run, site, task) result, written in one transaction only when the run has completed;
a multitask run (ModalTune) writes one row per task, and a pan-cancer run one per site and task,
under the same run id. The same transaction writes the row's per-patient test predictions (the
``predictions`` table, read with :meth:`ResultStore.predictions`). Nothing else is ever
written, so an interrupted run leaves no trace and is simply run again.

Beside the rows, the ``claims`` table holds a lease per run id while one process trains it, so two
grids on one store never train the same run twice (see :class:`Claim` for when a lease is stale).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.errors import BenchError
from bench.predictions import Predictions

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

DEFAULT_STORE = Path("runs") / "results.sqlite"
CLAIM_HEARTBEAT_S = 30.0  # a lease holder refreshes its claim this often while it trains
CLAIM_STALE_S = 600.0  # a claim not refreshed for this long is stale, whoever holds it
# The store's layout version, kept in SQLite's ``PRAGMA user_version`` (0 = a store written before
# versioning, same layout as 1). Bump it with any change that older code could not read; older code
# then refuses the store instead of misreading it. 2 added the ``predictions`` table; a store of
# version 0 or 1 is migrated on open (its rows are kept, without predictions).
SCHEMA_VERSION = 2

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
CREATE TABLE IF NOT EXISTS predictions (
    run_id TEXT NOT NULL,
    site TEXT NOT NULL,
    task TEXT NOT NULL,
    case_id TEXT NOT NULL,
    label INTEGER NOT NULL,
    time REAL NOT NULL,
    event INTEGER NOT NULL,
    risk REAL,
    probs TEXT,
    PRIMARY KEY (run_id, site, task, case_id)
);
CREATE TABLE IF NOT EXISTS claims (
    run_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    claimed_at REAL NOT NULL,
    heartbeat REAL NOT NULL
);
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


@dataclass(frozen=True)
class Claim:
    """A lease on one run id: ``owner`` (``host:pid:uuid``) is training it; ``heartbeat`` is the time
    (epoch seconds) the owner last refreshed it."""

    run_id: str
    owner: str
    host: str
    pid: int
    claimed_at: float
    heartbeat: float

    def stale_reason(self, now: float | None = None) -> str | None:
        """Why the claim can be taken over, or None while its owner may still be training.

        Stale means: the owner's process no longer exists on this host (it crashed or was killed),
        or it has not refreshed the claim for ``CLAIM_STALE_S`` (an owner on another host, whose
        pid cannot be checked, or a pid since reused by an unrelated process).
        """
        age = (time.time() if now is None else now) - self.heartbeat
        if age > CLAIM_STALE_S:
            return f"no heartbeat for {age:.0f} s"
        if self.host == socket.gethostname() and not _pid_alive(self.pid):
            return f"process {self.pid} no longer exists"
        return None


def _pid_alive(pid: int) -> bool:
    """True if a process ``pid`` exists on this host (signal 0 checks without signalling)."""
    if os.name == "nt":  # os.kill would terminate it there; rely on the heartbeat instead
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


class Lease:
    """This process's claim on a run id, refreshed by a daemon thread until :meth:`release`.

    The thread opens its own connection (a SQLite connection belongs to its thread); if it finds the
    claim taken over (ours looked stale to another process), it logs that and stops refreshing.
    """

    def __init__(self, path: Path, claim: Claim):
        self.path = path
        self.claim = claim
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"claim-{claim.run_id}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(CLAIM_HEARTBEAT_S):
            try:
                with ResultStore(self.path) as store:
                    if not store.refresh_claim(self.claim):
                        log.warning("the claim on run %s was taken over by another process", self.claim.run_id)
                        return
            except sqlite3.Error as err:
                log.warning("could not refresh the claim on run %s: %s", self.claim.run_id, err)

    def release(self) -> None:
        """Stop refreshing and delete the claim (only if it is still ours); safe to call twice."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        with ResultStore(self.path) as store:
            store.release_claim(self.claim)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _encode_metrics(metrics: dict[str, float]) -> str:
    # NaN is not JSON; store it as null and read it back as NaN.
    return json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()},
                      sort_keys=True)


def _decode_metrics(text: str) -> dict[str, float]:
    return {k: (float("nan") if v is None else v) for k, v in json.loads(text).items()}


def _prediction_records(run_id: str, site: str, task: str, pred: Predictions) -> list[tuple]:
    """The ``predictions`` table's records of one row: a NaN risk is stored as NULL, class
    probabilities as a JSON list (exact: JSON keeps every float's repr)."""
    out = []
    for i, case_id in enumerate(pred.case_ids):
        risk = None if pred.risk is None or math.isnan(pred.risk[i]) else float(pred.risk[i])
        probs = None if pred.probs is None else json.dumps([float(p) for p in pred.probs[i]])
        out.append((run_id, site, task, case_id, int(pred.labels[i]), float(pred.times[i]), int(pred.events[i]),
                    risk, probs))
    return out


def check_store(path: str | Path) -> None:
    """Refuse ``path`` as a results store, without writing anything, unless it is absent and can be
    created, an empty database, or a results store of a schema version this code reads.

    Runs before a run or a grid writes anything (and on every open), so that a wrong ``--store``
    (a directory, another program's file, a store of a newer modaltune-bench) is a named error, never
    a traceback from SQLite or a store silently altered.
    """
    path = Path(path)
    fix = "pass another --store (or set BENCH_STORE)"
    if path.is_dir():
        raise BenchError(f"results store {path} is a directory; {fix}, e.g. --store {path / DEFAULT_STORE.name}")
    if not path.exists():
        ancestor = next(p for p in path.absolute().parents if p.exists())
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            raise BenchError(f"results store {path} cannot be created: {ancestor} is not a writable directory; {fix}")
        return
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
        try:
            tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.DatabaseError as err:
        raise BenchError(f"{path} is not a results store (SQLite: {err}); {fix}") from err
    if tables and "results" not in tables:
        raise BenchError(f"{path} is an SQLite database but not a results store (no 'results' table); {fix}")
    if version > SCHEMA_VERSION:
        raise BenchError(f"results store {path} was written by a newer modaltune-bench (schema {version} > "
                         f"{SCHEMA_VERSION}); upgrade, or use another --store")


class ResultStore:
    """Read/write access to one SQLite results file (checked by :func:`check_store` first)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        check_store(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA busy_timeout=60000")
        self._conn.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Bring a store of an older schema version to :data:`SCHEMA_VERSION` (every step so far only
        adds tables, which ``_SCHEMA`` has just created: stored rows are kept as they are; rows from
        before version 2 simply have no predictions)."""
        if self._conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        with self._transaction():
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION:
                self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        if 0 < version < SCHEMA_VERSION or (version == 0 and self.latest() is not None):
            log.info("results store %s: migrated from schema %d to %d (stored rows kept; rows from before "
                     "schema 2 have no per-patient predictions)", self.path, version, SCHEMA_VERSION)

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

    def write(self, rows: list[ResultRow],
              predictions: Mapping[tuple[str, str, str], Predictions] | None = None) -> None:
        """Insert (or replace) all ``rows`` and their test ``predictions`` (keyed ``(run_id, site, task)``
        of a row in ``rows``) in one transaction. Predictions stored earlier for these rows are
        replaced (``--force``); a row without an entry in ``predictions`` keeps none."""
        predictions = dict(predictions or {})
        keys = [(r.run_id, r.site, r.task) for r in rows]
        stray = set(predictions) - set(keys)
        if stray:
            raise ValueError(f"predictions for rows not being written: {sorted(stray)}")
        now = time.time()
        with self._transaction():
            self._conn.executemany(
                "INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [(r.run_id, r.task, r.model, r.site, r.seed, r.profile, r.cohort, r.cohort_fingerprint, r.regime,
                  _encode_metrics(r.metrics), json.dumps(r.config, sort_keys=True), r.n_train, r.n_val, r.n_test,
                  r.n_excluded, r.seconds, now) for r in rows])
            self._conn.executemany("DELETE FROM predictions WHERE run_id = ? AND site = ? AND task = ?", keys)
            for (run_id, site, task), pred in predictions.items():
                self._conn.executemany("INSERT INTO predictions VALUES (?,?,?,?,?,?,?,?,?)",
                                       _prediction_records(run_id, site, task, pred))

    def prediction_set(self, run_id: str, site: str, task: str) -> Predictions | None:
        """The stored test predictions of row ``(run_id, site, task)`` (patients sorted by case id), or
        None where the row has none (a row stored before schema 2, or no such row)."""
        records = self._conn.execute(
            "SELECT case_id, label, time, event, risk, probs FROM predictions WHERE run_id = ? AND site = ? "
            "AND task = ? ORDER BY case_id", (run_id, site, task)).fetchall()
        if not records:
            return None
        case_ids, labels, times, events, risk, probs = zip(*records)
        subtype = probs[0] is not None
        return Predictions(
            case_ids=tuple(case_ids), labels=np.array(labels, dtype=np.int64), times=np.array(times, dtype=np.float64),
            events=np.array(events, dtype=np.int64),
            probs=np.array([json.loads(p) for p in probs], dtype=np.float64) if subtype else None,
            risk=None if subtype else np.array([math.nan if r is None else r for r in risk], dtype=np.float64))

    def predictions(self, run_id: str, site: str, task: str) -> pd.DataFrame:
        """The stored test predictions of row ``(run_id, site, task)``: one row per test patient, sorted
        by ``case_id``, with the columns

        ``case_id`` (str), ``label`` (int subtype class; -1 = rare set, ignored by the balanced accuracy),
        ``time`` (float, survival months), ``event`` (int, 1 = died), ``risk`` (float; survival rows: the
        score the C-index ranks, higher = shorter survival; NaN for subtype rows and for a survival risk
        that could not be computed), ``prob_0`` … ``prob_<K-1>`` (float class probabilities; subtype rows
        only) and ``seed`` (int, the run's seed).

        The frame is empty (those columns, no prob_*) where the row has no stored predictions: rows
        stored before schema version 2, or a row that does not exist. Stable API: figures and
        statistics read it.
        """
        import pandas as pd

        pred = self.prediction_set(run_id, site, task)
        seed = self._conn.execute("SELECT seed FROM results WHERE run_id = ? AND site = ? AND task = ?",
                                  (run_id, site, task)).fetchone()
        columns = ["case_id", "label", "time", "event", "risk"]
        if pred is None:
            return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
                columns + ["seed"], ["object", "int64", "float64", "int64", "float64", "int64"])})
        frame = pd.DataFrame({"case_id": list(pred.case_ids), "label": pred.labels, "time": pred.times,
                              "event": pred.events,
                              "risk": pred.risk if pred.risk is not None else np.full(len(pred.case_ids), np.nan)})
        if pred.probs is not None:
            for k in range(pred.probs.shape[1]):
                frame[f"prob_{k}"] = pred.probs[:, k]
        frame["seed"] = np.int64(seed[0]) if seed else np.int64(-1)
        return frame

    def try_claim(self, run_id: str) -> Lease | None:
        """Claim ``run_id`` for this process in one ``BEGIN IMMEDIATE`` transaction: a :class:`Lease`,
        or None while another live owner holds it. A stale claim is taken over (and logged)."""
        now = time.time()
        host = socket.gethostname()
        claim = Claim(run_id, f"{host}:{os.getpid()}:{uuid.uuid4().hex}", host, os.getpid(), now, now)
        with self._transaction():
            held = self._claim(run_id)
            if held is not None:
                reason = held.stale_reason(now)
                if reason is None:
                    return None
                log.warning("taking over the stale claim on run %s of %s: %s", run_id, held.owner, reason)
            self._conn.execute("INSERT OR REPLACE INTO claims VALUES (?,?,?,?,?,?)",
                               (claim.run_id, claim.owner, claim.host, claim.pid, claim.claimed_at, claim.heartbeat))
        return Lease(self.path, claim)

    def holder(self, run_id: str) -> Claim | None:
        """The claim on ``run_id``, stale or not; None if nobody claims it."""
        return self._claim(run_id)

    def refresh_claim(self, claim: Claim) -> bool:
        """Move ``claim``'s heartbeat to now; False if it is no longer ours."""
        with self._transaction():
            cur = self._conn.execute("UPDATE claims SET heartbeat = ? WHERE run_id = ? AND owner = ?",
                                     (time.time(), claim.run_id, claim.owner))
        return cur.rowcount == 1

    def release_claim(self, claim: Claim) -> None:
        """Delete ``claim`` if it is still ours (a claim taken over by another process stays)."""
        with self._transaction():
            self._conn.execute("DELETE FROM claims WHERE run_id = ? AND owner = ?", (claim.run_id, claim.owner))

    def _claim(self, run_id: str) -> Claim | None:
        row = self._conn.execute("SELECT run_id, owner, host, pid, claimed_at, heartbeat FROM claims "
                                 "WHERE run_id = ?", (run_id,)).fetchone()
        return Claim(*row) if row else None

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
