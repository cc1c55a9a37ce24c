"""Stage `classifier`: the small CNN that sample quality and inpainting are judged by."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rnngen import data
from rnngen.classifier import (
    CLASSIFIER_FILE,
    METRICS_FILE,
    ClassifierConfig,
    accuracy,
    as_judged,
    save_classifier,
    train_classifier,
)
from rnngen.config import section
from rnngen.files import atomic_file, write_json


def run(params: Mapping[str, Any], split_dir: Path, out: Path) -> dict[str, Any]:
    """Train on the training split; write ``out/classifier.pt`` and ``out/metrics.json``."""
    cfg = section(ClassifierConfig, params, "classifier")
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = (data.load_split(split_dir, n) for n in ("train", "val", "test"))
    model, fit_metrics = train_classifier(x_tr, y_tr, x_va, y_va, cfg)
    test_accuracy = accuracy(model, as_judged(model, x_te, cfg.seed), y_te)  # binary judge: binarized once
    metrics = {"val_accuracy": fit_metrics["val_accuracy"], "test_accuracy": test_accuracy,
               "best_epoch": fit_metrics["best_epoch"]}
    with atomic_file(out / CLASSIFIER_FILE) as tmp:  # two DVC outputs in one folder: each atomic
        save_classifier(tmp, model)
    write_json(out / METRICS_FILE, metrics)
    print(f"classifier: test accuracy {metrics['test_accuracy']:.2%} (val {metrics['val_accuracy']:.2%})")
    return metrics
