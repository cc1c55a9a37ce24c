"""What the commands take from params.yaml, and the flags that override it."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the commands import the library lazily: `rnngen --help` stays quick
    from rnngen.evaluate import EvalConfig
    from rnngen.promote import PromoteConfig
    from rnngen.registry import LoadedModel


@dataclasses.dataclass(frozen=True)
class Defaults:
    """What the commands take from params.yaml (flags override): the registry name and alias
    behind the default model, and the evaluate and promote settings."""

    model_name: str
    alias: str
    evaluate: EvalConfig
    promote: PromoteConfig

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}@{self.alias}"


def defaults(path: Path) -> Defaults:
    """params.yaml's ``tracking.model_name``, ``promote.alias`` and ``evaluate.*`` (the code
    defaults when the file is absent, e.g. outside the project)."""
    from rnngen.config import build_sections, load_params, section
    from rnngen.evaluate import EvalConfig
    from rnngen.promote import PromoteConfig
    from rnngen.tracking import TrackingConfig

    params = load_params(path) if path.is_file() else {}
    built = build_sections(tracking=lambda: section(TrackingConfig, params, "tracking"),
                           promote=lambda: section(PromoteConfig, params, "promote"),
                           evaluate=lambda: section(EvalConfig, params, "evaluate"))
    return Defaults(built["tracking"].model_name, built["promote"].alias, built["evaluate"], built["promote"])


def load_model(args: argparse.Namespace) -> LoadedModel:
    """The model ``--model`` names, else the registry's default from ``--params``."""
    from rnngen import registry

    settings = defaults(args.params)
    return registry.load(args.model or settings.model_uri, settings.model_name)


def with_flags(cfg: Any, **flags: Any) -> Any:
    """``cfg`` (a params.yaml section) with the flags given on the command line (not None) replacing it."""
    from rnngen.config import ConfigError

    cfg = dataclasses.replace(cfg, **{k: v for k, v in flags.items() if v is not None})
    if cfg.problems():
        raise ConfigError(["; ".join(cfg.problems())], "the command line")
    return cfg
