"""Training and sampling throughput (images/s) of the rnngen models on this machine.

    python bench/throughput.py                      # all models, batch 64, ~1-2 min on 2 CPU cores
    python bench/throughput.py --models draw_paper --repeats 10

A training step is forward + backward + Adam on a random binary batch; sampling is
``model.sample(batch)``. Warm-up iterations are excluded; each model is timed over ``--repeats``
windows of ``--iters`` iterations, and the best and median window are reported (the best is the
least disturbed by other work on a shared machine). ``draw_paper`` is DRAW at the paper's MNIST
setting (T=64, 256-unit LSTMs, z=100, read 2x2, write 5x5), about 384 MFLOP per training image:
its training rate is also given as a fraction of the ~400 images/s that 2 CPU cores' GEMM peak
(~157 GFLOP/s) allows.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import statistics
import time
from collections.abc import Callable

import torch

from rnngen.models import build_model, model_config

#: label -> (registry name, params section)
MODELS: dict[str, tuple[str, dict]] = {
    "row_lstm_vae": ("row_lstm_vae", {}),
    "mlp_vae": ("mlp_vae", {}),
    "draw": ("draw", {}),
    "draw_paper": ("draw", {"preset": "paper"}),
    "pixelrnn_row_lstm": ("pixelrnn", {"variant": "row_lstm"}),
    "pixelrnn_diagonal_bilstm": ("pixelrnn", {"variant": "diagonal_bilstm"}),
}
PAPER_CEILING = 400.0  # images/s: ~384 MFLOP per DRAW training image at ~157 GFLOP/s (2 cores)


def rates(step: Callable[[], None], batch: int, warmup: int, iters: int, repeats: int,
          sync: Callable[[], None]) -> list[float]:
    """Images/s of ``repeats`` timed windows of ``iters`` calls each, after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    sync()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            step()
        sync()
        out.append(batch * iters / (time.perf_counter() - start))
    return out


def bench_model(label: str, args: argparse.Namespace, device: torch.device,
                spec: tuple[str, dict] | None = None) -> dict:
    """Train and sample rates of MODELS[label], or of ``spec`` = (model name, params section)."""
    name, section = spec or MODELS[label]
    torch.manual_seed(0)
    model = build_model(name, model_config(name, section)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = (torch.rand(args.batch, 1, 28, 28, device=device) < 0.3).float()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def autocast() -> contextlib.AbstractContextManager:
        # the same autocast fit() uses with train.amp (bfloat16; only CUDA supports it for every model)
        return torch.autocast(device.type, dtype=torch.bfloat16) if args.amp else contextlib.nullcontext()

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast():
            terms = model(x)
        terms.nelbo.mean().backward()
        opt.step()

    def sample_step() -> None:
        with autocast():
            model.sample(args.batch)

    model.train()
    train = rates(train_step, args.batch, args.warmup, args.iters, args.repeats, sync)
    model.eval()
    sample = rates(sample_step, args.batch, args.warmup, args.iters, args.repeats, sync)
    n_params = sum(p.numel() for p in model.parameters())
    return {"label": label, "params": n_params, "train": train, "sample": sample}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    parser.add_argument("--iters", type=int, default=5, help="iterations per timed window")
    parser.add_argument("--repeats", type=int, default=5, help="timed windows (best and median reported)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast, as train.amp (for CUDA)")
    parser.add_argument("--csv", help="also write the figures (best and median, images/s) to this CSV file")
    args = parser.parse_args(argv)

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.amp and device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # as fit() with train.amp: TF32 where DRAW stays fp32
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, device {device}{' (bf16 autocast)' if args.amp else ''}, "
          f"{torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.repeats} windows x {args.iters} iterations after {args.warmup} warm-up; load average {load:.2f}")
    header = f"{'model':<14}{'params':>11}{'train best':>12}{'median':>9}{'sample best':>13}{'median':>9}"
    print(header + "   (images/s)")
    print("-" * len(header))
    results = []
    for label in args.models:
        r = bench_model(label, args, device)
        results.append(r)
        print(f"{label:<14}{r['params']:>11,}{max(r['train']):>12.1f}{statistics.median(r['train']):>9.1f}"
              f"{max(r['sample']):>13.1f}{statistics.median(r['sample']):>9.1f}", flush=True)
    for r in results:
        if r["label"] == "draw_paper" and device.type == "cpu":
            best, median = max(r["train"]), statistics.median(r["train"])
            print(f"\ndraw_paper training: best {best / PAPER_CEILING:.0%}, median {median / PAPER_CEILING:.0%} of the "
                  f"~{PAPER_CEILING:.0f} images/s GEMM ceiling of 2 CPU cores (~{PAPER_CEILING / 2:.0f} per core; "
                  f"{torch.get_num_threads()} threads here)")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["model", "device", "amp", "batch", "train_best", "train_median", "sample_best",
                          "sample_median"])
            for r in results:
                out.writerow([r["label"], device.type, args.amp, args.batch, f"{max(r['train']):.1f}",
                              f"{statistics.median(r['train']):.1f}", f"{max(r['sample']):.1f}",
                              f"{statistics.median(r['sample']):.1f}"])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average at the end: {load:.2f} (above ~0.5 on 2 cores means shared; trust the best column)")


if __name__ == "__main__":
    main()
