"""Where a study lives, and the lock that keeps its workers inside the trial budget.

One machine: Optuna's journal file in the stage's study folder (``JournalStorage``, safe for
several processes). Many machines: an RDB URL (``tune.storage`` or ``$RNNGEN_OPTUNA_STORAGE``,
e.g. PostgreSQL), opened with Optuna's heartbeat so that a trial whose worker died is failed
and queued again by Optuna itself (``RetryHeartbeatStaleTrialCallback``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rnngen.config import ConfigError
from rnngen.credentials import redact_url
from rnngen.errors import UserError
from rnngen.tuning.space import TuneConfig

STORAGE_ENV = "RNNGEN_OPTUNA_STORAGE"
JOURNAL_FILE = "journal.log"
#: how often a trial whose worker died is queued again before it counts as failed
MAX_RETRIES = 2

#: ``(study, dead trial)``: what to do with a trial Optuna's heartbeat found silent
StaleCallback = Callable[[Any, Any], None]
#: seconds a worker waits for its database to answer again (a restart) before the stage stops
DATABASE_BACK_S = 120
#: database servers, whose drivers take ``connect_timeout`` (SQLite's does not)
SERVER_SCHEMES = ("postgresql", "mysql")


class DatabaseGoneError(UserError):
    """The study's database stopped answering for longer than :data:`DATABASE_BACK_S`."""


def lost_database(exc: BaseException) -> bool:
    """Whether ``exc``, or an error it came from, is the database connection failing (a server
    restart, a dropped link), which waiting can cure, rather than a bad query."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (OperationalError, InterfaceError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@functools.cache
def _rdb_storage() -> type:
    import optuna

    class RDBStorage(optuna.storages.RDBStorage):
        """Optuna's, with a heartbeat that outlives a database restart: a beat that finds no
        database is skipped and the next one tries again (Optuna's thread would end, and the
        trial would turn stale while its worker trains on)."""

        def record_heartbeat(self, trial_id: int) -> None:
            try:
                super().record_heartbeat(trial_id)
            except Exception as exc:
                if not lost_database(exc):
                    raise

    return RDBStorage


@dataclass(frozen=True)
class StudyStorage:
    """The study's storage: a journal file path or an RDB URL (picklable, for spawned workers)."""

    journal: str = ""
    url: str = ""
    #: RDB: Optuna's heartbeat interval and grace period (tune.heartbeat_s, stale_after_s)
    heartbeat_s: float = 0.0
    stale_after_s: float = 0.0

    def describe(self) -> str:
        """The location without passwords, for logs and output files."""
        if self.journal:
            return self.journal
        from sqlalchemy.engine import make_url

        return make_url(self.url).render_as_string(hide_password=True)

    def connect(self, on_stale: StaleCallback | None = None) -> Any:
        """An Optuna storage; on an RDB with a heartbeat, ``on_stale`` handles each trial found
        silent (it runs inside ``optuna.storages.fail_stale_trials``)."""
        import optuna

        if self.journal:
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            return JournalStorage(JournalFileBackend(self.journal))
        engine: dict[str, Any] = {}
        if self.url.startswith(SERVER_SCHEMES):
            engine["connect_args"] = {"connect_timeout": 10}  # fail fast on a dead host
            engine["pool_pre_ping"] = True  # a server restart cuts pooled connections: test each before use
        heartbeat: dict[str, Any] = {}
        if self.heartbeat_s:
            heartbeat = {"heartbeat_interval": max(1, round(self.heartbeat_s)),
                         "grace_period": max(1, round(self.stale_after_s)),
                         "heartbeat_stale_trial_callback": on_stale}
        # Opening a fresh database creates Optuna's tables; two workers doing it at the same
        # instant collide in PostgreSQL's catalog (a UniqueViolation), so they take turns.
        lock = self._advisory_lock("optuna-schema") if self.url.startswith("postgresql") else contextlib.nullcontext()
        with lock, warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
            return _rdb_storage()(self.url, engine_kwargs=engine, **heartbeat)

    def wait_for_database(self, timeout: float = DATABASE_BACK_S) -> None:
        """Return once the database answers again; :class:`DatabaseGoneError` after ``timeout`` s."""
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        timeout_arg = {"connect_timeout": 5} if self.url.startswith(SERVER_SCHEMES) else {}
        engine = sqlalchemy.create_engine(self.url, poolclass=NullPool, connect_args=timeout_arg)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    with engine.connect() as conn:
                        conn.execute(sqlalchemy.text("SELECT 1"))
                    return
                except sqlalchemy.exc.OperationalError:
                    if time.monotonic() > deadline:
                        raise DatabaseGoneError(f"the study's database {self.describe()} has not answered for "
                                                f"{timeout:.0f} s; once it is back, rerun the tune stage: the "
                                                "finished trials are kept") from None
                    time.sleep(1)
        finally:
            engine.dispose()

    @contextlib.contextmanager
    def budget_lock(self, study: str) -> Iterator[None]:
        """Held while a worker counts the budget of ``study`` and creates a trial, so workers
        never overshoot it. Journal: a POSIX flock, which the kernel frees when a holder is
        killed. PostgreSQL: an advisory lock, which the server frees when the holder's
        connection drops, so workers on many machines share it. Other databases take no lock:
        two workers asking in the same instant can overshoot the budget by a trial."""
        if self.url.startswith("postgresql"):
            with self._advisory_lock(f"tune-budget:{study}"):
                yield
            return
        if not self.journal:
            yield
            return
        import fcntl

        with open(self.journal + ".budget-lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _advisory_lock(self, name: str) -> Iterator[None]:
        """PostgreSQL advisory lock ``name``: the server frees it if the holder dies."""
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        key = int.from_bytes(hashlib.sha256(f"rnngen:{name}".encode()).digest()[:8], "big", signed=True)
        engine = sqlalchemy.create_engine(self.url, poolclass=NullPool, connect_args={"connect_timeout": 10})
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        finally:
            engine.dispose()


def open_storage(cfg: TuneConfig, study_dir: Path) -> tuple[StudyStorage, Any]:
    """The storage named by ``$RNNGEN_OPTUNA_STORAGE``, ``tune.storage`` or the default journal
    file, and a connection to it; an unreachable or unusable one is a ConfigError before any
    trial runs."""
    url = os.environ.get(STORAGE_ENV) or cfg.storage
    source = f"${STORAGE_ENV}" if os.environ.get(STORAGE_ENV) else "tune.storage"
    if not url:
        study_dir.mkdir(parents=True, exist_ok=True)
        journal = StudyStorage(journal=str((study_dir / JOURNAL_FILE).resolve()))
        return journal, journal.connect()
    if redact_url(url) != url:
        raise ConfigError([f"{source}: {redact_url(url)} carries a password, which params.yaml, logs and "
                           "dvc.lock could keep; give it through PGPASSFILE or PGPASSWORD instead"])
    if "://" not in url:
        raise ConfigError([f"{source}: expected a database URL such as postgresql://user@host/db, "
                           f"got {url!r}"])
    if url.startswith("sqlite") and cfg.workers > 1:
        raise ConfigError([f"{source}: SQLite cannot serve {cfg.workers} parallel workers; leave "
                           "the storage empty (journal file) or use PostgreSQL"])
    storage = StudyStorage(url=url, heartbeat_s=cfg.heartbeat_s, stale_after_s=cfg.stale_after_s)
    try:
        connection = storage.connect()
    except Exception as exc:  # driver missing, bad URL, refused connection, auth: all fixable
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        hint = "; install its driver (e.g. pip install psycopg2-binary)" if isinstance(exc, ImportError) else ""
        raise ConfigError([f"{source}: cannot open Optuna storage {redact_url(url)}: "
                           f"{type(exc).__name__}: {first}{hint}"]) from exc
    study_dir.mkdir(parents=True, exist_ok=True)  # DVC expects the declared output folder
    return storage, connection
