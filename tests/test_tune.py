"""The tune stage: real Optuna studies on real storages, real MLflow stores, tiny settings."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, tiny_params
from rnngen import stages, tuning
from rnngen.config import ConfigError, set_dotted
from rnngen.errors import guard
from rnngen.files import read_json
from rnngen.train import TrainConfig
from rnngen.tuning.halving import propose
from rnngen.tuning.result import apply_winner, compare_speed, read_hparams

TINY = {
    "tune.n_trials": 4,
    "tune.epochs": 2,
    "tune.train_images": 200,
    "tune.hidden": [8, 16],
    "tune.batch_size": [64, 128],
    "tune.device": "cpu",
    "tune.threads": 1,  # one torch thread per process: a busy 2-core machine stays fast
    "tune.startup_trials": 2,
    "tune.prune_startup": 2,  # the first two trials complete: the parent run gets its plots
}


def tune_params(**overrides: Any) -> dict[str, Any]:
    return tiny_params(**{**TINY, **overrides})


def load_study(journal: Path) -> Any:
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(journal)))
    (name,) = optuna.study.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def runs_by_name(experiment: str) -> dict[str, Any]:
    import mlflow

    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    return {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}


@pytest.fixture(scope="module")
def shared_study(tmp_path_factory: pytest.TempPathFactory, split_dir: Path) -> Any:
    """Two worker processes on one journal; trial 2 raises. The split holds no test images."""
    base = tmp_path_factory.mktemp("tune-shared")
    split = base / "split"
    split.mkdir()
    for name in ("train_x.npy", "train_y.npy", "val_x.npy", "val_y.npy", "split.json"):
        shutil.copy2(split_dir / name, split / name)
    params = tune_params(**{"tune.workers": 2})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{base / 'mlflow.db'}")
        mp.setenv(tuning.FAIL_TRIAL_ENV, "2")
        result = tuning.search(params, split, base / "study", base / "best.json")
    return {"base": base, "params": params, "result": result,
            "study": load_study(base / "study" / tuning.JOURNAL_FILE)}


def test_two_workers_share_one_budget(shared_study: Any) -> None:
    from optuna.trial import TrialState

    trials = shared_study["study"].get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]  # none lost, none run twice
    assert all(t.state.is_finished() for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both processes ran trials
    assert tuning.budget_used(trials) == (4, 0)
    counts = shared_study["result"]["trials"]
    assert counts["complete"] + counts["pruned"] + counts["failed"] == 4
    assert counts["complete"] == sum(t.state == TrialState.COMPLETE for t in trials)


def test_a_raising_trial_is_failed_and_the_study_goes_on(shared_study: Any) -> None:
    from optuna.trial import TrialState

    states = {t.number: t for t in shared_study["study"].get_trials()}
    assert states[2].state == TrialState.FAIL
    assert "injected failure" in states[2].user_attrs["error"]
    assert all(states[n].state in (TrialState.COMPLETE, TrialState.PRUNED) for n in (0, 1, 3))
    assert shared_study["result"]["trials"]["failed"] == 1
    assert (shared_study["base"] / "best.json").is_file()


def test_mlflow_parent_run_with_one_child_per_trial(shared_study: Any) -> None:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{shared_study['base'] / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    runs = runs_by_name("rnngen-tune")
    (parent,) = [r for r in runs.values() if "mlflow.parentRunId" not in r.data.tags]
    children = {int(r.data.tags["optuna.trial_number"]): r for r in runs.values() if r is not parent}
    assert parent.info.run_id == shared_study["result"]["mlflow_parent_run_id"]
    assert parent.info.status == "FINISHED"
    assert sorted(children) == [0, 1, 2, 3]
    for trial in shared_study["study"].get_trials():
        child = children[trial.number]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["optuna.state"] == trial.state.name
        assert child.info.status == ("FAILED" if trial.state.name == "FAIL" else "FINISHED")
        assert float(child.data.params["lr"]) == pytest.approx(trial.params["lr"])
        history = client.get_metric_history(child.info.run_id, "val_loss")
        assert [m.step for m in history] == ([1, 2] if trial.state.name == "COMPLETE" else [1])
    best = shared_study["result"]["params"]
    assert {k: parent.data.tags[f"best.{k}"] for k in best} == {k: str(v) for k, v in best.items()}
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"trials.csv", "best_params.json", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {f"plots/{n}.png" for n in ("optimization_history", "param_importances", "slice")}
    table = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/trials.csv")
    assert len(table.strip().splitlines()) == 1 + 4


def test_trial_0_is_params_yaml_and_train_gets_only_a_winner_that_beats_it(shared_study: Any) -> None:
    from optuna.trial import TrialState

    trials = {t.number: t for t in shared_study["study"].get_trials()}
    params, result = shared_study["params"], shared_study["result"]
    assert trials[0].user_attrs["untuned"] is True
    assert trials[0].params == {"lr": 0.003, "batch_size": 128, "hidden": 16, "optimizer": "adam"}  # params.yaml's
    assert not any(t.user_attrs.get("untuned") for n, t in trials.items() if n)
    best = min((t for t in trials.values() if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    overrides = read_hparams(shared_study["base"] / "best.json")
    assert result["untuned_value"] == trials[0].value
    if best.number != 0 and best.value < trials[0].value:
        assert result["chosen"] == "best trial"
        assert set(overrides) == {"model.name", "train.lr", "train.batch_size", "train.optimizer",
                                  "model.row_lstm_vae.hidden"}
        cfgs = stages.train._validate(set_dotted(params, overrides))
        assert cfgs["model"].config.hidden == overrides["model.row_lstm_vae.hidden"] in (8, 16)
        assert cfgs["train"].batch_size in (64, 128)
    else:  # must NOT hand over a winner no better than params.yaml's values
        assert result["chosen"] == "params.yaml" and overrides == {}


def test_resume_after_sigkill(tmp_path: Path, split_dir: Path, mlflow_uri: str) -> None:
    import yaml
    from optuna.trial import TrialState

    params = tune_params(**{"tune.n_trials": 3, "tune.pruner": "none"})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    journal = tmp_path / "study" / tuning.JOURNAL_FILE
    cmd = [sys.executable, str(ROOT / "pipeline" / "tune.py"), "--params", "params.yaml",
           "--split", str(split_dir), "--study-dir", "study", "--out", "best.json"]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240
            while True:  # kill -9 while a trial trains, after at least one has finished
                assert proc.poll() is None, (tmp_path / "first.log").read_text()
                assert time.monotonic() < deadline, "no trial finished in time"
                trials = load_study(journal).get_trials() if journal.is_file() and journal.stat().st_size else []
                training = [t for t in trials if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs]
                if training and any(t.state.is_finished() for t in trials):
                    break
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    before = {t.number: t for t in load_study(journal).get_trials()}
    orphans = [n for n, t in before.items() if t.state == TrialState.RUNNING]
    assert orphans, "the kill left no running trial"
    assert not (tmp_path / "best.json").exists()

    result = tuning.search(params, split_dir, tmp_path / "study", tmp_path / "best.json")

    after = {t.number: t for t in load_study(journal).get_trials()}
    for n, t in before.items():  # finished trials are kept and counted, not rerun
        if t.state.is_finished():
            assert (after[n].state, after[n].values) == (t.state, t.values)
    for n in orphans:  # the killed trial failed and ran again with the same parameters
        assert after[n].state == TrialState.FAIL
        (retry,) = [t for t in after.values() if t.user_attrs.get("retry_of") == n]
        assert retry.state == TrialState.COMPLETE
        assert retry.params.items() >= before[n].params.items()
    assert tuning.budget_used(list(after.values())) == (3, 0)
    assert result["trials"] == {"complete": 3, "pruned": 0, "failed": 0, "retried": len(orphans)}
    written = read_json(tmp_path / "best.json")
    assert bool(written["params"]) == (written["chosen"] == "best trial")

    runs = runs_by_name("rnngen-tune")
    parents = [r for r in runs.values() if "mlflow.parentRunId" not in r.data.tags]
    assert [p.info.run_id for p in parents] == [result["mlflow_parent_run_id"]]  # the same parent
    assert parents[0].info.status == "FINISHED"
    killed = [runs[f"trial {n}"] for n in orphans]
    assert all(r.info.status == "KILLED" for r in killed)

    written = (tmp_path / "best.json").read_bytes()  # a rerun of a finished study adds nothing
    assert tuning.search(params, split_dir, tmp_path / "study", tmp_path / "best.json")["trials_run_now"] == 0
    assert (tmp_path / "best.json").read_bytes() == written  # same bytes: DVC need not retrain


def test_best_params_are_the_same_bytes_on_two_fresh_stores(tmp_path: Path, split_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """best_params.json holds what defines the result only: another machine or mlflow.db with
    the same search writes the same file, so DVC does not retrain for it."""
    params = tune_params(**{"tune.n_trials": 2, "tune.epochs": 1, "tune.hidden": [8]})
    written = []
    for store in ("a", "b"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / store / 'mlflow.db'}")
        (tmp_path / store).mkdir()
        tuning.search(params, split_dir, tmp_path / store / "study", tmp_path / store / "best.json")
        written.append((tmp_path / store / "best.json").read_bytes())
    assert written[0] == written[1]
    text = written[0].decode()
    assert "run_id" not in text and str(tmp_path) not in text and "journal" not in text


def test_trials_inherit_the_declared_train_keys() -> None:
    """train.kl_warmup_epochs (say) applies inside trials too, and dvc.yaml declares exactly the
    inherited keys as params of the tune stage."""
    import yaml

    from conftest import ROOT

    params = tune_params(**{"train.kl_warmup_epochs": 5.0, "train.grad_clip": 3.0, "train.lr": 0.5})
    base = tuning.inherited_train_config(params)
    trial = tuning.trial_train_config(tuning.tune_config(params), base, {"lr": 1e-3, "batch_size": 64,
                                                                     "optimizer": "adam"})
    assert (trial.kl_warmup_epochs, trial.grad_clip, trial.lr) == (5.0, 3.0, 1e-3)  # lr: the search's
    declared = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["tune"]["params"]
    assert {p.removeprefix("train.") for p in declared if p.startswith("train.")} == set(tuning.INHERITED_TRAIN_KEYS)
    other = tuning.study_name(tuning.tune_config(params), dataclasses.replace(base, kl_warmup_epochs=0.0),
                              "row_lstm_vae", tiny_model_config(), ("hidden",), {})
    assert other != tuning.study_name(tuning.tune_config(params), base, "row_lstm_vae", tiny_model_config(),
                                    ("hidden",), {})  # a changed inherited key is a new study


def tiny_model_config() -> Any:
    from rnngen.models import model_config

    return model_config("row_lstm_vae", {"hidden": 8, "z_dim": 2})


def test_n_trials_zero_keeps_params_yaml_values(tmp_path: Path) -> None:
    result = tuning.search(tune_params(**{"tune.n_trials": 0}), tmp_path / "no-split",
                         tmp_path / "study", tmp_path / "best.json")
    assert result["params"] == {} == read_json(tmp_path / "best.json")["params"]
    assert list((tmp_path / "study").iterdir()) == []  # no study opened; the folder DVC expects exists


@pytest.mark.parametrize(("overrides", "message"), [
    ({"tune.lr": {"low": 1e-2, "high": 1e-4}}, r"tune\.lr\.high: .*inverted"),
    ({"tune.lr": {"low": 1e-3, "high": 1e-3}}, r"tune\.lr\.high: .*empty"),
    ({"tune.lr": {"low": 0.0, "high": 1e-3}}, r"tune\.lr\.low: must be > 0"),
    ({"tune.lr": {"span": 1.0}}, r"tune\.lr\.span: the factor each side of the centre must be > 1"),
    ({"tune.resource": "seconds"}, r"tune\.resource: seconds gives trials rungs of train\.time_budget_s, which is 0"),
    ({"tune.resource": "seconds", "tune.workers": 2, "train.time_budget_s": 60},
     r"tune\.resource: seconds runs successive halving in time in one process"),
    ({"tune.batch_size": [32, 0]}, r"tune\.batch_size: choices must be integers >= 1"),
    ({"tune.optimizer": ["adam", "rmsprop"]}, r"tune\.optimizer: unknown \['rmsprop'\]"),
    ({"tune.pruner": "asha"}, r"tune\.pruner: expected median \| hyperband \| halving \| none"),
    ({"tune.pruner": "halving", "tune.halving_rate": 1}, r"tune\.halving_rate: must be >= 2"),
    ({"tune.pruner": "halving", "tune.workers": 2}, r"tune\.workers: successive halving runs its rungs in one"),
    ({"tune.warm_start": True}, r"tune\.warm_start: only successive halving"),
    ({"tune.pruner": "halving", "tune.warm_start": True}, r"tune\.warm_start: .* set tune\.train_images: 0"),
    ({"tune.budget_s": -1}, r"tune\.budget_s: must be >= 0"),
    ({"tune.models": ["pixelrnn", "gan"]}, r"tune\.models: unknown \['gan'\]"),
    ({"tune.models": ["mlp_vae", "pixelrnn"], "tune.hidden": [0]}, r"tune\.hidden: choices must be integers"),
    ({"tune.storage": "postgresql://nobody@127.0.0.1:1/x"}, r"tune\.storage: cannot open .*127\.0\.0\.1"),
    ({"tune.storage": "sqlite:////nonexistent/folder/optuna.db"}, r"tune\.storage: cannot open"),
    ({"tune.storage": "sqlite:///x.db", "tune.workers": 2}, r"SQLite cannot serve 2 parallel"),
])
def test_bad_input_fails_before_any_trial(
    tmp_path: Path, split_dir: Path, mlflow_uri: str, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        tuning.search(tune_params(**overrides), split_dir, tmp_path / "study", tmp_path / "best.json")
    assert not (tmp_path / "study").exists() and not (tmp_path / "best.json").exists()
    assert not (tmp_path / "mlflow.db").exists()  # nothing tracked either


def test_storage_env_var_overrides_the_param(
    tmp_path: Path, split_dir: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv(tuning.STORAGE_ENV, "postgresql://nobody@127.0.0.1:1/x")
    code = guard(lambda: tuning.search(tune_params(), split_dir, tmp_path / "study", tmp_path / "best.json"))
    err = capsys.readouterr().err
    assert code == 2 and f"${tuning.STORAGE_ENV}: cannot open" in err


def test_a_storage_url_with_a_password_is_refused_without_echoing_it(
    tmp_path: Path, split_dir: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv(tuning.STORAGE_ENV, "postgresql://nobody:secret@127.0.0.1:1/x")
    code = guard(lambda: tuning.search(tune_params(), split_dir, tmp_path / "study", tmp_path / "best.json"))
    err = capsys.readouterr().err
    assert code == 2 and "carries a password" in err and "PGPASSFILE" in err
    assert "secret" not in err  # passwords are never echoed


def test_study_name_follows_the_search_not_the_budget() -> None:
    from rnngen.models.row_lstm_vae import RowLSTMVAEConfig

    def name(model: RowLSTMVAEConfig | None = None, split: Any = None, **tune_kw: Any) -> str:
        cfg = tuning.TuneConfig(**tune_kw)
        model = model or RowLSTMVAEConfig()
        return tuning.study_name(cfg, TrainConfig(), "row_lstm_vae", model, ("hidden",), split or {"seed": 0})

    base = name()
    assert name(n_trials=50, workers=4, device="cpu") == base  # a bigger search continues it
    assert name(model=RowLSTMVAEConfig(hidden=512)) == base  # the search sets the hidden size
    assert name(lr=tuning.LogRange(1e-5, 1e-2)) != base
    assert name(hidden=[64]) != base
    assert name(model=RowLSTMVAEConfig(z_dim=8)) != base
    assert name(split={"seed": 1}) != base


def test_orphaned_means_its_process_is_gone() -> None:
    """The journal file has no heartbeat: a running trial is retried when its worker's process is
    gone from this host, or when it never recorded a worker and started over stale_after_s ago."""
    import datetime

    import optuna
    from optuna.trial import TrialState

    from rnngen.tuning.workers import is_orphaned

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host, now = socket.gethostname(), time.time()

    def running(worker: str | None, started: float = now) -> Any:
        trial = optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs={"worker": worker} if worker else {})
        trial.datetime_start = datetime.datetime.fromtimestamp(started)
        return trial

    assert not is_orphaned(running(f"{host}:{os.getpid()}"), now, 60)
    assert is_orphaned(running(f"{host}:{dead.pid}"), now, 60)
    assert not is_orphaned(running(f"{host}:{os.getpid()}", now - 61), now, 60)  # alive, however long
    assert not is_orphaned(running(f"elsewhere:{dead.pid}", now - 30), now, 60)  # not this host's to judge
    assert not is_orphaned(running(None, now - 30), now, 60)
    assert is_orphaned(running(None, now - 61), now, 60)  # died before recording its worker


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask, not optimize
def test_a_trial_cut_off_before_its_objective_is_retried_on_a_database(tmp_path: Path) -> None:
    """On an RDB storage a trial created just before the database went away has no worker and no
    heartbeat, so Optuna's stale check never sees it: it is failed and queued again once it is
    older than stale_after_s. A trial that recorded its worker is left to its heartbeat."""
    import types

    import optuna

    from rnngen.tuning.storage import StudyStorage
    from rnngen.tuning.workers import recover_orphans, retried

    storage = StudyStorage(url=f"sqlite:///{tmp_path / 'study.db'}", heartbeat_s=1, stale_after_s=0.2)
    study = optuna.create_study(study_name="s", storage=storage.connect())
    cut = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2)})
    alive = study.ask()
    alive.set_user_attr("worker", "elsewhere:1")
    study._storage.record_heartbeat(alive._trial_id)
    time.sleep(0.3)
    recover_orphans(study, types.SimpleNamespace(storage=storage, cfg=types.SimpleNamespace(stale_after_s=0.2)))
    trials = {t.number: t for t in study.get_trials()}
    assert trials[cut.number].state.name == "FAIL" and retried(list(trials.values())) == {cut.number}
    assert trials[alive.number].state.name == "RUNNING"
    queued = [t for t in trials.values() if t.state.name == "WAITING"]
    assert [t.system_attrs["fixed_params"] for t in queued] == [trials[cut.number].params]  # the same values


@pytest.mark.parametrize("cut", [True, False])
def test_a_trial_that_lost_the_database_is_queued_again_not_counted(tmp_path: Path, cut: bool) -> None:
    """A trial whose objective met a cut database connection, with the database back in time for
    Optuna to record FAIL, is queued again with its values and does not use the budget; a trial
    that raised on its own is a failure of its configuration, counted and not retried."""
    import types

    import optuna
    from sqlalchemy.exc import OperationalError

    from rnngen.tuning.storage import StudyStorage
    from rnngen.tuning.workers import budget_used, retried, run_trial

    storage = StudyStorage(url=f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(study_name="s", storage=storage.connect())

    def train(trial: Any, sampled: Any) -> float:
        trial.suggest_float("lr", 1e-4, 1e-2)
        sampled()
        if cut:
            raise OperationalError("UPDATE trials", {}, Exception("server closed the connection unexpectedly"))
        raise RuntimeError("the configuration diverged")

    run_trial(study, types.SimpleNamespace(storage=storage), 0, train, release=lambda: None)
    trials = study.get_trials()
    assert trials[0].state.name == "FAIL"
    assert retried(trials) == ({0} if cut else set())
    assert budget_used(trials) == ((0, 0) if cut else (1, 0))
    queued = [t.system_attrs["fixed_params"] for t in trials if t.state.name == "WAITING"]
    assert queued == ([trials[0].params] if cut else [])


def test_a_trial_holds_its_values_from_the_moment_it_is_asked() -> None:
    """No window between ask and suggest: a worker killed right after ``ask`` leaves a trial
    whose retry (enqueued with its params) trains the same configuration."""
    import optuna

    params = tiny_params()
    cfg = tuning.TuneConfig(models=["mlp_vae"], n_trials=2)
    fams = tuning.families(cfg, params)
    cfg = tuning.resolve(cfg, tuning.inherited_train_config(params), fams)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    first = tuning.ask(study, cfg, fams)
    assert set(first.params) == {"model", "lr", "batch_size", "hidden", "optimizer"}
    assert tuning.suggest(first, cfg, fams) == first.params
    study.enqueue_trial(first.params)  # what a retry does with a dead worker's trial
    retry = tuning.ask(study, cfg, fams)
    assert retry.number != first.number and tuning.suggest(retry, cfg, fams) == first.params


# ------------------------------------------------------------- successive halving, warm start


def test_fit_paused_at_an_epoch_continues_exactly(tmp_path: Path, split_dir: Path) -> None:
    """fit(until_epoch=1) and a second call on the same checkpoint train what one call does."""
    import torch

    from rnngen import data
    from rnngen.models import build_model, model_config
    from rnngen.train import fit

    x_train, _ = data.load_split(split_dir, "train")
    x_val, _ = data.load_split(split_dir, "val")
    cfg = TrainConfig(epochs=3, batch_size=128, lr=3e-3, lr_schedule="cosine", device="cpu")

    def model() -> Any:
        torch.manual_seed(0)
        return build_model("mlp_vae", model_config("mlp_vae", {"hidden": 16, "z_dim": 4}))

    straight = fit(model(), x_train[:300], x_val, cfg, "dynamic", progress=False)
    first = fit(model(), x_train[:300], x_val, cfg, "dynamic", progress=False, checkpoint=tmp_path / "c.pt",
                until_epoch=1)
    assert first.paused and len(first.history) == 1
    rest = fit(model(), x_train[:300], x_val, cfg, "dynamic", progress=False, checkpoint=tmp_path / "c.pt",
               until_epoch=3)
    assert not rest.paused and rest.resumed_from == 1
    assert [h["val_loss"] for h in rest.history] == pytest.approx([h["val_loss"] for h in straight.history],
                                                                  abs=1e-9)
    for key, value in straight.best_weights.items():
        assert torch.equal(value, rest.best_weights[key]), key


HALVING = {"tune.pruner": "halving", "tune.n_trials": 4, "tune.halving_rate": 2, "tune.epochs": 1,
           "tune.train_images": 0, "tune.warm_start": True, "tune.hidden": [16], "tune.batch_size": [128],
           "tune.lr": {"low": 1e-3, "high": 1e-2}, "train.epochs": 3, "train.lr_schedule": "cosine"}


def test_halving_lays_its_configurations_out_as_a_latin_hypercube() -> None:
    import math

    cfg = tuning.TuneConfig(n_trials=8, lr=tuning.LogRange(1e-4, 1e-1), batch_size=[16, 32, 64],
                            hidden=[8, 16, 32], optimizer=["adam", "sgd"], seed=2)
    fams = tuning.families(cfg, tiny_params())
    points = tuning.design(cfg, fams, 7)
    assert points == tuning.design(cfg, fams, 7)  # seeded
    assert points != tuning.design(dataclasses.replace(cfg, seed=3), fams, 7)
    # each seventh of lr's log range holds exactly one point: none is left out by chance
    strata = sorted(int(7 * math.log(p["lr"] / 1e-4) / math.log(1e3)) for p in points)
    assert strata == list(range(7))
    for name, choices in (("batch_size", [16, 32, 64]), ("hidden", [8, 16, 32]), ("optimizer", ["adam", "sgd"])):
        counts = [sum(p[name] == c for p in points) for c in choices]
        assert sum(counts) == 7 and min(counts) >= 7 // len(choices), (name, counts)
    assert tuning.design(cfg, fams, 0) == []


def test_the_first_rung_draws_where_its_results_so_far_are_best() -> None:
    # BOHB's step: after the laid-out points, TPE proposes where the first rung scored best. Here
    # the loss falls as lr rises and hidden 32 beats 8, so every proposal lies past the worse
    # half of the points seen, for any seed; read the wrong way round, it would lie among them
    import math

    cfg = tuning.TuneConfig(n_trials=8, lr=tuning.LogRange(1e-5, 1e-2), batch_size=[32], hidden=[8, 32],
                            optimizer=["adam"])
    fams = tuning.families(cfg, tiny_params())
    seen = [({"lr": lr, "batch_size": 32, "hidden": h, "optimizer": "adam"}, 100 - 5 * math.log10(lr) - h / 8)
            for lr, h in ((2e-5, 8), (1e-4, 32), (5e-4, 8), (2e-3, 32))]
    seen.append(({"lr": 1e-3, "batch_size": 32, "hidden": 8, "optimizer": "adam"}, float("inf")))  # a diverged one
    for seed in range(5):
        point = propose(cfg, fams, seen, seed=seed)
        assert point["lr"] > 5e-4, (seed, point)
        assert point["hidden"] in (8, 32) and point["batch_size"] == 32
    assert propose(cfg, fams, seen, seed=1) == propose(cfg, fams, seen, seed=1)  # seeded


def test_halving_ranks_on_the_real_schedule_and_train_continues_the_winner(
    tmp_path: Path, split_dir: Path, mlflow_uri: str, capsys: Any
) -> None:
    from optuna.trial import TrialState

    params = tune_params(**HALVING)
    result = tuning.search(params, split_dir, tmp_path / "study", tmp_path / "best.json", tmp_path / "warm.pt")
    trials = {t.number: t for t in load_study(tmp_path / "study" / tuning.JOURNAL_FILE).get_trials()}
    cfg = tuning.resolve(tuning.tune_config(params), tuning.inherited_train_config(params),
                         tuning.families(tuning.tune_config(params), params))
    fams = tuning.families(cfg, params)
    drawn = [{k: trials[n].params[k] for k in ("lr", "batch_size", "hidden", "optimizer")} for n in (1, 2, 3)]
    # trial 0, one laid out (tune.startup_trials 2), then TPE on the first rung's results so far
    assert drawn[0] == tuning.design(cfg, fams, 1)[0]
    for n in (2, 3):
        seen = [(trials[m].params, trials[m].intermediate_values[1]) for m in range(n)]
        assert drawn[n - 1] == propose(cfg, fams, seen, seed=cfg.seed * 1009 + n)
    tagged = {int(r.data.tags["optuna.trial_number"]): r.data.tags.get("optuna.state")
              for r in runs_by_name("rnngen-tune").values() if "optuna.trial_number" in r.data.tags}
    assert tagged == {n: t.state.name for n, t in trials.items()}  # the MLflow UI shows what ranking decided
    curves = {n: sorted(t.intermediate_values) for n, t in trials.items()}
    # rung 0: four trials, 1 epoch each; rung 1: the best two, and trial 0 (params.yaml's values)
    # whatever its rank, on to epoch 2; then one is left, and trial 0
    rung0 = {n: trials[n].intermediate_values[1] for n in trials}
    rung1 = sorted({*sorted(rung0, key=rung0.get)[:2], 0})
    assert sorted(n for n, c in curves.items() if c == [1, 2]) == rung1
    assert all(c == [1] for n, c in curves.items() if n not in rung1)
    best_so_far = {n: min(trials[n].intermediate_values.values()) for n in rung1}
    top = min((n for n in rung1 if n), key=best_so_far.get) if best_so_far[0] > min(best_so_far.values()) else 0
    complete = sorted(n for n, t in trials.items() if t.state == TrialState.COMPLETE)
    assert complete == sorted({top, 0})
    winner = trials[result["chosen_trial"]]
    assert winner.number == min(complete, key=lambda n: (best_so_far[n], n != 0))
    assert result["params"] == ({} if winner.number == 0 else result["params"])
    assert result["warm_start"] == {"trial": winner.number, "epochs": 2}
    kept = sorted(p.name for p in (tmp_path / "study" / tuning.HALVING_DIR).rglob("*.pt"))
    assert kept == sorted({f"trial-{winner.number}.pt", "trial-0.pt"})  # the winner's, and the untuned one's

    # the train stage continues the winner after epoch 2 instead of starting afresh
    tuned = set_dotted(params, result["params"])
    summary = stages.train.run(tuned, split_dir, tmp_path / "best.json", tmp_path / "models", tmp_path / "ck.pt",
                               tmp_path / "h.csv", tmp_path / "warm.pt")
    assert "warm start: continuing the tune stage's winner after epoch 2" in capsys.readouterr().out
    assert summary["resumed_from_epoch"] == 2 and summary["epochs_run"] == 3
    import pandas as pd

    history = pd.read_csv(tmp_path / "h.csv")
    assert list(history.epoch) == [1, 2, 3]
    assert list(history.val_loss[:2]) == pytest.approx([winner.intermediate_values[e] for e in (1, 2)])

    # must NOT reuse: other train settings, or another split, train from epoch 1
    changed = set_dotted(tuned, {"train.grad_clip": 5.0})
    summary = stages.train.run(changed, split_dir, tmp_path / "best.json", tmp_path / "models2",
                               tmp_path / "ck.pt", tmp_path / "h2.csv", tmp_path / "warm.pt")
    assert "was trained with other train: not continued" in capsys.readouterr().out
    assert summary["resumed_from_epoch"] == 0 and summary["epochs_run"] == 3
    other_split = tmp_path / "split-b"
    shutil.copytree(split_dir, other_split)
    info = read_json(other_split / "split.json")
    (other_split / "split.json").write_text(__import__("json").dumps({**info, "seed": 99}))
    summary = stages.train.run(tuned, other_split, tmp_path / "best.json", tmp_path / "models3",
                               tmp_path / "ck3.pt", tmp_path / "h3.csv", tmp_path / "warm.pt")
    assert "was trained with other data: not continued" in capsys.readouterr().out
    assert summary["resumed_from_epoch"] == 0


def test_halving_finished_stands_cut_off_starts_over_and_no_warm_start_writes_a_placeholder(
    tmp_path: Path, split_dir: Path, mlflow_uri: str, capsys: Any
) -> None:
    import torch

    params = tune_params(**{**HALVING, "tune.n_trials": 2, "tune.warm_start": False})
    first = tuning.search(params, split_dir, tmp_path / "study", tmp_path / "best.json", tmp_path / "warm.pt")
    placeholder = (tmp_path / "warm.pt").read_bytes()
    assert torch.load(tmp_path / "warm.pt", weights_only=True)["warm_start"] is None
    again = tuning.search(params, split_dir, tmp_path / "study", tmp_path / "best.json", tmp_path / "warm.pt")
    assert "this halving search, finished: its result stands" in capsys.readouterr().out
    assert again["trials_run_now"] == 0 and again["params"] == first["params"]
    assert (tmp_path / "warm.pt").read_bytes() == placeholder  # same bytes: DVC sees no change
    study = load_study(tmp_path / "study" / tuning.JOURNAL_FILE)
    study.ask()  # a trial left running, as by a killed search
    tuning.search(params, split_dir, tmp_path / "study", tmp_path / "best.json", tmp_path / "warm.pt")
    assert "did not finish (or had another n_trials): starting it over" in capsys.readouterr().out
    trials = load_study(tmp_path / "study" / tuning.JOURNAL_FILE).get_trials()
    assert len(trials) == 2 and all(t.state.is_finished() for t in trials)  # never pieced together


def test_seconds_trials_train_in_rungs_of_the_real_budget_and_train_continues_the_chosen_one(
    tmp_path: Path, split_dir: Path, mlflow_uri: str, capsys: Any
) -> None:
    """Under train.time_budget_s a trial's resource is seconds of the real training: rungs of
    budget / 3 and the whole budget, each stopping at the first epoch end past its seconds and
    continuing from its checkpoint; trial 0 goes on to the end; the chosen trial has trained
    exactly what the train stage would, so train continues it and trains nothing more."""
    import mlflow
    import pandas as pd
    from optuna.trial import TrialState

    budget = 4.0
    params = tune_params(**{"train.time_budget_s": budget, "train.epochs": 50, "tune.n_trials": 3,
                            "tune.warm_start": True, "tune.hidden": [16], "tune.batch_size": [128],
                            "tune.lr": {"low": 1e-3, "high": 1e-2}})
    result = tuning.search(params, split_dir, tmp_path / "study", tmp_path / "best.json", tmp_path / "warm.pt")
    out = capsys.readouterr().out
    assert result["resource"] == "seconds" and "rungs of 1.33333, 4s" in out
    trials = {t.number: t for t in load_study(tmp_path / "study" / tuning.JOURNAL_FILE).get_trials()}
    client = mlflow.MlflowClient()
    clock = {n: [m.value for m in sorted(client.get_metric_history(t.user_attrs["mlflow_run_id"], "elapsed_s"),
                                         key=lambda m: m.step)] for n, t in trials.items()}
    final = sorted(n for n, t in trials.items() if t.state == TrialState.COMPLETE)
    # the best of rung 0 and trial 0 (one trial when trial 0 was the best: epoch lengths, and so
    # rung 0's ranking, follow the machine's speed)
    assert 0 in final and len(final) in (1, 2) and len(trials) == 3, final
    for n, seconds in clock.items():
        stop = budget if n in final else budget / 3
        assert seconds[-1] >= stop and (len(seconds) == 1 or seconds[-2] < stop), (n, seconds)
        assert seconds == sorted(seconds)  # one clock across the rungs: continued, not restarted
        assert len(seconds) == len(trials[n].intermediate_values)
    for n in final:  # the second rung resumed the first's checkpoint (unless, on a slow machine, the
        # first epoch already ran past the whole budget)
        assert f"trial-{n}.pt after epoch" in out or clock[n][0] >= budget, (n, clock[n])
    chosen = result["chosen_trial"]
    assert result["images_per_second"]["untuned"] == trials[0].user_attrs["images_per_second"] > 0

    tuned = set_dotted(params, result["params"])
    summary = stages.train.run(tuned, split_dir, tmp_path / "best.json", tmp_path / "models", tmp_path / "ck.pt",
                               tmp_path / "h.csv", tmp_path / "warm.pt")
    epochs = len(clock[chosen])
    assert summary["resumed_from_epoch"] == epochs == summary["epochs_run"]  # its budget was spent in the trial
    history = pd.read_csv(tmp_path / "h.csv")
    assert list(history.val_loss) == pytest.approx([trials[chosen].intermediate_values[e] for e in history.epoch])


def test_a_winner_is_handed_over_only_when_it_beats_trial_0_at_equal_resource() -> None:
    from optuna.trial import TrialState, create_trial

    from rnngen.tuning.search import beats_untuned

    def trial(number: int, state: Any, value: float | None = None, curve: dict[int, float] | None = None) -> Any:
        t = create_trial(state=state, value=value, intermediate_values=curve or {}, params={"lr": 1e-3},
                         distributions={"lr": __import__("optuna").distributions.FloatDistribution(1e-4, 1e-2)})
        t.number = number
        return t

    t0 = trial(0, TrialState.COMPLETE, 100.0)
    assert beats_untuned(trial(3, TrialState.COMPLETE, 99.0), t0)[0]
    assert not beats_untuned(trial(3, TrialState.COMPLETE, 100.0), t0)[0]  # a tie is no reason to change
    assert not beats_untuned(t0, t0)[0]
    pruned = trial(0, TrialState.PRUNED, curve={1: 120.0, 2: 110.0})
    later = trial(3, TrialState.COMPLETE, 90.0, {1: 125.0, 2: 112.0, 3: 90.0})
    ok, why = beats_untuned(later, pruned)  # must NOT compare its epoch 3 with trial 0's epoch 2
    assert not ok and "at epoch 2, where trial 0 stopped: val 112.00 >= 110.00" in why
    assert beats_untuned(trial(3, TrialState.COMPLETE, 90.0, {1: 105.0, 2: 108.0, 3: 90.0}), pruned)[0]
    ok, why = beats_untuned(later, trial(0, TrialState.FAIL))
    assert ok and "ended FAIL" in why


def test_trial_0_handicapped_loses_and_train_gets_the_winner(tmp_path: Path, split_dir: Path,
                                                             mlflow_uri: str, capsys: Any) -> None:
    params = tune_params(**{"train.lr": 1e-5, "tune.lr": {"low": 3e-3, "high": 1e-2}, "tune.n_trials": 3,
                            "tune.pruner": "none", "tune.epochs": 1, "tune.hidden": [16], "tune.batch_size": [128]})
    result = tuning.search(params, split_dir, tmp_path / "study", tmp_path / "best.json")
    assert result["chosen"] == "best trial" and result["best_value"] < result["untuned_value"]
    said = f"trial {result['best_trial']} beats trial 0 (params.yaml's values) at equal resource"
    assert said in capsys.readouterr().out
    overrides = read_hparams(tmp_path / "best.json")
    assert overrides["train.lr"] == result["params"]["train.lr"] > 1e-5
    tuned = apply_winner(params, tmp_path / "best.json", stages.train._validate)
    assert tuned.checked["train"].lr == overrides["train.lr"] and "train.lr" in tuned.replaced


def test_budget_spent_before_any_trial_is_a_clear_error(tmp_path: Path, split_dir: Path, mlflow_uri: str) -> None:
    with pytest.raises(tuning.TuneError, match=r"tune\.budget_s \(0\.001 s\) was spent before any trial completed"):
        tuning.search(tune_params(**{"tune.budget_s": 0.001}), split_dir, tmp_path / "study", tmp_path / "best.json")


def test_model_family_is_a_search_choice(tmp_path: Path, split_dir: Path, mlflow_uri: str) -> None:
    params = tune_params(**{"tune.models": ["mlp_vae", "draw"], "tune.n_trials": 4, "tune.startup_trials": 4,
                            "tune.pruner": "none", "tune.epochs": 1, "tune.hidden": [16]})
    result = tuning.search(params, split_dir, tmp_path / "study", tmp_path / "best.json")
    trials = load_study(tmp_path / "study" / tuning.JOURNAL_FILE).get_trials()
    # model.name's family is trial 0's, and both searched families were tried
    assert trials[0].params["model"] == "row_lstm_vae" and trials[0].user_attrs["untuned"]
    assert {t.params["model"] for t in trials} == {"row_lstm_vae", "mlp_vae", "draw"}
    best = result["params"] or {"model.name": "row_lstm_vae", "model.row_lstm_vae.hidden": 16}
    family = best["model.name"]
    hidden = {"row_lstm_vae": ["hidden"], "mlp_vae": ["hidden"], "draw": ["enc_hidden", "dec_hidden"]}[family]
    assert {k for k in best if k.startswith("model.")} == {"model.name", *(f"model.{family}.{f}" for f in hidden)}
    tuned = set_dotted(params, best)
    summary = stages.train.run(tuned, split_dir, tmp_path / "best.json", tmp_path / "models", tmp_path / "ck.pt",
                               tmp_path / "h.csv")
    from rnngen import checkpoint, registry

    assert checkpoint.load(tmp_path / "models" / registry.CHECKPOINT_FILE)["model"]["name"] == family
    assert summary["epochs_run"] == 2


def test_train_names_a_speed_far_from_the_untuned_one(tmp_path: Path) -> None:
    """Under a time budget speed buys epochs: train prints its images/s beside trial 0's when
    they differ by more than 2x, and nothing otherwise (or without a search in seconds)."""
    import json

    history = [{"images_per_second": v} for v in (60.0, 58.0, 61.0)]
    result = tmp_path / "best.json"
    result.write_text(json.dumps({"params": {}, "images_per_second": {"best": 60.0, "untuned": 530.0}}))
    line = compare_speed(history, result)
    assert line is not None and "60 images/s against 530 for params.yaml's values" in line and "0.1x" in line
    result.write_text(json.dumps({"params": {}, "images_per_second": {"best": 60.0, "untuned": 100.0}}))
    assert compare_speed(history, result) is None  # within 2x
    result.write_text(json.dumps({"params": {}}))  # a search in epochs records no speed
    assert compare_speed(history, result) is None
    assert compare_speed(history, None) is None


def test_the_space_is_centred_on_params_yaml_and_the_rungs_end_at_the_real_budget() -> None:
    params = tiny_params(**{"train.lr": 2e-3, "train.batch_size": 32, "model.row_lstm_vae.hidden": 64,
                            "train.time_budget_s": 300, "train.epochs": 28})
    cfg = tuning.TuneConfig(n_trials=8)
    base = tuning.inherited_train_config(params)
    fams = tuning.families(cfg, params)
    space = tuning.resolve(cfg, base, fams)
    assert space.resource == "seconds"  # auto: a time budget and one worker
    assert (space.lr.low, space.lr.high) == pytest.approx((2e-5, 0.2))  # span 100 each side
    assert (space.batch_size, space.hidden, space.optimizer) == ([16, 32, 64], [32, 64, 128], ["adam"])
    assert tuning.untuned(base, fams) == {"lr": 2e-3, "batch_size": 32, "hidden": 64, "optimizer": "adam"}
    # explicit choices stand, and params.yaml's values are added: trial 0 is always in the space
    own = tuning.resolve(tuning.TuneConfig(lr=tuning.LogRange(1e-2, 3e-2), hidden=[8], workers=2), base, fams)
    assert (own.lr.low, own.lr.high, own.hidden, own.resource) == (2e-3, 3e-2, [8, 64], "epochs")

    from rnngen.tuning.halving import rungs

    def ladder(**kw: Any) -> list[float]:
        return rungs(dataclasses.replace(space, **kw), base)

    assert ladder() == pytest.approx([300 / 9, 100, 300])  # 8 trials, rate 3: 8 -> 2 -> 1
    assert ladder(n_trials=9) == pytest.approx([300 / 9, 100, 300])
    assert ladder(n_trials=10) == pytest.approx([300 / 27, 300 / 9, 100, 300])
    assert ladder(n_trials=1) == [300] and ladder(n_trials=2, halving_rate=2) == [150, 300]
    assert ladder(resource="epochs", epochs=3) == [3, 9, 27, 28]
