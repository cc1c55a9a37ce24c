"""The tune stage's result as the train stage applies it: the winner's dotted overrides of
params.yaml (``{"train.lr": ...}``), which keys they replace, and whether the trained model's
speed differs from that of params.yaml's own values (under a time budget, speed buys epochs)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rnngen.config import set_dotted
from rnngen.files import read_json


def _tune_result(path: Path | None) -> dict[str, Any]:
    return read_json(path) if path is not None and Path(path).is_file() else {}


def read_hparams(path: Path | None) -> dict[str, Any]:
    """The tuner's chosen overrides ``{"train.lr": ...}`` ({} when there is no file)."""
    return dict(_tune_result(path).get("params", {}))


def _dotted(params: Mapping[str, Any], key: str) -> Any:
    node: Any = params
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


@dataclass(frozen=True)
class Tuned:
    """params.yaml with the tune stage's winner applied."""

    params: dict[str, Any]
    #: the tuner's overrides, ``{"train.lr": ...}``
    overrides: dict[str, Any]
    #: the keys where the tuner's value replaced params.yaml's: key -> (params.yaml's, the tuner's)
    replaced: dict[str, tuple[Any, Any]]
    #: what ``validate`` returned for the merged params
    checked: Any


def apply_winner(params: Mapping[str, Any], hparams: Path | None,
                 validate: Callable[[Mapping[str, Any]], Any]) -> Tuned:
    """``params`` with the winner in ``hparams`` applied, each replaced key printed. ``validate``
    checks params.yaml's own values first (they must be valid even where tuning replaces them),
    then the merged ones (its answer is kept as ``checked``)."""
    overrides = read_hparams(hparams)
    validate(params)
    merged = set_dotted(dict(params), overrides)
    checked = validate(merged)
    replaced = {k: (_dotted(params, k), v) for k, v in sorted(overrides.items()) if _dotted(params, k) != v}
    for key, (mine, theirs) in replaced.items():
        said = "null (its default)" if mine is None else mine
        print(f"tune: {key} = {theirs} (the tune stage's winner; params.yaml says {said})")
    return Tuned(merged, overrides, replaced, checked)


def compare_speed(history: list[dict[str, float]], hparams: Path | None) -> str | None:
    """A line when this training's speed differs from the untuned configuration's (trial 0 of
    a search in seconds) by more than 2x: under a time budget, speed buys or costs epochs."""
    untuned = (_tune_result(hparams).get("images_per_second") or {}).get("untuned")
    speeds = sorted(h["images_per_second"] for h in history)
    if not untuned or not speeds:
        return None
    mine = speeds[len(speeds) // 2]
    if 0.5 <= mine / untuned <= 2:
        return None
    return (f"train: {mine:.0f} images/s against {untuned:.0f} for params.yaml's values (trial 0 of the search): "
            f"{mine / untuned:.1f}x, within train.time_budget_s ({len(history)} epochs)")
