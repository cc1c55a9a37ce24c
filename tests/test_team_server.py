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
from pathlib import Path

import pytest

from conftest import ROOT, study_trials, team_env, tiny_params
from rnngen import postgres, server, tuning
from test_pipeline import BIN

pytestmark = pytest.mark.e2e


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
