"""Checkpoints: weights + model config, and (for resuming) the whole :class:`TrainState`.

Everything is stored as tensors and plain containers, and read back with
``torch.load(weights_only=True)``: a checkpoint can never run code on load.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from rnngen.errors import UserError
from rnngen.files import atomic_file
from rnngen.models import GenerativeModel, build_model, model_class, model_config


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, unreadable or not an rnngen checkpoint."""


#: a training checkpoint's life: written every epoch, finished, then registered (never resumed again)
Phase = Literal["training", "trained", "registered"]


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
    legacy = model_class(spec["name"]).legacy_config  # fields this checkpoint may predate
    model = build_model(spec["name"], model_config(spec["name"], {**legacy, **spec["config"]}))
    try:
        model.load_state_dict(state["weights"])
    except RuntimeError as exc:
        raise CheckpointError(f"{where}: weights do not fit model {spec['name']}: {exc}") from exc
    return model.to(device).eval()


def cpu_copy(weights: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().clone().cpu() for k, v in weights.items()}


@dataclass
class TrainState:
    """All a resumed training needs to go on bit-identically, saved after every epoch: weights,
    optimizer and schedule, the global RNG stream (model noise), the curves and the
    early-stopping record. The data streams need no saving: they are seeded by (seed, epoch)."""

    model: GenerativeModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    #: the last finished epoch
    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val: float = math.inf
    best_weights: dict[str, Tensor] = field(default_factory=dict)
    #: epochs since the best validation loss (early stopping)
    bad_epochs: int = 0
    stopped_early: bool = False

    def to_checkpoint(self, phase: Phase, fingerprint: Mapping[str, str], extra: Mapping[str, Any]) -> dict[str, Any]:
        device = self.model.device
        return {
            "model": model_spec(self.model), "weights": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "epoch": self.epoch, "fingerprint": fingerprint,
            "phase": phase, "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "history": self.history, "best_epoch": self.best_epoch, "best_val": self.best_val,
            "best_weights": self.best_weights, "bad_epochs": self.bad_epochs, "stopped_early": self.stopped_early,
            "rng_cpu": torch.get_rng_state(),
            **({"rng_cuda": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
            **extra,
        }

    def restore(self, saved: Mapping[str, Any]) -> None:
        """Continue from ``saved`` (a :meth:`to_checkpoint` dict), the global RNG stream included."""
        device = self.model.device
        self.model.load_state_dict(saved["weights"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in saved:
            torch.cuda.set_rng_state(saved["rng_cuda"], device)
        self.epoch, self.history = saved["epoch"], list(saved["history"])
        self.best_epoch, self.best_val = saved["best_epoch"], saved["best_val"]
        self.best_weights, self.bad_epochs = saved["best_weights"], saved["bad_epochs"]
        self.stopped_early = saved.get("stopped_early", False)


@dataclass(frozen=True)
class StateWriter:
    """Writes a :class:`TrainState` to ``path`` with its fingerprint and ``extra`` entries;
    ``path`` None writes nothing (no checkpoint, or not rank 0: one writer)."""

    path: Path | None
    fingerprint: Mapping[str, str]
    extra: Mapping[str, Any]

    def __call__(self, state: TrainState, phase: Phase) -> None:
        if self.path is not None:
            save(self.path, state.to_checkpoint(phase, self.fingerprint, self.extra))
