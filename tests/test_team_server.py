"""A team's setup with the real servers: PostgreSQL (Debian's, a fresh cluster in a temporary
folder on a free loopback port) and ``mlflow server`` on it with an artifact proxy, both started
by :mod:`rnngen.server` as ``rnngen server`` starts them. The whole pipeline runs against them,
and two tune processes, as if on two machines, share one study on PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from conftest import ROOT, copy_project, tiny_params
from rnngen import postgres, server, tuning
from test_pipeline import BIN

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def team() -> Iterator[tuple[server.Postgres, server.MlflowServer, Path]]:
    if postgres.postgres_bin("initdb") is None:
        pytest.skip("the PostgreSQL server is not installed (apt-get install postgresql; .ci/run installs it)")
    pytest.importorskip("psycopg2", reason="the PostgreSQL driver: pip install -e '.[server]'")
    # Not under pytest's tmp_path: as root the cluster runs as the postgres user, who cannot
    # enter pytest's 0700 folders.
    folder = Path(tempfile.mkdtemp(prefix="rnngen-team-"))
    folder.chmod(0o755)
    try:
        with server.team_servers(folder, server.free_port(), server.free_port()) as (pg, ml):
            # this process's MLflow and Optuna clients read the credentials from the environment
            with mock.patch.dict(os.environ, {**pg.client_env(), **ml.client_env()}):
                yield pg, ml, folder
        assert not (pg.data / "postmaster.pid").exists(), "PostgreSQL was not stopped"
        assert ml.process.poll() is not None, "mlflow server was not stopped"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def team_env(pg: server.Postgres, ml: server.MlflowServer) -> dict[str, str]:
    return {**pg.client_env(), **ml.client_env(), "RNNGEN_OPTUNA_STORAGE": pg.url("optuna")}


def study_trials(url: str) -> list:
    """Every trial, in any state, of the studies in the Optuna database ``url``."""
    import optuna

    names = optuna.study.get_all_study_names(url)
    return [t for name in names for t in optuna.load_study(study_name=name, storage=url).get_trials()]


def test_two_tune_processes_share_one_study_on_postgres(
    team: tuple[server.Postgres, server.MlflowServer, Path], tmp_path: Path, split_dir: Path
) -> None:
    """Like two machines: two processes run the tune stage with the same params at once; the
    budget of 6 trials is met exactly, every trial ran once, both processes ran trials."""
    import yaml
    from mlflow import MlflowClient

    pg, ml, _ = team
    database = "optuna_shared"
    postgres.create_databases(pg, (database,))
    url = pg.url(database)
    # trials of a few seconds (all 3,600 training images), so that both processes get some
    params = tiny_params(**{"tune.n_trials": 6, "tune.workers": 1, "tune.threads": 1, "tune.pruner": "none",
                            "tune.hidden": [8, 16], "tune.epochs": 2, "tune.train_images": 0,
                            "tracking.experiment": "shared"})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, **team_env(pg, ml), "RNNGEN_OPTUNA_STORAGE": url, "PYTHONPATH": str(ROOT / "src")}
    procs = [
        subprocess.Popen([sys.executable, str(ROOT / "pipeline/tune.py"), "--params", str(tmp_path / "params.yaml"),
                          "--split", str(split_dir), "--study-dir", str(tmp_path / f"study{i}"),
                          "--out", str(tmp_path / f"best{i}.json")],
                         cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in (1, 2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out

    trials = study_trials(url)
    assert len(trials) == 6, [(t.number, t.state.name) for t in trials]
    assert all(t.state.name == "COMPLETE" for t in trials)
    workers = Counter(t.user_attrs["worker"] for t in trials)
    assert len(workers) == 2, workers  # both processes ran trials
    # each trial trained once: one MLflow child run per trial number
    client = MlflowClient(ml.url)
    experiment = client.get_experiment_by_name("shared-tune")
    children = [r for r in client.search_runs([experiment.experiment_id]) if "optuna.trial_number" in r.data.tags]
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in children) == list(range(6))
    best = [json.loads((tmp_path / f"best{i}.json").read_text()) for i in (1, 2)]
    assert best[0] == best[1]  # the same study, the same winner, the same bytes for DVC


def test_a_killed_workers_trial_is_failed_and_retried_by_optunas_heartbeat(
    team: tuple[server.Postgres, server.MlflowServer, Path], tmp_path: Path, split_dir: Path
) -> None:
    """On PostgreSQL, Optuna's own parts: the storage's heartbeat goes silent when the worker is
    SIGKILLed; the next worker fails that trial after the grace period (fail_stale_trials) and
    Optuna's retry callback queues it again with the same parameters; the budget is met."""
    import signal
    import time

    import yaml

    pg, ml, _ = team
    postgres.create_databases(pg, ("optuna_stale",))
    url = pg.url("optuna_stale")
    params = tiny_params(**{"tune.n_trials": 3, "tune.heartbeat_s": 1, "tune.stale_after_s": 3,
                            "tune.pruner": "none", "tune.epochs": 3, "tune.train_images": 0,
                            "tracking.experiment": "stale"})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, **team_env(pg, ml), "RNNGEN_OPTUNA_STORAGE": url, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, str(ROOT / "pipeline/tune.py"), "--params", str(tmp_path / "params.yaml"),
           "--split", str(split_dir), "--study-dir", str(tmp_path / "study"), "--out", str(tmp_path / "best.json")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    running: list = []
    while not running and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        with contextlib.suppress(Exception):  # the study may not exist yet
            # a trial that has sampled its parameters (a busy machine can show one in between)
            running = [t for t in study_trials(url) if t.state.name == "RUNNING" and len(t.params) == 4]
    assert proc.poll() is None and running, "the worker ended before a trial could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (killed,) = running

    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"trial {killed.number}: its worker" in again.stdout and "queued again" in again.stdout
    trials = {t.number: t for t in study_trials(url)}
    assert trials[killed.number].state.name == "FAIL"
    (retry,) = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.state.name == "COMPLETE" and retry.params == trials[killed.number].params
    assert sum(t.state.name == "COMPLETE" for t in trials.values()) == 3
    assert tuning.budget_used(list(trials.values())) == (3, 0)  # the failed one's retry took its place


def test_postgresql_restarted_mid_study_loses_and_doubles_no_trial(
    team: tuple[server.Postgres, server.MlflowServer, Path], tmp_path: Path, split_dir: Path
) -> None:
    """Two tune workers share a study on PostgreSQL; once a trial has finished and another is
    running, PostgreSQL stops (fast: every open connection is cut) and starts again 5 s later.
    The study still ends with exactly the asked 6 trials counted, none lost or counted twice, and
    the stage's winner is the best of those trials."""
    import time

    import yaml

    pg, ml, _ = team
    postgres.create_databases(pg, ("optuna_restart",))
    url = pg.url("optuna_restart")
    params = tiny_params(**{"tune.n_trials": 6, "tune.workers": 2, "tune.threads": 1, "tune.pruner": "none",
                            "tune.hidden": [8, 16], "tune.epochs": 3, "tune.train_images": 0, "tune.heartbeat_s": 1,
                            "tune.stale_after_s": 10, "tracking.experiment": "restart"})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, **team_env(pg, ml), "RNNGEN_OPTUNA_STORAGE": url, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, str(ROOT / "pipeline/tune.py"), "--params", str(tmp_path / "params.yaml"),
                             "--split", str(split_dir), "--study-dir", str(tmp_path / "study"),
                             "--out", str(tmp_path / "best.json")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, states = time.monotonic() + 300, Counter()
    while proc.poll() is None and time.monotonic() < deadline and not (states["COMPLETE"] and states["RUNNING"]):
        time.sleep(0.2)
        with contextlib.suppress(Exception):  # the study may not exist yet
            states = Counter(t.state.name for t in study_trials(url))
    assert proc.poll() is None, "the study ended before PostgreSQL could be restarted"
    pg.restart(down_s=5)  # heartbeats every second: some meet no database
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out

    trials = study_trials(url)
    assert tuning.budget_used(trials) == (6, 0), [(t.number, t.state.name) for t in trials]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 6  # no trial lost: every counted one finished
    retried = [t for t in trials if t.state.name == "FAIL"]  # cut off by the restart: each ran again, same values
    assert all(any(c.params == f.params for c in complete) for f in retried)
    result = json.loads((tmp_path / "best.json").read_text())
    assert result["best_trial"] == min(complete, key=lambda t: t.value).number


def test_the_tracking_server_stopped_mid_training_loses_and_doubles_nothing(
    team: tuple[server.Postgres, server.MlflowServer, Path], tmp_path: Path
) -> None:
    """`dvc repro` trains against the team's tracking server; after epoch 2 the server is stopped
    for 30 s, then started again. MLflow's client retries with backoff (MLFLOW_HTTP_REQUEST_MAX_RETRIES),
    so training waits and goes on: every epoch logged exactly once, the run FINISHED, and the
    weights and curves equal those of the same run never interrupted (run beside it)."""
    import time

    import torch
    from mlflow import MlflowClient

    pg, ml, _ = team
    params = tiny_params(**{"train.epochs": 8, "train.patience": 20, "tune.n_trials": 0})
    runs = {}
    for name in ("blinked", "steady"):
        repo = copy_project(tmp_path / name, {**params, "tracking": {**params["tracking"], "experiment": name}})
        env = {**os.environ, **team_env(pg, ml), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
               "PYTHONPATH": str(repo / "src")}
        runs[name] = (repo, subprocess.Popen([str(BIN / "dvc"), "repro"], cwd=repo, env=env, text=True,
                                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    checkpoint = runs["blinked"][0] / "checkpoints/train.pt"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and runs["blinked"][1].poll() is None:
        with contextlib.suppress(Exception):  # not written yet, or mid-rename
            if torch.load(checkpoint, weights_only=True)["epoch"] >= 2:
                break
        time.sleep(0.05)
    assert runs["blinked"][1].poll() is None, "training ended before the server could be stopped"
    ml.stop()
    time.sleep(30)
    ml.start()
    for name, (_, proc) in runs.items():
        out = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, (name, out)

    client = MlflowClient(ml.url)
    curves, weights = {}, {}
    for name, (repo, _) in runs.items():
        run_id = json.loads((repo / "models/run.json").read_text())["run_id"]
        assert client.get_run(run_id).info.status == "FINISHED"
        history = client.get_metric_history(run_id, "val_loss")
        assert sorted(m.step for m in history) == list(range(1, 9)), (name, history)  # each epoch once
        curves[name] = [m.value for m in sorted(history, key=lambda m: m.step)]
        weights[name] = torch.load(repo / "models/model.pt", weights_only=True)["weights"]
    assert curves["blinked"] == curves["steady"]
    assert all(torch.equal(weights["blinked"][k], weights["steady"][k]) for k in weights["steady"])


def test_rnngen_server_starts_both_and_stops_them_on_sigterm(tmp_path: Path) -> None:
    """The command users run (``make server``): prints the exports, serves, stops cleanly."""
    import signal
    import time
    import urllib.request

    if postgres.postgres_bin("initdb") is None:
        pytest.skip("the PostgreSQL server is not installed (apt-get install postgresql; .ci/run installs it)")
    folder = Path(tempfile.mkdtemp(prefix="rnngen-serve-"))
    folder.chmod(0o755)
    port, pg_port = server.free_port(), server.free_port()
    proc = subprocess.Popen([str(BIN / "rnngen"), "server", "--dir", str(folder / "srv"), "--port", str(port),
                             "--pg-port", str(pg_port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        text = "".join(lines)
        assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{port}" in text, text
        assert f"export RNNGEN_OPTUNA_STORAGE=postgresql+psycopg2://tuner@127.0.0.1:{pg_port}/optuna" in text
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not (folder / "srv/postgres/data/postmaster.pid").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(folder, ignore_errors=True)
