"""RunStore: the durable truth about runs, in SQLite (WAL mode) at $SNOWS_HOME/runs.db.

Tables: ``runs`` (spec, status, worker pid, heartbeat, timestamps, error, cancel request), ``events``
(append-only progress rows) and ``results`` (accuracies, sparsity, seconds, memory). Every state
change is one transaction, so a process killed at any instant leaves no half-written run. Artifacts
(pruned weights, masks, report) live in $SNOWS_HOME/runs/<run_id>/.

Run ids sort by time and read well: ``20261126-142233-resnet20-a1b2c3`` (UTC time, model, spec hash).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from snows_core.runs.spec import RunSpec

__all__ = ["RunStatus", "RunStore", "StoreError", "snows_home"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    version TEXT NOT NULL,
    status TEXT NOT NULL,
    sweep_id TEXT,
    worker_pid INTEGER,
    heartbeat REAL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    error TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    cancel_time REAL,
    executor TEXT NOT NULL DEFAULT 'local',
    imported_from TEXT,
    scheduler TEXT
);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status, created);
CREATE INDEX IF NOT EXISTS runs_sweep ON runs (sweep_id);
CREATE INDEX IF NOT EXISTS runs_hash ON runs (spec_hash, status);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_run ON events (run_id, id);
CREATE TABLE IF NOT EXISTS results (
    run_id TEXT PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    payload TEXT NOT NULL
);
"""


class StoreError(ValueError):
    """The run store cannot be opened or changed (a corrupt file, a read-only home, a full disk)."""


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


UPLOAD_GRACE_SECONDS = 3600.0
FINAL = (RunStatus.DONE.value, RunStatus.FAILED.value, RunStatus.CANCELLED.value)


def snows_home() -> Path:
    """$SNOWS_HOME, or ~/.snows when it is unset or empty (an empty one would mean the current folder)."""
    return Path(os.environ.get("SNOWS_HOME") or Path.home() / ".snows")


class RunStore:
    """Runs, events and results in one SQLite file; safe for many processes at once."""

    def __init__(self, home: str | Path | None = None, *, readonly: bool = False) -> None:
        self.home = Path(home) if home is not None else snows_home()
        self.path = self.home / "runs.db"
        # a home we cannot write (an archive, a colleague's store) is still readable: list, status, charts;
        # `readonly` opens one that could be written without writing (a reader on a full disk)
        unwritable = not (os.access(self.home, os.W_OK) and os.access(self.path, os.W_OK))
        self.readonly = self.path.is_file() and (readonly or unwritable)
        try:
            if self.readonly:
                with self._connect():  # a corrupt file fails here, not at the first read
                    pass
            else:
                self.home.mkdir(parents=True, exist_ok=True)
                self._migrate()
        except (sqlite3.Error, OSError) as err:
            raise StoreError(f"cannot open the run store {self.path}: {err}") from None

    def _migrate(self) -> None:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")  # readers never block the writer; persists in the file
            db.execute("BEGIN IMMEDIATE")  # two processes opening an old store migrate it once
            _add_missing_columns(db)
            db.execute("COMMIT")
            db.executescript(SCHEMA)
        finally:
            db.close()

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """One connection per call: each `with` block is one transaction (BEGIN IMMEDIATE; a read-only
        store reads a snapshot). SQLite's errors (a corrupt file, a full disk) leave as one-line StoreErrors."""
        try:
            db = self._open_connection()
        except sqlite3.Error as err:
            raise StoreError(f"run store {self.path}: {err}") from None
        try:
            db.execute("BEGIN" if self.readonly else "BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except sqlite3.Error as err:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if self.readonly and "readonly" in str(err):
                raise StoreError(f"the run store {self.path} is read-only here: it can be read, not changed") from None
            raise StoreError(f"run store {self.path}: {err}") from None
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def _open_connection(self) -> sqlite3.Connection:
        if self.readonly:
            uri = self.path.resolve().as_uri()  # percent-encoded: a "?", "#" or "%" in the path is part of it
            db = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None)
            try:
                db.execute("SELECT 1 FROM runs LIMIT 1")  # reads the WAL through its -shm file, when it may
            except sqlite3.OperationalError:  # no -shm, none to create here: the main file as it is
                db.close()
                db = sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)
        else:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=30000")
        db.row_factory = sqlite3.Row
        return db

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the store's own lock (blocking) for a change that spans the database and the run folders."""
        with open(self.home / "store.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield  # closing the file releases the lock

    def run_dir(self, run_id: str) -> Path:
        return self.home / "runs" / run_id

    def create(
        self,
        spec: RunSpec,
        version: str,
        sweep_id: str | None = None,
        executor: str = "local",
        scheduler: str | None = None,
    ) -> str:
        """Store a new queued run and return its id; `executor` names its backend, `scheduler` its address if any."""
        digest = spec.content_hash()
        now = time.time()
        stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%d-%H%M%S")
        model = spec.model.replace(":", "-").replace("/", "-")
        with self._connect() as db:
            base = f"{stamp}-{model}-{digest[:6]}"
            taken = {r[0] for r in db.execute("SELECT id FROM runs WHERE id LIKE ?", (base + "%",))}
            run_id = base if base not in taken else _next_free(base, taken)
            db.execute(
                "INSERT INTO runs (id, spec, spec_hash, version, status, sweep_id, created, executor, scheduler) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    json.dumps(spec.to_dict()),
                    digest,
                    version,
                    RunStatus.QUEUED.value,
                    sweep_id,
                    now,
                    executor,
                    scheduler,
                ),
            )
        return run_id

    def has(self, run_id: str) -> bool:
        with self._connect() as db:
            return db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is not None

    def get(self, run_id: str) -> dict[str, Any]:
        run = self.find(run_id)
        if run is None:
            raise KeyError(f"no run {run_id!r} in {self.path}")
        return run

    def find(self, run_id: str) -> dict[str, Any] | None:
        """The run, or None when there is none by that id (never was, or deleted)."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else _run_dict(row)

    def list(
        self, status: str | None = None, executor: str | None = None, scheduler: str | None = None
    ) -> list[dict[str, Any]]:
        """Runs oldest first, optionally only those with one status, one backend or one scheduler."""
        where = {"status": status, "executor": executor, "scheduler": scheduler}
        clauses = [f"{column} = ?" for column, value in where.items() if value is not None]
        query = "SELECT * FROM runs" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        args = tuple(value for value in where.values() if value is not None)
        with self._connect() as db:
            return [_run_dict(r) for r in db.execute(query + " ORDER BY created, id", args)]

    def has_queued(self, executor: str = "local", scheduler: str | None = None) -> bool:
        """Whether any run of (`executor`, `scheduler`) waits: what a server asks on every tick (one indexed row)."""
        with self._connect() as db:
            row = db.execute(
                "SELECT 1 FROM runs WHERE status = 'queued' AND executor = ? AND scheduler IS ? LIMIT 1",
                (executor, scheduler),
            ).fetchone()
        return row is not None

    def claim_next(self, pid: int, executor: str = "local", scheduler: str | None = None) -> dict[str, Any] | None:
        """Atomically move the oldest queued run of (`executor`, `scheduler`) to running under `pid` (FIFO);
        None if none."""
        now = time.time()
        with self._connect() as db:
            row = db.execute(
                "SELECT * FROM runs WHERE status = 'queued' AND executor = ? AND scheduler IS ? "
                "ORDER BY created, id LIMIT 1",
                (executor, scheduler),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE runs SET status = 'running', worker_pid = ?, started = ?, heartbeat = ? WHERE id = ?",
                (pid, now, now, row["id"]),
            )
            claimed = db.execute("SELECT * FROM runs WHERE id = ?", (row["id"],)).fetchone()  # as the claim left it
        return _run_dict(claimed)

    def set_worker(self, run_id: str, pid: int) -> None:
        with self._connect() as db:
            db.execute("UPDATE runs SET worker_pid = ?, heartbeat = ? WHERE id = ?", (pid, time.time(), run_id))

    def adopt(self, run_id: str, pid: int, claimed: float) -> bool:
        """Record `pid` as the worker of the claim made at `claimed` (the run's `started` time). False when that
        claim is gone (the run was queued again after its dispatcher died, or has ended): the worker must not
        run it."""
        with self._connect() as db:
            changed = db.execute(
                "UPDATE runs SET worker_pid = ?, heartbeat = ? WHERE id = ? AND status = 'running' AND started = ?",
                (pid, time.time(), run_id, claimed),
            ).rowcount
        return changed == 1

    def heartbeat(self, run_id: str) -> None:
        """Record that the run's worker lives."""
        with self._connect() as db:
            db.execute("UPDATE runs SET heartbeat = ? WHERE id = ?", (time.time(), run_id))

    def cancel_requested(self, run_id: str) -> bool:
        """Whether somebody asked to cancel the run (the worker checks at each Newton step)."""
        with self._connect() as db:
            row = db.execute("SELECT cancel_requested FROM runs WHERE id = ?", (run_id,)).fetchone()
        return bool(row and row[0])

    def append_event(self, run_id: str, kind: str, payload: dict[str, Any]) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO events (run_id, time, kind, payload) VALUES (?, ?, ?, ?)",
                (run_id, time.time(), kind, json.dumps(payload)),
            )

    def append_events(self, run_id: str, events: list[dict[str, Any]]) -> None:
        """Append several {"kind", "time", ...payload} events in one transaction (a Dask bridge's batch)."""
        with self._connect() as db:
            db.executemany(
                "INSERT INTO events (run_id, time, kind, payload) VALUES (?, ?, ?, ?)",
                [(run_id, e.get("time", time.time()), e["kind"], json.dumps(_payload(e))) for e in events],
            )

    def import_run(self, run: dict[str, Any], events: list[dict[str, Any]], result: dict[str, Any] | None) -> str:
        """Insert a finished run from another store (its row, events and result) in one transaction."""
        if run["status"] not in FINAL:
            raise ValueError(f"only finished runs can be imported; this one is {run['status']!r}")
        spec = RunSpec.from_dict(run["spec"])  # validates the bundle's spec here
        with self._connect() as db:
            if db.execute("SELECT 1 FROM runs WHERE id = ?", (run["id"],)).fetchone():
                raise ValueError(f"run {run['id']!r} is already in {self.path}")
            db.execute(
                "INSERT INTO runs (id, spec, spec_hash, version, status, sweep_id, created, started, finished, error, "
                "executor, scheduler, imported_from) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run["id"],
                    json.dumps(spec.to_dict()),
                    spec.content_hash(),
                    run["version"],
                    run["status"],
                    run.get("sweep_id"),
                    run["created"],
                    run.get("started"),
                    run.get("finished"),
                    run.get("error"),
                    *_backend_columns(run.get("executor", "local"), run.get("scheduler")),
                    run["imported_from"],
                ),
            )
            db.executemany(
                "INSERT INTO events (run_id, time, kind, payload) VALUES (?, ?, ?, ?)",
                [(run["id"], e["time"], e["kind"], json.dumps(_payload(e))) for e in events],
            )
            if result is not None:
                db.execute("INSERT INTO results (run_id, payload) VALUES (?, ?)", (run["id"], json.dumps(result)))
        return run["id"]

    def events(self, run_id: str, after: int = 0) -> list[dict[str, Any]]:
        """Events of a run with id > `after`, oldest first (pass the last id seen to tail)."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT id, time, kind, payload FROM events WHERE run_id = ? AND id > ? ORDER BY id", (run_id, after)
            ).fetchall()
        return [{"id": r["id"], "time": r["time"], "kind": r["kind"], **json.loads(r["payload"])} for r in rows]

    def finish(self, run_id: str, status: RunStatus, result: dict[str, Any] | None = None, error: str = "") -> bool:
        """End a run: status, finish time, error text and result row in one transaction. A run that has
        already ended (e.g. failed as dead while its worker was stalled) keeps its end: nothing is written
        and this returns False."""
        with self._connect() as db:
            ended = db.execute(
                "UPDATE runs SET status = ?, finished = ?, error = ? WHERE id = ? AND status IN ('queued', 'running')",
                (status.value, time.time(), error or None, run_id),
            ).rowcount
            if ended and result is not None:
                db.execute(
                    "INSERT OR REPLACE INTO results (run_id, payload) VALUES (?, ?)", (run_id, json.dumps(result))
                )
        return bool(ended)

    def result(self, run_id: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute("SELECT payload FROM results WHERE run_id = ?", (run_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def results(self) -> dict[str, dict[str, Any]]:
        """Every stored result, by run id (one query, for tables of many runs)."""
        with self._connect() as db:
            return {r[0]: json.loads(r[1]) for r in db.execute("SELECT run_id, payload FROM results")}

    def progress(self) -> dict[str, tuple[int, int | None]]:
        """(layers done, layers in the run or None before it started) for every run with events; with
        stages, every pass counts its layers (a 3-pass run of 18 layers has 54 to do); a sensitivity run
        counts the layers it has scanned."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT run_id, SUM(kind IN ('layer_done', 'layer_sensitivity')), "
                "MAX(CASE WHEN kind = 'run_started' THEN json_array_length(payload, '$.layers') "
                "* COALESCE(json_extract(payload, '$.stages'), 1) END) "
                "FROM events WHERE kind IN ('layer_done', 'layer_sensitivity', 'run_started') GROUP BY run_id"
            ).fetchall()
        return {r[0]: (int(r[1]), r[2]) for r in rows}

    def request_cancel(self, run_id: str) -> str:
        """Ask a run to stop. A queued run is cancelled at once; a running one at its next Newton step."""
        self.get(run_id)
        now = time.time()
        with self._connect() as db:
            db.execute(
                "UPDATE runs SET status = 'cancelled', finished = ?, cancel_requested = 1 WHERE id = ? AND "
                "status = 'queued'",
                (now, run_id),
            )
            db.execute(
                "UPDATE runs SET cancel_requested = 1, cancel_time = ? WHERE id = ? AND status = 'running'",
                (now, run_id),
            )
        return self.get(run_id)["status"]

    def find_done(self, spec_hash: str, version: str) -> str | None:
        """The newest run computed here that ended done with this spec hash and library version, if any
        (an imported run is shown, never reused: its numbers were not made on this machine)."""
        return self._newest(spec_hash, version, "status = 'done' AND imported_from IS NULL")

    def find_active(self, spec_hash: str, version: str) -> str | None:
        """The newest queued or running run with this spec hash and library version, if any (so a page that
        would launch it again follows that one instead)."""
        return self._newest(spec_hash, version, "status IN ('queued', 'running')")

    def _newest(self, spec_hash: str, version: str, condition: str) -> str | None:
        """The newest run with this spec hash and version that meets `condition` (a constant SQL clause)."""
        with self._connect() as db:
            row = db.execute(
                f"SELECT id FROM runs WHERE spec_hash = ? AND version = ? AND {condition} ORDER BY created DESC",
                (spec_hash, version),
            ).fetchone()
        return row[0] if row else None

    def mark_dead(self, is_alive: Callable[[int, float | None], bool], stale_after: float) -> list[str]:
        """End the running runs whose worker is gone: failed ("worker died"), or cancelled when a cancel was
        asked for (the dispatcher stopping a worker that ignored it must not read as a crash). A local run with
        a worker pid is gone when `is_alive(pid, last heartbeat)` says so (a stopped or starved process still
        lives); any other running run (a Dask task on another host, whose heartbeat the local bridge keeps) when
        its heartbeat is older than `stale_after` seconds. A local run claimed by a dispatcher that died before
        the run's worker announced itself (no pid, silent as long) is queued again instead: none of it ran, and
        a worker that does start late finds its claim gone (`adopt`). Returns the runs ended."""
        now, dead = time.time(), []
        for run in self.list(RunStatus.RUNNING.value):
            local, pid = run["executor"] == "local", run["worker_pid"]
            gone = not is_alive(pid, run["heartbeat"]) if local and pid else now - (run["heartbeat"] or 0) > stale_after
            if not gone:
                continue
            if local and not pid and not run["cancel_requested"] and self._requeue(run["id"]):
                continue
            dead.append(run["id"])
            if run["cancel_requested"]:
                self.finish(run["id"], RunStatus.CANCELLED, error="cancelled by request; its worker was stopped")
            else:
                self.finish(run["id"], RunStatus.FAILED, error="worker died")
        return dead

    def _requeue(self, run_id: str) -> bool:
        """Put a claimed run whose worker never announced itself back at its place in the queue."""
        with self._connect() as db:
            changed = db.execute(
                "UPDATE runs SET status = 'queued', worker_pid = NULL, started = NULL, heartbeat = NULL "
                "WHERE id = ? AND status = 'running' AND (worker_pid IS NULL OR worker_pid = 0)",
                (run_id,),
            ).rowcount
        return changed == 1

    def delete(self, run_id: str) -> None:
        """Forget a run (its events and result go with it), remove its artifacts and the uploads no run uses."""
        with self._connect() as db:
            db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        shutil.rmtree(self.run_dir(run_id), ignore_errors=True)
        self.remove_unused_uploads()

    def save_upload(self, data: bytes, name: str) -> Path:
        """Keep an uploaded file (a checkpoint) once per content: $SNOWS_HOME/uploads/<sha256>.<suffix>."""
        folder = self.home / "uploads"
        folder.mkdir(exist_ok=True)
        path = folder / (hashlib.sha256(data).hexdigest()[:24] + Path(name).suffix.lower())
        if not path.exists():
            partial = path.with_name(path.name + ".partial")
            partial.write_bytes(data)
            partial.replace(path)  # atomic: a reader never sees half a checkpoint
        return path

    def remove_unused_uploads(self, older_than: float = UPLOAD_GRACE_SECONDS) -> list[Path]:
        """Remove the uploads no stored run names as its checkpoint, once older than `older_than` seconds (an
        upload waiting for its Launch click is kept)."""
        folder = self.home / "uploads"
        if not folder.is_dir():
            return []
        used = {run["spec"].get("checkpoint") for run in self.list()}
        cutoff = time.time() - older_than
        unused = [p for p in folder.iterdir() if str(p) not in used and p.stat().st_mtime < cutoff]
        for path in unused:
            path.unlink(missing_ok=True)
        return unused


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """Bring a store made by an older version up to SCHEMA (SQLite adds columns in place)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
    if not columns:
        return  # a new store: SCHEMA creates everything
    for column, decl in (("executor", "TEXT NOT NULL DEFAULT 'local'"), ("imported_from", "TEXT")):
        if column not in columns:
            db.execute(f"ALTER TABLE runs ADD COLUMN {column} {decl}")
    if "scheduler" not in columns:  # stores before it kept a Dask scheduler's address in `executor`
        db.execute("ALTER TABLE runs ADD COLUMN scheduler TEXT")
        db.execute("UPDATE runs SET scheduler = executor, executor = 'dask' WHERE executor != 'local'")


def _backend_columns(executor: str, scheduler: str | None) -> tuple[str, str | None]:
    """(executor, scheduler) of a run row, from a bundle that may predate the scheduler column."""
    if executor != "local" and scheduler is None and "://" in executor:
        return "dask", executor
    return executor, scheduler


def _payload(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in ("id", "time")}


def _next_free(base: str, taken: set[str]) -> str:
    return next(f"{base}-{i}" for i in range(2, len(taken) + 3) if f"{base}-{i}" not in taken)


def _run_dict(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out["spec"] = json.loads(out["spec"])
    out["cancel_requested"] = bool(out["cancel_requested"])
    return out
