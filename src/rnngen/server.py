"""A team's tracking server and tuning database, started for real: a PostgreSQL server and an
``mlflow server`` whose backend store is that PostgreSQL and which proxies artifacts
(``--artifacts-destination``), so clients need no access to the artifact folder.

    rnngen server                  # both on this machine; prints the two exports; Ctrl-C stops both

Everything lives in one folder (``--dir``, default ``.rnngen-server``): the PostgreSQL cluster
(``postgres/data``, created on first start, kept between starts), the server logs and the
artifacts. PostgreSQL listens on the loopback interface only and trusts local connections: a
server for one machine, or for a team behind an SSH tunnel; for a shared host give PostgreSQL
passwords (``pg_hba.conf``) and put MLflow behind its auth or a proxy.

The tests start the same servers through :func:`start_postgres` and :func:`start_mlflow`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rnngen.errors import UserError

#: the databases the server creates: MLflow's backend store and Optuna's studies
DATABASES = ("mlflow", "optuna")
USER = "rnngen"


class ServerError(UserError, RuntimeError):
    """A server could not be started; the message says why and where its log is."""


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin(tool: str) -> str | None:
    """Path of a PostgreSQL server program (``initdb``, ``pg_ctl``): on PATH, else Debian's
    ``/usr/lib/postgresql/<version>/bin`` (newest version), else None."""
    found = shutil.which(tool)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return versions[-1] if versions else None


def _as_owner(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run ``cmd`` as the ``postgres`` user."""
    if os.name != "posix" or os.geteuid() != 0:
        return cmd
    runuser = shutil.which("runuser")
    if runuser is None:
        raise ServerError("PostgreSQL cannot run as root and runuser is missing; run as another user")
    return [runuser, "-u", "postgres", "--", *cmd]


def _chown_to_server(path: Path) -> None:
    if os.name == "posix" and os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam("postgres")  # created by Debian's postgresql package
        for p in [path, *path.rglob("*")]:
            os.chown(p, pw.pw_uid, pw.pw_gid)


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ServerError(f"{what} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-2000:]}")


@dataclass
class Postgres:
    """A running PostgreSQL server of :func:`start_postgres`."""

    folder: Path
    port: int
    user: str = USER

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    def url(self, database: str) -> str:
        """SQLAlchemy URL of ``database`` (psycopg2 driver), as MLflow and Optuna take it."""
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        pg_ctl = postgres_bin("pg_ctl")
        if pg_ctl and (self.data / "postmaster.pid").exists():
            subprocess.run(_as_owner([pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"]),
                           capture_output=True, text=True)


def start_postgres(folder: Path, port: int, databases: tuple[str, ...] = DATABASES) -> Postgres:
    """Start PostgreSQL on ``127.0.0.1:port`` with its cluster in ``folder/data`` (created by
    ``initdb`` the first time) and create ``databases`` if missing."""
    initdb, pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise ServerError("PostgreSQL server programs (initdb, pg_ctl) not found; install them, e.g. "
                          "apt-get install postgresql (Debian/Ubuntu) or brew install postgresql")
    folder = Path(folder).resolve()
    server = Postgres(folder, port)
    folder.mkdir(parents=True, exist_ok=True)
    _chown_to_server(folder)
    if not (server.data / "PG_VERSION").exists():
        _run(_as_owner([initdb, "-D", str(server.data), "-U", USER, "--auth=trust", "-E", "UTF8",
                        "--no-instructions"]), "initdb")
    # Loopback TCP only; the unix socket in the cluster folder (no /var/run/postgresql needed).
    options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={server.data}"
    _run(_as_owner([pg_ctl, "-D", str(server.data), "-l", str(server.log), "-o", options, "-w", "-t", "60",
                    "start"]), f"pg_ctl start (log: {server.log})")
    try:
        create_databases(server, databases)
    except Exception:
        server.stop()
        raise
    return server


def create_databases(server: Postgres, databases: tuple[str, ...]) -> None:
    """Create each of ``databases`` on ``server`` that does not exist yet."""
    try:
        import psycopg2
    except ImportError as exc:
        raise ServerError("the PostgreSQL driver is missing: pip install -e '.[server]'") from exc
    conn = psycopg2.connect(host="127.0.0.1", port=server.port, user=server.user, dbname="postgres")
    conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    try:
        with conn.cursor() as cur:
            for name in databases:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()


@dataclass
class MlflowServer:
    """A running ``mlflow server`` of :func:`start_mlflow`."""

    process: subprocess.Popen
    url: str
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_mlflow(backend_uri: str, artifacts: Path, port: int, log: Path, host: str = "127.0.0.1",
                 timeout: float = 120.0) -> MlflowServer:
    """Start ``mlflow server`` on ``host:port`` with ``backend_uri`` as its backend store and
    ``artifacts`` behind its artifact proxy; return once ``/health`` answers."""
    Path(artifacts).mkdir(parents=True, exist_ok=True)
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
           "--artifacts-destination", str(Path(artifacts).resolve()), "--host", host, "--port", str(port),
           "--workers", "1"]
    with open(log, "ab") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = MlflowServer(process, f"http://{host}:{port}", log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"mlflow server exited ({process.returncode}); log {log}:\n{_tail(log)}")
        with contextlib.suppress(urllib.error.URLError, OSError):
            with urllib.request.urlopen(server.url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return server
        time.sleep(0.5)
    server.stop()
    raise ServerError(f"mlflow server did not answer on {server.url}/health within {timeout:.0f} s; log {log}:\n"
                      f"{_tail(log)}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def team_servers(folder: Path, pg_port: int, mlflow_port: int, host: str = "127.0.0.1"
                 ) -> Iterator[tuple[Postgres, MlflowServer]]:
    """Both servers for the ``with`` block; stopped (MLflow first) however it ends."""
    folder = Path(folder).resolve()
    pg = start_postgres(folder / "postgres", pg_port)
    try:
        ml = start_mlflow(pg.url("mlflow"), folder / "artifacts", mlflow_port, folder / "mlflow.log", host)
        try:
            yield pg, ml
        finally:
            ml.stop()
    finally:
        pg.stop()


def serve(folder: Path, pg_port: int, mlflow_port: int, host: str = "127.0.0.1") -> None:
    """``rnngen server``: start both, print what to export, wait for Ctrl-C (or SIGTERM)."""
    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM (a service manager, kill) stops both like Ctrl-C

    signal.signal(signal.SIGTERM, stop)
    with team_servers(folder, pg_port, mlflow_port, host) as (pg, ml):
        print(f"PostgreSQL  127.0.0.1:{pg.port}  (cluster {pg.data}, log {pg.log})")
        print(f"MLflow      {ml.url}  (UI and API; artifacts in {Path(folder).resolve() / 'artifacts'}, "
              f"log {ml.log})")
        print("Point the pipeline at them (in the shell that runs dvc repro or the tune workers):")
        print(f"  export MLFLOW_TRACKING_URI={ml.url}")
        print(f"  export RNNGEN_OPTUNA_STORAGE={pg.url('optuna')}")
        print("Ctrl-C stops both servers (the data stays in the folder for the next start).", flush=True)
        try:
            while ml.process.poll() is None:
                time.sleep(1.0)
            print(f"mlflow server exited ({ml.process.returncode}); see {ml.log}", file=sys.stderr)
        except KeyboardInterrupt:
            print("stopping the servers")
