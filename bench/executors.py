"""Grids and tuning workers as jobs, through submitit: ``--executor local`` (subprocesses on this
machine) or ``--executor slurm`` (``sbatch``, one job per run).

Only the driver (the ``bench grid`` process) writes the SQLite results store: a job plans and
trains its run and *returns* its result rows (:func:`compute_run`), and the driver stores them, so
a store on a network file system never has more than one writer. Each run's job lives in its own
folder ``jobs/<run id>/`` beside the results store, with a ledger (``job.json``: the executor and
job id) written as soon as it is submitted (a driver killed before writing it finds the job from
the submission file submitit left) and removed, with the job's pickles, once its rows are stored
(its logs stay). A driver that is
killed and restarted reads the ledgers of the runs still missing: a finished job's rows are
collected, a job still queued or running is waited for, and only a run whose job is gone (or
failed) is submitted again. The driver claims each run in the store while its job is out
(:meth:`bench.results.ResultStore.try_claim`), so two drivers on one store never submit one run twice.

SLURM settings: ``--slurm-partition``, ``--slurm-gpus``, ``--slurm-time``, ``--slurm-mem`` or a YAML
file (``--slurm-config``) holding those keys and ``cpus_per_task``, ``account``, ``qos``,
``constraint``, ``setup`` (shell lines run before the job, e.g. activating the environment) and
``additional`` (any other ``#SBATCH`` option); flags override the file (:class:`SlurmSettings`,
mapped onto submitit's ``SlurmExecutor.update_parameters`` by :func:`slurm_parameters`).

This module imports nothing heavy at import time: a job process unpickles :func:`compute_run` from it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bench.errors import BenchError

log = logging.getLogger(__name__)

EXECUTORS = ("local", "slurm")
LEDGER = "job.json"
LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # submitit's local default (2 minutes) would kill any real run
POLL_S = {"local": 0.5, "slurm": 15.0}  # how often the driver looks at its jobs


# ---------------------------------------------------------------------------------------------- settings
class SlurmSettings(BaseModel):
    """What a SLURM job asks for (``--slurm-*`` flags or a ``--slurm-config`` YAML file).

    ``time``: SLURM's formats (``minutes``, ``minutes:seconds``, ``hours:minutes:seconds``,
    ``days-hours[:minutes[:seconds]]``); ``mem``: per node, a number with an optional K/M/G/T unit
    (SLURM's default: megabytes); ``gpus``: GPUs per node.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    partition: str | None = None
    gpus: int | None = Field(default=None, ge=0)
    time: str | None = None
    mem: str | None = None
    cpus_per_task: int | None = Field(default=None, gt=0)
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: tuple[str, ...] = ()
    additional: dict[str, str | int] = Field(default_factory=dict)

    @field_validator("time", mode="before")
    @classmethod
    def _time(cls, value: Any) -> str | None:
        if value is None:
            return None
        slurm_minutes(str(value))
        return str(value)

    @field_validator("mem", mode="before")
    @classmethod
    def _mem(cls, value: Any) -> str | None:
        if value is None:
            return None
        text = str(value).strip().upper().removesuffix("B")
        if not re.fullmatch(r"\d+[KMGT]?", text):
            raise ValueError(f"memory must be a whole number with an optional K/M/G/T unit (e.g. 32G), got {value!r}")
        return text


def slurm_minutes(text: str) -> int:
    """A SLURM time limit in whole minutes (seconds rounded up); ValueError naming the formats."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match or not text.strip():
        raise ValueError(f"time must be minutes, minutes:seconds, hours:minutes:seconds or days-hours[:minutes"
                         f"[:seconds]] (SLURM's formats), got {text!r}")
    days, first, second, third = match.groups()
    if days is not None:  # days-hours[:minutes[:seconds]]
        seconds = int(days) * 86400 + int(first) * 3600 + int(second or 0) * 60 + int(third or 0)
    elif third is not None:  # hours:minutes:seconds
        seconds = int(first) * 3600 + int(second) * 60 + int(third)
    else:  # minutes[:seconds]
        seconds = int(first) * 60 + int(second or 0)
    if seconds <= 0:
        raise ValueError(f"time must be positive, got {text!r}")
    return -(-seconds // 60)


def load_slurm_settings(path: str | Path | None = None, **flags: Any) -> SlurmSettings:
    """The settings of a ``--slurm-config`` YAML file (optional) with the ``--slurm-*`` flags that are
    set replacing its values; a bad file or value is a :class:`BenchError` naming it."""
    import yaml

    values: dict[str, Any] = {}
    where = "--slurm-* options"
    if path is not None:
        where = f"--slurm-config {path}"
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise BenchError(f"{where}: unreadable YAML ({' '.join(str(err).split())})") from err
        if not isinstance(loaded, dict):
            raise BenchError(f"{where}: expected a mapping of SLURM settings, got {type(loaded).__name__}")
        values.update(loaded)
    values.update({k: v for k, v in flags.items() if v is not None})
    try:
        return SlurmSettings.model_validate(values)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in err.errors())
        valid = ", ".join(SlurmSettings.model_fields)
        raise BenchError(f"{where}: {problems} (valid keys: {valid})") from err


def slurm_parameters(settings: SlurmSettings) -> dict[str, Any]:
    """``settings`` as keyword arguments of submitit's ``SlurmExecutor.update_parameters`` (one task on
    one node per job; only the settings that are set, so SLURM's or the site's defaults apply otherwise)."""
    out: dict[str, Any] = {"nodes": 1, "ntasks_per_node": 1}
    if settings.partition is not None:
        out["partition"] = settings.partition
    if settings.gpus is not None:
        out["gpus_per_node"] = settings.gpus
    if settings.time is not None:
        out["time"] = slurm_minutes(settings.time)
    if settings.mem is not None:
        out["mem"] = settings.mem
    for key in ("cpus_per_task", "account", "qos", "constraint"):
        if getattr(settings, key) is not None:
            out[key] = getattr(settings, key)
    if settings.setup:
        out["setup"] = list(settings.setup)
    if settings.additional:
        out["additional_parameters"] = dict(settings.additional)
    return out


def check_executor(kind: str) -> None:
    """Refuse an unknown executor, or ``slurm`` on a machine without SLURM's commands, before anything runs."""
    import shutil

    if kind not in EXECUTORS:
        raise BenchError(f"unknown executor {kind!r}; valid executors: {', '.join(EXECUTORS)}")
    if kind == "slurm" and (shutil.which("sbatch") is None or shutil.which("srun") is None):
        raise BenchError("--executor slurm: no `sbatch`/`srun` on this machine; run the driver on a SLURM login node, "
                         "or use --executor local")


def make_executor(kind: str, folder: Path, settings: SlurmSettings | None, name: str) -> Any:
    """A submitit executor writing its files under ``folder``: ``local`` (one subprocess per job, no
    time limit to speak of, this machine's GPUs visible) or ``slurm`` (``settings``)."""
    import submitit

    if kind == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN, gpus_per_node=_local_gpus())
        return executor
    if kind != "slurm":
        raise BenchError(f"unknown executor {kind!r}; valid executors: {', '.join(EXECUTORS)}")
    try:
        executor = submitit.SlurmExecutor(folder=folder)
    except RuntimeError as err:
        raise BenchError(f"--executor slurm: {err} (no `srun` here); run the driver on a SLURM login node, or use "
                         "--executor local") from err
    executor.update_parameters(job_name=name, **slurm_parameters(settings or SlurmSettings()))
    return executor


def _local_gpus() -> int:
    """GPUs a local job may see (submitit hides them all unless told how many)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# ---------------------------------------------------------------------------------------------- job side
def compute_run(job: dict[str, Any]) -> Any:
    """A grid job: plan and train one run (``job["request"]``: RunRequest fields) and return its result
    rows and predictions (:class:`bench.runner.TrainedRun`), without touching the results store. ``job["run_id"]`` is the id the driver planned; a job
    that computes another (other code or data on the cluster) fails saying so."""
    from bench.logs import quiet_libraries
    from bench.regimes import regime_for
    from bench.runner import RunRequest, plan_run, run_config, train_rows

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    req = RunRequest(**job["request"])
    plan = plan_run(req, results_store=False)
    config = run_config(plan)
    if config.run_id() != job["run_id"]:
        raise BenchError(f"this job planned run {config.run_id()} but the driver submitted run {job['run_id']}: "
                         "the job sees other code or another cohort than the driver; install the same version "
                         "on the cluster and use a cohort path both can read")
    return train_rows(req, plan, regime_for(plan.entry), config)


# ---------------------------------------------------------------------------------------------- ledgers
@dataclass
class Ledger:
    """One submitted job of a run: where its files are and how to find it again after a restart."""

    folder: Path
    executor: str
    job_id: str
    submitted_at: float
    host: str

    def write(self) -> None:
        """Write ``job.json`` atomically."""
        from bench.data.format import atomic_path

        with atomic_path(self.folder / LEDGER) as tmp:
            tmp.write_text(json.dumps({"executor": self.executor, "job_id": self.job_id,
                                       "submitted_at": self.submitted_at, "host": self.host}, indent=2) + "\n")

    @classmethod
    def read(cls, folder: Path, executor: str) -> Ledger | None:
        """The ledger in ``folder``. Without one (a driver killed between submitting the job and writing
        its ledger), the job whose submission submitit left there, taken to be ``executor``'s and
        this host's; None if there is neither (or the ledger is unreadable: resubmit)."""
        try:
            data = json.loads((folder / LEDGER).read_text())
        except FileNotFoundError:
            submitted = sorted(folder.glob("*_submitted.pkl"), key=lambda p: p.stat().st_mtime)
            if not submitted:
                return None
            job_id = submitted[-1].name.removesuffix("_submitted.pkl")
            return cls(folder, executor, job_id, submitted[-1].stat().st_mtime, socket.gethostname())
        except (OSError, ValueError):
            return None
        try:
            return cls(folder, str(data["executor"]), str(data["job_id"]), float(data["submitted_at"]),
                       str(data["host"]))
        except (KeyError, TypeError, ValueError):
            return None

    def remove(self) -> None:
        """Forget the job once its rows are stored: its ledger and its pickles go (its logs stay)."""
        from submitit.core.utils import JobPaths

        paths = JobPaths(self.folder, self.job_id, 0)
        for path in (paths.submitted_pickle, paths.result_pickle, self.folder / LEDGER):
            path.unlink(missing_ok=True)


@dataclass
class Tracked:
    """A job the driver waits for: one it submitted (``job`` has its process or SLURM id), or one a
    previous driver submitted and this one found again from its ledger."""

    ledger: Ledger
    job: Any
    reattached: bool = False

    @property
    def result_pickle(self) -> Path:
        return Path(self.job.paths.result_pickle)

    def finished(self) -> bool:
        """True once the job will change no more: its result is written, or it is no longer running."""
        if self.result_pickle.exists():
            return True
        if self.reattached and self.ledger.executor == "local":
            return not _controller_running(self.ledger.job_id, self.ledger.host)
        return bool(self.job.done())

    def outcome(self) -> tuple[bool, Any]:
        """``(True, result)``, or ``(False, one-line reason)`` for a job that failed or left no result."""
        from submitit.core import utils

        if not self.result_pickle.exists():
            return False, (f"job {self.ledger.job_id} ended without a result (state {self.job.state}); "
                           f"its logs: {self.job.paths.stderr}")
        status, value = utils.pickle_load(self.result_pickle)
        if status == "success":
            return True, value
        return False, f"{_last_line(str(value))} (job {self.ledger.job_id}; logs: {self.job.paths.stderr})"


def _last_line(trace: str) -> str:
    """The exception line of a traceback (its last non-empty line), as one line."""
    lines = [line.strip() for line in trace.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "unknown error"
    return last.removeprefix("bench.errors.")


def _controller_running(job_id: str, host: str) -> bool:
    """True while the local job's controller process (pid ``job_id``) runs on this host: not
    exited, not a zombie, and still a submitit controller (not a reused pid)."""
    if host != socket.gethostname():
        return True  # another machine's local job cannot be checked: wait for its result
    return process_running(int(job_id), must_contain="submitit")


def process_running(pid: int, must_contain: str | None = None) -> bool:
    """True if ``pid`` is a live process on this host (a zombie is not), whose command line contains
    ``must_contain`` where given (Linux; elsewhere only existence is checked)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():
        return True
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, IndexError):
        return False
    if state in ("Z", "X"):
        return False
    return must_contain is None or must_contain in cmdline


def reattach(ledger: Ledger) -> Tracked | None:
    """The job of a previous driver's ledger, if it can still give a result: finished with a result
    that is not an error, or still queued or running. None: it failed or vanished (resubmit it)."""
    import submitit

    job_class = submitit.LocalJob if ledger.executor == "local" else submitit.SlurmJob
    tracked = Tracked(ledger, job_class(folder=ledger.folder, job_id=ledger.job_id), reattached=True)
    if tracked.result_pickle.exists():
        ok, _ = tracked.outcome()
        return tracked if ok else None
    if ledger.executor == "local":
        return tracked if _controller_running(ledger.job_id, ledger.host) else None
    return None if tracked.job.done() else tracked


# ---------------------------------------------------------------------------------------------- grid driver
@dataclass
class GridJobs:
    """The executor side of one grid: its requests (RunRequest fields), their run ids and result
    keys, the results store and where the jobs' folders go."""

    requests: list[dict[str, Any]]
    run_ids: list[str]
    keys: list[list[tuple[str, str]]]
    store: Path
    executor: str
    settings: SlurmSettings | None = None
    limit: int | None = None
    jobs_root: Path | None = None
    outcomes: dict[int, dict[str, Any]] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)

    def root(self) -> Path:
        return self.jobs_root or jobs_root(self.store)


def jobs_root(store: Path) -> Path:
    """Where a store's jobs keep their folders: ``jobs/`` beside it."""
    return Path(store).absolute().parent / "jobs"


def run_grid_jobs(grid: GridJobs, bar: Any) -> tuple[dict[int, dict[str, Any]], dict[int, str]]:
    """Run every request as a job (at most ``grid.limit`` out at once) and store each result as it
    comes back; returns (results, one-line errors), both keyed by request index, like the in-process
    grid. A run another process claims is retried until that process has stored it or let it go."""
    check_executor(grid.executor)
    waiting: list[tuple[int, float]] = [(i, 0.0) for i in range(len(grid.requests))]
    inflight: dict[int, tuple[Tracked, Any]] = {}
    limit = grid.limit or len(grid.requests) or 1
    poll = POLL_S.get(grid.executor, 1.0)
    try:
        while waiting or inflight:
            now = time.time()
            for i, due in [(i, due) for i, due in waiting if due <= now]:
                if len(inflight) >= limit:
                    break
                waiting.remove((i, due))
                started = _start(grid, i)
                if isinstance(started, tuple):
                    inflight[i] = started
                elif started == "claimed":
                    waiting.append((i, now + poll * 4))
                else:
                    bar.update()
            for i, (tracked, lease) in list(inflight.items()):
                if tracked.finished():
                    _finish(grid, i, tracked, lease)
                    del inflight[i]
                    bar.update()
            if waiting or inflight:
                time.sleep(poll)
    finally:
        for _, lease in inflight.values():
            lease.release()
    return grid.outcomes, grid.errors


def _start(grid: GridJobs, i: int) -> tuple[Tracked, Any] | str:
    """Claim run ``i`` and give it a job: the previous driver's (collected or waited for) or a new one.
    Returns the job and lease, ``"cached"`` (stored meanwhile: the outcome is recorded), ``"claimed"``
    (another live process holds it) or ``"failed"`` (submission failed: the error is recorded)."""
    from bench.results import ResultStore
    from bench.runner import _report

    run_id, keys = grid.run_ids[i], grid.keys[i]
    with ResultStore(grid.store) as store:
        if store.has(run_id, keys):
            grid.outcomes[i] = _report(store.get(run_id), status="cached")
            return "cached"
        lease = store.try_claim(run_id)
        if lease is None:
            return "claimed"
        if store.has(run_id, keys):
            lease.release()
            grid.outcomes[i] = _report(store.get(run_id), status="cached")
            return "cached"
    folder = grid.root() / run_id
    ledger = Ledger.read(folder, grid.executor)
    tracked = reattach(ledger) if ledger is not None and ledger.executor == grid.executor else None
    if tracked is not None:
        log.info("run %s: found job %s of a previous driver; collecting it", run_id, ledger.job_id)
        return tracked, lease
    try:
        return _submit(grid, i, folder), lease
    except Exception as err:  # noqa: BLE001 - a submission that fails is one failed run, not the end of the grid
        lease.release()
        grid.errors[i] = f"submission failed: {' '.join(str(err).split())}"
        _log_failure(grid.requests[i], grid.errors[i])
        return "failed"


def _submit(grid: GridJobs, i: int, folder: Path) -> Tracked:
    """Submit run ``i``'s job and write its ledger."""
    req = grid.requests[i]
    name = f"bench-{req['model']}-{req['site']}-{req['task']}-s{req['seed']}"
    executor = make_executor(grid.executor, folder, grid.settings, name)
    job = executor.submit(compute_run, {"request": req, "run_id": grid.run_ids[i]})
    ledger = Ledger(folder, grid.executor, str(job.job_id), time.time(), socket.gethostname())
    ledger.write()
    log.info("run %s (%s %s %s seed %s): submitted as %s job %s", grid.run_ids[i], req["model"], req["site"],
             req["task"], req["seed"], grid.executor, job.job_id)
    return Tracked(ledger, job)


def _finish(grid: GridJobs, i: int, tracked: Tracked, lease: Any) -> None:
    """Store a finished job's rows (the only write to the store) and release the claim; or record why it failed."""
    from bench.runner import RunRequest, store_rows

    try:
        ok, value = tracked.outcome()
        if ok:
            rows = list(value.rows)
            if not rows or any(r.run_id != grid.run_ids[i] for r in rows):
                raise BenchError(f"job {tracked.ledger.job_id} returned rows of another run than {grid.run_ids[i]}")
            grid.outcomes[i] = store_rows(RunRequest(**grid.requests[i]), value)
            tracked.ledger.remove()
        else:
            grid.errors[i] = value
            _log_failure(grid.requests[i], value)
    except Exception as err:  # noqa: BLE001 - an unreadable result is one failed run, not the end of the grid
        grid.errors[i] = f"{type(err).__name__}: {' '.join(str(err).split())}"
        _log_failure(grid.requests[i], grid.errors[i])
    finally:
        lease.release()


def _log_failure(req: dict[str, Any], reason: str) -> None:
    log.error("%s %s %s seed %s failed: %s", req["model"], req["site"], req["task"], req["seed"], reason)


# ---------------------------------------------------------------------------------------------- plain jobs
def run_jobs(calls: list[tuple[str, Callable[[Any], Any], Any]], executor: str, settings: SlurmSettings | None,
             root: Path, limit: int | None = None) -> list[tuple[bool, Any]]:
    """Run ``fn(arg)`` for each ``(name, fn, arg)`` as a job under ``root/<name>/`` (at most ``limit``
    at once) and wait for all; each entry ``(True, result)`` or ``(False, one-line reason)``.

    No ledger: for work that keeps its own state (an Optuna study's workers), rerunning is resuming."""
    check_executor(executor)
    limit = limit or len(calls) or 1
    poll = POLL_S.get(executor, 1.0)
    pending = list(range(len(calls)))
    inflight: dict[int, Tracked] = {}
    out: dict[int, tuple[bool, Any]] = {}
    while pending or inflight:
        while pending and len(inflight) < limit:
            i = pending.pop(0)
            name, fn, arg = calls[i]
            folder = root / name
            job = make_executor(executor, folder, settings, name).submit(fn, arg)
            inflight[i] = Tracked(Ledger(folder, executor, str(job.job_id), time.time(), socket.gethostname()), job)
            log.info("%s: submitted as %s job %s", name, executor, job.job_id)
        for i, tracked in list(inflight.items()):
            if tracked.finished():
                out[i] = tracked.outcome()
                del inflight[i]
        if pending or inflight:
            time.sleep(poll)
    return [out[i] for i in range(len(calls))]
