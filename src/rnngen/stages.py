"""What each DVC stage does, as importable functions with explicit arguments.

``pipeline/<stage>.py`` only parses paths and params and calls one of these. Every stage
validates its inputs first, writes its outputs through a temporary folder (nothing
half-written on failure), and leaves MLflow runs FAILED rather than RUNNING on errors.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from rnngen import checkpoint as ckpt
from rnngen import data, settings, tracking
from rnngen.config import to_flat_dict
from rnngen.files import atomic_dir, file_digest, read_json, write_json
from rnngen.models import build_model
from rnngen.train import fit, resolve_device

MANIFEST = "manifest.json"
SPLIT_INFO = "split.json"
MODEL_FILE = "model.pt"
RUN_FILE = "run.json"
CLASSIFIER_FILE = "classifier.pt"


# ----------------------------------------------------------------------------- download


def download(params: Mapping[str, Any], out: Path) -> dict[str, Any]:
    """Acquire the dataset into ``out``: uint8 ``.npy`` arrays and ``manifest.json``."""
    cfg = settings.build(params, "data")["data"]
    with atomic_dir(out) as tmp:
        raw = data.acquire(cfg, tmp)
        if (tmp / "downloads").exists():
            shutil.rmtree(tmp / "downloads")
        raw.save(tmp)
        manifest = {
            "dataset": cfg.dataset,
            "source": cfg.source,
            "origin": cfg.mirror or cfg.path or cfg.source,
            "files_md5": raw.files,
            "counts": {"train": len(raw.x_train), "test": len(raw.x_test)},
            "official_test_split": bool(len(raw.x_test)),
            "classes": int(raw.y_train.max()) + 1,
            "x_train_sha256": file_digest(tmp / "x_train.npy", "sha256"),
        }
        write_json(tmp / MANIFEST, manifest)
    print(f"{cfg.dataset} ({cfg.source}): {manifest['counts']}")
    return manifest


# -------------------------------------------------------------------------------- split


def split(params: Mapping[str, Any], raw_dir: Path, out: Path) -> dict[str, Any]:
    """Seeded stratified train/val/test from ``raw_dir`` into ``out/{train,val,test}_{x,y}.npy``."""
    cfg = settings.build(params, "split")["split"]
    raw = data.RawData.load(raw_dir)
    manifest = read_json(raw_dir / MANIFEST)
    parts = data.split(raw, cfg)
    with atomic_dir(out) as tmp:
        for name, (x, y) in parts.items():
            data.save_split(tmp, name, x, y)
        info = {
            **dataclasses.asdict(cfg),
            "counts": {name: len(y) for name, (_, y) in parts.items()},
            "dataset": manifest["dataset"],
            "source": manifest["source"],
            "manifest_sha256": file_digest(raw_dir / MANIFEST, "sha256"),
        }
        write_json(tmp / SPLIT_INFO, info)
    print(f"split: {info['counts']} (binarization: {cfg.binarization})")
    return info


# ----------------------------------------------------------------------------- tune


def read_hparams(path: Path | None) -> dict[str, Any]:
    """The tuner's chosen overrides ``{"train.lr": ...}`` ({} when there is no file)."""
    if path is None or not Path(path).is_file():
        return {}
    return dict(read_json(path).get("params", {}))


# -------------------------------------------------------------------------------- train


def train(
    params: Mapping[str, Any],
    split_dir: Path,
    hparams: Path | None,
    out: Path,
    checkpoint: Path,
    history_csv: Path,
) -> dict[str, Any]:
    """Train the configured model; log the run to MLflow and register the model."""
    import mlflow
    import pandas as pd

    overrides = read_hparams(hparams)
    settings.build(params, "model", "train", "tracking")  # params.yaml's own values must be valid too
    params = settings.with_overrides(params, overrides)
    cfgs = settings.build(params, "model", "train", "tracking")
    model_choice, train_cfg, track_cfg = cfgs["model"], cfgs["train"], cfgs["tracking"]
    info = read_json(split_dir / SPLIT_INFO) if (split_dir / SPLIT_INFO).is_file() else None
    if info is None:
        raise data.DataError(f"{split_dir / SPLIT_INFO} not found; run the split stage first")
    x_train, _ = data.load_split(split_dir, "train")
    x_val, _ = data.load_split(split_dir, "val")
    device = resolve_device(train_cfg.device)
    tracking.setup(track_cfg.experiment)  # fails fast on an unreachable store

    torch.manual_seed(train_cfg.seed)  # the initial weights too: same params + seed, same model
    model = build_model(model_choice.name, model_choice.config).to(device)
    previous = _resumable(checkpoint)
    run_id = previous.get("mlflow_run_id")
    with tracking.run(run_id=run_id, run_name=None if run_id else f"{model_choice.name}") as run:
        if run_id is None:
            mlflow.log_params({
                **{f"model.{k}": v for k, v in to_flat_dict(model_choice.config).items()},
                "model.name": model_choice.name,
                "model.parameters": sum(p.numel() for p in model.parameters()),
                **{f"train.{k}": v for k, v in to_flat_dict(train_cfg).items()},
                "data.dataset": info["dataset"], "data.source": info["source"],
                "split.binarization": info["binarization"], "split.seed": info["seed"],
                **{f"split.n_{k}": v for k, v in info["counts"].items()},
                "tuned": ",".join(sorted(overrides)) or "none",
            })
            mlflow.set_tags({
                "git_commit": tracking.git_commit(),
                "data_manifest_sha256": info["manifest_sha256"],
                "model": model_choice.name,
                "device": str(device),
            })

        def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
            mlflow.log_metrics(metrics, step=epoch)

        t0 = time.perf_counter()
        result = fit(
            model, x_train, x_val, train_cfg, info["binarization"],
            checkpoint=checkpoint, on_epoch=log_epoch,
            extra_state={"mlflow_run_id": run.info.run_id},
        )
        model.load_state_dict(result.best_weights)
        summary = {
            "best_epoch": result.best_epoch,
            "best_val_loss": result.best_val,
            "epochs_run": len(result.history),
            "stopped_early": result.stopped_early,
            "train_seconds": time.perf_counter() - t0,
        }
        mlflow.log_metrics({"best_val_loss": result.best_val, "best_epoch": result.best_epoch})
        with atomic_dir(out) as tmp:
            ckpt.save_model(tmp / MODEL_FILE, model, train=dataclasses.asdict(train_cfg),
                            binarization=info["binarization"], summary=summary)
            mlflow.log_artifact(str(tmp / MODEL_FILE), artifact_path="checkpoint")
            history = pd.DataFrame(result.history)
            history_csv.parent.mkdir(parents=True, exist_ok=True)
            history.to_csv(history_csv, index=False)
            mlflow.log_artifact(str(history_csv))
            version = _log_model(model, x_val[:2], info["binarization"], track_cfg.model_name)
            write_json(tmp / RUN_FILE, {
                "run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
                "tracking_uri": mlflow.get_tracking_uri(), "model_name": track_cfg.model_name,
                "model_version": version, **summary,
            })
    _mark_finished(checkpoint)
    return summary


def _resumable(checkpoint: Path) -> dict[str, Any]:
    if not checkpoint.is_file():
        return {}
    state = ckpt.load(checkpoint)
    return {} if state.get("finished") else state


def _mark_finished(checkpoint: Path) -> None:
    if checkpoint.is_file():
        state = ckpt.load(checkpoint)
        state["finished"] = True
        ckpt.save(checkpoint, state)


class _Scorer(torch.nn.Module):
    """What the MLflow pyfunc model serves: per-image negative ELBO (nats) for a batch of
    ``(B, 1, 28, 28)`` images in [0, 1] — an anomaly score. The generative model itself is
    ``.model``; rnngen's CLI loads the safe ``checkpoint/model.pt`` artifact instead."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).nelbo


def _log_model(model: torch.nn.Module, example_u8: torch.Tensor, binarization: str, name: str) -> str:
    import mlflow

    # Two images: torch.export (MLflow's default "pt2" format, no pickled code) would
    # specialise a batch dimension of 1 to a constant.
    example = (example_u8.float().unsqueeze(1) / 255.0).round().numpy()  # (2, 1, 28, 28)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*_flat_weights.*")  # nn.LSTM internals under export
        info = mlflow.pytorch.log_model(
            _Scorer(model.cpu().eval()), name="model", input_example=example,
            registered_model_name=name, await_registration_for=60,
        )
    return str(info.registered_model_version)


# ----------------------------------------------------------------------------- evaluate


def classifier(params: Mapping[str, Any], split_dir: Path, out: Path) -> dict[str, Any]:
    """Train the small CNN that sample quality and inpainting are scored with."""
    from rnngen.classifier import accuracy, save_classifier, train_classifier

    cfg = settings.build(params, "classifier")["classifier"]
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = (data.load_split(split_dir, n) for n in ("train", "val", "test"))
    model, fit_metrics = train_classifier(x_tr, y_tr, x_va, y_va, cfg)
    metrics = {"val_accuracy": fit_metrics["val_accuracy"], "test_accuracy": accuracy(model, x_te, y_te),
               "best_epoch": fit_metrics["best_epoch"]}
    out.mkdir(parents=True, exist_ok=True)  # two DVC outputs in one folder: write each atomically
    tmp_file = out / f".{CLASSIFIER_FILE}.tmp"
    save_classifier(tmp_file, model)
    os.replace(tmp_file, out / CLASSIFIER_FILE)
    write_json(out / "metrics.json", metrics)
    print(f"classifier: test accuracy {metrics['test_accuracy']:.2%} (val {metrics['val_accuracy']:.2%})")
    return metrics


def evaluate(
    params: Mapping[str, Any], model_dir: Path, split_dir: Path, classifier_dir: Path, metrics_path: Path,
    plots_dir: Path,
) -> dict[str, Any]:
    """Test metrics and pictures (see :func:`rnngen.evaluate.report`), added to the training run."""
    import mlflow

    from rnngen.classifier import load_classifier
    from rnngen.evaluate import report

    cfg = settings.build(params, "evaluate")["evaluate"]
    run_info = read_json(model_dir / RUN_FILE)
    state = ckpt.load(model_dir / MODEL_FILE)  # read once: the model and how it was binarized
    model, binarization = ckpt.model_from_state(state, model_dir / MODEL_FILE), state["binarization"]
    judge = load_classifier(classifier_dir / CLASSIFIER_FILE)
    classifier_metrics = read_json(classifier_dir / "metrics.json")
    x_test, y_test = data.load_split(split_dir, "test")
    if cfg.max_images:
        x_test, y_test = x_test[: cfg.max_images], y_test[: cfg.max_images]
    tracking.check_store(run_info["tracking_uri"])
    mlflow.set_tracking_uri(run_info["tracking_uri"])
    note = _binarization_note(binarization, cfg.seed)

    with tracking.run(run_id=run_info["run_id"]):
        with atomic_dir(plots_dir) as tmp:
            metrics = report(model, x_test, y_test, judge, cfg, binarization, tmp)
            for path in sorted(tmp.iterdir()):
                mlflow.log_artifact(str(path), artifact_path="pictures")
                if path.suffix == ".png":  # also as images over steps, for the UI's chart view
                    from PIL import Image

                    with Image.open(path) as im:
                        mlflow.log_image(im.convert("RGB"), key=path.stem, step=0)
        metrics["classifier_test_accuracy"] = classifier_metrics["test_accuracy"]
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        mlflow.set_tag("test_binarization", note)
        version = run_info.get("model_version")
        if version:
            client = mlflow.MlflowClient()
            for key in ("test_nll_iwae", "test_nll_elbo", "test_fcd"):
                client.set_model_version_tag(run_info["model_name"], version, key, f"{metrics[key]:.4f}")
    # No run id or timings here: the same params and seed give a byte-identical file.
    result = {**metrics, "binarization": note, "model": model.name}
    write_json(metrics_path, result)
    print(
        f"test NLL: ELBO {metrics['test_nll_elbo']:.2f}  IWAE(k={cfg.k}) {metrics['test_nll_iwae']:.2f} nats"
        f"  ({metrics['test_bpd_iwae']:.4f} bits/dim) on {len(x_test)} images;"
        f" FCD {metrics['test_fcd']:.1f}"
    )
    return result


def _binarization_note(binarization: str, seed: int) -> str:
    return {
        "dynamic": f"dynamic (test images binarized once with seed {seed})",
        "fixed": "fixed (one seeded Bernoulli sample, made at split time)",
        "none": "none (grey levels as Bernoulli targets: not a true likelihood)",
    }[binarization]
