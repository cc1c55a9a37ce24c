"""The ``rnngen server`` commands: serve the team's servers (:mod:`rnngen.server`) until Ctrl-C,
add a teammate, give a user or a database role a new password.

    rnngen server                                  # start; prints what clients export
    rnngen server add-user NAME --role edit        # a teammate; password in secrets/users/NAME.password
    rnngen server passwd NAME                      # a new password: admin, a teammate, rnngen or tuner

Passwords are generated here and written to 0600 files in the server folder's ``secrets/``;
they are printed nowhere: the commands print the file that holds one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from rnngen import credentials, postgres, server
from rnngen.errors import UserError
from rnngen.postgres import SECRETS, TUNER, USER
from rnngen.server import ADMIN
from rnngen.tracking import tuning_experiment


def serve(folder: Path, pg_port: int, mlflow_port: int, host: str = "127.0.0.1", *, auth: bool = True,
          names: Sequence[str] = ()) -> None:
    """``rnngen server``: start both, print what to export, wait for Ctrl-C (or SIGTERM)."""
    server.check_exposure(host, auth)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM (a service manager, kill) stops both like Ctrl-C

    signal.signal(signal.SIGTERM, stop)
    with server.team_servers(folder, pg_port, mlflow_port, host, auth=auth, names=names) as (pg, ml):
        print(f"PostgreSQL  {host}:{pg.port}  (cluster {pg.data}, log {pg.log}; passwords required)")
        print(f"MLflow      {ml.url}  (UI and API; artifacts in {Path(folder).resolve() / 'artifacts'}, "
              f"log {ml.log}; {'basic auth' if auth else 'NO authentication'})")
        print("Point the pipeline at them (in the shell that runs dvc repro or the tune workers):")
        print(f"  export MLFLOW_TRACKING_URI={ml.url}")
        if ml.password_file is not None:
            print(f"  export MLFLOW_TRACKING_USERNAME={ADMIN}")
            print(f'  export MLFLOW_TRACKING_PASSWORD="$(cat {ml.password_file})"')
        print(f"  export PGPASSFILE={pg.team_passfile}")
        print(f"  export RNNGEN_OPTUNA_STORAGE={pg.tuning_url()}")
        print(f"A teammate: rnngen server --dir {Path(folder)} add-user NAME --role edit (or read)")
        print("Ctrl-C stops both servers (the data stays in the folder for the next start).", flush=True)
        try:
            while ml.process.poll() is None:
                time.sleep(1.0)
            print(f"mlflow server exited ({ml.process.returncode}); see {ml.log}", file=sys.stderr)
        except KeyboardInterrupt:
            print("stopping the servers")


def _server_info(folder: Path) -> dict:
    """The addresses of the servers running from ``folder`` (written by :func:`team_servers`)."""
    path = folder / "server.json"
    info = json.loads(path.read_text()) if path.is_file() else None
    if info is None or server.http_status(info["mlflow"] + "/health") != 200:
        raise postgres.ServerError(f"no server is running from {folder}; start it first: rnngen server --dir {folder}")
    return info


@contextlib.contextmanager
def _as_admin(folder: Path) -> Iterator[str]:
    """MLflow's clients, which read credentials from the environment, acting as the admin of the
    server running from ``folder``; yields its URL."""
    url = _server_info(folder)["mlflow"]
    admin = {"MLFLOW_TRACKING_USERNAME": ADMIN,
             "MLFLOW_TRACKING_PASSWORD": credentials.read_secret(folder / SECRETS / "admin.password")}
    saved = {k: os.environ.get(k) for k in admin}
    os.environ.update(admin)
    try:
        yield url
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _user_file(folder: Path, name: str) -> Path:
    """Where a user's password lives; ``name`` a plain word (it names a file)."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.@-]*", name):
        raise UserError(f"user name {name!r}: use letters, digits and _ . @ -")
    return folder / SECRETS / ("admin.password" if name == ADMIN else f"users/{name}.password")


def add_user(folder: Path, name: str, role: str, experiment: str = "rnngen", model: str = "rnngen") -> Path:
    """``rnngen server add-user``: MLflow user ``name`` with ``role`` (read or edit) on
    ``experiment``, its tuning experiment and the registered ``model`` (each created as the
    admin if missing). The password goes to a 0600 file, whose path is printed and returned."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient

    from rnngen import tracking

    permission = role.upper()
    if permission not in ("READ", "EDIT"):
        raise UserError(f"--role {role}: expected read or edit")
    folder = Path(folder).resolve()
    path = _user_file(folder, name)
    if path.exists():
        raise UserError(f"user {name} exists (password in {path}); a new password: "
                        f"rnngen server --dir {folder} passwd {name}")
    with _as_admin(folder) as url:
        users, client = AuthServiceClient(url), MlflowClient(tracking_uri=url, registry_uri=url)
        password = credentials.new_password()
        try:
            users.create_user(name, password)
        except MlflowException as exc:
            raise UserError(f"cannot create user {name}: {exc.message}") from None
        credentials.write_secret(path, password + "\n")
        for exp_name in (experiment, tuning_experiment(experiment)):
            found = client.get_experiment_by_name(exp_name)
            exp_id = found.experiment_id if found else client.create_experiment(
                exp_name, tags={tracking.EXPERIMENT_KIND_TAG: tracking.EXPERIMENT_KIND})
            users.grant_user_permission(name, "experiment", exp_id, permission)
        if not client.search_registered_models(f"name = '{model}'"):
            client.create_registered_model(model)
        users.grant_user_permission(name, "registered_model", model, permission)
    print(f"user {name}: {permission} on experiments {experiment}, {tuning_experiment(experiment)} and model {model}")
    print(f"password in {path} (mode 0600); hand it over privately. {name} exports:")
    print(f"  export MLFLOW_TRACKING_URI={url}\n  export MLFLOW_TRACKING_USERNAME={name}")
    print(f'  export MLFLOW_TRACKING_PASSWORD="$(cat {path.name})"')
    print(f"and to tune, with a copy of {folder / SECRETS / 'team.pgpass'} (mode 0600): export PGPASSFILE=<that copy>")
    return path


def rotate_password(folder: Path, name: str) -> Path:
    """``rnngen server passwd NAME``: a new password for MLflow user ``name`` (``admin`` or a
    teammate) or database role ``rnngen`` or ``tuner``, set on the running server, then written
    to its 0600 file (and the pgpass files), whose path is printed and returned."""
    folder = Path(folder).resolve()
    secrets = folder / SECRETS
    password = credentials.new_password()
    if name in (USER, TUNER):
        pg = postgres.Postgres(folder / "postgres", _server_info(folder)["postgres_port"], secrets)
        postgres.set_role_password(pg, name, password)
        path = credentials.write_secret(secrets / f"{name}.password", password + "\n")
        postgres.write_passfiles(pg)
    else:
        from mlflow.exceptions import MlflowException
        from mlflow.server.auth.client import AuthServiceClient

        path = _user_file(folder, name)
        if not path.exists():
            raise UserError(f"no user {name} (no {path}); create one: rnngen server --dir {folder} add-user {name}")
        # MLflow asks for the current password when a user (here the admin) changes its own
        current = credentials.read_secret(path) if name == ADMIN else None
        with _as_admin(folder) as url:
            try:
                AuthServiceClient(url).update_user_password(name, password, current_password=current)
            except MlflowException as exc:
                raise UserError(f"cannot change the password of {name}: {exc.message}") from None
        credentials.write_secret(path, password + "\n")
    print(f"new password for {name} in {path} (mode 0600); the old one no longer works"
          + (f"; copies of {secrets / 'team.pgpass'} need the new file" if name == TUNER else ""))
    return path
