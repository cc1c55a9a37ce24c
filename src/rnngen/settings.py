"""Build the configs a stage needs from ``params.yaml``, reporting every problem at once."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rnngen.classifier import ClassifierConfig
from rnngen.config import ConfigError, from_dict, set_dotted
from rnngen.data import DataConfig, SplitConfig
from rnngen.evaluate import EvalConfig
from rnngen.models import model_class, model_config
from rnngen.tracking import TrackingConfig
from rnngen.train import TrainConfig


@dataclass(frozen=True)
class ModelChoice:
    name: str
    config: Any


def _model(params: Mapping[str, Any]) -> ModelChoice:
    section = params.get("model") or {}
    name = section.get("name", "row_lstm_vae")
    model_class(name)  # unknown name -> ConfigError
    return ModelChoice(name, model_config(name, section.get(name)))


def _tune(params: Mapping[str, Any]) -> Any:
    from rnngen.tune import tune_config  # rnngen.tune imports this module

    return tune_config(params)


BUILDERS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "data": lambda p: from_dict(DataConfig, p.get("data"), "data"),
    "split": lambda p: from_dict(SplitConfig, p.get("split"), "split"),
    "model": _model,
    "tune": _tune,
    "train": lambda p: from_dict(TrainConfig, p.get("train"), "train"),
    "classifier": lambda p: from_dict(ClassifierConfig, p.get("classifier"), "classifier"),
    "evaluate": lambda p: from_dict(EvalConfig, p.get("evaluate"), "evaluate"),
    "tracking": lambda p: from_dict(TrackingConfig, p.get("tracking"), "tracking"),
}


def build(params: Mapping[str, Any], *sections: str) -> dict[str, Any]:
    """``{section: config}`` for the named sections; one ConfigError lists all problems."""
    problems: list[str] = []
    out: dict[str, Any] = {}
    for name in sections:
        try:
            out[name] = BUILDERS[name](params)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return out


def with_overrides(params: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """params with dotted overrides (the tuner's best hyperparameters) applied."""
    return set_dotted(dict(params), overrides)
