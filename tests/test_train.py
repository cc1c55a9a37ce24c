"""The training loop: early stopping, checkpoints that resume bit-identically, and
non-finite losses that stop with a clear error and keep the last good checkpoint."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest
import torch

from rnngen import checkpoint as ckpt
from rnngen import data
from rnngen.config import ConfigError, from_dict
from rnngen.device import autocast_enabled, cpu_has_native_bf16
from rnngen.models import build_model, model_config
from rnngen.resume import fingerprint, mark_registered, resume_point
from rnngen.train import (
    NonFiniteLossError,
    TrainConfig,
    augment,
    fit,
    kl_weight,
    make_optimizer,
    make_scheduler,
)


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("row_lstm_vae", model_config("row_lstm_vae", {"hidden": 8, "z_dim": 2}))


@pytest.fixture(scope="module")
def arrays(split_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    x_train, _ = data.load_split(split_dir, "train")
    x_val, _ = data.load_split(split_dir, "val")
    return x_train[:256], x_val[:64]


CFG = TrainConfig(epochs=3, batch_size=64, device="cpu", patience=10)


def test_fit_learns_and_reports_history(arrays) -> None:
    result = fit(small_model(), *arrays, CFG, "dynamic", progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.best_val == min(h["val_loss"] for h in result.history)


def test_amp_on_cpu_trains_in_bfloat16_exactly_where_the_cpu_has_it(arrays, capsys) -> None:
    """train.amp on CPU: bfloat16 autocast where the CPU runs bf16 natively (the losses then
    differ from fp32 but stay close), fp32 and a message where it does not (identical losses)."""
    def losses(amp: bool) -> list[float]:
        torch.manual_seed(0)
        model = build_model("pixelrnn", model_config("pixelrnn", {"layers": 1, "hidden": 4, "out_hidden": 8}))
        cfg = dataclasses.replace(CFG, epochs=2, amp=amp)
        return [h["train_loss"] for h in fit(model, *arrays, cfg, "dynamic", progress=False).history]

    assert not autocast_enabled(False, torch.device("cpu"))
    native = cpu_has_native_bf16()
    assert autocast_enabled(True, torch.device("cpu")) == native
    fp32, amp = losses(False), losses(True)
    if native:
        assert fp32 != amp and max(abs(a - b) for a, b in zip(fp32, amp, strict=True)) < 1.0
    else:
        assert fp32 == amp and "no native bfloat16" in capsys.readouterr().out


def test_optimizer_groups_follow_the_nearest_module_that_declares_its_own_settings() -> None:
    """Undeclared parameters share one group at train.lr, first; a declaring submodule gets a
    group at lr_scale x lr with its settings, a declaring child of it a group of its own; every
    parameter once, in order; a deep copy keeps the declarations."""
    import copy

    from torch import nn

    from rnngen.models.base import optimizer_groups

    net = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))
    net[1].optim = {"lr_scale": 0.5, "betas": (0.0, 0.9)}
    net[1][1].optim = {"lr_scale": 2.0}
    for model in (net, copy.deepcopy(net)):
        groups = optimizer_groups(model, 0.1)
        assert [(g["lr"], g.get("betas"), len(g["params"])) for g in groups] == [
            (0.1, None, 2), (0.05, (0.0, 0.9), 2), (0.2, None, 2)]
        assert [id(p) for g in groups for p in g["params"]] == [id(p) for p in model.parameters()]


def test_early_stopping(arrays) -> None:
    cfg = dataclasses.replace(CFG, epochs=30, patience=1, lr=0.3)  # a wild lr stops improving fast
    result = fit(small_model(), *arrays, cfg, "dynamic", progress=False)
    assert result.stopped_early and len(result.history) < 30


def test_the_time_budget_is_spent_once_across_a_pause_and_a_resume(arrays, tmp_path: Path) -> None:
    """train.time_budget_s counts the training's own clock (elapsed_s), carried over a pause at
    some seconds (the tuner's rungs) and a resume: training stops at the first epoch end past
    the budget, wherever it was started."""
    slow = dataclasses.replace(CFG, epochs=500)
    per_epoch = fit(small_model(), *arrays, dataclasses.replace(slow, epochs=2), "dynamic",
                    progress=False).history[-1]["elapsed_s"] / 2
    budget = 30 * per_epoch  # room for an epoch many times slower than the calibration on a busy machine
    cfg = dataclasses.replace(slow, time_budget_s=budget)
    paused = fit(small_model(), *arrays, cfg, "dynamic", checkpoint=tmp_path / "t.pt", progress=False,
                 until_seconds=budget / 3)
    assert paused.paused and paused.history[-1]["elapsed_s"] >= budget / 3
    assert len(paused.history) == 1 or paused.history[-2]["elapsed_s"] < budget / 3
    done = fit(small_model(), *arrays, cfg, "dynamic", checkpoint=tmp_path / "t.pt", progress=False)
    clock = [h["elapsed_s"] for h in done.history]
    assert not done.paused and done.resumed_from == len(paused.history)
    assert clock == sorted(clock) and clock[-1] >= budget and clock[-2] < budget  # one clock, one budget
    assert len(clock) < 500
    again = fit(small_model(), *arrays, cfg, "dynamic", checkpoint=tmp_path / "t.pt", progress=False)
    assert again.reused and len(again.history) == len(clock)  # finished: nothing trained on a new clock


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_resume_is_bit_identical_to_an_uninterrupted_run(arrays, tmp_path: Path, schedule: str) -> None:
    cfg = dataclasses.replace(CFG, lr_schedule=schedule)  # cosine: the scheduler's state resumes too
    full = fit(small_model(), *arrays, cfg, "dynamic", checkpoint=tmp_path / "a.pt", progress=False)

    class Crash(Exception):
        pass

    def crash_after_two(epoch: int, _: dict) -> None:
        if epoch == 3:  # the hook runs before epoch 3's checkpoint: epochs 1-2 are saved
            raise Crash

    with pytest.raises(Crash):
        fit(small_model(), *arrays, cfg, "dynamic", checkpoint=tmp_path / "b.pt", on_epoch=crash_after_two,
            progress=False)
    torch.manual_seed(123)  # a new process would start from other RNG states
    resumed = fit(small_model(), *arrays, cfg, "dynamic", checkpoint=tmp_path / "b.pt", progress=False)
    assert resumed.resumed_from == 2
    timing = {"epoch_seconds", "images_per_second", "elapsed_s"}
    strip = [[{k: v for k, v in h.items() if k not in timing} for h in r.history] for r in (full, resumed)]
    assert strip[0] == strip[1]
    for k, v in full.best_weights.items():
        assert torch.equal(v, resumed.best_weights[k]), k


def test_cosine_schedule_halves_the_rate_midway_and_ends_at_zero() -> None:
    params = [torch.nn.Parameter(torch.zeros(1))]
    cfg = dataclasses.replace(CFG, epochs=4, lr=0.01, lr_schedule="cosine")
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    scheduler = make_scheduler(optimizer, cfg, batches_per_epoch=5)
    rates = []
    for _ in range(20):  # 4 epochs of 5 batches
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == 0.01 and rates[10] == pytest.approx(0.005) and optimizer.param_groups[0]["lr"] < 1e-12
    assert all(a >= b for a, b in itertools.pairwise(rates))  # never rises
    assert make_scheduler(optimizer, CFG, 5) is None  # constant
    with pytest.raises(ConfigError, match=r"train.lr_schedule: expected constant \| cosine, got 'step'"):
        from_dict(TrainConfig, {"lr_schedule": "step"}, "train")


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_weight_decay_is_decoupled_for_adam_and_l2_for_sgd(optimizer: str) -> None:
    model = small_model()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(4.0)
            p.grad = torch.zeros_like(p)  # no loss gradient: only the decay moves it
    cfg = dataclasses.replace(CFG, lr=0.1, weight_decay=0.5, optimizer=optimizer, momentum=0.0)
    make_optimizer(model, cfg).step()
    # AdamW: w <- w (1 - lr wd) = 3.8, nothing from the (zero) Adam step; SGD: grad += wd w, the
    # same 3.8. Adam with the decay in its gradient would take a normalised step: 4 - lr = 3.9
    for p in model.parameters():
        assert torch.allclose(p, torch.full_like(p, 4.0 * (1 - 0.1 * 0.5)))
    with pytest.raises(ConfigError, match="train.weight_decay: must be >= 0"):
        from_dict(TrainConfig, {"weight_decay": -1}, "train")


def test_changed_settings_do_not_resume_a_stale_checkpoint(arrays, tmp_path: Path) -> None:
    fit(small_model(), *arrays, dataclasses.replace(CFG, epochs=1), "dynamic", checkpoint=tmp_path / "c.pt",
        progress=False)
    other = fit(small_model(), *arrays, dataclasses.replace(CFG, epochs=1, lr=5e-4), "dynamic",
                checkpoint=tmp_path / "c.pt", progress=False)
    assert other.resumed_from == 0 and not other.reused


class Interrupt(Exception):
    pass


def interrupted(arrays, path: Path, identity: dict[str, str]) -> None:
    """A run killed after epoch 1's checkpoint (phase training)."""
    def stop(epoch: int, _: dict) -> None:
        if epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(small_model(), *arrays, CFG, "dynamic", checkpoint=path, identity=identity, on_epoch=stop,
            progress=False)


@pytest.mark.parametrize("part", ["data", "code"])
def test_other_data_or_code_never_resume(arrays, tmp_path: Path, part: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    same = {"data": "d1", "code": "c1"}
    interrupted(arrays, tmp_path / "k.pt", same)
    point = resume_point(tmp_path / "k.pt", fingerprint(small_model(), CFG, "dynamic", same))
    assert point.epoch == 1  # the same data and code would resume...
    calls: list[int] = []
    changed = {**same, part: "other"}
    result = fit(small_model(), *arrays, CFG, "dynamic", checkpoint=tmp_path / "k.pt", identity=changed,
                 on_epoch=lambda e, _: calls.append(e), progress=False)
    assert result.resumed_from == 0 and calls == [1, 2, 3]  # ...other ones train from epoch 1
    assert f"written with other {part}: training from epoch 1" in capsys.readouterr().out


def test_a_finished_registered_run_is_never_resumed(arrays, tmp_path: Path) -> None:
    path = tmp_path / "f.pt"
    first = fit(small_model(), *arrays, CFG, "dynamic", checkpoint=path, progress=False)
    mark_registered(path, model_version="1")
    assert "finished, registered run" in resume_point(path, fingerprint(small_model(), CFG, "dynamic")).reason
    calls: list[int] = []
    again = fit(small_model(), *arrays, CFG, "dynamic", checkpoint=path, on_epoch=lambda e, _: calls.append(e),
                progress=False)
    assert again.resumed_from == 0 and not again.reused and calls == [1, 2, 3]
    assert [h["val_loss"] for h in again.history] == [h["val_loss"] for h in first.history]  # retrained, same seed


def test_a_finished_but_unregistered_training_is_reused_not_retrained(arrays, tmp_path: Path) -> None:
    """The registry step failed after training: the rerun registers the same weights at once."""
    path = tmp_path / "t.pt"
    first = fit(small_model(), *arrays, CFG, "dynamic", checkpoint=path, progress=False)
    assert ckpt.load(path)["phase"] == "trained"
    calls: list[int] = []
    again = fit(small_model(), *arrays, CFG, "dynamic", checkpoint=path, on_epoch=lambda e, _: calls.append(e),
                progress=False)
    assert again.reused and calls == [] and again.resumed_from == CFG.epochs
    assert again.history == first.history
    assert all(torch.equal(first.best_weights[k], again.best_weights[k]) for k in first.best_weights)


def test_non_finite_loss_names_epoch_and_step_and_keeps_checkpoint(arrays, tmp_path: Path) -> None:
    model = small_model()
    calls = {"n": 0}
    original = model.forward

    def poisoned(x: torch.Tensor, y: torch.Tensor | None = None):
        calls["n"] += 1
        terms = original(x, y)
        if calls["n"] > 6:  # epoch 2 (4 batches an epoch + no val calls counted before)
            terms.recon = terms.recon * float("nan")
        return terms

    model.forward = poisoned  # type: ignore[method-assign]
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step \d+"):
        fit(model, *arrays, dataclasses.replace(CFG, batch_size=64), "dynamic", checkpoint=tmp_path / "n.pt",
            progress=False)
    state = ckpt.load(tmp_path / "n.pt")
    assert state["epoch"] == 1  # the last good epoch survives


def test_augment_shifts_each_image_differently() -> None:
    x = torch.zeros(8, 1, 28, 28)
    x[:, :, 10:18, 10:18] = 1
    out = augment(x, 3, 10.0, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert len({tuple(o.flatten().nonzero().flatten()[:5].tolist()) for o in out}) > 1


def test_corrupted_checkpoint_gives_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(ckpt.CheckpointError, match="corrupted"):
        ckpt.load_model(bad)
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load_model(tmp_path / "missing.pt")


def test_kl_warmup_weight_and_reported_loss(arrays) -> None:
    assert kl_weight(0, 0.0) == 1.0
    assert kl_weight(4, 1.0) == 0.25 and kl_weight(4, 9.0) == 1.0
    plain = fit(small_model(), *arrays, dataclasses.replace(CFG, epochs=1), "dynamic", progress=False)
    warm = fit(small_model(), *arrays, dataclasses.replace(CFG, epochs=1, kl_warmup_epochs=2), "dynamic",
               progress=False)
    # The logged train_loss is the true negative ELBO either way; the weights differ.
    assert warm.history[0]["train_loss"] == pytest.approx(warm.history[0]["train_recon"]
                                                          + warm.history[0]["train_kl"], rel=1e-5)
    assert plain.history[0]["train_loss"] != warm.history[0]["train_loss"]
