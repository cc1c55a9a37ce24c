"""Stage `train`: train ``model.name`` with ``train.*`` (and the tuner's winners), log the run
to MLflow, register the model.

What reruns and what resumes, decided once by :func:`rnngen.resume.plan`: the checkpoint (a
DVC ``persist`` output) is continued only when its fingerprint matches (model and train config,
binarization, the split's digest, rnngen's source digest) and its run was interrupted; a
finished, registered run is never resumed, and the MLflow run is reopened only under the same
condition. A training that finished but whose registration failed is registered on the next run
without retraining. Otherwise the tune stage's winner is continued where it is the start of
this very training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rnngen import checkpoint as ckpt
from rnngen import data, registry, tracking
from rnngen.config import build_sections, section, set_dotted, to_flat_dict
from rnngen.device import resolve_device
from rnngen.digests import source_digest
from rnngen.distributed import Ranks, distributed
from rnngen.files import atomic_dir, atomic_file, read_json, write_json
from rnngen.models import GenerativeModel, ModelChoice, build_model, model_choice
from rnngen.resume import ResumePoint, mark_registered, plan
from rnngen.train import FitResult, TrainConfig, fit


def read_hparams(path: Path | None) -> dict[str, Any]:
    """The tuner's chosen overrides ``{"train.lr": ...}`` ({} when there is no file)."""
    return dict(_tune_result(path).get("params", {}))


def _tune_result(path: Path | None) -> dict[str, Any]:
    return read_json(path) if path is not None and Path(path).is_file() else {}


def compare_speed(history: list[dict[str, float]], hparams: Path | None) -> str | None:
    """A line when this training's speed differs from the untuned configuration's (trial 0 of
    a search in seconds) by more than 2x: under a time budget, speed buys or costs epochs."""
    untuned = (_tune_result(hparams).get("images_per_second") or {}).get("untuned")
    speeds = sorted(h["images_per_second"] for h in history)
    if not untuned or not speeds:
        return None
    mine = speeds[len(speeds) // 2]
    if 0.5 <= mine / untuned <= 2:
        return None
    return (f"train: {mine:.0f} images/s against {untuned:.0f} for params.yaml's values (trial 0 of the search): "
            f"{mine / untuned:.1f}x, within train.time_budget_s ({len(history)} epochs)")


def _configs(params: Mapping[str, Any]) -> dict[str, Any]:
    return build_sections(model=lambda: model_choice(params), train=lambda: section(TrainConfig, params, "train"),
                  tracking=lambda: section(tracking.TrackingConfig, params, "tracking"))


def _dotted(params: Mapping[str, Any], key: str) -> Any:
    node: Any = params
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def run_name(choice: ModelChoice, model: GenerativeModel, cfg: TrainConfig, data_sha256: str) -> str:
    """``row_lstm_vae hidden=64 lr=0.0012 bs=64 data=3f2a1c9``: runs told apart in the UI list."""
    sizes = " ".join(f"{f}={getattr(choice.config, f)}" for f in model.hidden_fields)
    return f"{choice.name} {sizes} lr={cfg.lr:.2g} bs={cfg.batch_size} data={data_sha256[:7]}"


def run(
    params: Mapping[str, Any],
    split_dir: Path,
    hparams: Path | None,
    out: Path,
    checkpoint: Path,
    history_csv: Path,
    warm_start: Path | None = None,
) -> dict[str, Any]:
    """Train the configured model; log the run to MLflow and register the model. Under
    torchrun every rank trains its share of each batch; rank 0 alone logs and writes. With
    ``warm_start`` (the tune stage's winner, ``tune.warm_start``) a fresh training continues
    that trial where its checkpoint fingerprint says it is the start of this very training."""
    device = str(section(TrainConfig, params, "train").device)
    with distributed(device) as ranks:
        return _run(params, split_dir, hparams, out, checkpoint, history_csv, ranks, warm_start)


@dataclass(frozen=True)
class _Settings:
    """The validated sections, with the tune stage's winners applied."""

    choice: ModelChoice
    train: TrainConfig
    tracking: tracking.TrackingConfig
    #: the tuner's overrides, ``{"train.lr": ...}``
    tuned: dict[str, Any]
    #: the keys where the tuner's value replaced params.yaml's: key -> (params.yaml's, the tuner's)
    replaced: dict[str, tuple[Any, Any]]


def _settings(params: Mapping[str, Any], hparams: Path | None) -> _Settings:
    tuned = read_hparams(hparams)
    _configs(params)  # params.yaml's own values must be valid too, even where tuning replaces them
    cfgs = _configs(set_dotted(dict(params), tuned))
    replaced = {k: (_dotted(params, k), v) for k, v in sorted(tuned.items()) if _dotted(params, k) != v}
    for key, (mine, theirs) in replaced.items():
        said = "null (its default)" if mine is None else mine
        print(f"tune: {key} = {theirs} (the tune stage's winner; params.yaml says {said})")
    return _Settings(cfgs["model"], cfgs["train"], cfgs["tracking"], tuned, replaced)


def _run(
    params: Mapping[str, Any], split_dir: Path, hparams: Path | None, out: Path, checkpoint: Path,
    history_csv: Path, ranks: Ranks, warm_start: Path | None = None,
) -> dict[str, Any]:
    import mlflow

    s = _settings(params, hparams)
    info = data.split_info(split_dir)
    x_train, y_train = data.load_split(split_dir, "train")
    x_val, y_val = data.load_split(split_dir, "val")
    labels = {"train_y": y_train, "val_y": y_val}  # a conditional model's; the others ignore them
    device = resolve_device(s.train.device)
    if ranks.world != s.train.processes and ranks.main:
        print(f"train: {ranks.world} process(es) (train.processes is {s.train.processes}); "
              f"the global batch of {s.train.batch_size} is split across them")
    torch.manual_seed(s.train.seed)  # the initial weights too: same params + seed, same model
    model = build_model(s.choice.name, s.choice.config).to(device)
    identity = {"data": data.split_digest(split_dir), "code": source_digest(__name__)}
    binarization = info["binarization"]
    if not ranks.main:  # the other ranks train their shares; rank 0 logs, checkpoints, registers
        fit(model, x_train, x_val, s.train, binarization, checkpoint=checkpoint, identity=identity, **labels)
        return {}
    tracking.setup(s.tracking.experiment)  # fails fast on an unreachable store
    point = plan(checkpoint, model, s.train, binarization, identity, warm_start=warm_start, split_dir=split_dir)
    _close_abandoned_run(point)
    run_id = tracking.live_run(point.own_run.get("mlflow_run_id")) if point.own_run else None
    name = run_name(s.choice, model, s.train, identity["data"])
    with tracking.run(run_id=run_id, run_name=None if run_id else name) as active:
        if run_id is None:
            _log_run(s, model, info, identity, point, device)
        result = fit(
            model, x_train, x_val, s.train, binarization, checkpoint=checkpoint, resume=point,
            on_epoch=lambda epoch, metrics: mlflow.log_metrics(metrics, step=epoch),
            extra_state={"mlflow_run_id": active.info.run_id}, **labels,
        )
        summary = _summary(result)
        line = compare_speed(result.history, hparams)
        if line:
            print(line)
            mlflow.set_tag("speed_vs_untuned", line)
        model.load_state_dict(result.best_weights)
        version = _publish(model, result, summary, s, info, x_val, y_val, out, history_csv, active)
    mark_registered(checkpoint, mlflow_run_id=active.info.run_id, model_version=version)
    print(f"registered {s.tracking.model_name} version {version} (run {active.info.run_id}, {name})")
    return summary


def _log_run(s: _Settings, model: GenerativeModel, info: Mapping[str, Any], identity: Mapping[str, str],
             point: ResumePoint, device: torch.device) -> None:
    """A new MLflow run's params and tags: the settings, the data, the code."""
    import mlflow

    mlflow.log_params({
        **{f"model.{k}": v for k, v in to_flat_dict(s.choice.config).items()},
        "model.name": s.choice.name,
        "model.parameters": sum(p.numel() for p in model.parameters()),
        **{f"train.{k}": v for k, v in to_flat_dict(s.train).items()},
        "data.dataset": info["dataset"], "data.source": info["source"],
        "split.binarization": info["binarization"], "split.seed": info["seed"],
        **{f"split.n_{k}": v for k, v in info["counts"].items()},
        "tuned": ",".join(sorted(s.tuned)) or "none",
        "warm_start_epochs": point.epoch if point.warm_start else 0,
        **{f"params_yaml.{k}": mine for k, (mine, _) in s.replaced.items()},
    })
    mlflow.set_tags({
        **tracking.git_state(),
        "source_sha256": identity["code"],
        "data_sha256": identity["data"],
        "data_manifest_sha256": info["manifest_sha256"],
        "model": s.choice.name,
        "device": str(device),
    })


def _summary(result: FitResult) -> dict[str, Any]:
    """What run.json and the stage report; tagged and logged to the active run."""
    import mlflow

    mlflow.set_tags({"resumed_from_epoch": str(result.resumed_from),
                     "reused_finished_training": str(result.reused).lower()})
    return {
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "resumed_from_epoch": result.resumed_from,
        "reused_finished_training": result.reused,
        "train_seconds": sum(h["epoch_seconds"] for h in result.history),
    }


def _publish(model: GenerativeModel, result: FitResult, summary: Mapping[str, Any], s: _Settings,
             info: Mapping[str, Any], x_val: torch.Tensor, y_val: torch.Tensor, out: Path, history_csv: Path,
             active: Any) -> str:
    """Write the curves and the model, log and register it; returns the model version."""
    import mlflow
    import pandas as pd

    mlflow.log_metrics({"best_val_loss": result.best_val, "best_epoch": result.best_epoch})
    # Weights and curves are on disk (checkpoint phase "trained", history CSV) before the
    # registry is touched: a failure from here on is retried without retraining.
    with atomic_file(history_csv) as tmp_csv:
        pd.DataFrame(result.history).to_csv(tmp_csv, index=False)
    mlflow.log_artifact(str(history_csv))
    with atomic_dir(out) as tmp:
        ckpt.save_model(tmp / registry.CHECKPOINT_FILE, model, train=dataclasses.asdict(s.train),
                        binarization=info["binarization"], summary=summary)
        example = data.binarize(data.to_unit(x_val[:2]), "fixed").numpy()  # (2, 1, 28, 28)
        labels = {"labels": [int(v) for v in y_val[:2]]} if model.conditional else None
        version = registry.log_model(tmp / registry.CHECKPOINT_FILE, example, s.tracking.model_name, labels)
        write_json(tmp / registry.RUN_FILE, {
            "run_id": active.info.run_id, "run_name": mlflow.get_run(active.info.run_id).info.run_name,
            "experiment_id": active.info.experiment_id, "tracking_uri": mlflow.get_tracking_uri(),
            "model_name": s.tracking.model_name, "model_version": version, **summary,
        })
    return version


def _close_abandoned_run(point: ResumePoint) -> None:
    """An interrupted run that will not be resumed (its fingerprint no longer matches) is
    marked KILLED, so it does not stay RUNNING in the UI forever."""
    state = point.discarded or {}
    old = tracking.live_run(state.get("mlflow_run_id")) if state.get("phase") == "training" else None
    if tracking.mark_killed(old):
        print(f"run {old} (interrupted, other settings) marked KILLED; this one starts a new run")
