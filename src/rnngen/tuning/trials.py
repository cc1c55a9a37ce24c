"""One trial: what it needs (:class:`SearchContext`), the model it trains, and the objective
``study.optimize`` calls: train one configuration, report each epoch to the pruner, log it to
the trial's MLflow run, return the best validation negative ELBO.

Test hook: ``$RNNGEN_TUNE_FAIL_TRIAL`` (comma-separated trial numbers) makes those trials raise
after their first epoch, like a crashing trial would.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from rnngen import data
from rnngen.models import build_model, model_config
from rnngen.train import TrainConfig, fit, resolve_device
from rnngen.tuning import mlflow_log
from rnngen.tuning.settings import trial_train_config
from rnngen.tuning.space import Family, TuneConfig, family_of, suggest
from rnngen.tuning.storage import StudyStorage

FAIL_TRIAL_ENV = "RNNGEN_TUNE_FAIL_TRIAL"


@dataclass(frozen=True)
class SearchContext:
    """Everything a worker process needs to run the study's trials (picklable for spawn)."""

    cfg: TuneConfig
    #: the inherited train.* settings every trial starts from
    train: TrainConfig
    families: tuple[Family, ...]
    split_dir: str
    binarization: str
    storage: StudyStorage
    study_name: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    #: torch threads per worker process; 0 = torch's default
    threads: int
    #: time.time() after which no trial starts and running ones stop (tune.budget_s); 0 = none
    deadline: float = 0.0
    #: successive halving: the folder of its trials' checkpoints, and what they must match
    halving_dir: str = ""
    identity: dict[str, str] = field(default_factory=dict)

    def over_budget(self) -> bool:
        return bool(self.deadline) and time.time() > self.deadline

    def training_images(self) -> TrialImages:
        """uint8 images and their labels: the first tune.train_images of the (shuffled) train
        split (in seconds: all of it, the train stage's data), and the whole validation split.
        The test split is never read."""
        train, val = data.load_split(self.split_dir, "train"), data.load_split(self.split_dir, "val")
        if self.cfg.train_images and self.cfg.resource == "epochs":
            train = train.head(self.cfg.train_images)
        return TrialImages(train, val)


class TrialImages(NamedTuple):
    """A trial's training and validation images, with their labels (which only a conditional
    model reads)."""

    train: data.Images
    val: data.Images

    def fit(self, model: Any, cfg: Any, binarization: str, **kwargs: Any) -> Any:
        """:func:`rnngen.train.fit` on these images."""
        return fit(model, self.train, self.val, cfg, binarization, **kwargs)


def worker_id() -> str:
    """``host:pid``, recorded on each trial a process runs: a dead process's trials are retried."""
    return f"{socket.gethostname()}:{os.getpid()}"


def describe(hp: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}" for k, v in hp.items())


UNTUNED_ATTR = "untuned"


def is_untuned(trial: Any) -> bool:
    """Trial 0: params.yaml's own values (a retry of it too), the one every winner must beat."""
    return bool(trial.user_attrs.get(UNTUNED_ATTR))


def trial_model(hp: Mapping[str, Any], ctx: SearchContext, untuned: bool = False) -> tuple[Any, TrainConfig]:
    """The model (initial weights seeded like the train stage's) and the training settings of
    a trial; ``untuned``: trial 0, whose model is params.yaml's section as it is."""
    fam = family_of(hp, ctx.families)
    train_cfg = trial_train_config(ctx.cfg, ctx.train, hp)
    # same initial weights for every trial: only the hyperparameters differ
    torch.manual_seed(train_cfg.seed)
    hidden = {} if untuned else dict.fromkeys(fam.hidden_fields, hp["hidden"])
    section = {**fam.section, **hidden}
    model = build_model(fam.name, model_config(fam.name, section))
    return model.to(resolve_device(ctx.cfg.device)), train_cfg


def objective(trial: Any, ctx: SearchContext, images: TrialImages, sampled: Callable[[], None] = lambda: None) -> float:
    """``study.optimize``'s objective: the trial's values (then ``sampled()``), its nested MLflow
    run (tag ``optuna.state``; FAILED when it raises), its training. A pruned trial ends its run
    FINISHED; a failing one leaves its error in the trial's ``error`` attribute."""
    import mlflow
    import optuna

    trial.set_user_attr("worker", worker_id())
    pruned: optuna.TrialPruned | None = None
    try:
        hp = suggest(trial, ctx.cfg, ctx.families)
        sampled()
        with mlflow_log.trial_run(trial, ctx, hp, tags={"optuna.worker": worker_id()}):
            try:
                value = _train(trial, hp, ctx, images)
                mlflow.log_metric("best_val_loss", value)
            except optuna.TrialPruned as exc:
                pruned = exc  # a normal end: raised again once the run is closed
            except Exception:
                mlflow.set_tag("optuna.state", "FAIL")
                raise
            mlflow.set_tag("optuna.state", "PRUNED" if pruned else "COMPLETE")
    except Exception as exc:
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:1000])
        raise
    if pruned is not None:
        raise pruned
    return value


def _train(trial: Any, hp: dict[str, Any], ctx: SearchContext, images: TrialImages) -> float:
    """Train one configuration; the best validation negative ELBO (nats/image). Each epoch's
    validation loss goes to the pruner (median or Hyperband)."""
    import mlflow
    import optuna

    cfg = ctx.cfg
    model, train_cfg = trial_model(hp, ctx, untuned=is_untuned(trial))
    fail = str(trial.number) in os.environ.get(FAIL_TRIAL_ENV, "").split(",")

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        mlflow.log_metrics(metrics, step=epoch)
        if fail:
            raise RuntimeError(f"injected failure in trial {trial.number} (${FAIL_TRIAL_ENV})")
        trial.report(metrics["val_loss"], epoch)
        # Pruning after the last epoch would save nothing and hide a finished result.
        if epoch < cfg.epochs and trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")
        if epoch < cfg.epochs and ctx.over_budget():
            trial.set_user_attr("stopped", "tune.budget_s")
            raise optuna.TrialPruned(f"tune.budget_s ({cfg.budget_s:g} s) spent after epoch {epoch}")

    result = images.fit(model, train_cfg, ctx.binarization, on_epoch=on_epoch, progress=False)
    trial.set_user_attr("images_per_second", speed(result.history))
    return result.best_val


def speed(history: list[dict[str, float]]) -> float:
    """Training images per second, the median over a trial's epochs."""
    speeds = sorted(h["images_per_second"] for h in history)
    return round(speeds[len(speeds) // 2], 1) if speeds else 0.0
