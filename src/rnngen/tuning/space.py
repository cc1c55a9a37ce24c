"""What the tune stage searches: the distributions a trial samples, the model families it may
pick, and the study's name, a digest of all that; with :func:`validate`, which reads the tune
settings (:mod:`~rnngen.tuning.settings`) and makes them concrete around params.yaml's values.

Everything here is read from params.yaml and validated at once, before any data or compute.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch

from rnngen.config import ConfigError, build_sections
from rnngen.digests import json_digest
from rnngen.models import MODELS, model_choice, model_class, model_config
from rnngen.train import TrainConfig
from rnngen.tuning.settings import (
    HALVING_TRAIN_KEYS,
    INHERITED_TRAIN_KEYS,
    RUNTIME_KEYS,
    TuneConfig,
    experiment_config,
    inherited_train_config,
    real_schedule,
    tune_config,
)

_NOT_SEARCH = ("n_trials", "budget_s", *RUNTIME_KEYS)
#: how successive halving draws its configurations (:func:`design`); part of the study's name
HALVING_DESIGN = "latin-hypercube, then TPE on the first rung"


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
