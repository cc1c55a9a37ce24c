"""Stage `train`: train ``model.name`` with ``train.*`` (and the tune stage's winner), log the
run to MLflow, register the model. What resumes is decided once, by :func:`rnngen.resume.plan`:
an interrupted run of the same fingerprint (model, train config, data, code) goes on; a finished
one whose registration failed is registered without retraining; anything else starts afresh.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from rnngen import data, registry, tracking
from rnngen.config import build_sections, section
from rnngen.device import resolve_device
from rnngen.digests import source_digest
from rnngen.distributed import distributed
from rnngen.models import build_model, model_choice
from rnngen.resume import mark_registered, plan
from rnngen.train import TrainConfig, fit
from rnngen.tuning.result import apply_winner, compare_speed


def _validate(params: Mapping[str, Any]) -> dict[str, Any]:
    return build_sections(model=lambda: model_choice(params), train=lambda: section(TrainConfig, params, "train"),
                          tracking=lambda: section(tracking.TrackingConfig, params, "tracking"))


def run(params: Mapping[str, Any], split_dir: Path, hparams: Path | None, out: Path, checkpoint: Path,
        history_csv: Path, warm_start: Path | None = None) -> dict[str, Any]:
    """Train the configured model; log the run and register the model. Under torchrun every
    rank trains its share of each batch; rank 0 alone logs and writes. ``warm_start`` (the tune
    stage's winner) is continued where its fingerprint says it is the start of this training."""
    import mlflow

    tuned = apply_winner(params, hparams, _validate)
    choice, cfg, track = tuned.checked["model"], tuned.checked["train"], tuned.checked["tracking"]
    info = data.split_info(split_dir)
    train, val = data.load_split(split_dir, "train"), data.load_split(split_dir, "val")  # labelled images
    with distributed(cfg.device) as ranks:
        if ranks.world != cfg.processes and ranks.main:
            print(f"train: {ranks.world} process(es) (train.processes is {cfg.processes}); "
                  f"the global batch of {cfg.batch_size} is split across them")
        torch.manual_seed(cfg.seed)  # the initial weights too: same params + seed, same model
        device = resolve_device(cfg.device)
        model = build_model(choice.name, choice.config).to(device)
        identity = {"data": data.split_digest(split_dir), "code": source_digest(__name__)}
        if not ranks.main:  # the other ranks train their shares; rank 0 logs, checkpoints, registers
            fit(model, train, val, cfg, info["binarization"], checkpoint=checkpoint, identity=identity)
            return {}
        tracking.setup(track.experiment)  # fails fast on an unreachable store
        point = plan(checkpoint, model, cfg, info["binarization"], identity, warm_start=warm_start,
                     split_dir=split_dir)
        tracking.close_abandoned(point.discarded)
        run_id = tracking.live_run(point.own_run.get("mlflow_run_id")) if point.own_run else None
        name = tracking.run_name(choice.name, model, cfg, identity["data"])
        with tracking.run(run_id=run_id, run_name=None if run_id else name) as active:
            if run_id is None:
                mlflow.log_params(tracking.training_params(choice.name, model, cfg, info, tuned.overrides,
                                                           tuned.replaced, point.epoch if point.warm_start else 0))
                mlflow.set_tags(tracking.training_tags(choice.name, info, identity, device))
            result = fit(model, train, val, cfg, info["binarization"], checkpoint=checkpoint, resume=point,
                         on_epoch=lambda epoch, metrics: mlflow.log_metrics(metrics, step=epoch),
                         extra_state={"mlflow_run_id": active.info.run_id})
            summary = tracking.log_fit(result)
            line = compare_speed(result.history, hparams)
            if line:
                print(line)
                mlflow.set_tag("speed_vs_untuned", line)
            model.load_state_dict(result.best_weights)
            example = (data.binarize(data.to_unit(val.x[:2]), "fixed").numpy(), val.y[:2])  # (2, 1, 28, 28)
            version = registry.publish(model, dataclasses.asdict(cfg), info["binarization"], summary, result.history,
                                       example, out, history_csv, track.model_name)
        mark_registered(checkpoint, mlflow_run_id=active.info.run_id, model_version=version)
        print(f"registered {track.model_name} version {version} (run {active.info.run_id}, {name})")
        return summary
