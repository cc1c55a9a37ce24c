"""What the tune stage searches: its settings (``tune.*``), the distributions a trial samples,
the model families it may pick, and the study's name, a digest of all that.

Everything here is read from params.yaml and validated at once, before any data or compute.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch

from rnngen import tracking
from rnngen.config import ConfigError, build_sections, from_dict, section
from rnngen.digests import json_digest
from rnngen.errors import UserError
from rnngen.models import MODELS, model_choice, model_class, model_config
from rnngen.train import TrainConfig

OPTIMIZERS = ("adam", "sgd")
#: settings that do not change what is searched: editing them continues the same study
RUNTIME_KEYS = ("workers", "threads", "device", "storage", "heartbeat_s", "stale_after_s")
_NOT_SEARCH = ("n_trials", "budget_s", *RUNTIME_KEYS)

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
#: how successive halving draws its configurations (:func:`design`); part of the study's name
HALVING_DESIGN = "latin-hypercube, then TPE on the first rung"


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


def resolve(cfg: TuneConfig, base: TrainConfig, fams: tuple[Family, ...]) -> TuneConfig:
    """``cfg`` with its resource decided and its space made concrete around params.yaml's values
    (:func:`untuned`): lr within train.lr / span .. x span (100: a poor
    train.lr 30x off, e.g. 1e-4 for 3e-3, is inside with room above, where a smaller model's
    best lr lies), batch size and hidden size halved
    and doubled, the optimizer as is, unless tune.* gives them; the untuned values are always
    in the space, so trial 0 is a point of it."""
    t0 = untuned(base, fams)
    resource = cfg.resource
    if resource == "auto":
        resource = "seconds" if base.time_budget_s > 0 and cfg.workers == 1 else "epochs"
    hidden = list(cfg.hidden) or sorted({h for f in fams for h in _around(_hidden_of(f))})
    return dataclasses.replace(
        cfg, resource=resource, lr=cfg.lr.around(base.lr),
        batch_size=_with(list(cfg.batch_size) or _around(base.batch_size), base.batch_size),
        hidden=_with(hidden, t0["hidden"]), optimizer=_with(list(cfg.optimizer), base.optimizer))


def _around(value: int) -> list[int]:
    return sorted({max(1, value // 2), value, 2 * value})


def _with(choices: list[Any], value: Any) -> list[Any]:
    return choices if value in choices else [*choices, value]


# ------------------------------------------------------------------------- model families


class Family(NamedTuple):
    """A model family the search may pick: its name, its params.yaml section (validated) and the
    fields the searched hidden size sets."""

    name: str
    section: dict[str, Any]
    hidden_fields: tuple[str, ...]


def hidden_fields(model_name: str) -> tuple[str, ...]:
    return tuple(model_class(model_name).hidden_fields)


def _hidden_of(fam: Family) -> int:
    return int(fam.section[fam.hidden_fields[0]])


def untuned(base: TrainConfig, fams: tuple[Family, ...]) -> dict[str, Any]:
    """Trial 0: params.yaml's own values, as a point of the search space (model.name's family)."""
    values = {"model": fams[0].name} if len(fams) > 1 else {}
    return {**values, "lr": base.lr, "batch_size": base.batch_size, "hidden": _hidden_of(fams[0]),
            "optimizer": base.optimizer}


def families(cfg: TuneConfig, params: Mapping[str, Any]) -> tuple[Family, ...]:
    """model.name first (trial 0's family), then the others of tune.models, each with its
    section of params.yaml's ``model:``."""
    models = params.get("model") or {}
    names = list(dict.fromkeys([model_choice(params).name, *cfg.models]))
    return tuple(Family(n, dataclasses.asdict(model_config(n, models.get(n))), hidden_fields(n)) for n in names)


def family_of(hp: Mapping[str, Any], fams: tuple[Family, ...]) -> Family:
    """The family a trial's values pick (the only one when the search has one)."""
    return next(f for f in fams if f.name == hp["model"]) if "model" in hp else fams[0]


def validate(params: Mapping[str, Any]) -> tuple[TuneConfig, Any, TrainConfig, tuple[Family, ...]]:
    """``(tune config made concrete by :func:`resolve`, model choice, inherited train config,
    families)``; every problem with tune.*, model.*, the inherited train.* keys and tracking.*
    at once, before any data or compute."""
    problems: list[str] = []
    cfg = choice = base = None
    fams: tuple[Family, ...] = ()
    try:
        built = build_sections(tune=lambda: tune_config(params), model=lambda: model_choice(params),
                               train=lambda: inherited_train_config(params),
                               tracking=lambda: experiment_config(params))
        cfg, choice, base = built["tune"], built["model"], built["train"]
    except ConfigError as exc:
        problems += exc.problems
    if cfg is not None and choice is not None:
        try:
            fams = families(cfg, params)
        except ConfigError as exc:
            problems += exc.problems
        kinds = {name: model_class(name).has_likelihood for name in dict.fromkeys([choice.name, *cfg.models])
                 if name in MODELS}
        if len(set(kinds.values())) > 1:  # a validation NLL and a GAN's sample distance do not compare
            gans = ", ".join(n for n, has in kinds.items() if not has)
            problems.append(f"tune.models: {gans} has no likelihood, so its trials' validation loss (a sample "
                            "distance) does not compare with the others' negative ELBO; search it on its own")
    if cfg is not None and cfg.device.startswith("cuda") and not torch.cuda.is_available():
        problems.append(f"tune.device: {cfg.device!r} but no CUDA device is available; use auto or cpu")
    if problems or cfg is None or choice is None or base is None:
        raise ConfigError(problems)
    cfg = resolve(cfg, base, fams)
    problems = [f"tune.{p}" for p in cfg.problems()]
    if cfg.resource == "seconds" and not base.time_budget_s > 0:
        problems.append("tune.resource: seconds gives trials rungs of train.time_budget_s, which is 0; set "
                        "train.time_budget_s, or tune.resource: epochs")
    for fam in fams:
        for h in cfg.hidden:  # the model's own checks, for every hidden size the search may pick
            try:
                model_config(fam.name, {**fam.section, **dict.fromkeys(fam.hidden_fields, h)})
            except ConfigError as exc:
                problems += [f"tune.hidden={h}: {p}" for p in exc.problems]
    if problems:
        raise ConfigError(problems)
    return cfg, choice, base, fams


# ---------------------------------------------------------------------------- the space


def search_space(cfg: TuneConfig, fams: tuple[Family, ...]) -> dict[str, Any]:
    """The distributions a trial samples, in sampling order: the model family (when tune.models
    names more than one), lr, batch size, hidden size, optimizer."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    space: dict[str, Any] = {}
    if len(fams) > 1:
        space["model"] = CategoricalDistribution([f.name for f in fams])
    space["lr"] = FloatDistribution(cfg.lr.low, cfg.lr.high, log=True)
    space["batch_size"] = CategoricalDistribution(list(cfg.batch_size))
    space["hidden"] = CategoricalDistribution(list(cfg.hidden))
    space["optimizer"] = CategoricalDistribution(list(cfg.optimizer))
    return space


def design(cfg: TuneConfig, fams: tuple[Family, ...], n: int) -> list[dict[str, Any]]:
    """n points of the search space as a Latin hypercube (McKay et al. 1979; seeded by tune.seed):
    each parameter's range is cut into n equal strata (the log range for lr) and each stratum
    holds one point, so no part of a range is left unsampled by chance. Successive halving lays
    out its first configurations this way, before any result exists for a model-based sampler
    such as TPE to learn from."""
    from optuna.distributions import CategoricalDistribution
    from scipy.stats import qmc

    space = search_space(cfg, fams)
    if n <= 0:
        return []
    cube = qmc.LatinHypercube(d=len(space), optimization="random-cd" if len(space) > 1 else None,
                              rng=cfg.seed).random(n)
    points = []
    for row in cube:
        point: dict[str, Any] = {}
        for u, (name, dist) in zip(row, space.items(), strict=True):
            if isinstance(dist, CategoricalDistribution):
                point[name] = dist.choices[min(int(u * len(dist.choices)), len(dist.choices) - 1)]
            elif dist.log:
                point[name] = math.exp(math.log(dist.low) + u * (math.log(dist.high) - math.log(dist.low)))
            else:
                point[name] = dist.low + u * (dist.high - dist.low)
        points.append(point)
    return points


def ask(study: Any, cfg: TuneConfig, fams: tuple[Family, ...]) -> Any:
    """A new trial (or a queued retry) with every value of the search space already sampled."""
    return study.ask(fixed_distributions=search_space(cfg, fams))


def suggest(trial: Any, cfg: TuneConfig, fams: tuple[Family, ...]) -> dict[str, Any]:
    """A trial's values: those it holds (asked with the space, or queued with it as a retry),
    the rest sampled now, one call per parameter in :func:`search_space`'s order."""
    from optuna.distributions import CategoricalDistribution

    hp: dict[str, Any] = {}
    for name, dist in search_space(cfg, fams).items():
        if isinstance(dist, CategoricalDistribution):
            hp[name] = trial.suggest_categorical(name, dist.choices)
        else:
            hp[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    return hp


def overrides(best: Mapping[str, Any], fams: tuple[Family, ...]) -> dict[str, Any]:
    """A trial's parameters as the dotted params.yaml keys the train stage overrides, with the
    winner's family as ``model.name``."""
    fam = family_of(best, fams)
    out: dict[str, Any] = {"model.name": fam.name, "train.lr": best["lr"], "train.batch_size": best["batch_size"],
                           "train.optimizer": best["optimizer"]}
    out.update({f"model.{fam.name}.{f}": best["hidden"] for f in fam.hidden_fields})
    return out


# ---------------------------------------------------------------------- study identity


def study_name(cfg: TuneConfig, base: TrainConfig, model_name: str, model_cfg: Any,
               fields: tuple[str, ...], split_info: Mapping[str, Any],
               fams: tuple[Family, ...] = ()) -> str:
    """``<model>-<digest>`` of the search space, trial settings, model and data split.

    Budget, workers, device and storage are left out: a bigger budget or more workers continue
    the same study. The model's hidden sizes (``fields``) are left out because the search sets
    them.
    """
    search = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_SEARCH}
    model = {k: v for k, v in dataclasses.asdict(model_cfg).items() if k not in fields}
    keys = INHERITED_TRAIN_KEYS if real_schedule(cfg) else set(INHERITED_TRAIN_KEYS) - set(HALVING_TRAIN_KEYS)
    inherited = {k: getattr(base, k) for k in sorted(keys)}
    spec = {"tune": search, "train": inherited, "model": [model_name, model], "split": split_info}
    if real_schedule(cfg):  # how the configurations are drawn: another design is another search
        spec["design"] = HALVING_DESIGN
    if len(fams) > 1 or (fams and fams[0].name != model_name):  # tune.models: each family's config
        spec["model"] = {f.name: {k: v for k, v in f.section.items() if k not in f.hidden_fields} for f in fams}
        model_name = "+".join(f.name for f in fams)
    return f"{model_name}-{json_digest(spec)[:12]}"
