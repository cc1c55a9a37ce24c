"""Resume or start afresh: the one place that decides.

A training checkpoint carries a fingerprint: the model and train config, the binarization, and
an identity (the split's digest as ``data``, rnngen's source digest as ``code``). It is
continued only when the fingerprint matches and its run was interrupted (phase ``training``)
or finished training without being registered (phase ``trained``: reused, not retrained); a
registered run is never resumed. Where nothing is resumed, the tune stage's winner (its
``warm_start`` file) may seed the checkpoint when it is the start of exactly this training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rnngen import checkpoint as ckpt
from rnngen.data import split_digest
from rnngen.digests import json_digest, source_digest
from rnngen.models import GenerativeModel

if TYPE_CHECKING:
    from rnngen.train import TrainConfig

def fingerprint(
    model: GenerativeModel, cfg: TrainConfig, binarization: str, identity: Mapping[str, str] | None = None
) -> dict[str, str]:
    """What a checkpoint must match to be resumed, part by part: the model and train config
    (the device and the number of processes aside), the binarization, and ``identity`` (the train stage passes the
    split's digest as ``data`` and rnngen's source digest as ``code``)."""
    train = dataclasses.asdict(cfg)
    train.pop("device")
    train.pop("processes")  # same global batch, same curve: a checkpoint resumes on any number

    return {"model": json_digest(ckpt.model_spec(model))[:16], "train": json_digest(train)[:16],
            "binarization": binarization,
            **dict(identity or {})}


def warm_start_fingerprint(model: GenerativeModel, cfg: TrainConfig, binarization: str,
                           identity: Mapping[str, str]) -> dict[str, str]:
    """What a tune stage's halving trial in epochs records and the train stage checks before
    continuing it: :func:`fingerprint` with the time budget aside (those trials have none) and
    ``identity`` = :func:`warm_start_identity`. A trial in seconds records the fingerprint with
    the real budget itself."""
    return fingerprint(model, dataclasses.replace(cfg, time_budget_s=0.0), binarization, identity)


def warm_start_identity(split_dir: str | Path, train_images: int = 0) -> dict[str, str]:
    """The identity part of :func:`warm_start_fingerprint`: the split (and how many of its
    training images a trial saw) and the training code (the loop's import closure)."""
    digest = split_digest(split_dir) + (f"[:{train_images}]" if train_images else "")
    return {"data": digest, "code": source_digest("rnngen.train")}


@dataclass(frozen=True)
class ResumePoint:
    """What :func:`rnngen.train.fit` does with an existing checkpoint: continue ``state`` or
    start afresh."""

    #: the checkpoint's state to continue from; None: train from epoch 1
    state: dict[str, Any] | None
    #: one line saying why, printed by fit and recorded by the train stage
    reason: str
    #: the fingerprint this training writes into its checkpoint
    fingerprint: dict[str, str] = field(default_factory=dict)
    #: the checkpoint found but not continued (its interrupted run, if any, is closed)
    discarded: dict[str, Any] | None = None
    #: True when ``state`` is the tune stage's winner (seeded into the checkpoint), not this run's own
    warm_start: bool = False

    @property
    def epoch(self) -> int:
        return int(self.state["epoch"]) if self.state else 0

    @property
    def own_run(self) -> dict[str, Any] | None:
        """The interrupted run's own state (not a warm start): its extras, such as its MLflow
        run, carry on."""
        return None if self.warm_start else self.state

    @property
    def complete(self) -> bool:
        """Training already finished for exactly this fingerprint (only the registry step
        failed): reuse the result, do not retrain."""
        return bool(self.state) and self.state.get("phase") == "trained"


def _differs(want: Mapping[str, str], found: Any) -> list[str]:
    found = found if isinstance(found, dict) else {}
    return sorted(k for k in {*want, *found} if want.get(k) != found.get(k))


def resume_point(checkpoint: str | Path | None, expected: Mapping[str, str]) -> ResumePoint:
    """Decide whether ``checkpoint`` may be resumed under fingerprint ``expected``.

    Never resumed: a checkpoint of a run that finished (registered), and one written with any
    other model, train config, binarization, data or code. Resumed: an interrupted run (phase
    ``training``) and a finished training whose registration failed (phase ``trained``).
    """
    want = dict(expected)
    if checkpoint is None or not Path(checkpoint).is_file():
        return ResumePoint(None, "no checkpoint: training from epoch 1", want)
    state = ckpt.load(checkpoint)
    where = f"checkpoint {checkpoint}"
    if state.get("phase") == "registered":
        return ResumePoint(None, f"{where} is of a finished, registered run: training afresh from epoch 1",
                           want, discarded=state)
    differs = _differs(want, state.get("fingerprint"))
    if differs:
        return ResumePoint(None, f"{where} was written with other {', '.join(differs)}: training from epoch 1",
                           want, discarded=state)
    if state.get("phase") == "trained":
        return ResumePoint(state, f"{where} holds this exact training, finished after epoch {state['epoch']} "
                                  "but not registered: reusing it, no retraining", want)
    return ResumePoint(state, f"resuming {where} after epoch {state['epoch']}", want)


def plan(
    checkpoint: str | Path | None, model: GenerativeModel, cfg: TrainConfig, binarization: str,
    identity: Mapping[str, str] | None = None, *, warm_start: str | Path | None = None,
    split_dir: str | Path | None = None,
) -> ResumePoint:
    """Where this training starts: its own checkpoint when :func:`resume_point` allows, else
    the tune stage's winner ``warm_start`` when it matches (then written into ``checkpoint``,
    read from ``split_dir``'s digest), else epoch 1."""
    expected = fingerprint(model, cfg, binarization, identity)
    if checkpoint is None:
        return ResumePoint(None, "", expected)
    point = resume_point(checkpoint, expected)
    if point.state is None and warm_start is not None and split_dir is not None:
        return _continue_warm_start(point, warm_start, checkpoint, model, cfg, binarization, split_dir)
    return point


def _continue_warm_start(point: ResumePoint, path: str | Path, checkpoint: str | Path, model: GenerativeModel,
                         cfg: TrainConfig, binarization: str, split_dir: str | Path) -> ResumePoint:
    """Seed ``checkpoint`` with the tune stage's winner (``path``, written with
    ``tune.warm_start``) when it is the start of exactly this training: same model, train
    config (time budget aside), binarization, split and training code. ``point`` unchanged
    (and one line saying why) when there is none or it does not match."""
    if not Path(path).is_file():
        return point
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("warm_start", True) is None:  # the placeholder: no warm start this time
        return point
    identity = warm_start_identity(split_dir)
    # a trial in epochs had no time budget; one in seconds had this very budget
    differs = min((_differs(want, state.get("fingerprint")) for want in (
        warm_start_fingerprint(model, cfg, binarization, identity), fingerprint(model, cfg, binarization, identity))),
        key=len)
    if differs:
        print(f"warm start {path} was trained with other {', '.join(differs)}: not continued, training "
              "from epoch 1", flush=True)
        return point
    seeded = {**state, "fingerprint": point.fingerprint, "phase": "training"}
    ckpt.save(checkpoint, seeded)
    print(f"warm start: continuing the tune stage's winner after epoch {state['epoch']}", flush=True)
    return dataclasses.replace(point, state=seeded, reason=f"resuming checkpoint {checkpoint} after epoch "
                               f"{state['epoch']}", warm_start=True)


def mark_registered(checkpoint: str | Path, **record: Any) -> None:
    """Mark the checkpoint's run finished (registered): it is never resumed again."""
    if Path(checkpoint).is_file():
        state = ckpt.load(checkpoint)
        ckpt.save(checkpoint, {**state, "phase": "registered", **record})
