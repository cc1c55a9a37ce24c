"""A team's tracking server and tuning database, started for real and locked: a PostgreSQL server
that asks every connection for a password (``scram-sha-256``) and an ``mlflow server`` with
MLflow's basic-auth app, whose backend store and user store are that PostgreSQL and which
proxies artifacts (``--artifacts-destination``), so clients need no access to the artifact folder.

    rnngen server                  # both on this machine; prints the exports; Ctrl-C stops both

Everything lives in one folder (``--dir``, default ``.rnngen-server``): the PostgreSQL cluster
(``postgres/data``, created on first start, kept between starts), the logs, the artifacts and
``secrets/`` (0700; every password generated on first start into its own 0600 file). The
cluster, its databases and its two roles are :mod:`rnngen.postgres`'s; this module holds the
mlflow server, its authentication, and :func:`team_servers`, which starts both. Both servers
listen on the loopback interface unless ``host`` asks for another; that needs authentication on.

:mod:`rnngen.team` holds the commands (serve, add a teammate, rotate a password); the tests start
the same servers through :func:`team_servers`.
"""

from __future__ import annotations

import base64
import configparser
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rnngen import credentials
from rnngen.files import write_json
from rnngen.postgres import LOOPBACK, SECRETS, WILDCARDS, Postgres, ServerError, start_postgres

ADMIN = "admin"  # MLflow's admin user


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, their children, ...), from /proc; [] elsewhere."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:  # the command name, in parentheses, may hold spaces: the fields after it are split
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


@dataclass
class MlflowServer:
    """A running ``mlflow server`` of :func:`start_mlflow`: ``cmd`` run with ``env``, logging to ``log``."""

    cmd: list[str]
    env: dict[str, str] = field(repr=False)  # holds the admin's password
    url: str
    log: Path
    #: the admin's password file; None when authentication is off
    password_file: Path | None = None
    process: subprocess.Popen = field(init=False)

    def client_env(self) -> dict[str, str]:
        """What a client on this machine exports: the URL and, with authentication on, the
        admin's credentials, which MLflow's clients read from the environment."""
        env = {"MLFLOW_TRACKING_URI": self.url}
        if self.password_file is not None:
            env |= {"MLFLOW_TRACKING_USERNAME": ADMIN,
                    "MLFLOW_TRACKING_PASSWORD": credentials.read_secret(self.password_file)}
        return env

    def start(self, timeout: float = 120.0) -> None:
        """Start the process; return once ``/health`` answers and the admin's password is accepted."""
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                            env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"mlflow server exited ({self.process.returncode}); log {self.log}:\n"
                                  f"{_tail(self.log)}")
            if http_status(self.url + "/health") == 200:
                if self.password_file is None:
                    return
                admin = http_status(f"{self.url}/api/2.0/mlflow/users/get?username={ADMIN}",
                                    (ADMIN, credentials.read_secret(self.password_file)), timeout=30)
                if admin == 200:
                    return
                if admin in (401, 403):
                    self.stop()
                    raise ServerError(f"the MLflow admin's password in {self.password_file} is not the one its user "
                                      "store holds; restore that file, or start a new server folder (--dir)")
            time.sleep(0.5)
        self.stop()
        raise ServerError(f"mlflow server did not answer on {self.url}/health within {timeout:.0f} s; log "
                          f"{self.log}:\n{_tail(self.log)}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def write_auth_config(secrets: Path, database_uri: str) -> dict[str, str]:
    """MLflow's basic-auth settings (``secrets/basic_auth.ini``, 0600): users and permissions
    in ``database_uri``, READ on everything for every user unless granted more; returns the
    server's environment for them: the config's path, the admin's password (generated the
    first time; MLflow creates the admin with it before it takes a request, and ignores it once
    the admin exists) and the static key of the auth app's CSRF protection."""
    config = configparser.ConfigParser()
    config["mlflow"] = {"default_permission": "READ", "database_uri": database_uri, "admin_username": ADMIN,
                        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth"}
    text = io.StringIO()
    config.write(text)
    return {"MLFLOW_AUTH_CONFIG_PATH": str(credentials.write_secret(secrets / "basic_auth.ini", text.getvalue())),
            "MLFLOW_AUTH_ADMIN_PASSWORD": credentials.ensure_secret(secrets / "admin.password"),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": credentials.ensure_secret(secrets / "flask.key")}


def allowed_hosts(host: str, port: int, names: Sequence[str] = ()) -> list[str]:
    """The ``Host`` headers MLflow answers (its DNS-rebinding check): the loopback names, and
    ``names`` (default when listening on every interface: this machine's names) and ``host``."""
    extra = list(names)
    if host in WILDCARDS:
        extra = extra or [socket.gethostname(), socket.getfqdn()]
    elif host not in LOOPBACK:
        extra.append(host)
    hosts = list(dict.fromkeys(["localhost", "127.0.0.1", *extra]))
    return [f"{h}:{port}" for h in hosts] + hosts


def start_mlflow(backend_uri: str, artifacts: Path, port: int, log: Path, host: str = "127.0.0.1",
                 timeout: float = 120.0, *, auth: dict[str, str] | None = None, env: dict[str, str] | None = None,
                 names: Sequence[str] = ()) -> MlflowServer:
    """Start ``mlflow server`` on ``host:port`` with ``backend_uri`` as its backend store and
    ``artifacts`` behind its artifact proxy, with the basic-auth app when ``auth`` (the
    environment of :func:`write_auth_config`) is given; return once ``/health`` answers and
    the admin's password is accepted."""
    Path(artifacts).mkdir(parents=True, exist_ok=True)
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    hosts = allowed_hosts(host, port, names)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
           "--artifacts-destination", str(Path(artifacts).resolve()), "--host", host, "--port", str(port),
           "--workers", "1", "--allowed-hosts", ",".join(hosts)]
    origins = [f"http://{h}:{port}" for h in hosts if ":" not in h and h not in LOOPBACK]
    cmd += ["--cors-allowed-origins", ",".join(origins)] if origins else []
    cmd += ["--app-name", "basic-auth"] if auth else []
    password_file = Path(auth["MLFLOW_AUTH_CONFIG_PATH"]).parent / "admin.password" if auth else None
    local = "127.0.0.1" if host in WILDCARDS else host
    server = MlflowServer(cmd, {**os.environ, **(env or {}), **(auth or {})}, f"http://{local}:{port}", log,
                          password_file)
    server.start(timeout)
    return server


def http_status(url: str, user: tuple[str, str] | None = None, timeout: float = 5.0) -> int | None:
    """The status of a GET of ``url`` (with HTTP basic auth as ``user``), None if unreachable."""
    request = urllib.request.Request(url)
    if user is not None:
        token = base64.b64encode(":".join(user).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def check_exposure(host: str, auth: bool) -> None:
    """Listening beyond loopback only with authentication on."""
    if host not in LOOPBACK and not auth:
        raise ServerError(f"refusing to listen on {host} with authentication off: anyone who reaches it could "
                          "rewrite the team's runs, models and studies; keep authentication on, or listen on "
                          "127.0.0.1 (the default)")


@contextlib.contextmanager
def team_servers(folder: Path, pg_port: int, mlflow_port: int, host: str = "127.0.0.1", *, auth: bool = True,
                 names: Sequence[str] = ()) -> Iterator[tuple[Postgres, MlflowServer]]:
    """Both servers for the ``with`` block; stopped (MLflow first) however it ends. Their
    addresses go to ``folder/server.json`` for :func:`add_user` and :func:`rotate_password`."""
    check_exposure(host, auth)
    folder = Path(folder).resolve()
    secrets = folder / SECRETS
    pg = start_postgres(folder / "postgres", pg_port, host=host, secrets=secrets)
    try:
        ml = start_mlflow(pg.url("mlflow"), folder / "artifacts", mlflow_port, folder / "mlflow.log", host,
                          auth=write_auth_config(secrets, pg.url("mlflow_auth")) if auth else None,
                          env=pg.client_env(), names=names)
        try:
            write_json(folder / "server.json", {"mlflow": ml.url, "postgres_port": pg.port, "auth": auth})
            yield pg, ml
        finally:
            ml.stop()
    finally:
        pg.stop()

