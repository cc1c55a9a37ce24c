"""Stage `train`: train ``model.name`` with ``train.*`` (and the tuner's winners), log the run
to MLflow, register the model.

What reruns and what resumes: the checkpoint (a DVC ``persist`` output) is continued only when
its fingerprint matches (model and train config, binarization, the split's digest, rnngen's
source digest) and its run was interrupted; a finished, registered run is never resumed, and
the MLflow run is reopened only under the same condition. A training that finished but whose
registration failed is registered on the next run without retraining.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from rnngen import checkpoint as ckpt
from rnngen import data, registry, tracking
from rnngen.config import gather, section, set_dotted, to_flat_dict
from rnngen.files import atomic_dir, atomic_file, read_json, source_digest, write_json
from rnngen.models import GenerativeModel, ModelChoice, build_model, model_choice
from rnngen.train import (
    Ranks,
    TrainConfig,
    continue_warm_start,
    distributed,
    fingerprint,
    fit,
    mark_registered,
    resolve_device,
    resume_point,
)


def read_hparams(path: Path | None) -> dict[str, Any]:
    """The tuner's chosen overrides ``{"train.lr": ...}`` ({} when there is no file)."""
    if path is None or not Path(path).is_file():
        return {}
    return dict(read_json(path).get("params", {}))


def _configs(params: Mapping[str, Any]) -> dict[str, Any]:
    return gather(model=lambda: model_choice(params), train=lambda: section(TrainConfig, params, "train"),
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


def _run(
    params: Mapping[str, Any], split_dir: Path, hparams: Path | None, out: Path, checkpoint: Path,
    history_csv: Path, ranks: Ranks, warm_start: Path | None = None,
) -> dict[str, Any]:
    import mlflow
    import pandas as pd

    tuned = read_hparams(hparams)
    _configs(params)  # params.yaml's own values must be valid too, even where tuning replaces them
    cfgs = _configs(set_dotted(dict(params), tuned))
    choice, train_cfg, track_cfg = cfgs["model"], cfgs["train"], cfgs["tracking"]
    replaced = {k: (_dotted(params, k), v) for k, v in sorted(tuned.items()) if _dotted(params, k) != v}
    for key, (mine, theirs) in replaced.items():
        said = "null (its default)" if mine is None else mine
        print(f"tune: {key} = {theirs} (the tune stage's winner; params.yaml says {said})")
    info = data.split_info(split_dir)
    x_train, _ = data.load_split(split_dir, "train")
    x_val, _ = data.load_split(split_dir, "val")
    device = resolve_device(train_cfg.device)
    if ranks.world != train_cfg.processes and ranks.main:
        print(f"train: {ranks.world} process(es) (train.processes is {train_cfg.processes}); "
              f"the global batch of {train_cfg.batch_size} is split across them")
    torch.manual_seed(train_cfg.seed)  # the initial weights too: same params + seed, same model
    model = build_model(choice.name, choice.config).to(device)
    identity = {"data": data.split_digest(split_dir), "code": source_digest(__name__)}
    if not ranks.main:  # the other ranks train their shares; rank 0 logs, checkpoints, registers
        fit(model, x_train, x_val, train_cfg, info["binarization"], checkpoint=checkpoint, identity=identity)
        return {}
    tracking.setup(track_cfg.experiment)  # fails fast on an unreachable store
    expected = fingerprint(model, train_cfg, info["binarization"], identity)
    point = resume_point(checkpoint, expected)
    run_id = tracking.live_run(point.state.get("mlflow_run_id")) if point.state else None
    warm_epoch = 0
    if point.state is None:
        _close_abandoned_run(checkpoint)
        warm_epoch = continue_warm_start(warm_start, checkpoint, model, train_cfg, info["binarization"], split_dir,
                                         expected)
    name = run_name(choice, model, train_cfg, identity["data"])
    with tracking.run(run_id=run_id, run_name=None if run_id else name) as active:
        if run_id is None:
            mlflow.log_params({
                **{f"model.{k}": v for k, v in to_flat_dict(choice.config).items()},
                "model.name": choice.name,
                "model.parameters": sum(p.numel() for p in model.parameters()),
                **{f"train.{k}": v for k, v in to_flat_dict(train_cfg).items()},
                "data.dataset": info["dataset"], "data.source": info["source"],
                "split.binarization": info["binarization"], "split.seed": info["seed"],
                **{f"split.n_{k}": v for k, v in info["counts"].items()},
                "tuned": ",".join(sorted(tuned)) or "none",
                "warm_start_epochs": warm_epoch,
                **{f"params_yaml.{k}": mine for k, (mine, _) in replaced.items()},
            })
            mlflow.set_tags({
                **tracking.git_state(),
                "source_sha256": identity["code"],
                "data_sha256": identity["data"],
                "data_manifest_sha256": info["manifest_sha256"],
                "model": choice.name,
                "device": str(device),
            })
        result = fit(
            model, x_train, x_val, train_cfg, info["binarization"], checkpoint=checkpoint, identity=identity,
            on_epoch=lambda epoch, metrics: mlflow.log_metrics(metrics, step=epoch),
            extra_state={"mlflow_run_id": active.info.run_id},
        )
        mlflow.set_tags({"resumed_from_epoch": str(result.resumed_from),
                         "reused_finished_training": str(result.reused).lower()})
        model.load_state_dict(result.best_weights)
        summary = {
            "best_epoch": result.best_epoch,
            "best_val_loss": result.best_val,
            "epochs_run": len(result.history),
            "stopped_early": result.stopped_early,
            "resumed_from_epoch": result.resumed_from,
            "reused_finished_training": result.reused,
            "train_seconds": sum(h["epoch_seconds"] for h in result.history),
        }
        mlflow.log_metrics({"best_val_loss": result.best_val, "best_epoch": result.best_epoch})
        # Weights and curves are on disk (checkpoint phase "trained", history CSV) before the
        # registry is touched: a failure from here on is retried without retraining.
        with atomic_file(history_csv) as tmp_csv:
            pd.DataFrame(result.history).to_csv(tmp_csv, index=False)
        mlflow.log_artifact(str(history_csv))
        with atomic_dir(out) as tmp:
            ckpt.save_model(tmp / registry.CHECKPOINT_FILE, model, train=dataclasses.asdict(train_cfg),
                            binarization=info["binarization"], summary=summary)
            example = data.binarize(data.to_unit(x_val[:2]), "fixed").numpy()  # (2, 1, 28, 28)
            version = registry.log_model(tmp / registry.CHECKPOINT_FILE, example, track_cfg.model_name)
            write_json(tmp / registry.RUN_FILE, {
                "run_id": active.info.run_id, "run_name": mlflow.get_run(active.info.run_id).info.run_name,
                "experiment_id": active.info.experiment_id, "tracking_uri": mlflow.get_tracking_uri(),
                "model_name": track_cfg.model_name, "model_version": version, **summary,
            })
    mark_registered(checkpoint, mlflow_run_id=active.info.run_id, model_version=version)
    print(f"registered {track_cfg.model_name} version {version} (run {active.info.run_id}, {name})")
    return summary


def _close_abandoned_run(checkpoint: Path) -> None:
    """An interrupted run that will not be resumed (its fingerprint no longer matches) is
    marked KILLED, so it does not stay RUNNING in the UI forever."""
    import mlflow

    state = ckpt.load(checkpoint) if Path(checkpoint).is_file() else {}
    old = tracking.live_run(state.get("mlflow_run_id")) if state.get("phase") == "training" else None
    if old is not None and mlflow.MlflowClient().get_run(old).info.status == "RUNNING":
        mlflow.MlflowClient().set_terminated(old, status="KILLED")
        print(f"run {old} (interrupted, other settings) marked KILLED; this one starts a new run")
