"""Checkpoints: weights + model config (+ optimizer, epoch, RNG state when resuming).

Everything is stored as tensors and plain containers, and read back with
``torch.load(weights_only=True)``: a checkpoint can never run code on load.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import torch

from rnngen.errors import UserError
from rnngen.files import atomic_file
from rnngen.models import GenerativeModel, build_model, model_config


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, unreadable or not an rnngen checkpoint."""


def model_spec(model: GenerativeModel) -> dict[str, Any]:
    return {"name": model.name, "config": dataclasses.asdict(model.config)}


def save(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically write ``state`` (a kill mid-write leaves the previous file intact). Serialized
    in memory first: torch.save names the archive inside after the file it writes, so writing the
    temporary file directly would give the same state different bytes each time (DVC would see a
    changed output)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_file(path) as tmp:
        Path(tmp).write_bytes(buf.getvalue())


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} is corrupted or not a PyTorch checkpoint ({exc}); "
            "delete it and train again"
        ) from exc
    if not isinstance(state, dict) or "model" not in state or "weights" not in state:
        raise CheckpointError(f"{path} is not an rnngen checkpoint (no model spec and weights)")
    return state


def save_model(path: str | Path, model: GenerativeModel, **extra: Any) -> None:
    save(path, {"model": model_spec(model), "weights": model.state_dict(), **extra})


def load_model(path: str | Path, device: str | torch.device = "cpu") -> GenerativeModel:
    """Rebuild a model from a checkpoint written by :func:`save_model` or training."""
    return model_from_state(load(path), path, device)


def model_from_state(
    state: dict[str, Any], where: str | Path, device: str | torch.device = "cpu"
) -> GenerativeModel:
    """The model held by an already-loaded checkpoint ``state`` (read from ``where``)."""
    spec = state["model"]
    model = build_model(spec["name"], model_config(spec["name"], spec["config"]))
    try:
        model.load_state_dict(state["weights"])
    except RuntimeError as exc:
        raise CheckpointError(f"{where}: weights do not fit model {spec['name']}: {exc}") from exc
    return model.to(device).eval()
