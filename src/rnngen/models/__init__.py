"""Model registry: ``model.name`` in params.yaml -> class. Every model answers
:class:`~rnngen.models.base.GenerativeModel`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rnngen.config import ConfigError, from_dict
from rnngen.models.base import GenerativeModel, LossTerms
from rnngen.models.dcgan import DCGAN
from rnngen.models.draw import DRAW
from rnngen.models.mlp_vae import MLPVAE
from rnngen.models.pixelrnn import PixelRNN
from rnngen.models.row_lstm_vae import RowLSTMVAE

MODELS: dict[str, type[GenerativeModel]] = {m.name: m for m in (RowLSTMVAE, MLPVAE, DRAW, PixelRNN, DCGAN)}


def model_class(name: str) -> type[GenerativeModel]:
    if name not in MODELS:
        raise ConfigError([f"model.name: unknown model {name!r}; choose one of {', '.join(MODELS)}"])
    return MODELS[name]


def model_config(name: str, section: Mapping[str, Any] | None) -> Any:
    """Build and validate the config of model ``name`` from ``params['model'][name]``."""
    cls = model_class(name)
    return from_dict(cls.config_cls, cls.resolve_section(dict(section or {})), f"model.{name}")


def build_model(name: str, config: Any) -> GenerativeModel:
    return model_class(name)(config)


@dataclass(frozen=True)
class ModelChoice:
    """``model.name`` and that model's validated config, from params.yaml's ``model:``."""

    name: str
    config: Any


def model_choice(params: Mapping[str, Any]) -> ModelChoice:
    section = params.get("model") or {}
    name = section.get("name", "row_lstm_vae")
    return ModelChoice(name, model_config(name, section.get(name)))


__all__ = ["MODELS", "GenerativeModel", "LossTerms", "ModelChoice", "build_model", "model_choice", "model_class",
           "model_config"]
