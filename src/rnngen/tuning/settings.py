"""The tune stage's own settings (``tune.*``, :class:`TuneConfig`) and the ``train.*`` keys it
inherits: what a trial trains with, read from params.yaml at the edge.

:mod:`~rnngen.tuning.space` makes them concrete and validates them with the model families.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from rnngen import tracking
from rnngen.config import from_dict, section
from rnngen.errors import UserError
from rnngen.models import MODELS
from rnngen.train import TrainConfig

OPTIMIZERS = ("adam", "sgd")
#: settings that do not change what is searched: editing them continues the same study
RUNTIME_KEYS = ("workers", "threads", "device", "storage", "heartbeat_s", "stale_after_s")

#: the ``train.*`` keys the tune stage reads (declared as params of the tune stage in dvc.yaml):
#: lr, batch_size and optimizer are trial 0's values and the centre of the space, time_budget_s
#: the seconds a trial may reach; the rest every trial inherits (tune.* sets the seed, epochs
#: and patience of a trial that is not on the real schedule)
INHERITED_TRAIN_KEYS = ("lr", "batch_size", "optimizer", "time_budget_s", "momentum", "grad_clip", "augment_shift",
                        "augment_rotate", "amp", "kl_warmup_epochs", "lr_schedule", "weight_decay", "seed", "epochs",
                        "patience")
#: of those, the ones only trials on the real schedule read (successive halving, or seconds);
#: the median and Hyperband trials take tune.seed, tune.epochs and tune.patience instead
HALVING_TRAIN_KEYS = ("seed", "epochs", "patience")


class TuneError(UserError, RuntimeError):
    """The search produced no usable result (e.g. every trial failed); the message says why."""


@dataclass(frozen=True)
class LogRange:
    """A positive float range searched on a log scale; a bound left null is ``centre / span``
    (low) or ``centre * span`` (high), the centre being params.yaml's value (train.lr)."""

    low: float | None = None
    high: float | None = None
    span: float = 100.0

    def problems(self) -> list[str]:
        out = []
        if not self.span > 1:
            out.append(f"span: the factor each side of the centre must be > 1, got {self.span}")
        if self.low is not None and not self.low > 0:
            out.append(f"low: must be > 0 (log scale), got {self.low}")
        if self.low is not None and self.high is not None and not self.high > self.low:
            out.append(f"high: [{self.low}, {self.high}] is an empty or inverted range; need low < high")
        return out

    def around(self, centre: float) -> LogRange:
        """Both bounds set, the centre inside: params.yaml's value is always searchable (trial 0)."""
        low = self.low if self.low is not None else centre / self.span
        high = self.high if self.high is not None else centre * self.span
        return LogRange(min(low, centre), max(high, centre), self.span)


@dataclass(frozen=True)
class TuneConfig:
    #: the budget of finished trials shared by all workers; 0 = no search (params.yaml values)
    n_trials: int = 0
    #: processes on this machine sharing the study
    workers: int = 1
    #: torch threads per worker process; 0 = torch's default (one worker) or cores / workers.
    #: 1 by default: these small models gain little from more, and on a busy CPU OpenMP
    #: threads that wait on each other slow training down several times
    threads: int = 1
    #: sampler seed (TPE; halving: its Latin hypercube), and the training seed of every trial
    #: off the real schedule (on it, trials train with train.seed)
    seed: int = 0
    #: trials before TPE models the results, trial 0 among them: drawn at random (epochs) or
    #: laid out as a Latin hypercube (successive halving, which then draws the rest of its first
    #: rung by TPE from that rung's results)
    startup_trials: int = 4
    #: median / hyperband: prune a trial on its epoch curve. halving: synchronous successive
    #: halving on the real schedule: n_trials configurations train tune.epochs epochs of
    #: train.epochs, the best 1 / halving_rate continue to halving_rate times as many, and so on
    pruner: Literal["median", "hyperband", "halving", "none"] = "median"
    #: halving: the share kept at each rung is 1 / halving_rate
    halving_rate: int = 3
    #: halving: the train stage continues the winner's training instead of starting afresh
    warm_start: bool = False
    #: wall-clock seconds for the whole stage: no trial starts after it and running ones stop
    #: at their next epoch (pruned); 0 = no limit
    budget_s: float = 0.0
    #: what a trial is given: seconds of training on the train stage's data (rungs of successive
    #: halving in time, the last the real train.time_budget_s), or epochs (tune.epochs on
    #: tune.train_images); auto = seconds when train.time_budget_s is set and tune.workers is 1
    resource: Literal["auto", "epochs", "seconds"] = "auto"
    #: model families searched besides model.name (which trial 0 uses); empty = model.name alone
    models: list[str] = field(default_factory=list)
    #: median pruner: completed trials before it prunes anything
    prune_startup: int = 2
    #: centred on train.lr unless both bounds are given
    lr: LogRange = LogRange()
    #: empty = train.batch_size / 2, x 1, x 2; params.yaml's value is always a choice (trial 0)
    batch_size: list[int] = field(default_factory=list)
    #: sets every hidden-size field of the model (``hidden_fields``, e.g. DRAW's enc/dec);
    #: empty = the model's hidden size / 2, x 1, x 2
    hidden: list[int] = field(default_factory=list)
    #: empty = train.optimizer alone
    optimizer: list[str] = field(default_factory=list)
    #: training epochs per trial (the pruner's steps)
    epochs: int = 3
    patience: int = 2
    #: first N training images per trial (the split is shuffled); 0 = all
    train_images: int = 2000
    device: str = "auto"
    #: RDB URL (postgresql://...); empty = journal file in the study folder
    storage: str = ""
    #: RDB: Optuna's heartbeat interval
    heartbeat_s: float = 10.0
    #: RDB: a running trial without a heartbeat for this long is retried; journal: a running
    #: trial whose worker never recorded itself is retried after this long
    stale_after_s: float = 120.0

    def problems(self) -> list[str]:
        out = []
        for key in ("n_trials", "threads", "startup_trials", "prune_startup", "train_images"):
            if getattr(self, key) < 0:
                out.append(f"{key}: must be >= 0, got {getattr(self, key)}")
        for key in ("workers", "epochs", "patience"):
            if getattr(self, key) < 1:
                out.append(f"{key}: must be >= 1, got {getattr(self, key)}")
        for key in ("batch_size", "hidden"):
            values = list(getattr(self, key))
            if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                out.append(f"{key}: choices must be integers >= 1, got {values}")
        if self.halving_rate < 2:
            out.append(f"halving_rate: must be >= 2 (keep 1 / rate of the trials per rung), got {self.halving_rate}")
        if self.budget_s < 0:
            out.append(f"budget_s: must be >= 0 seconds (0 = no limit), got {self.budget_s}")
        if self.pruner == "halving" and self.workers != 1:
            out.append(f"workers: successive halving runs its rungs in one process; got {self.workers} "
                       "(set tune.workers: 1, or tune.pruner: hyperband for parallel workers)")
        if self.resource == "seconds" and self.workers != 1:
            out.append(f"resource: seconds runs successive halving in time in one process; got workers "
                       f"{self.workers} (set tune.workers: 1, or tune.resource: epochs)")
        if self.warm_start and self.pruner != "halving" and self.resource == "epochs":
            out.append(f"warm_start: only successive halving trains on the real schedule; got pruner "
                       f"{self.pruner!r} (set tune.pruner: halving, or warm_start: false)")
        if self.warm_start and self.train_images and self.resource == "epochs":
            out.append(f"warm_start: the train stage trains on every image, the trials on the first "
                       f"{self.train_images}; set tune.train_images: 0 to continue the winner")
        unknown_models = [m for m in self.models if m not in MODELS]
        if unknown_models:
            out.append(f"models: unknown {unknown_models}; choose from {', '.join(MODELS)}")
        unknown = [o for o in self.optimizer if o not in OPTIMIZERS]
        if unknown:
            out.append(f"optimizer: unknown {unknown}; choose from {', '.join(OPTIMIZERS)}")
        if not self.heartbeat_s > 0:
            out.append(f"heartbeat_s: must be > 0, got {self.heartbeat_s}")
        if not self.stale_after_s > 2 * self.heartbeat_s:
            out.append(f"stale_after_s: must exceed 2 x heartbeat_s ({2 * self.heartbeat_s}), "
                       f"got {self.stale_after_s}")
        if self.storage and "://" not in self.storage:
            out.append(f"storage: expected a database URL such as postgresql://user@host/db, "
                       f"got {self.storage!r} (leave empty for the journal file)")
        out.extend(TrainConfig(device=self.device).problems())  # an unknown device
        return out


def tune_config(params: Mapping[str, Any]) -> TuneConfig:
    return section(TuneConfig, params, "tune")


def inherited_train_config(params: Mapping[str, Any]) -> TrainConfig:
    """params.yaml's values of :data:`INHERITED_TRAIN_KEYS` (code defaults for the rest): only
    these ``train.*`` keys are read, so only they rerun the tune stage."""
    train = params.get("train") or {}
    return from_dict(TrainConfig, {k: train[k] for k in INHERITED_TRAIN_KEYS if k in train}, "train")


def experiment_config(params: Mapping[str, Any]) -> tracking.TrackingConfig:
    """``tracking.experiment`` alone: the one tracking key the tune stage declares and reads."""
    experiment = (params.get("tracking") or {}).get("experiment", tracking.TrackingConfig.experiment)
    return from_dict(tracking.TrackingConfig, {"experiment": experiment}, "tracking")


def real_schedule(cfg: TuneConfig) -> bool:
    """Trials are the start of the very training the train stage would run with their values
    (successive halving, in epochs or in seconds)."""
    return cfg.pruner == "halving" or cfg.resource == "seconds"


def trial_train_config(cfg: TuneConfig, base: TrainConfig, hp: Mapping[str, Any]) -> TrainConfig:
    """A trial's training settings: ``base`` (the inherited train.* keys), tune.* and the
    sampled values. On the real schedule a trial keeps train.seed, epochs and patience (and,
    in seconds, train.time_budget_s): it is the start of the training the train stage would
    run with the same values."""
    own = {} if real_schedule(cfg) else {"seed": cfg.seed, "epochs": cfg.epochs, "patience": cfg.patience}
    budget = base.time_budget_s if cfg.resource == "seconds" else 0.0
    return dataclasses.replace(base, device=cfg.device, lr=hp["lr"], batch_size=hp["batch_size"],
                               optimizer=hp["optimizer"], time_budget_s=budget, **own)
