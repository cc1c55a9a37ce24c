"""End to end: the quick start (`dvc repro` + `rnngen promote`, what `make repro` runs) in a
fresh git+DVC copy of the project, tiny params, real MLflow store; then what a second repro, a
param change, new data and a code change rerun — and that none of them reuses a stale model;
then bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, copy_project, tiny_params

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    """``cmd`` in ``cwd`` with the project's default store (<copy>/mlflow.db) unless ``env``
    names another; PYTHONPATH: the copy runs its own rnngen source (not the editable
    install's), so a code change in the copy is a code change for what runs."""
    extra = env or {}
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(cwd / "src")}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def quick_start_commands() -> list[list[str]]:
    """What `make repro` runs after setting up .venv, read from the Makefile itself."""
    text = (ROOT / "Makefile").read_text()
    recipe = text.split("\nrepro:", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    return [line.strip().replace("$(BIN)/", "").split() for line in recipe if line.startswith("\t")]


def run_record(repo: Path) -> dict:
    return json.loads((repo / "models/run.json").read_text())


def client_of(repo: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{repo.resolve() / 'mlflow.db'}")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = copy_project(tmp_path_factory.mktemp("project"), tiny_params())
    commands = quick_start_commands()
    assert commands == [["dvc", "repro"], ["rnngen", "promote"]]
    first = run([str(BIN / commands[0][0]), *commands[0][1:]], repo)
    ran = stages_run(first.stdout)
    assert sorted(ran) == sorted(["download", "split", "tune", "train", "classifier", "evaluate"])
    assert ran.index("download") < ran.index("split") < ran.index("tune") < ran.index("train") < ran.index("evaluate")
    promoted = run([str(BIN / commands[1][0]), *commands[1][1:]], repo)
    assert "first champion" in promoted.stdout
    return repo


def test_the_quick_start_ends_with_a_model_in_service(project: Path) -> None:
    rnngen = str(BIN / "rnngen")
    sample = run([rnngen, "sample", "--out", "s.png"], project)
    assert "models:/rnngen@champion (version 1" in sample.stdout and (project / "s.png").stat().st_size > 0
    run([rnngen, "inpaint", "--test-index", "0", "1", "--mask", "bottom_half", "--effort", "1",
         "--out", "p.png"], project)
    info = json.loads(run([rnngen, "info"], project).stdout)
    assert info["version"] == "1" and info["promotion"]["decision"] == "first"
    assert info["test_set"]["k"] == "4"  # params.yaml's evaluate.k, recorded as the test-set identity


def test_outputs_and_metrics(project: Path) -> None:
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert metrics["test_nll_iwae"] <= metrics["test_nll_elbo"]
    assert 0 < metrics["test_nll_iwae"] < 784 * 0.7  # well below a coin-flip model
    assert metrics["binarization"].startswith("dynamic")
    assert 0 <= metrics["test_fcd"] and 1 <= metrics["test_classifier_score_samples"] <= 10
    for kind in ("bottom_half", "centre_square", "random_pixels"):
        assert 0 <= metrics[f"inpaint_{kind}_accuracy_completed"] <= 1
        assert 0 < metrics[f"test_hole_nll_{kind}"] < 784 * 0.7  # the latent model's importance-sampled estimate
    assert json.loads((project / "classifier/metrics.json").read_text())["test_accuracy"] > 0.5
    for png in ("samples.png", "reconstructions.png", "inpaint_bottom_half.png", "inpaint_centre_square.png"):
        assert (project / "reports/pictures" / png).stat().st_size > 0
    shown = run([str(BIN / "dvc"), "metrics", "show", "--json"], project).stdout
    assert "test_nll_iwae" in shown
    html = run([str(BIN / "dvc"), "plots", "show", "-o", "plots_html"], project)
    assert html.returncode == 0 and (project / "plots_html/index.html").is_file()


def test_mlflow_run_params_metrics_images_and_registered_model(project: Path) -> None:
    from mlflow import MlflowClient

    run_info = json.loads((project / "models/run.json").read_text())
    assert run_info["tracking_uri"] == f"sqlite:///{project.resolve() / 'mlflow.db'}"
    client = MlflowClient(run_info["tracking_uri"])
    run_ = client.get_run(run_info["run_id"])
    assert run_.info.status == "FINISHED"
    assert run_.data.params["model.name"] == "row_lstm_vae"
    assert run_.data.params["train.epochs"] == "2" and run_.data.params["model.hidden"] == "16"
    tags = run_.data.tags
    assert tags["git_commit"] != "unknown" and tags["git_dirty"] == "false" and len(tags["source_sha256"]) == 64
    assert tags["resumed_from_epoch"] == "0" and run_info["resumed_from_epoch"] == 0
    name = run_.info.run_name  # the model, its size, the hyperparameters and a data id
    assert name.startswith("row_lstm_vae hidden=16 lr=") and f"data={tags['data_sha256'][:7]}" in name
    assert len(client.get_metric_history(run_.info.run_id, "val_loss")) == 2  # one per epoch
    assert "test_nll_iwae" in run_.data.metrics
    exp = client.get_experiment(run_.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    version = client.get_model_version("rnngen", run_info["model_version"])
    assert version.run_id == run_.info.run_id
    assert float(version.tags["test_nll_iwae"]) == pytest.approx(run_.data.metrics["test_nll_iwae"], abs=1e-3)
    # the evaluation: its own run under the training run, identity as params, pictures
    evaluation = client.get_run(version.tags["evaluation_run_id"])
    assert evaluation.data.tags["mlflow.parentRunId"] == run_.info.run_id
    assert evaluation.data.params["test_set.k"] == "4" and evaluation.data.params["test_set.binarization"] == "dynamic"
    artifacts = {a.path for a in client.list_artifacts(evaluation.info.run_id, "pictures")}
    assert {"pictures/samples.png", "pictures/reconstructions.png", "pictures/inpaint_random_pixels.png"} <= artifacts


def edit_params(repo: Path, **changes: object) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in changes.items():
        section, leaf = key.split("__")
        params[section][leaf] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def assert_trained_afresh(repo: Path, output: str, before: dict, epochs: int) -> dict:
    """The train stage trained from epoch 1 into a new MLflow run and a new version."""
    after = run_record(repo)
    assert "training afresh from epoch 1" in output or "training from epoch 1" in output, output
    assert "resuming" not in output
    assert after["run_id"] != before["run_id"] and int(after["model_version"]) > int(before["model_version"])
    assert after["resumed_from_epoch"] == 0 and after["epochs_run"] == epochs
    history = client_of(repo).get_metric_history(after["run_id"], "val_loss")
    assert [m.step for m in history] == list(range(1, epochs + 1))
    return after


def test_second_repro_runs_nothing_and_a_train_param_retrains_from_epoch_1(project: Path) -> None:
    again = run([str(BIN / "dvc"), "repro"], project)
    assert stages_run(again.stdout) == []
    before = run_record(project)
    edit_params(project, train__epochs=3)  # an edit that takes effect whatever the tuner picked
    changed = run([str(BIN / "dvc"), "repro"], project)
    # tune declares train.epochs (successive halving's trials keep it); this search's budget is
    # already met, so it reruns without a new trial
    assert stages_run(changed.stdout) == ["tune", "train", "evaluate"]
    after = assert_trained_afresh(project, changed.stdout, before, 3)
    assert client_of(project).get_run(after["run_id"]).data.params["train.epochs"] == "3"
    diff = run([str(BIN / "dvc"), "params", "diff", "--json"], project).stdout
    assert "train.epochs" in diff


def test_new_split_after_a_finished_run_trains_from_epoch_1_into_a_new_run(project: Path) -> None:
    before = run_record(project)
    old_data = client_of(project).get_run(before["run_id"]).data.tags["data_sha256"]
    edit_params(project, split__seed=1)
    changed = run([str(BIN / "dvc"), "repro"], project)
    assert {"split", "tune", "train", "classifier", "evaluate"} <= set(stages_run(changed.stdout))
    after = assert_trained_afresh(project, changed.stdout, before, 3)
    assert client_of(project).get_run(after["run_id"]).data.tags["data_sha256"] != old_data


def test_a_changed_line_of_model_code_retrains(project: Path) -> None:
    before = run_record(project)
    old_source = client_of(project).get_run(before["run_id"]).data.tags["source_sha256"]
    model_file = project / "src/rnngen/models/row_lstm_vae.py"
    model_file.write_text(model_file.read_text() + "\n# a change to the model's code\n")
    changed = run([str(BIN / "dvc"), "repro"], project)
    assert {"tune", "train", "evaluate"} <= set(stages_run(changed.stdout))
    assert "download" not in stages_run(changed.stdout)
    after = assert_trained_afresh(project, changed.stdout, before, 3)
    assert client_of(project).get_run(after["run_id"]).data.tags["source_sha256"] != old_source


def test_halving_with_warm_start_through_dvc_continues_the_winner(project: Path) -> None:
    before = run_record(project)
    edit_params(project, tune__pruner="halving", tune__n_trials=2, tune__halving_rate=2, tune__train_images=0,
                tune__warm_start=True)
    changed = run([str(BIN / "dvc"), "repro"], project)
    assert stages_run(changed.stdout) == ["tune", "train", "evaluate"]
    assert "warm start: continuing the tune stage's winner after epoch 1" in changed.stdout
    after = run_record(project)
    assert after["resumed_from_epoch"] == 1 and after["epochs_run"] == 3
    assert after["run_id"] != before["run_id"]
    assert stages_run(run([str(BIN / "dvc"), "repro"], project).stdout) == []  # nothing stale, nothing redone


AUDIT = """
import json, os, runpy, sys
opened = set()
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def hook(event, args):
    if event != "open" or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    mode = args[1] if len(args) > 1 else "r"
    flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
    if (isinstance(mode, str) and any(c in mode for c in "wax+")) or flags & WRITE:
        return  # outputs: written, not read
    opened.add(os.path.abspath(os.fsdecode(args[0])))

sys.addaudithook(hook)
script, sys.argv = sys.argv[1], sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
code = 0
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as exc:
    code = exc.code or 0
with open(os.environ["RNNGEN_OPENED"], "w") as fh:
    json.dump(sorted(opened), fh)
sys.exit(code)
"""


def stage_reads(repo: Path, name: str, stage: dict, log: Path) -> set[str]:
    """The project files stage ``name``'s command opens for reading (its modules too: imports
    open them), as paths relative to ``repo``, ``.pyc`` files mapped to their source."""
    import shlex

    argv = shlex.split(stage["cmd"])
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(repo / "src"),
           "RNNGEN_OPENED": str(log)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-c", AUDIT, *argv[1:]], cwd=repo, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
    out = set()
    for path in json.loads(log.read_text()):
        p = Path(path)
        if p.parent.name == "__pycache__":
            p = p.parent.parent / (p.name.split(".")[0] + ".py")
        if not p.is_file():
            continue  # a name tried and not there (libraries probe for files), or a folder
        try:
            out.add(p.resolve().relative_to(repo.resolve()).as_posix())
        except ValueError:
            continue  # outside the project: the environment, not a dependency
    return out


def test_every_file_a_stage_reads_is_declared(project: Path, tmp_path: Path) -> None:
    """Each stage's command, run for real under an audit hook: every project file it opens for
    reading is a declared dep, a declared param file, or its own output (or a store that DVC
    does not track)."""
    from test_dvc_deps import covered, dep_paths

    stages_ = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    ignored = ("mlflow.db", "mlartifacts/", ".dvc/", ".git/")
    for name in ("download", "split", "tune", "train", "classifier", "evaluate"):
        stage = stages_[name]
        outs = [next(iter(o)) if isinstance(o, dict) else o
                for key in ("outs", "metrics", "plots") for o in stage.get(key, [])]
        # an output is written through a temporary ".<name>.*" beside it (and read back there)
        temps = {(Path(o).parent / f".{Path(o).stem}.").as_posix(): o for o in outs}
        reads = {next((o for t, o in temps.items() if r.startswith(t)), r)
                 for r in stage_reads(project, name, stage, tmp_path / f"{name}.json")}
        undeclared = sorted(r for r in reads if not r.startswith(ignored) and r != "params.yaml"
                            and not covered(project / r, dep_paths(stage) + outs, project))
        assert not undeclared, f"stage {name} reads files dvc.yaml does not declare: {undeclared}"
        assert f"pipeline/{name}.py" in reads and "src/rnngen/config.py" in reads  # the hook saw the imports


def test_bad_param_fails_before_compute_and_leaves_no_output(project: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["batch_size"] = 0
    params["train"]["lr"] = -1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    record = project / "models" / "run.json"
    before = record.read_bytes() if record.is_file() else None
    failed = run([str(BIN / "dvc"), "repro"], project, check=False)
    assert failed.returncode != 0
    assert "train.batch_size: must be >= 1" in failed.stderr and "train.lr" in failed.stderr
    assert "Traceback" not in failed.stderr
    # the tune stage (which reads train.lr and batch_size) refuses first: DVC removed its outputs,
    # nothing new was written, and the model already there was not touched
    assert not (project / "tune" / "best_params.json").exists()
    assert not record.exists() or record.read_bytes() == before


def test_stage_help_is_helpful() -> None:
    for stage in ("download", "split", "tune", "train", "classifier", "evaluate"):
        out = subprocess.run([sys.executable, str(ROOT / "pipeline" / f"{stage}.py"), "--help"],
                             capture_output=True, text=True, check=True).stdout
        assert "--params" in out and "DVC stage" in out
