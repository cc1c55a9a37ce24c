"""The PostgreSQL half of a team's server (:mod:`rnngen.server`): a cluster that asks every
connection for a password (``scram-sha-256``), created by ``initdb`` on first start and kept
between starts, with the databases of MLflow and Optuna. Two database roles: ``rnngen`` owns
the cluster and only the servers use it; ``tuner`` owns the Optuna database and is what tune
workers log in as, so a teammate who tunes cannot reach MLflow's tables behind its permissions.
Every password is generated on first start into its own 0600 file under ``secrets/``.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rnngen import credentials
from rnngen.errors import UserError

#: MLflow's backend store, MLflow's users and permissions, Optuna's studies
DATABASES = ("mlflow", "mlflow_auth", "optuna")
TUNING_DATABASE = "optuna"
USER = "rnngen"  # the cluster's owner: the servers' own role
TUNER = "tuner"  # owns TUNING_DATABASE: the role tune workers (teammates) log in as
SECRETS = "secrets"  # the server folder's password files (0700)
LOOPBACK = ("127.0.0.1", "localhost", "::1")  # hosts that listen on this machine only
WILDCARDS = ("0.0.0.0", "::", "*")  # hosts that listen on every interface


class ServerError(UserError, RuntimeError):
    """A server (this PostgreSQL, or :mod:`rnngen.server`'s mlflow server) could not be started;
    the message says why and where its log is."""


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
        for p in [path, *(path.rglob("*") if path.is_dir() else [])]:
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
    secrets: Path
    user: str = USER

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    @property
    def passfile(self) -> Path:
        """libpq password file with both roles: the servers' and this machine's admin's."""
        return self.secrets / "server.pgpass"

    @property
    def team_passfile(self) -> Path:
        """libpq password file with the ``tuner`` role only: what a teammate who tunes gets."""
        return self.secrets / "team.pgpass"

    def url(self, database: str, user: str | None = None) -> str:
        """SQLAlchemy URL of ``database`` (psycopg2 driver), as MLflow and Optuna take it; no
        password: libpq reads it from ``PGPASSFILE``."""
        return f"postgresql+psycopg2://{user or self.user}@127.0.0.1:{self.port}/{database}"

    def tuning_url(self) -> str:
        return self.url(TUNING_DATABASE, TUNER)

    def client_env(self) -> dict[str, str]:
        return {"PGPASSFILE": str(credentials.check_private(self.passfile))}

    def connect(self, database: str = "postgres", user: str | None = None) -> Any:
        """A psycopg2 connection, the password from :attr:`passfile`."""
        try:
            import psycopg2
        except ImportError as exc:
            raise ServerError("the PostgreSQL driver is missing: pip install -e '.[server]'") from exc
        return psycopg2.connect(host="127.0.0.1", port=self.port, user=user or self.user, dbname=database,
                                passfile=str(credentials.check_private(self.passfile)), connect_timeout=10)

    def stop(self) -> None:
        pg_ctl = postgres_bin("pg_ctl")
        if pg_ctl and (self.data / "postmaster.pid").exists():
            subprocess.run(_as_owner([pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"]),
                           capture_output=True, text=True)


def start_postgres(folder: Path, port: int, databases: tuple[str, ...] = DATABASES, host: str = "127.0.0.1",
                   secrets: Path | None = None) -> Postgres:
    """Start PostgreSQL on ``host:port`` (loopback by default) with its cluster in
    ``folder/data``, created by ``initdb`` the first time with a generated password for
    :data:`USER` (in ``secrets``, default ``folder/../secrets``), and create ``databases`` and
    the :data:`TUNER` role if missing. A cluster that an older ``rnngen server`` made without
    passwords (``trust`` in ``pg_hba.conf``) is upgraded on its first start here: its password
    is set over the still-trusted socket, then it gets the same lock."""
    initdb, pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise ServerError("PostgreSQL server programs (initdb, pg_ctl) not found; install them, e.g. "
                          "apt-get install postgresql (Debian/Ubuntu) or brew install postgresql")
    folder = Path(folder).resolve()
    server = Postgres(folder, port, Path(secrets or folder.parent / SECRETS).resolve())
    folder.mkdir(parents=True, exist_ok=True)
    _chown_to_server(folder)
    password_file = server.secrets / f"{USER}.password"
    if not (server.data / "PG_VERSION").exists():
        _initdb(initdb, server, credentials.ensure_secret(password_file))
    elif not password_file.exists() and not _trusts(server.data):
        raise ServerError(f"the cluster {server.data} asks for passwords but {password_file} is missing; "
                          "restore that file, or start a new server folder (--dir)")
    upgrade = _trusts(server.data)
    credentials.ensure_secret(password_file)  # a trust cluster's first password
    write_passfiles(server)
    exposed = host not in LOOPBACK
    if not upgrade:
        _write_hba(server.data, exposed)
    listen = host if host in WILDCARDS or not exposed else f"127.0.0.1,{host}"
    options = f"-p {port} -c listen_addresses='{listen}' -c unix_socket_directories={server.data}"
    _run(_as_owner([pg_ctl, "-D", str(server.data), "-l", str(server.log), "-o", options, "-w", "-t", "60",
                    "start"]), f"pg_ctl start (log: {server.log})")
    try:
        if upgrade:
            set_role_password(server, USER, credentials.read_secret(password_file))
            _write_hba(server.data, exposed)
            _execute(server, "SELECT pg_reload_conf()")
        create_databases(server, databases)
        set_role_password(server, TUNER, credentials.read_secret(server.secrets / f"{TUNER}.password"))
        _give_tuner(server, databases, upgrade)
    except Exception:
        server.stop()
        raise
    return server


def _initdb(initdb: str, server: Postgres, password: str) -> None:
    # initdb runs as the server's account, which cannot read our secrets folder: a copy in the
    # cluster's folder for the moment initdb reads it
    pwfile = credentials.write_secret(server.folder / ".initdb-password", password + "\n")
    _chown_to_server(pwfile)
    try:
        _run(_as_owner([initdb, "-D", str(server.data), "-U", USER, "--auth=scram-sha-256", f"--pwfile={pwfile}",
                        "-E", "UTF8", "--no-instructions"]), "initdb")
    finally:
        pwfile.unlink(missing_ok=True)


def _trusts(data: Path) -> bool:
    """Whether ``pg_hba.conf`` lets any connection in without a password."""
    lines = (data / "pg_hba.conf").read_text().splitlines()
    return any("trust" in line.split("#")[0].split() for line in lines)


def _write_hba(data: Path, exposed: bool) -> None:
    """Password (SCRAM) authentication for every connection: the socket, loopback and, when
    the server listens beyond loopback, any address."""
    rules = ["local all all scram-sha-256", "host all all 127.0.0.1/32 scram-sha-256",
             "host all all ::1/128 scram-sha-256"]
    if exposed:
        rules += ["host all all 0.0.0.0/0 scram-sha-256", "host all all ::/0 scram-sha-256"]
    path = credentials.write_secret(data / "pg_hba.conf", "# written by rnngen server\n" + "\n".join(rules) + "\n")
    _chown_to_server(path)


def write_passfiles(server: Postgres) -> None:
    """``server.pgpass`` (both roles) and ``team.pgpass`` (tuner only) from the password files,
    the tuner's generated the first time."""
    owner = credentials.read_secret(server.secrets / f"{USER}.password")
    tuner = credentials.pgpass_line(TUNER, credentials.ensure_secret(server.secrets / f"{TUNER}.password"))
    credentials.write_secret(server.passfile, credentials.pgpass_line(USER, owner) + tuner)
    credentials.write_secret(server.team_passfile, tuner)


def _execute(server: Postgres, *statements: str, database: str = "postgres") -> None:
    conn = server.connect(database)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    finally:
        conn.close()


def set_role_password(server: Postgres, role: str, password: str) -> None:
    """Give ``role`` (created as a login role if missing) ``password``. Only its SCRAM
    verifier, computed here, reaches the server: no plain password in its logs."""
    from psycopg2.extensions import encrypt_password

    conn = server.connect()
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
            verb = "ALTER" if cur.fetchone() else "CREATE"
            verifier = encrypt_password(password, role, conn, "scram-sha-256")
            cur.execute(f'{verb} ROLE "{role}" LOGIN PASSWORD %s', (verifier,))
    finally:
        conn.close()


def _give_tuner(server: Postgres, databases: tuple[str, ...], upgrade: bool) -> None:
    """The tuner owns the Optuna database and may connect to no other: MLflow's tables stay
    behind MLflow's permissions."""
    _execute(server, *(f'REVOKE CONNECT ON DATABASE "{name}" FROM PUBLIC' for name in databases
                       if name != TUNING_DATABASE))
    if TUNING_DATABASE in databases:
        _execute(server, f'ALTER DATABASE "{TUNING_DATABASE}" OWNER TO "{TUNER}"')
    if upgrade and TUNING_DATABASE in databases:  # a trust cluster's tables, made as the owner role
        _execute(server, f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{TUNER}"',
                 f'GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO "{TUNER}"', database=TUNING_DATABASE)


def create_databases(server: Postgres, databases: tuple[str, ...]) -> None:
    """Create each of ``databases`` on ``server`` that does not exist yet."""
    conn = server.connect()
    conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    try:
        with conn.cursor() as cur:
            for name in databases:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()

