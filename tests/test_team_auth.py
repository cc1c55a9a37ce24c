"""Team mode lets no one in: PostgreSQL asks every connection for a password, ``mlflow server``
runs MLflow's basic-auth app with READ and EDIT teammates, secrets live in owner-only files and
never reach a file the pipeline writes, outputs follow the umask, and listening beyond loopback
without authentication is refused. The servers are the real ones :mod:`rnngen.server` starts."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import copy_project, tiny_params
from rnngen import credentials, files, postgres, server, team
from rnngen.errors import UserError
from test_pipeline import BIN, run
from test_team_server import study_trials


@pytest.fixture()
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_atomic_file_follows_the_umask_and_secrets_stay_private(tmp_path: Path, umask_022: None) -> None:
    files.atomic_write_text(tmp_path / "report.txt", "hello\n")
    with files.atomic_file(tmp_path / "s.png") as tmp:
        tmp.write_bytes(b"png")
    credentials.write_secret(tmp_path / "secrets/key", "k\n")
    assert stat.S_IMODE((tmp_path / "report.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "s.png").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "secrets/key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700


def test_a_secret_file_others_can_read_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = credentials.write_secret(tmp_path / "admin.password", credentials.new_password() + "\n")
    assert len(credentials.read_secret(path)) >= 32
    path.chmod(0o640)
    with pytest.raises(credentials.SecretFileError) as err:
        credentials.read_secret(path)
    assert str(path) in str(err.value) and f"chmod 600 {path}" in str(err.value)
    with pytest.raises(credentials.SecretFileError, match="missing"):
        credentials.read_secret(tmp_path / "absent")


def test_redact_url_hides_passwords_only() -> None:
    assert credentials.redact_url("http://bob:s3cret@host:5000/x") == "http://bob:***@host:5000/x"
    assert (credentials.redact_url("postgresql+psycopg2://tuner:p%40ss@127.0.0.1:5433/optuna")
            == "postgresql+psycopg2://tuner:***@127.0.0.1:5433/optuna")
    for plain in ("http://127.0.0.1:5000", "postgresql+psycopg2://tuner@h:1/optuna", "/tmp/a:b@c"):
        assert credentials.redact_url(plain) == plain


def test_pgpass_lines_escape_what_libpq_splits_on() -> None:
    assert credentials.pgpass_line("tuner", "a:b\\c") == "*:*:*:tuner:a\\:b\\\\c\n"


def test_listening_beyond_loopback_without_auth_is_refused(tmp_path: Path) -> None:
    with pytest.raises(server.ServerError, match="refusing to listen on 0.0.0.0 with authentication off"):
        with server.team_servers(tmp_path / "srv", server.free_port(), server.free_port(), "0.0.0.0", auth=False):
            pass
    with pytest.raises(server.ServerError, match="authentication off"):
        team.serve(tmp_path / "srv", server.free_port(), server.free_port(), "10.1.2.3", auth=False)
    assert not (tmp_path / "srv").exists()  # refused before anything started


def test_a_user_name_cannot_leave_the_secrets_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="user name"):
        team.add_user(tmp_path, "../../etc/x", "edit")
    with pytest.raises(UserError, match="--role admin"):
        team.add_user(tmp_path, "ana", "admin")


def test_allowed_hosts_are_what_was_asked_for() -> None:
    assert server.allowed_hosts("127.0.0.1", 5000) == ["localhost:5000", "127.0.0.1:5000", "localhost", "127.0.0.1"]
    exposed = server.allowed_hosts("0.0.0.0", 5000, ["ml.example.org"])
    assert "ml.example.org:5000" in exposed and not any("*" in h for h in exposed)
    assert "10.1.2.3:5000" in server.allowed_hosts("10.1.2.3", 5000)


# ---- the real servers -------------------------------------------------------------------------


@dataclass
class Team:
    pg: server.Postgres
    ml: server.MlflowServer
    folder: Path
    passwords: dict[str, Path]  # user -> password file

    def env(self, user: str) -> dict[str, str]:
        """What a teammate exports: credentials from the environment and a pgpass file."""
        return {"MLFLOW_TRACKING_URI": self.ml.url, "MLFLOW_TRACKING_USERNAME": user,
                "MLFLOW_TRACKING_PASSWORD": credentials.read_secret(self.passwords[user]),
                "PGPASSFILE": str(self.pg.team_passfile), "RNNGEN_OPTUNA_STORAGE": self.pg.tuning_url()}

    def secrets(self) -> list[str]:
        return [credentials.read_secret(p) for p in (self.folder / server.SECRETS).rglob("*")
                if p.is_file() and (p.suffix == ".password" or p.name == "flask.key")]


@pytest.fixture(scope="module")
def authed() -> Iterator[Team]:
    if postgres.postgres_bin("initdb") is None:
        pytest.skip("the PostgreSQL server is not installed (apt-get install postgresql; .ci/run installs it)")
    pytest.importorskip("psycopg2", reason="the PostgreSQL driver: pip install -e '.[server]'")
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app: pip install 'mlflow[auth]'")
    # not under pytest's 0700 tmp_path: as root the cluster runs as the postgres user
    folder = Path(tempfile.mkdtemp(prefix="rnngen-auth-"))
    folder.chmod(0o755)
    try:
        with server.team_servers(folder, server.free_port(), server.free_port()) as (pg, ml):
            passwords = {"admin": ml.password_file, "bob": team.add_user(folder, "bob", "edit"),
                         "rita": team.add_user(folder, "rita", "read")}
            yield Team(pg, ml, folder, passwords)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _default_admin_passwords() -> set[str]:
    """The admin password MLflow's basic_auth.ini sets, if any, and the one it shipped until
    the advisory GHSA-gq3w-7jj3-x7gr."""
    import mlflow

    ini = configparser.ConfigParser()
    ini.read(Path(mlflow.__file__).parent / "server/auth/basic_auth.ini")
    return {p for p in (ini.get("mlflow", "admin_password", fallback=None), "password1234") if p}


@pytest.mark.e2e
def test_mlflow_answers_only_the_right_password(authed: Team) -> None:
    import requests

    url = authed.ml.url + "/api/2.0/mlflow/experiments/get-by-name"
    params = {"experiment_name": "rnngen"}
    assert requests.get(authed.ml.url + "/health", timeout=30).status_code == 200  # for load balancers
    assert requests.get(url, params=params, timeout=30).status_code == 401
    assert requests.get(url, params=params, auth=("bob", "not-bobs-password"), timeout=30).status_code == 401
    for default in _default_admin_passwords():
        assert requests.get(url, params=params, auth=("admin", default), timeout=30).status_code == 401
    for user in ("admin", "bob", "rita"):
        password = credentials.read_secret(authed.passwords[user])
        assert requests.get(url, params=params, auth=(user, password), timeout=30).status_code == 200, user


@pytest.mark.e2e
def test_a_read_user_gets_403_an_edit_user_logs_registers_and_sets_aliases(
    authed: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    import requests
    from mlflow import MlflowClient

    for name, value in authed.env("bob").items():  # bob's credentials from the environment
        monkeypatch.setenv(name, value)
    client = MlflowClient(authed.ml.url, registry_uri=authed.ml.url)
    experiment_id = client.get_experiment_by_name("rnngen").experiment_id
    run = client.create_run(experiment_id)
    client.log_param(run.info.run_id, "lr", "0.003")
    client.set_terminated(run.info.run_id)
    version = client.create_model_version("rnngen", f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_registered_model_alias("rnngen", "auth-check", version.version)
    assert client.get_model_version_by_alias("rnngen", "auth-check").run_id == run.info.run_id

    api, rita = authed.ml.url + "/api/2.0/mlflow", ("rita", credentials.read_secret(authed.passwords["rita"]))
    assert requests.get(f"{api}/runs/get", params={"run_id": run.info.run_id}, auth=rita, timeout=30).ok  # reads
    logged = requests.post(f"{api}/runs/create", json={"experiment_id": experiment_id}, auth=rita, timeout=30)
    assert logged.status_code == 403, logged.text
    alias = {"name": "rnngen", "alias": "champion", "version": version.version}
    moved = requests.post(f"{api}/registered-models/alias", json=alias, auth=rita, timeout=30)
    assert moved.status_code == 403, moved.text


@pytest.mark.e2e
def test_postgres_refuses_connections_without_the_password(authed: Team, tmp_path: Path) -> None:
    import psycopg2

    pg = authed.pg
    nothing = str(tmp_path / "no.pgpass")  # and not ~/.pgpass
    for user, database in (("rnngen", "mlflow"), ("tuner", "optuna")):
        with pytest.raises(psycopg2.OperationalError, match="no password supplied"):
            psycopg2.connect(host="127.0.0.1", port=pg.port, user=user, dbname=database, passfile=nothing)
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            psycopg2.connect(host="127.0.0.1", port=pg.port, user=user, dbname=database, password="wrong" * 8)
        pg.connect(database, user).close()
    with pytest.raises(psycopg2.OperationalError, match="permission denied for database"):
        pg.connect("mlflow", postgres.TUNER)  # a teammate's role stays out of MLflow's tables
    rules = [line.split() for line in (pg.data / "pg_hba.conf").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules and all(rule[-1] == "scram-sha-256" for rule in rules)
    secrets = authed.folder / server.SECRETS
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in secrets.rglob("*") if p.is_file())


@pytest.mark.e2e
def test_a_rotated_password_replaces_the_old_one(authed: Team) -> None:
    import psycopg2
    import requests

    url = authed.ml.url + "/api/2.0/mlflow/users/current"
    old = credentials.read_secret(authed.passwords["rita"])
    assert team.rotate_password(authed.folder, "rita") == authed.passwords["rita"]
    new = credentials.read_secret(authed.passwords["rita"])
    assert new != old
    assert requests.get(url, auth=("rita", old), timeout=30).status_code == 401
    assert requests.get(url, auth=("rita", new), timeout=30).status_code == 200

    old = credentials.read_secret(authed.folder / server.SECRETS / "tuner.password")
    team.rotate_password(authed.folder, "tuner")
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(host="127.0.0.1", port=authed.pg.port, user="tuner", dbname="optuna", password=old)
    authed.pg.connect("optuna", "tuner").close()  # the pgpass files hold the new one

    old = credentials.read_secret(authed.ml.password_file)
    team.rotate_password(authed.folder, "admin")  # MLflow wants the current one for its own
    assert requests.get(url, auth=("admin", old), timeout=30).status_code == 401
    assert requests.get(url, auth=("admin", authed.ml.client_env()["MLFLOW_TRACKING_PASSWORD"]),
                        timeout=30).status_code == 200


@pytest.mark.e2e
def test_an_edit_user_runs_the_pipeline_and_no_password_lands_anywhere(
    authed: Team, tmp_path: Path, umask_022: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bob, with EDIT and credentials only in the environment and a pgpass file, runs the whole
    pipeline (tuning on PostgreSQL as the tuner role), promotes and samples. Everything went
    through the team's servers: runs, curves and the registry to the tracking server, artifacts
    through its proxy, the search to PostgreSQL, nothing to local stores. Then neither the copy's
    files, nor the servers' logs and files, nor any row of the MLflow and Optuna databases holds
    a password."""
    repo = copy_project(tmp_path / "repo", tiny_params())
    env = authed.env("bob")
    run([str(BIN / "dvc"), "repro"], repo, env=env)
    promoted = run([str(BIN / "rnngen"), "promote"], repo, env=env)
    assert "first champion" in promoted.stdout
    sample = run([str(BIN / "rnngen"), "sample", "--n", "4", "--out", "s.png"], repo, env=env)
    assert stat.S_IMODE((repo / "s.png").stat().st_mode) == 0o644  # the umask's mode, not mkstemp's 0600
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    _went_through_the_team_servers(authed, repo, sample.stdout)

    secrets = authed.secrets()
    assert len(secrets) >= 6
    kept = authed.folder / server.SECRETS  # where they belong
    leaks = [str(p) for p in [*repo.rglob("*"), *authed.folder.rglob("*")]
             if p.is_file() and not p.is_relative_to(kept) and _holds(p.read_bytes(), secrets)]
    assert not leaks, leaks
    for database in ("mlflow", "optuna", "mlflow_auth"):
        rows = _all_rows(authed.pg, database)
        assert rows and not _holds("\n".join(rows).encode(), secrets), database


def _went_through_the_team_servers(authed: Team, repo: Path, sampled: str) -> None:
    from mlflow import MlflowClient

    record = json.loads((repo / "models/run.json").read_text())
    assert record["tracking_uri"] == authed.ml.url
    assert not (repo / "mlflow.db").exists()  # nothing went to the local store
    client = MlflowClient(authed.ml.url)
    training = client.get_run(record["run_id"])
    assert training.info.status == "FINISHED" and training.data.params["model.name"] == "row_lstm_vae"
    assert [m.step for m in client.get_metric_history(training.info.run_id, "val_loss")] == [1, 2]
    champion = client.get_model_version_by_alias("rnngen", "champion")
    assert champion.run_id == training.info.run_id
    assert f"models:/rnngen@champion (version {champion.version}" in sampled  # downloaded through the proxy
    evaluation = client.get_run(champion.tags["evaluation_run_id"])
    assert "pictures/samples.png" in {a.path for a in client.list_artifacts(evaluation.info.run_id, "pictures")}
    # the artifacts went through the server's proxy into its destination folder
    assert "samples.png" in {p.name for p in (authed.folder / "artifacts").rglob("*.png")}
    assert "mlflow-artifacts:" in training.info.artifact_uri
    # the search lived in PostgreSQL, not in a journal file
    trials = study_trials(authed.pg.tuning_url())
    assert len(trials) == 2 and all(t.state.is_finished() for t in trials)
    assert not any((repo / "tune/study").glob("*.log"))


def _holds(data: bytes, secrets: list[str]) -> bool:
    return any(s.encode() in data for s in secrets)


def _all_rows(pg: server.Postgres, database: str) -> list[str]:
    """Every row of every table of ``database`` as text (params, tags, metrics, studies, users)."""
    conn = pg.connect(database)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            tables = [t for (t,) in cur.fetchall()]
            rows = []
            for table in tables:
                cur.execute(f'SELECT t::text FROM "{table}" t')
                rows += [r for (r,) in cur.fetchall()]
            return rows
    finally:
        conn.close()


@pytest.mark.e2e
def test_a_cluster_from_before_passwords_is_locked_on_its_next_start(tmp_path: Path) -> None:
    """A cluster an older rnngen made with ``trust``: the next start sets the generated password
    over the trusted socket, rewrites pg_hba.conf, and from then on refuses a connection without it."""
    import psycopg2

    if postgres.postgres_bin("initdb") is None:
        pytest.skip("the PostgreSQL server is not installed")
    folder = Path(tempfile.mkdtemp(prefix="rnngen-trust-"))
    folder.chmod(0o755)
    try:
        (folder / "postgres").mkdir()
        postgres._chown_to_server(folder / "postgres")
        initdb = [postgres.postgres_bin("initdb"), "-D", str(folder / "postgres/data"), "-U", postgres.USER,
                  "--auth=trust", "-E", "UTF8"]
        subprocess.run(postgres._as_owner(initdb), check=True, capture_output=True)
        pg = postgres.start_postgres(folder / "postgres", server.free_port())
        try:
            assert not postgres._trusts(pg.data)
            with pytest.raises(psycopg2.OperationalError, match="no password supplied"):
                psycopg2.connect(host="127.0.0.1", port=pg.port, user="rnngen", dbname="optuna",
                                 passfile=str(tmp_path / "none"))
            pg.connect("optuna", postgres.TUNER).close()
        finally:
            pg.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
