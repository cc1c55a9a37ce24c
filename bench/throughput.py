"""Training and sampling throughput (images/s) of the rnngen models on this machine, in float32
and under bfloat16 autocast, next to the plain baseline of the same network where there is one.

    python bench/throughput.py                                  # all models, batch 64
    python bench/throughput.py --models draw_paper --repeats 10
    python bench/throughput.py --models draw draw_paper --no-plain --precisions bf16

A training step is forward + backward + Adam on a random binary batch; sampling is
``model.sample(batch)``. For each model the fast and (unless ``--no-plain``) the plain code, in
each precision, share one model and optimizer and are timed side by side in one process: after
the warm-up iterations each round runs one window of ``--iters`` iterations of every variant in
turn, so that load from other work falls on all alike; ``--repeats`` rounds, best and median
window reported (the best is the least disturbed on a shared machine). Plain baselines:
DRAW's is rnngen.models.reference.draw (DRAW.unroll: the paper's equations step by step with the
model's own layers, autograd through every op), PixelRNN's rnngen.models.reference.pixelrnn, the
row-LSTM VAE's rnngen.models.reference.row_lstm_vae (its LSTMs unrolled with torch's LSTM cell); fast/plain is
the ratio of the fast code's rate to the plain one's in the same precision.

For DRAW on the CPU the training rate is also given as a fraction of the GEMM-only bound:
exactly the matrix products of one training iteration (bench/draw_gemm_bound.py) at the
model's own shapes (bfloat16 operands for the bf16 bound), timed as one more variant in the
same rounds, its best window turned into images/s; "of it" is train best / bound and train
median / bound.
``draw_paper`` is DRAW at the paper's MNIST setting (T=64, 256-unit LSTMs, z=100, read 2x2,
write 5x5), about 368 MFLOP of GEMMs per training image.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch
from torch import Tensor

from rnngen.models import build_model, kernels, model_config
from rnngen.models.base import GenerativeModel, LossTerms, bernoulli_nll
from rnngen.models.reference import draw as draw_reference
from rnngen.models.reference import pixelrnn as pixelrnn_reference
from rnngen.models.reference import row_lstm_vae as row_lstm_vae_reference

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
import draw_gemm_bound

#: label -> (registry name, params section)
MODELS: dict[str, tuple[str, dict]] = {
    "row_lstm_vae": ("row_lstm_vae", {}),
    "mlp_vae": ("mlp_vae", {}),
    "draw": ("draw", {}),
    "draw_paper": ("draw", {"preset": "paper"}),
    "pixelrnn_row_lstm": ("pixelrnn", {"variant": "row_lstm"}),
    "pixelrnn_diagonal_bilstm": ("pixelrnn", {"variant": "diagonal_bilstm"}),
}
#: precision name -> autocast dtype (None: autocast off)
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


def _pixelrnn_plain(model: GenerativeModel, x: Tensor) -> LossTerms:
    nll = bernoulli_nll(pixelrnn_reference.logits(model, x).float(), x)
    return LossTerms(recon=nll, kl=torch.zeros_like(nll))


#: registry name -> the plain baseline's loss terms for (model, x), as ``model(x)``
PLAIN: dict[str, Callable[[GenerativeModel, Tensor], LossTerms]] = {
    "draw": draw_reference.forward,
    "pixelrnn": _pixelrnn_plain,
    "row_lstm_vae": row_lstm_vae_reference.forward,
}


def rates(step: Callable[[], None], batch: int, warmup: int, iters: int, repeats: int,
          sync: Callable[[], None]) -> list[float]:
    """Images/s of ``repeats`` timed windows of ``iters`` calls each, after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    sync()
    return [window(step, batch, iters, sync) for _ in range(repeats)]


def window(step: Callable[[], None], batch: int, iters: int, sync: Callable[[], None]) -> float:
    """Images/s of one timed window of ``iters`` calls."""
    start = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    return batch * iters / (time.perf_counter() - start)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """The autocast fit() uses with train.amp (bfloat16), or none; on CUDA, TF32 for what
    autocast leaves in fp32, as fit() does with train.amp (set per step: the variants alternate)."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high" if dtype is not None else "highest")
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _setup(name: str, section: dict, device: torch.device, batch: int) -> tuple:
    torch.manual_seed(0)
    model = build_model(name, model_config(name, section)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = (torch.rand(batch, 1, 28, 28, device=device) < 0.3).float()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return model, opt, x, sync


def train_step(model: GenerativeModel, opt: torch.optim.Optimizer, x: Tensor, device: torch.device,
               dtype: torch.dtype | None, loss: Callable[[GenerativeModel, Tensor], LossTerms] | None = None
               ) -> Callable[[], None]:
    """One forward + backward + Adam step of ``model(x)``, or of ``loss(model, x)`` (a plain baseline)."""
    def run() -> None:
        opt.zero_grad(set_to_none=True)
        with _autocast(device, dtype):
            terms = model(x) if loss is None else loss(model, x)
        terms.nelbo.mean().backward()
        opt.step()
    return run


def kernels_off(step: Callable[[], None]) -> Callable[[], None]:
    """``step`` with rnngen's C++ kernels switched off (``RNNGEN_KERNELS=0``: the PyTorch-op
    loops and cells that compute the same thing)."""
    def run() -> None:
        with mock.patch.dict(os.environ, {"RNNGEN_KERNELS": "0"}):
            step()
    return run


def sample_step(model: GenerativeModel, batch: int, device: torch.device, dtype: torch.dtype | None
                ) -> Callable[[], None]:
    def run() -> None:
        with _autocast(device, dtype):
            model.sample(batch)
    return run


def bench_model(label: str, args: argparse.Namespace, device: torch.device,
                spec: tuple[str, dict] | None = None) -> dict:
    """Train and sample rates of MODELS[label], or of ``spec`` = (model name, params section), in
    one precision (bfloat16 autocast with ``args.amp``): ``args`` has batch, warmup, iters,
    repeats and amp. (bench/gpu_check.py and bench/draw_gemm_bound.py time with this.)"""
    name, section = spec or MODELS[label]
    model, opt, x, sync = _setup(name, section, device, args.batch)
    dtype = torch.bfloat16 if args.amp else None
    model.train()
    train = rates(train_step(model, opt, x, device, dtype), args.batch, args.warmup, args.iters, args.repeats, sync)
    model.eval()
    sample = rates(sample_step(model, args.batch, device, dtype), args.batch, args.warmup, args.iters,
                   args.repeats, sync)
    n_params = sum(p.numel() for p in model.parameters())
    return {"label": label, "params": n_params, "train": train, "sample": sample}


def side_by_side(label: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Train rates of the fast and plain code in each of ``args.precisions`` and sample rates of
    the fast code, all in alternating windows on one model; for DRAW on the CPU the GEMM-only
    bound (images/s) in each precision. Returns {"label", "params", "train": {(impl, precision):
    [images/s per window]}, "sample": {precision: [...]}, "bound": {precision: images/s}}."""
    name, section = MODELS[label]
    model, opt, x, sync = _setup(name, section, device, args.batch)
    plain = PLAIN.get(name) if args.plain else None
    steps = {}
    for prec in args.precisions:
        steps["fast", prec] = train_step(model, opt, x, device, PRECISIONS[prec])
        if args.ops and device.type == "cpu":
            steps["ops", prec] = kernels_off(steps["fast", prec])
        if plain is not None:
            steps["plain", prec] = train_step(model, opt, x, device, PRECISIONS[prec], plain)
    if name == "draw" and device.type == "cpu" and not args.no_bound:
        # the GEMMs alone of one iteration, timed in the same rounds: load hits the bound alike
        for prec in args.precisions:
            steps["bound", prec] = draw_gemm_bound.gemm_iteration(model, args.batch,
                                                                  PRECISIONS[prec] or torch.float32)[0]
    model.train()
    windows = alternate(steps, args, sync)
    train = {k: v for k, v in windows.items() if k[0] != "bound"}
    bound = {k[1]: max(v) for k, v in windows.items() if k[0] == "bound"}  # the least disturbed window
    model.eval()
    sample = alternate({prec: sample_step(model, args.batch, device, PRECISIONS[prec]) for prec in args.precisions},
                       args, sync)
    n_params = sum(p.numel() for p in model.parameters())
    return {"label": label, "params": n_params, "train": train, "sample": sample, "bound": bound}


def alternate(steps: dict, args: argparse.Namespace, sync: Callable[[], None]) -> dict[object, list[float]]:
    """Images/s per window of each of ``steps``, ``args.repeats`` rounds of one window each in turn."""
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    sync()
    out: dict[object, list[float]] = {k: [] for k in steps}
    for _ in range(args.repeats):
        for k, step in steps.items():
            out[k].append(window(step, args.batch, args.iters, sync))
    return out


def summary(r: dict, prec: str) -> dict[str, float | None]:
    """Best and median of each column of one model and precision (None where not measured)."""
    def best_med(values: list[float] | None) -> tuple[float | None, float | None]:
        return (max(values), statistics.median(values)) if values else (None, None)

    out: dict[str, float | None] = {}
    out["train_best"], out["train_median"] = best_med(r["train"].get(("fast", prec)))
    out["plain_best"], out["plain_median"] = best_med(r["train"].get(("plain", prec)))
    out["ops_best"], out["ops_median"] = best_med(r["train"].get(("ops", prec)))
    out["sample_best"], out["sample_median"] = best_med(r["sample"].get(prec))
    for kind in ("best", "median"):
        fast, slow, ops = out[f"train_{kind}"], out[f"plain_{kind}"], out[f"ops_{kind}"]
        out[f"ratio_{kind}"] = fast / slow if fast and slow else None
        out[f"ops_ratio_{kind}"] = fast / ops if fast and ops else None
    bound = r["bound"].get(prec)
    out["bound"] = bound
    for kind in ("best", "median"):
        fast = out[f"train_{kind}"]
        out[f"bound_fraction_{kind}"] = fast / bound if fast and bound else None
    return out


def _fmt(value: float | None, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first, per variant")
    parser.add_argument("--iters", type=int, default=5, help="iterations per timed window")
    parser.add_argument("--repeats", type=int, default=5, help="timed windows per variant (best and median reported)")
    parser.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS))
    parser.add_argument("--amp", action="store_true", help="bf16 only (same as --precisions bf16)")
    parser.add_argument("--no-plain", dest="plain", action="store_false", help="skip the plain baselines")
    parser.add_argument("--no-bound", action="store_true", help="skip DRAW's GEMM-only bound")
    parser.add_argument("--ops", action="store_true",
                        help="also time the fast code with the C++ kernels off (RNNGEN_KERNELS=0): fast / ops "
                             "is what the kernels give, in the same rounds")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--csv", help="also write the figures (best and median, images/s) to this CSV file")
    args = parser.parse_args(argv)
    if args.amp:
        args.precisions = ["bf16"]

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    if device.type == "cpu":
        kernels.keep_freed_memory()  # as fit() does
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.repeats} alternating windows x {args.iters} iterations after {args.warmup} warm-up; "
          f"load average {load:.2f}")
    header = (f"{'model':<26}{'prec':>5}{'params':>11}{'train best':>12}{'median':>9}{'plain best':>12}"
              f"{'median':>9}{'fast/plain':>11}{'median':>8}{'GEMM bound':>12}{'of it':>7}{'median':>8}"
              f"{'sample best':>13}{'median':>9}")
    print(header + "   (images/s)")
    print("-" * len(header))
    results = []
    for label in args.models:
        r = side_by_side(label, args, device)
        results.append(r)
        for prec in args.precisions:
            s = summary(r, prec)
            print(f"{label:<26}{prec:>5}{r['params']:>11,}{_fmt(s['train_best'], '.1f', 12)}"
                  f"{_fmt(s['train_median'], '.1f', 9)}{_fmt(s['plain_best'], '.1f', 12)}"
                  f"{_fmt(s['plain_median'], '.1f', 9)}{_fmt(s['ratio_best'], '.2f', 11)}"
                  f"{_fmt(s['ratio_median'], '.2f', 8)}{_fmt(s['bound'], '.0f', 12)}"
                  f"{_fmt(s['bound_fraction_best'], '.0%', 7)}{_fmt(s['bound_fraction_median'], '.0%', 8)}"
                  f"{_fmt(s['sample_best'], '.1f', 13)}{_fmt(s['sample_median'], '.1f', 9)}", flush=True)
            if s["ops_best"]:
                print(f"{'':<26}{'':>5}   kernels off (RNNGEN_KERNELS=0): {s['ops_best']:.1f} / "
                      f"{s['ops_median']:.1f} images/s, fast / kernels off {s['ops_ratio_best']:.2f} / "
                      f"{s['ops_ratio_median']:.2f} (best / median)", flush=True)
    if args.csv:
        # one row per model; the fp32 columns keep their old names (bench/gpu_check.py reads them)
        columns = ["train_best", "train_median", "sample_best", "sample_median", "plain_best", "plain_median",
                   "ratio_best", "ratio_median", "bound", "bound_fraction_best", "bound_fraction_median",
                   "ops_best", "ops_median", "ops_ratio_best", "ops_ratio_median"]
        names = [c if prec == "fp32" else f"{prec}_{c}" for prec in PRECISIONS for c in columns]
        with open(args.csv, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["model", "device", "batch", "threads", *names])
            for r in results:
                values = []
                for prec in PRECISIONS:
                    s = summary(r, prec)
                    values += ["" if s[c] is None else f"{s[c]:.3f}" if "ratio" in c or "fraction" in c
                               else f"{s[c]:.1f}" for c in columns]
                out.writerow([r["label"], device.type, args.batch, torch.get_num_threads(), *values])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average at the end: {load:.2f} (above ~0.5 on 2 cores means shared; trust the best column)")


if __name__ == "__main__":
    main()
